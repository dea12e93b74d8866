"""pipeline.days: the drop baseline is the mean count of the N days before."""

from __future__ import annotations

import copy
import random
from collections import Counter

from pipeline.days import DAY, DaySeries
from pipeline.reciprocity import is_drop


def reference_evaluate(series: DaySeries, watermark: float, days: int, threshold: float,
                       min_baseline: float) -> list[tuple[int, int, float]]:
    """The rule as docs/metrics.md states it, the baseline day by day."""
    drops = []
    while series.next is not None and series.next + DAY <= watermark:
        day = series.next
        baseline = sum(series.counts.get(day - k * DAY, 0) for k in range(1, days + 1)) / days
        count = series.counts.get(day, 0)
        if is_drop(count, baseline, threshold, min_baseline):
            drops.append((day, count, baseline))
        oldest = day + DAY - days * DAY
        series.counts = {d: n for d, n in series.counts.items() if d >= oldest}
        series.next = day + DAY if series.counts else None
    return drops


def test_each_evaluated_day_has_the_mean_of_the_days_before_as_its_baseline() -> None:
    rng = random.Random(7)
    checked = 0
    for _ in range(300):
        days = rng.randint(1, 10)
        counts = {rng.randint(0, 40) * DAY: rng.randint(1, 20) for _ in range(rng.randint(1, 15))}
        series = DaySeries(min(counts), min(counts) + days * DAY, dict(counts))
        expected_series = copy.deepcopy(series)
        for watermark in sorted(rng.sample(range(0, 50 * DAY, DAY // 2), 4)):
            got = series.evaluate(watermark, days, threshold=0.0, min_baseline=0.0)
            want = reference_evaluate(expected_series, watermark, days, 0.0, 0.0)
            assert got == want
            assert series.counts == expected_series.counts and series.next == expected_series.next
            checked += len(want)
    assert checked > 100  # days with a drop were compared, not only empty lists


def test_add_many_and_add_counts_are_add_of_each_in_order() -> None:
    D = DAY
    rng = random.Random(3)
    for _ in range(500):
        start = rng.randrange(20) * D
        one, many, counted = (DaySeries.begin(start, 3), DaySeries.begin(start, 3),
                              DaySeries.begin(start, 3))
        for _ in range(rng.randrange(1, 6)):
            days = [rng.randrange(30) * D for _ in range(rng.randrange(1, 6))]
            for day in days:
                one.add(day, 3)
            many.add_many(days, 3)
            counted.add_counts(days[0], Counter(days), 3)
            assert many == one == counted
            assert list(counted.counts) == list(one.counts)  # the same order
            if rng.random() < 0.5:  # a watermark step: may put the series to sleep
                at = float(rng.randrange(40) * D)
                assert (many.evaluate(at, 3, 0.5, 1.0) == one.evaluate(at, 3, 0.5, 1.0)
                        == counted.evaluate(at, 3, 0.5, 1.0))
