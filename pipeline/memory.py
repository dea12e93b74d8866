"""How a worker keeps its memory in check: the garbage collector, the C heap
and the JSON bytes it keeps.

- :func:`tune_gc`: CPython's cyclic collector, made cheap for a process that
  holds hundreds of thousands of long-lived containers.
- :func:`dumps`: orjson's output, right-sized, for bytes that are kept.
- :func:`free_heap`: hands the C heap's free pages back to the system. Every
  batch allocates and frees tens of megabytes (decoded events, rows, record
  batches) from the event loop's thread and the sink's; glibc keeps what is
  freed in its arenas, so the resident size stays at its high-water mark and
  fragmented arenas keep growing it. Called every ``RECIPROCITY_MALLOC_TRIM_S``
  (off the event loop), it took the peak RSS of the 1M-event packed bench from
  1,626 MiB to 1,370 MiB at the same rate (docs/benchmarks.md). A no-op where
  the C library has no ``malloc_trim`` (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
from collections.abc import Callable
from typing import Any

import orjson

#: Allocations between two young-generation collections of Python's cyclic
#: garbage collector (CPython's default: 700), and the older generations' ratios.
GC_THRESHOLDS = (100_000, 50, 100)


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a worker.

    A worker holds hundreds of thousands of long-lived containers (pair states,
    the dedup index) and allocates a few per engagement. With CPython's default
    thresholds the collector runs every 700 allocations and keeps re-walking
    them: it took about half of the pair stage's time (docs/benchmarks.md).
    What exists at start is moved out of its reach (``gc.freeze``) and
    collections run a hundred times less often. Reference counting still frees
    everything that is not in a cycle at once.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    return trim


def free_heap() -> bool:
    """Return the C heap's free pages to the system (glibc ``malloc_trim(0)``);
    False where that is not available. Blocks for tens of milliseconds on a
    large heap: call it from a thread. ctypes releases the GIL meanwhile."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def dumps(obj: Any, option: int = 0) -> bytes:
    """``orjson.dumps``, copied into a bytes object of its own size.

    orjson (3.12 and 3.13 measured) returns its output in an allocation of at
    least 4 KiB whatever its length; kept, each such bytes object holds its
    whole block: 100,000 outputs of 20 bytes took 393 MiB of resident memory,
    of 700 bytes 785 MiB, against 0-72 MiB once copied (0.1 us per copy).
    A worker keeps tens of thousands of them (table values: pair and inbound
    states, deltas, dedup records) and builds thousands per batch (alerts,
    changelog values, internal messages): those go through here
    (docs/benchmarks.md)."""
    return bytes(memoryview(orjson.dumps(obj, option=option)))
