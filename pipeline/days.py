"""Daily engagement series and the drop rule over them (pure; docs/metrics.md).

A series starts on the UTC day of its first engagement; days without
engagement count 0. Day ``D`` is evaluated once the watermark reaches its end,
if the series has at least ``N`` days before it. Only days that can still
matter are kept: when the last ``N`` days hold nothing, the series goes
dormant (no drop is possible from a zero baseline) until its next engagement.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.reciprocity import is_drop

DAY = 86400


def day_of(ts: float) -> int:
    return int(ts // DAY) * DAY


@dataclass(slots=True)
class DaySeries:
    start: int
    #: next day to evaluate; None while dormant
    next: int | None
    counts: dict[int, int] = field(default_factory=dict)

    @classmethod
    def begin(cls, day: int, days: int) -> DaySeries:
        return cls(day, day + days * DAY, {})

    def add(self, day: int, days: int) -> None:
        self.counts[day] = self.counts.get(day, 0) + 1
        if day < self.start:  # an earlier engagement arrived later (within the lateness)
            self.start = day
            if self.next is not None:
                self.next = min(self.next, day + days * DAY)
        if self.next is None:  # waking up: earlier days had a zero baseline
            self.next = max(day, self.start + days * DAY)

    def add_many(self, engaged: Sequence[int], days: int) -> None:
        """:meth:`add` of each of ``engaged`` (non-empty), in order: after the
        first the series is awake, so the rest only count and may move the
        start back."""
        self.add(engaged[0], days)
        if len(engaged) == 1:
            return
        counts = self.counts
        for day in engaged[1:]:
            counts[day] = counts.get(day, 0) + 1
        low = min(engaged[1:])
        if low < self.start:
            self.start = low
            if self.next is not None:
                self.next = min(self.next, low + days * DAY)

    def add_counts(self, first: int, counts: Mapping[int, int], days: int) -> None:
        """:meth:`add_many` of engagements given by their first day and the
        count of each day (``first`` counted in it), the days in the order they
        first come: the same series, without a Python step per engagement."""
        self.add(first, days)
        held = self.counts
        low: int | None = None
        for day, n in counts.items():
            if day == first:
                n -= 1
                if not n:
                    continue
            held[day] = held.get(day, 0) + n
            if low is None or day < low:
                low = day
        if low is not None and low < self.start:
            self.start = low
            if self.next is not None:
                self.next = min(self.next, low + days * DAY)

    def deadline(self) -> float | None:
        """The watermark at which the next evaluation is due."""
        return None if self.next is None else float(self.next + DAY)

    def evaluate(
        self, watermark: float, days: int, threshold: float, min_baseline: float
    ) -> list[tuple[int, int, float]]:
        """Evaluate every day closed by ``watermark``; returns the drops as
        ``(day, count, baseline)``."""
        drops = []
        while self.next is not None and self.next + DAY <= watermark:
            day = self.next
            first = day - days * DAY  # the baseline's days: first .. day - 1 day
            baseline = sum(n for d, n in self.counts.items() if first <= d < day) / days
            count = self.counts.get(day, 0)
            if is_drop(count, baseline, threshold, min_baseline):
                drops.append((day, count, baseline))
            # the next evaluation needs days from (day + 1 - days) on
            oldest = day + DAY - days * DAY
            for old in [d for d in self.counts if d < oldest]:
                del self.counts[old]
            self.next = day + DAY if self.counts else None
        return drops

    def to_json(self) -> tuple[Any, ...]:
        """For orjson with ``OPT_NON_STR_KEYS`` (the day keys are ints)."""
        return (self.start, self.next, self.counts)

    @classmethod
    def from_json(cls, doc: Sequence[Any]) -> DaySeries:
        start, nxt, counts = doc
        return cls(int(start), None if nxt is None else int(nxt),
                   {int(d): int(n) for d, n in counts.items()})
