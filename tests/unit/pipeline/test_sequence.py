"""SequenceGuard: offsets applied in order; redeliveries stale; holes reported."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from pipeline.app import _in_order
from pipeline.sequence import SequenceGuard, Verdict

A, S, H = Verdict.APPLY, Verdict.STALE, Verdict.HOLE


def run(guard: SequenceGuard, offsets: list[int], partition: int = 0) -> list[Verdict]:
    return [guard.check(partition, o) for o in offsets]


def test_contiguous_offsets_apply() -> None:
    guard = SequenceGuard()
    assert run(guard, [5, 6, 7]) == [A, A, A]  # the first offset seen starts the sequence
    assert guard.expected == {0: 8}


def test_redelivered_offsets_are_stale() -> None:
    guard = SequenceGuard()
    run(guard, [0, 1, 2])
    assert run(guard, [1, 2, 3]) == [S, S, A]


def test_a_hole_is_reported_and_does_not_advance() -> None:
    guard = SequenceGuard()
    assert run(guard, [0, 1, 2, 6]) == [A, A, A, H]
    assert guard.expected[0] == 3
    assert guard.check(0, 7) is H  # still a hole: nothing past it is ever applied
    assert guard.check(0, 3) is A


def test_partitions_are_independent_and_forgettable() -> None:
    guard = SequenceGuard()
    run(guard, [0, 1], partition=0)
    run(guard, [10, 11], partition=1)
    assert guard.check(1, 20) is H
    assert guard.check(0, 2) is A
    guard.forget(1)
    assert guard.check(1, 30) is A  # after reassignment the sequence restarts


def test_start_reveals_a_hole_at_the_head() -> None:
    guard = SequenceGuard()
    guard.start(0, 100)  # consumption resumes at the committed offset 100
    assert guard.check(0, 300) is Verdict.HOLE  # 100..299 never reached the stream
    guard = SequenceGuard()
    guard.start(0, 100)
    assert guard.check(0, 100) is Verdict.APPLY
    guard.start(0, 5)  # already known: a later start does not rewind it
    assert guard.check(0, 101) is Verdict.APPLY
    assert guard.check(0, 50) is Verdict.STALE


@pytest.mark.parametrize("seed", range(200))
def test_a_batch_checked_in_columns_is_what_message_by_message_finds(seed: int) -> None:
    """``pipeline.app._in_order``, the worker's check of a whole batch: true
    exactly when the guard would apply every message, and then it expects
    what the guard would; false leaves the expectations as they were."""
    rng = random.Random(seed)
    expected = {p: rng.randrange(5) for p in range(3) if rng.random() < 0.7}
    messages = []
    for p in rng.sample(range(3), rng.randrange(4)):
        start = expected.get(p, rng.randrange(5)) + rng.choice((0, 0, 0, -1, 1))
        offsets = list(range(start, start + rng.randrange(1, 5)))
        if rng.random() < 0.2:
            offsets[rng.randrange(len(offsets))] += rng.choice((-1, 1))
        messages += [SimpleNamespace(partition=p, offset=o) for o in offsets]
    guard = SequenceGuard(dict(expected))
    verdicts = [guard.check(m.partition, m.offset) for m in messages]
    columns = dict(expected)
    if _in_order(columns, messages):
        assert all(v is A for v in verdicts)
        assert columns == guard.expected
    else:
        assert any(v is not A for v in verdicts)
        assert columns == expected
