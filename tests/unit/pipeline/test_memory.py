"""pipeline.memory: the collector's settings and returning the C heap."""

from __future__ import annotations

import gc
import sys

import pytest

from pipeline.memory import GC_THRESHOLDS, free_heap, tune_gc


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
