"""``reciprocity report``: read results back from the store.

Every report dedups what at-least-once delivery may have written twice (newest
version per key, or one row per record id) and prints the fields named in its
``*_FIELDS`` tuple, in that order. ``report snubs``, ``omissions``, ``alerts``
and ``orgs`` follow docs/metrics.md.

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

from pipeline.reciprocity import balance, pair_reciprocity
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
    cells = [[_cell(row[f]) for f in fields] for row in rows]
    widths = [max([len(f)] + [len(c[i]) for c in cells]) for i, f in enumerate(fields)]
    out.write("  ".join(f.ljust(w) for f, w in zip(fields, widths, strict=True)).rstrip() + "\n")
    for c in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)).rstrip() + "\n")


SNUB_FIELDS: Final = ("id", "src", "dst", "kind", "ts", "snub_ts")
OMISSION_FIELDS: Final = ("post_id", "left_out", "by", "entities", "ts")
ALERT_FIELDS: Final = ("id", "kind", "org", "other", "ts", "message")
ORG_FIELDS: Final = (
    "org", "community", "engagements_given", "engagements_received", "value_given",
    "value_received", "reciprocity", "balance", "reciprocated", "snubbed",
)


def _where(filters: Sequence[tuple[str, str | None]]) -> str:
    """A WHERE clause of equality filters; values are quoted, columns are ours."""
    parts = [f"{column} = {quote(value)}" for column, value in filters if value is not None]
    return f" WHERE {' AND '.join(parts)}" if parts else ""


def snub_rows(backend: Backend, src: str | None = None,
              dst: str | None = None) -> list[dict[str, Any]]:
    """Snub records (docs/metrics.md#snub), one per snub over all streams,
    ordered by snub time."""
    sql = (
        "SELECT DISTINCT id, src, dst, kind, ts, snub_ts "  # noqa: S608 - quoted values
        f"FROM {backend.database}.snubs{_where([('src', src), ('dst', dst)])} "
        "ORDER BY snub_ts, src, dst, id, kind"
    )
    return [
        {"id": i, "src": s, "dst": d, "kind": k, "ts": format_ts(float(t)),
         "snub_ts": format_ts(float(st))}
        for i, s, d, k, t, st in backend.query(sql)
    ]


def omission_rows(backend: Backend, left_out: str | None = None,
                  by: str | None = None) -> list[dict[str, Any]]:
    """Omission records (docs/metrics.md#omission), ordered by time."""
    sql = (
        "SELECT DISTINCT post_id, left_out, by_org, entities, ts "  # noqa: S608
        f"FROM {backend.database}.omissions"
        f"{_where([('left_out', left_out), ('by_org', by)])} ORDER BY ts, post_id, left_out"
    )
    return [
        {"post_id": p, "left_out": lo, "by": b, "entities": list(e), "ts": format_ts(float(t))}
        for p, lo, b, e, t in backend.query(sql)
    ]


def alert_rows(backend: Backend, kind: str | None = None,
               org: str | None = None) -> list[dict[str, Any]]:
    """Alerts (docs/metrics.md#alerts), one per id, ordered by time."""
    sql = (
        "SELECT id, any(kind), any(org), any(other), any(ts), any(message) "  # noqa: S608
        f"FROM {backend.database}.alerts{_where([('kind', kind), ('org', org)])} "
        "GROUP BY id ORDER BY any(ts), id"
    )
    return [
        {"id": i, "kind": k, "org": o, "other": other, "ts": format_ts(float(t)), "message": m}
        for i, k, o, other, t, m in backend.query(sql)
    ]


def org_rows(backend: Backend, window: str, org: str | None = None) -> list[dict[str, Any]]:
    """Org rollups (docs/metrics.md#rollups) over all time for one window size,
    per (org, community of the other side), ordered by org and community."""
    label = window_label(parse_window(window))
    filters = _where([("window", label), ("org", org)])
    sql = (
        "SELECT org, community, "  # noqa: S608 - quoted values, our identifiers
        "sumIf(engagements, direction = 'given'), sumIf(engagements, direction = 'received'), "
        "sumIf(value, direction = 'given'), sumIf(value, direction = 'received'), "
        "sumIf(reciprocated, direction = 'given'), sumIf(snubbed, direction = 'given') "
        f"FROM {backend.database}.org_rollups_latest{filters}"
        " GROUP BY org, community ORDER BY org, community"
    )
    rows = []
    for o, community, given, received, v_given, v_received, reciprocated, snubbed in (
        backend.query(sql)
    ):
        vg, vr = float(v_given), float(v_received)
        rows.append({
            "org": o, "community": community, "engagements_given": int(given),
            "engagements_received": int(received), "value_given": vg, "value_received": vr,
            "reciprocity": pair_reciprocity(vg, vr), "balance": balance(vg, vr),
            "reciprocated": int(reciprocated), "snubbed": int(snubbed),
        })
    return rows


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value == value else "nan"
    return str(value)


def pair_totals(backend: Backend, window: str = "1d") -> dict[tuple[str, str], tuple[int, float]]:
    """(engagements, value) per directed pair over all windows of one size."""
    label = window_label(parse_window(window))
    columns = (*_KIND_COLUMNS, "value")
    inner = ", ".join(f"argMax({c}, version) AS {c}" for c in columns)
    total = " + ".join(_KIND_COLUMNS)
    sql = (
        f"SELECT src, dst, sum({total}), sum(value) FROM ("  # noqa: S608 - our identifiers
        f" SELECT window_start, src, dst, stream, partition, {inner}"
        f" FROM {backend.database}.pair_windows WHERE window = {quote(label)}"
        "  GROUP BY window_start, src, dst, stream, partition) GROUP BY src, dst"
    )
    return {(src, dst): (int(n), float(v)) for src, dst, n, v in backend.query(sql)}
