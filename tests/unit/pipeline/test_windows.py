"""Tumbling windows aligned to the UTC epoch."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pipeline.windows import parse_window, to_utc, window_label, window_start


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "seconds"),
    [
        ("1s", 1),
        ("30s", 30),
        ("15m", 900),
        ("90m", 5400),
        ("1h", 3600),
        ("6h", 21600),
        ("1d", 86400),
        ("7d", 604800),
        ("1w", 604800),
        ("2w", 1209600),
        (" 2h ", 7200),
        ("2 h", 7200),
        ("010m", 600),
    ],
)
def test_parse_window(spec: str, seconds: int) -> None:
    assert parse_window(spec) == seconds


@pytest.mark.parametrize(
    "spec",
    ["", " ", "h", "1", "0s", "0h", "00m", "-1h", "+1h", "1.5h", "1H", "1y", "1ms", "1 hour",
     "1h1m", "1h,1d", "one h"],
)
def test_parse_window_rejects(spec: str) -> None:
    with pytest.raises(ValueError, match="must look like"):
        parse_window(spec)


@pytest.mark.parametrize(
    ("size", "label"),
    [
        (1, "1s"),
        (30, "30s"),
        (90, "90s"),
        (60, "1m"),
        (900, "15m"),
        (5400, "90m"),
        (3600, "1h"),
        (7200, "2h"),
        (86400, "1d"),
        (172800, "2d"),
        (604800, "1w"),
        (1209600, "2w"),
        (1296000, "15d"),
    ],
)
def test_window_label(size: int, label: str) -> None:
    assert window_label(size) == label
    assert parse_window(label) == size


@pytest.mark.parametrize("spec", ["60m", "3600s", "1h", "24h", "1440m", "7d", "14d"])
def test_window_label_normalises(spec: str) -> None:
    label = window_label(parse_window(spec))
    assert parse_window(label) == parse_window(spec)
    assert window_label(parse_window(label)) == label
    assert label in {"1h", "1d", "1w", "2w"}


def test_window_label_rejects_fractions() -> None:
    with pytest.raises(ValueError, match="not a positive whole number"):
        window_label(1.5)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, -3600])
def test_window_label_rejects_non_positive(size: int) -> None:
    with pytest.raises(ValueError):
        window_label(size)


def test_hour_and_day_window_of_a_late_second() -> None:
    ts = utc(2026, 3, 2, 10, 59, 59)
    assert window_start(ts, 3600) == utc(2026, 3, 2, 10)
    assert window_start(ts, 86400) == utc(2026, 3, 2)
    assert to_utc(window_start(ts, 86400)) == datetime(2026, 3, 2, tzinfo=UTC)


def test_windows_are_half_open() -> None:
    start = utc(2026, 3, 2, 10)
    assert window_start(start, 3600) == start
    assert window_start(start - 0.000001, 3600) == start - 3600
    assert window_start(start + 3599.999, 3600) == start
    assert window_start(start + 3600, 3600) == start + 3600


def test_window_start_returns_int() -> None:
    result = window_start(utc(2026, 3, 2, 10, 30) + 0.75, 900)
    assert isinstance(result, int)
    assert result == utc(2026, 3, 2, 10, 30)


@pytest.mark.parametrize(
    ("ts", "size", "expected"),
    [
        (utc(2026, 3, 2, 10, 7, 31), 60, utc(2026, 3, 2, 10, 7)),
        (utc(2026, 3, 2, 10, 7, 31), 900, utc(2026, 3, 2, 10)),
        (utc(2026, 3, 2, 10, 17, 31), 900, utc(2026, 3, 2, 10, 15)),
        (utc(2026, 3, 2, 23, 59, 59), 86400, utc(2026, 3, 2)),
        (utc(2026, 3, 3), 86400, utc(2026, 3, 3)),
        (utc(2024, 2, 29, 12), 86400, utc(2024, 2, 29)),
        (utc(2026, 12, 31, 23, 59, 59), 86400, utc(2026, 12, 31)),
        # weekly windows align to the epoch, which was a Thursday
        (utc(2026, 3, 2, 10), 604800, utc(2026, 2, 26)),
        (utc(1970, 1, 1, 0, 0, 1), 604800, 0),
        (0, 3600, 0),
    ],
)
def test_window_start_alignment(ts: float, size: int, expected: float) -> None:
    assert window_start(ts, size) == expected


def test_window_start_is_stable_within_a_window() -> None:
    start = utc(2026, 3, 2, 10)
    starts = {window_start(start + s, 3600) for s in range(0, 3600, 7)}
    assert starts == {start}


def test_to_utc() -> None:
    moment = to_utc(utc(2026, 3, 2, 10))
    assert moment == datetime(2026, 3, 2, 10, tzinfo=UTC)
    assert moment.utcoffset() is not None
    assert moment.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
