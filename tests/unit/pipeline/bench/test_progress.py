"""The comparison variants' clock: from the first record's arrival at the
variant's code to the last record done (docs/benchmarks.md, "Timing")."""

from __future__ import annotations

import pytest

from pipeline.bench import variants
from pipeline.bench.phase import PhaseResult, PhaseSpec
from pipeline.bench.variants import _boxed, _Progress


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_one_event_is_timed_from_its_arrival_to_its_end(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(variants.time, "monotonic", clock)
    progress = _Progress()
    progress.arrived()
    clock.now = 100.5  # its processing
    progress.seen()
    spec = PhaseSpec("baseline", "127.0.0.1:9092", "events", 4, "data", 1, "g", "work",
                     box_s=60.0)
    result = _boxed(PhaseResult("baseline"), progress, spec, progress.last or 0.0, "x")
    assert result.seconds == pytest.approx(0.5)
    assert result.eps == pytest.approx(2.0)


def test_a_later_arrival_does_not_move_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(variants.time, "monotonic", clock)
    progress = _Progress()
    for _ in range(3):
        progress.arrived()
        clock.now += 1.0
        progress.seen()
    assert progress.first == 100.0
    assert progress.last == 103.0
    assert progress.events == 3
