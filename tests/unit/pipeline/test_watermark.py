"""pipeline.watermark.ahead: which input partitions stage 1 holds (alignment)."""

from __future__ import annotations

from pipeline.watermark import ahead

H = 3600.0


def test_partitions_more_than_the_drift_past_the_slowest_are_held() -> None:
    assert ahead({0: 0.0, 1: H, 2: H + 1, 3: 10 * H}, H) == {2, 3}


def test_the_slowest_is_never_held_so_something_is_always_read() -> None:
    for max_ts in ({0: 5.0}, {0: 5.0, 1: 5.0}, {0: 1e9, 1: -1e9}):
        held = ahead(max_ts, 0.0)
        assert min(max_ts, key=lambda p: max_ts[p]) not in held
        assert len(held) < len(max_ts)


def test_nothing_is_held_without_partitions_or_within_the_drift() -> None:
    assert ahead({}, H) == set()
    assert ahead({0: 0.0, 1: H / 2, 2: H}, H) == set()


def test_a_partition_without_an_event_time_yet_holds_every_other() -> None:
    assert ahead({0: float("-inf"), 1: 0.0, 2: 1e9}, H) == {1, 2}
