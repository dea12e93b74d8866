"""pipeline.memory: the collector's settings and returning the C heap."""

from __future__ import annotations

import gc
import sys
import tracemalloc

import orjson
import pytest

from pipeline.memory import GC_THRESHOLDS, dumps, free_heap, tune_gc


def test_tune_gc_freezes_what_exists_and_raises_the_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_free_heap_trims_on_glibc() -> None:
    blocks = [bytearray(256 * 1024) for _ in range(64)]
    del blocks
    assert free_heap() is True


def test_dumps_is_orjson_in_bytes_of_its_own_size() -> None:
    doc = ("lo", "hi", {0: 12, 3: 40}, [[0, 1, "ev1", 1.5]], None)
    option = orjson.OPT_NON_STR_KEYS
    assert dumps(doc, option=option) == orjson.dumps(doc, option=option)
    assert dumps([1, "a"]) == b'[1,"a"]'
    tracemalloc.start()
    try:
        kept = [dumps([i, "abc"]) for i in range(1000)]
        held, _peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # orjson's own output holds a block of 4 KiB or more each (4 MB here)
    assert len(kept) == 1000
    assert held < 1000 * 200
