"""``reciprocity report``: read results back from the store.

``report pairs`` prints one row per directed pair window, summed over source
partitions and streams, with the fields (in this order) ``window_start``
(RFC 3339 UTC), ``window``, ``src``, ``dst``, ``engagements`` and one count
per engagement kind: ``follow``, ``like``, ``share``, ``reply``, ``mention``,
``thanks``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Final, TextIO

import orjson

from pipeline.sinks import Backend
from pipeline.sinks.base import quote
from pipeline.windows import parse_window, window_label
from schemas.event import ENGAGEMENT_KINDS, format_ts

PAIR_FIELDS: Final = ("window_start", "window", "src", "dst", "engagements", *ENGAGEMENT_KINDS)
_KIND_COLUMNS: Final = ("follows", "likes", "shares", "replies", "mentions", "thanks")


def pair_rows(backend: Backend, window: str) -> list[dict[str, Any]]:
    """Pair-window rows for one window size, ordered by start, src, dst.

    ``window`` is a size like ``1h``; it is normalised (``60m`` -> ``1h``) and
    only ever reaches SQL as a validated label.
    """
    label = window_label(parse_window(window))
    sums = ", ".join(f"sum({c})" for c in _KIND_COLUMNS)
    # argMax per (key, stream, partition) picks the newest version without FINAL's cost
    # on unmerged parts, and works the same on ClickHouse 18.16 and 23.8+.
    inner = ", ".join(f"argMax({c}, version) AS {c}" for c in _KIND_COLUMNS)
    # only the validated label and database identifier are inlined
    sql = (
        f"SELECT toUInt32(window_start), src, dst, {sums} FROM ("  # noqa: S608
        f" SELECT window_start, src, dst, stream, partition, {inner}"
        f" FROM {backend.database}.pair_windows WHERE window = {quote(label)}"
        "  GROUP BY window_start, src, dst, stream, partition)"
        " GROUP BY window_start, src, dst ORDER BY window_start, src, dst"
    )
    rows = []
    for start, src, dst, *counts in backend.query(sql):
        kinds = [int(c) for c in counts]
        rows.append(
            {"window_start": format_ts(int(start)), "window": label, "src": src, "dst": dst,
             "engagements": sum(kinds), **dict(zip(ENGAGEMENT_KINDS, kinds, strict=True))}
        )
    return rows


def write_rows(rows: Iterable[dict[str, Any]], fields: Sequence[str], fmt: str,
               out: TextIO) -> None:
    """Print rows as an aligned text table or as JSON lines."""
    if fmt == "jsonl":
        for row in rows:
            out.write(orjson.dumps({f: row[f] for f in fields}).decode() + "\n")
        return
    if fmt != "table":
        raise ValueError(f"format must be table or jsonl, got {fmt!r}")
    cells = [[str(row[f]) for f in fields] for row in rows]
    widths = [max([len(f)] + [len(c[i]) for c in cells]) for i, f in enumerate(fields)]
    out.write("  ".join(f.ljust(w) for f, w in zip(fields, widths, strict=True)).rstrip() + "\n")
    for c in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() + "\n")
