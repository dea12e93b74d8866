"""Tumbling windows aligned to the UTC epoch (pure functions)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_SPEC = re.compile(r"^\s*([0-9]+)\s*([smhdw])\s*$")


def parse_window(spec: str) -> int:
    """Window size in seconds from ``30s``, ``15m``, ``1h``, ``1d`` or ``1w``.

    Raises ``ValueError`` for anything else, or a size of zero.
    """
    match = _SPEC.match(spec)
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"window {spec!r} must look like 30s, 15m, 1h, 1d or 1w (and be > 0)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def window_label(size_s: int) -> str:
    """The canonical label of a window size: the largest unit that divides it."""
    if size_s <= 0:
        raise ValueError(f"window size must be positive, got {size_s}")
    for unit, seconds in sorted(_UNITS.items(), key=lambda kv: -kv[1]):
        if size_s % seconds == 0:
            return f"{size_s // seconds}{unit}"
    raise ValueError(f"window size {size_s} is not a positive whole number of seconds")


def window_start(ts: float, size_s: int) -> int:
    """Start (epoch seconds) of the window of ``size_s`` that holds ``ts``.

    Windows are half-open ``[start, start + size)`` and aligned to
    1970-01-01T00:00:00Z, so daily windows start at midnight UTC.
    """
    return int(ts // size_s) * size_s


def to_utc(epoch_s: float) -> datetime:
    """Epoch seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(epoch_s, tz=UTC)
