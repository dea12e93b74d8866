"""The watermark as a downstream stage sees it (pure; see docs/metrics.md).

Each source partition of the input topic reports its largest event time and
whether it is idle. The watermark is the minimum, over the source partitions
that are not idle, of their largest event time, minus the allowed lateness;
when all are idle, the maximum of them minus the lateness (end of input).
A source partition that has reported nothing yet and is not idle holds the
watermark back (``None``: nothing is closed yet). The watermark never moves
back: a partition that was idle and wakes up does not reopen closed time.

Stage 1 keeps its input partitions aligned in event time (:func:`ahead`): the
watermark follows the slowest partition, so whatever the others read past it
waits in the downstream stages' memory until it catches up.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator, Mapping
from typing import Any, Generic, TypeVar

S = TypeVar("S")


class WatermarkTracker:
    def __init__(self, sources: int, lateness_s: float) -> None:
        self.sources = sources
        self.lateness_s = lateness_s
        self.max_ts: dict[int, float] = {}
        self.idle: set[int] = set()
        #: highest watermark returned so far: time at or before it is closed
        self.closed: float | None = None
        #: internal-topic offset of the last message applied (replays skip)
        self.tag = -1

    def observe(self, source: int, max_ts: float | None, idle: bool) -> None:
        if max_ts is not None and max_ts > self.max_ts.get(source, float("-inf")):
            self.max_ts[source] = max_ts
        if idle:
            self.idle.add(source)
        else:
            self.idle.discard(source)

    def watermark(self) -> float | None:
        """Advance (never back) and return the closed time, ``None`` before any."""
        current = self._computed()
        if current is not None and (self.closed is None or current > self.closed):
            self.closed = current
        return self.closed

    def _computed(self) -> float | None:
        active = [s for s in range(self.sources) if s not in self.idle]
        if any(s not in self.max_ts for s in active):
            return None
        if active:
            return min(self.max_ts[s] for s in active) - self.lateness_s
        if not self.max_ts:
            return None
        return max(self.max_ts.values()) - self.lateness_s

    def to_json(self) -> dict[str, Any]:
        return {"max": [[s, t] for s, t in sorted(self.max_ts.items())],
                "idle": sorted(self.idle), "closed": self.closed, "tag": self.tag}

    @classmethod
    def from_json(cls, doc: dict[str, Any], sources: int, lateness_s: float) -> WatermarkTracker:
        tracker = cls(sources, lateness_s)
        tracker.max_ts = {int(s): float(t) for s, t in doc["max"]}
        tracker.idle = {int(s) for s in doc["idle"]}
        tracker.closed = None if doc["closed"] is None else float(doc["closed"])
        tracker.tag = int(doc["tag"])
        return tracker


def ahead(max_ts: Mapping[int, float], drift_s: float) -> set[int]:
    """Watermark alignment: the partitions whose largest event time is more than
    ``drift_s`` past the slowest of ``max_ts`` (the partitions still catching
    up: not idle, not at the end of their log). Stage 1 stops reading them until
    the slowest catches up; the slowest itself is never held, so something is
    always read."""
    if not max_ts:
        return set()
    bound = min(max_ts.values()) + drift_s
    return {partition for partition, ts in max_ts.items() if ts > bound}


class Deadlines:
    """Which keys are due at a watermark: the watermark each key next changes at,
    in a heap with lazy invalidation, so a watermark step touches only the keys
    that are due instead of every key of the partition."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, str]] = []
        self._due: dict[str, float] = {}

    def set(self, key: str, due: float | None) -> None:
        """``key`` next changes when the watermark reaches ``due`` (None: never)."""
        if due is None:
            self._due.pop(key, None)
        elif self._due.get(key) != due:
            self._due[key] = due
            heapq.heappush(self._heap, (due, key))

    def pop_due(self, watermark: float) -> Iterator[str]:
        """The keys due at ``watermark``, each forgotten as it is yielded (set a
        new deadline for it meanwhile if it has one)."""
        heap = self._heap
        while heap and heap[0][0] <= watermark:
            due, key = heapq.heappop(heap)
            if self._due.get(key) != due:
                continue  # superseded by a later set()
            del self._due[key]
            yield key


class StagePartition(Generic[S]):
    """What a keyed stage holds in memory for one internal partition."""

    def __init__(self, tracker: WatermarkTracker) -> None:
        self.tracker = tracker
        self.states: dict[str, S] = {}
        self.deadlines = Deadlines()
