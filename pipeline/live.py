"""The live page: ``GET /`` (one self-contained HTML page) and ``GET /api/live`` (its data).

The page shows, read from the store and refreshed every few seconds:

- a heatmap of pair reciprocity (docs/metrics.md#pair-reciprocity-and-balance)
  per org pair, from the values of the largest window size
  (``RECIPROCITY_WINDOWS``) summed per direction over the :data:`HEATMAP_DAYS`
  days up to the newest window in the store (the store may hold replayed
  history: anchoring at the wall clock would show nothing);
- the latest snubs, omissions and alerts (newest event time first);
- the events processed per minute of processing time (wall clock) over the
  last :data:`RATE_MINUTES` minutes.

Data comes from the views of :mod:`pipeline.sinks.views`, read through the
worker's own sink thread (``AsyncSink.run``): the embedded store may be
opened by one process only, and a backend is single-threaded. The SQL runs on
ClickHouse 18.16 and on modern ClickHouse (no CTE, no window functions).

The SQL builders and ``shape_*`` functions are pure; :func:`read_live` runs
them against a backend (blocking) and :class:`LiveData` serves the result to
the web handlers, at most one store read per :data:`MIN_INTERVAL_S`.

Access: when ``RECIPROCITY_WEB_TOKEN`` is set, ``/api/live`` requires
``Authorization: Bearer <token>`` like ``/metrics``. The HTML shell holds no
data and is served without a token (a browser cannot add a header to a page
it navigates to); open it as ``http://host:port/#token=<token>``: the page
sends the token from the URL fragment as that header, and a fragment never
leaves the browser (not in server logs, not in a Referer).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, cast

from pipeline.reciprocity import balance, pair_reciprocity
from pipeline.sinks.base import Backend, check_identifier, quote
from pipeline.windows import window_label
from schemas.event import format_ts

if TYPE_CHECKING:
    from pipeline.sinks import AsyncSink

log = logging.getLogger(__name__)

#: days of pair values the heatmap sums, ending with the newest window stored
HEATMAP_DAYS: Final = 30
#: at most this many orgs in the heatmap (the largest by value given + received)
MAX_ORGS: Final = 30
#: rows in each of the snubs, omissions and alerts lists
LIST_LIMIT: Final = 15
#: minutes of the event-rate chart, ending with the current minute
RATE_MINUTES: Final = 30
#: how often the page fetches /api/live
REFRESH_S: Final = 3
#: the store is read at most once per this many seconds, however many viewers
MIN_INTERVAL_S: Final = 1.0
#: longest store error message passed to the page
_ERROR_CHARS: Final = 300

Row = Sequence[Any]


# -- SQL (pure) -----------------------------------------------------------------------


def newest_window_sql(database: str, window: str) -> str:
    """Start (epoch s) of the newest pair window of size label ``window``, and
    how many pair-window rows that size has (0: nothing stored yet)."""
    db = check_identifier(database)
    return (
        "SELECT toUInt32(max(window_start)), count() "  # noqa: S608 - identifier, quoted
        f"FROM {db}.pair_windows_latest WHERE window = {quote(window)}"
    )


def heatmap_sql(database: str, window: str, newest_start: int,
                days: int = HEATMAP_DAYS) -> str:
    """Value and engagements per directed pair, summed over the windows of size
    ``window`` that start in ``(newest_start - days, newest_start]``."""
    db = check_identifier(database)
    since = int(newest_start) - days * 86400
    return (
        "SELECT src, dst, sum(value), sum(engagements) "  # noqa: S608 - identifier, ints
        f"FROM {db}.pair_windows_latest WHERE window = {quote(window)} "
        f"AND window_start > toDateTime({since}) "
        f"AND window_start <= toDateTime({int(newest_start)}) "
        "GROUP BY src, dst ORDER BY src, dst"
    )


def snubs_sql(database: str, limit: int = LIST_LIMIT) -> str:
    """The latest snubs by snub time, one row per snub over all streams."""
    db = check_identifier(database)
    return (
        "SELECT DISTINCT id, src, dst, kind, ts, snub_ts "  # noqa: S608 - identifier
        f"FROM {db}.snubs_latest "
        f"ORDER BY snub_ts DESC, src, dst, id, kind LIMIT {int(limit)}"
    )


def omissions_sql(database: str, limit: int = LIST_LIMIT) -> str:
    """The latest omissions by post time, one row per (post, left-out org)."""
    db = check_identifier(database)
    return (
        "SELECT DISTINCT post_id, left_out, by_org, entities, ts "  # noqa: S608
        f"FROM {db}.omissions_latest "
        f"ORDER BY ts DESC, post_id, left_out LIMIT {int(limit)}"
    )


def alerts_sql(database: str, limit: int = LIST_LIMIT) -> str:
    """The latest alerts by the time of their finding, one row per alert."""
    db = check_identifier(database)
    return (
        "SELECT DISTINCT id, kind, org, other, ts, message "  # noqa: S608 - identifier
        f"FROM {db}.alerts_latest "
        f"ORDER BY ts DESC, kind, org, id LIMIT {int(limit)}"
    )


def event_rate_sql(database: str, since_minute: int) -> str:
    """Input messages and events per minute of processing time, summed over
    streams, for the minutes starting at or after ``since_minute`` (epoch s)."""
    db = check_identifier(database)
    return (
        "SELECT toUInt32(minute), sum(messages), sum(events), sum(late), "  # noqa: S608
        "sum(duplicates), sum(dead_lettered) "
        f"FROM {db}.pipeline_event_rate WHERE minute >= toDateTime({int(since_minute)}) "
        "GROUP BY minute ORDER BY minute"
    )


# -- shaping (pure) -------------------------------------------------------------------


def shape_heatmap(rows: Sequence[Row], window: str, window_s: int, newest_start: int | None,
                  days: int = HEATMAP_DAYS, max_orgs: int = MAX_ORGS) -> dict[str, Any]:
    """The heatmap from ``(src, dst, value, engagements)`` rows.

    ``orgs`` are the :data:`MAX_ORGS` orgs with the largest value given plus
    received (ties by id), sorted by id; ``pairs`` has one entry per unordered
    pair of them with engagement either way (``a < b``): both directions'
    values and engagements, ``reciprocity`` and ``balance`` (positive when
    ``a`` gives more). ``from``/``to`` bound the summed windows (RFC 3339).
    """
    directed: dict[tuple[str, str], tuple[float, int]] = {}
    for src, dst, value, engagements in rows:
        if src != dst:
            directed[(str(src), str(dst))] = (float(value), int(engagements))
    totals: dict[str, float] = {}
    for (src, dst), (value, _) in directed.items():
        totals[src] = totals.get(src, 0.0) + value
        totals[dst] = totals.get(dst, 0.0) + value
    ranked = sorted(totals, key=lambda org: (-totals[org], org))
    orgs = sorted(ranked[:max_orgs])
    kept = set(orgs)
    pairs = []
    for a, b in sorted({(min(s, d), max(s, d)) for s, d in directed}):
        if a not in kept or b not in kept:
            continue
        v_ab, e_ab = directed.get((a, b), (0.0, 0))
        v_ba, e_ba = directed.get((b, a), (0.0, 0))
        if e_ab + e_ba == 0:
            continue
        pairs.append({"a": a, "b": b, "value_ab": v_ab, "value_ba": v_ba,
                      "engagements_ab": e_ab, "engagements_ba": e_ba,
                      "reciprocity": pair_reciprocity(v_ab, v_ba),
                      "balance": balance(v_ab, v_ba)})
    period: dict[str, str | None] = {"from": None, "to": None}
    if newest_start is not None:
        end = int(newest_start) + window_s
        period = {"from": format_ts(end - days * 86400), "to": format_ts(end)}
    return {"window": window, "days": days, **period, "orgs": orgs,
            "orgs_total": len(totals), "pairs": pairs}


def shape_snubs(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """``(id, src, dst, kind, ts, snub_ts)`` rows as records, times RFC 3339."""
    return [{"id": str(i), "src": str(s), "dst": str(d), "kind": str(k),
             "ts": format_ts(float(t)), "snub_ts": format_ts(float(st))}
            for i, s, d, k, t, st in rows]


def shape_omissions(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """``(post_id, left_out, by_org, entities, ts)`` rows as records."""
    return [{"post_id": str(p), "left_out": str(lo), "by": str(b),
             "entities": [str(e) for e in entities], "ts": format_ts(float(t))}
            for p, lo, b, entities, t in rows]


def shape_alerts(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """``(id, kind, org, other, ts, message)`` rows as records."""
    return [{"id": str(i), "kind": str(k), "org": str(o), "other": str(ot),
             "ts": format_ts(float(t)), "message": str(m)}
            for i, k, o, ot, t, m in rows]


_RATE_FIELDS: Final = ("messages", "events", "late", "duplicates", "dead_lettered")


def rate_since(now: float, minutes: int = RATE_MINUTES) -> int:
    """Start (epoch s) of the first minute of a chart of ``minutes`` minutes
    whose last minute is the one holding ``now``."""
    return (int(now) // 60 - (minutes - 1)) * 60


def shape_event_rate(rows: Sequence[Row], now: float,
                     minutes: int = RATE_MINUTES) -> dict[str, Any]:
    """One entry per minute of the chart (missing minutes are zeros), the
    totals over it, and the events of the current minute."""
    since = rate_since(now, minutes)
    by_minute = {int(row[0]): [int(v) for v in row[1:]] for row in rows}
    counts = [by_minute.get(since + 60 * i, [0] * len(_RATE_FIELDS)) for i in range(minutes)]
    series: list[dict[str, Any]] = [
        {"minute": format_ts(since + 60 * i), **dict(zip(_RATE_FIELDS, values, strict=True))}
        for i, values in enumerate(counts)
    ]
    totals = {name: sum(values[k] for values in counts) for k, name in enumerate(_RATE_FIELDS)}
    return {"minutes": series, "totals": totals, "current_minute_events": counts[-1][1]}


# -- reading the store (blocking) ------------------------------------------------------


def read_live(backend: Backend, window_s: int, now: float) -> dict[str, Any]:
    """Everything the page shows, read from ``backend`` (blocking: call it on
    the sink thread). A section whose query fails is left empty and its
    error, shortened, is under ``errors`` (the others still show)."""
    database, window = backend.database, window_label(window_s)
    out: dict[str, Any] = {"generated_at": format_ts(int(now)), "errors": {}}

    def section(name: str, empty: Any, read: Callable[[], Any]) -> None:
        try:
            out[name] = read()
        except Exception as exc:  # a missing view or a store hiccup: show the rest
            log.warning("live page: reading %s failed: %s", name, exc)
            out[name] = empty
            out["errors"][name] = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]

    def heatmap() -> dict[str, Any]:
        newest_rows = backend.query(newest_window_sql(database, window))
        newest, count = (int(newest_rows[0][0]), int(newest_rows[0][1])) if newest_rows \
            else (0, 0)
        if count == 0:
            return shape_heatmap([], window, window_s, None)
        rows = backend.query(heatmap_sql(database, window, newest))
        return shape_heatmap(rows, window, window_s, newest)

    section("heatmap", shape_heatmap([], window, window_s, None), heatmap)
    section("snubs", [], lambda: shape_snubs(backend.query(snubs_sql(database))))
    section("omissions", [], lambda: shape_omissions(backend.query(omissions_sql(database))))
    section("alerts", [], lambda: shape_alerts(backend.query(alerts_sql(database))))
    section("event_rate", shape_event_rate([], now), lambda: shape_event_rate(
        backend.query(event_rate_sql(database, rate_since(now))), now))
    return out


class LiveData:
    """The page's data for the web handlers: read on the sink thread, shared
    by concurrent requests, re-read at most every ``min_interval_s``."""

    def __init__(self, sink: AsyncSink, window_s: int,
                 clock: Callable[[], float] = time.time,
                 min_interval_s: float = MIN_INTERVAL_S) -> None:
        self.sink = sink
        self.window_s = window_s
        self.clock = clock
        self.min_interval_s = min_interval_s
        self._lock = asyncio.Lock()
        self._last: dict[str, Any] | None = None
        self._read_at = float("-inf")

    async def get(self) -> dict[str, Any]:
        async with self._lock:
            if self._last is None or time.monotonic() - self._read_at >= self.min_interval_s:
                result = await self.sink.run(read_live, self.sink.backend, self.window_s,
                                             self.clock())
                self._last = cast(dict[str, Any], result)
                self._read_at = time.monotonic()
            return self._last


# -- the page -------------------------------------------------------------------------

_STYLE: Final = """
:root { --ink:#1d2433; --muted:#667085; --line:#e4e7ec; --card:#fff; --bg:#f4f5f7; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 "DejaVu Sans", system-ui, sans-serif; color: var(--ink);
  background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; padding: 12px 20px;
  background: #1d2433; color: #fff; }
header h1 { font-size: 18px; margin: 0; font-weight: 600; }
header .status { margin-left: auto; font-size: 13px; color: #c9d1e0; }
header .status.bad { color: #ffb4a8; }
main { display: grid; grid-template-columns: minmax(0, 11fr) minmax(0, 9fr); gap: 16px;
  padding: 16px 20px; align-items: start; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px;
  padding: 12px 14px; min-width: 0; }
.col { display: flex; flex-direction: column; gap: 16px; min-width: 0; }
h2 { font-size: 15px; margin: 0 0 4px; }
.meta { color: var(--muted); font-size: 12px; margin: 0 0 8px; }
.error { color: #b42318; font-size: 12px; }
.empty { color: var(--muted); font-style: italic; }
.scroll { overflow: auto; }
table.heat { border-collapse: separate; border-spacing: 2px; font-size: 12px; }
table.heat th { font-weight: 600; padding: 2px 4px; white-space: nowrap; }
table.heat thead th { writing-mode: vertical-rl; transform: rotate(180deg);
  vertical-align: bottom; text-align: left; }
table.heat tbody th { text-align: right; }
table.heat td { width: 46px; height: 30px; text-align: center; border-radius: 3px;
  color: #fff; font-variant-numeric: tabular-nums; }
table.heat td.none { background: #f0f1f3; color: #98a2b3; }
table.heat td.self { background: repeating-linear-gradient(45deg, #f7f7f8, #f7f7f8 4px,
  #eceef1 4px, #eceef1 8px); }
.legend { display: flex; align-items: center; gap: 6px; font-size: 12px;
  color: var(--muted); margin-top: 8px; }
.legend .bar { width: 160px; height: 10px; border-radius: 3px; background:
  linear-gradient(90deg, hsl(0,65%,45%), hsl(60,65%,42%), hsl(125,55%,36%)); }
table.list { width: 100%; border-collapse: collapse; font-size: 12px; }
table.list th, table.list td { text-align: left; padding: 3px 6px;
  border-bottom: 1px solid var(--line); vertical-align: top; }
table.list th { color: var(--muted); font-weight: 600; }
table.list td.time { white-space: nowrap; font-variant-numeric: tabular-nums; }
.kind { display: inline-block; padding: 0 6px; border-radius: 8px; background: #eef2ff;
  color: #3538cd; font-size: 11px; }
.big { font-size: 26px; font-weight: 600; font-variant-numeric: tabular-nums; }
.figures { display: grid; grid-template-columns: repeat(3, auto); gap: 4px 18px;
  align-items: baseline; justify-content: start; }
.figures .headline { grid-column: 1 / -1; }
.figures span.label { color: var(--muted); font-size: 12px; margin-left: 4px; }
svg.rate { width: 100%; height: 90px; display: block; margin-top: 6px; }
svg.rate rect { fill: #4e6ef2; }
svg.rate line { stroke: var(--line); }
"""

_SCRIPT: Final = """
"use strict";
const REFRESH_MS = __REFRESH_MS__;
let refreshes = 0;

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function when(iso) { return iso ? iso.replace("T", " ").slice(0, 16) : ""; }
function token() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  return match ? decodeURIComponent(match[1]) : "";
}
function color(r) {  // red (one-sided) .. amber .. green (even)
  const hue = Math.round(125 * r);
  return "hsl(" + hue + ", " + (r > 0.5 ? 55 : 65) + "%, " + (r > 0.5 ? 36 : 44) + "%)";
}
function sectionError(name, errors) {
  const box = document.getElementById(name + "-error");
  box.textContent = errors && errors[name] ? "cannot read: " + errors[name] : "";
}

function renderHeatmap(h) {
  const box = document.getElementById("heatmap");
  const meta = document.getElementById("heatmap-meta");
  box.replaceChildren();
  if (!h.orgs.length) {
    meta.textContent = "";
    box.appendChild(el("p", {class: "empty"}, "no pair windows stored yet"));
    return;
  }
  meta.textContent = "r = min/max of the values given each way, " + h.window + " windows, "
    + h.days + " days: " + when(h.from) + " to " + when(h.to) + " UTC"
    + (h.orgs_total > h.orgs.length
       ? " (the " + h.orgs.length + " of " + h.orgs_total + " orgs with most value)" : "");
  const pairs = new Map();
  for (const p of h.pairs) {
    pairs.set(JSON.stringify([p.a, p.b]), {r: p.reciprocity, given: p.value_ab,
      returned: p.value_ba});
    pairs.set(JSON.stringify([p.b, p.a]), {r: p.reciprocity, given: p.value_ba,
      returned: p.value_ab});
  }
  const table = el("table", {class: "heat", id: "heatmap-table"});
  const head = el("tr");
  head.appendChild(el("th"));
  for (const org of h.orgs) head.appendChild(el("th", {scope: "col", title: org}, org));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  for (const a of h.orgs) {
    const row = body.appendChild(el("tr"));
    row.appendChild(el("th", {scope: "row"}, a));
    for (const b of h.orgs) {
      if (a === b) { row.appendChild(el("td", {class: "self"})); continue; }
      const p = pairs.get(JSON.stringify([a, b]));
      if (!p) {
        row.appendChild(el("td", {class: "none", title: a + " and " + b + ": no engagement"},
                           "\\u00b7"));
        continue;
      }
      const cell = el("td", {class: "cell", "data-a": a, "data-b": b, "data-r": p.r,
        "data-given": p.given, "data-returned": p.returned,
        title: a + " \\u2192 " + b + ": " + p.given + ", " + b + " \\u2192 " + a + ": "
          + p.returned + ", r " + p.r.toFixed(3)}, p.r.toFixed(2));
      cell.style.backgroundColor = color(p.r);
      row.appendChild(cell);
    }
  }
  box.appendChild(table);
}

function renderList(name, rows, columns, emptyText) {
  const box = document.getElementById(name);
  box.replaceChildren();
  if (!rows.length) { box.appendChild(el("p", {class: "empty"}, emptyText)); return; }
  const table = el("table", {class: "list", id: name + "-table"});
  const head = el("tr");
  for (const c of columns) head.appendChild(el("th", {}, c.title));
  table.appendChild(el("thead")).appendChild(head);
  const body = table.appendChild(el("tbody"));
  for (const r of rows) {
    const tr = body.appendChild(el("tr", {"data-id": r.id || r.post_id}));
    for (const c of columns) {
      const td = tr.appendChild(el("td", {class: c.cls || "", "data-field": c.field}));
      const value = r[c.field];
      if (c.cls === "time") { td.setAttribute("data-value", value); td.textContent = when(value); }
      else if (c.badge) td.appendChild(el("span", {class: "kind"}, value));
      else td.textContent = Array.isArray(value) ? value.join(", ") : String(value);
    }
  }
  box.appendChild(table);
}

function renderRate(rate) {
  const minutes = rate.minutes;
  const current = document.getElementById("rate-current");
  current.textContent = String(rate.current_minute_events);
  current.setAttribute("data-value", rate.current_minute_events);
  for (const name of ["messages", "events", "late", "duplicates", "dead_lettered"]) {
    const node = document.getElementById("rate-" + name);
    node.textContent = String(rate.totals[name]);
    node.setAttribute("data-value", rate.totals[name]);
  }
  const svg = document.getElementById("rate-chart");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const width = 300, height = 90, gap = 1;
  const top = Math.max(1, ...minutes.map(m => m.events));
  const step = width / minutes.length;
  const base = document.createElementNS(ns, "line");
  for (const [k, v] of [["x1", 0], ["x2", width], ["y1", height - 0.5], ["y2", height - 0.5]])
    base.setAttribute(k, v);
  svg.appendChild(base);
  minutes.forEach((m, i) => {
    const bar = document.createElementNS(ns, "rect");
    const h = Math.round((height - 4) * m.events / top);
    bar.setAttribute("x", (i * step + gap / 2).toFixed(2));
    bar.setAttribute("width", Math.max(0.5, step - gap).toFixed(2));
    bar.setAttribute("y", height - h);
    bar.setAttribute("height", h);
    bar.setAttribute("data-minute", m.minute);
    bar.setAttribute("data-events", m.events);
    const title = document.createElementNS(ns, "title");
    title.textContent = when(m.minute) + " UTC: " + m.events + " events";
    bar.appendChild(title);
    svg.appendChild(bar);
  });
  document.getElementById("rate-meta").textContent = "per minute of processing time, "
    + when(minutes[0].minute) + " to " + when(minutes[minutes.length - 1].minute) + " UTC";
}

function render(data) {
  renderHeatmap(data.heatmap);
  renderList("snubs", data.snubs, [
    {title: "decided (UTC)", field: "snub_ts", cls: "time"},
    {title: "engaged", field: "src"}, {title: "did not return", field: "dst"},
    {title: "kind", field: "kind", badge: true},
    {title: "engagement (UTC)", field: "ts", cls: "time"}], "no snubs yet");
  renderList("omissions", data.omissions, [
    {title: "posted (UTC)", field: "ts", cls: "time"},
    {title: "left out", field: "left_out"}, {title: "by", field: "by"},
    {title: "featured", field: "entities"}], "no omissions yet");
  renderList("alerts", data.alerts, [
    {title: "time (UTC)", field: "ts", cls: "time"},
    {title: "kind", field: "kind", badge: true}, {title: "message", field: "message"}],
    "no alerts yet");
  renderRate(data.event_rate);
  for (const name of ["heatmap", "snubs", "omissions", "alerts", "event_rate"])
    sectionError(name, data.errors);
}

function status(text, bad) {
  const node = document.getElementById("status");
  node.textContent = text;
  node.className = bad ? "status bad" : "status";
}

async function refresh() {
  try {
    const headers = {};
    const secret = token();
    if (secret) headers.Authorization = "Bearer " + secret;
    const response = await fetch("api/live", {headers: headers, cache: "no-store"});
    if (response.status === 401) {
      status("unauthorized: open this page as /#token=YOUR_TOKEN", true);
      return;
    }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const data = await response.json();
    render(data);
    refreshes += 1;
    const node = document.getElementById("status");
    node.setAttribute("data-generated-at", data.generated_at);
    node.setAttribute("data-refreshes", refreshes);
    status("updated " + new Date().toLocaleTimeString() + " (store read "
      + when(data.generated_at).slice(11) + " UTC), every " + REFRESH_MS / 1000 + " s", false);
  } catch (error) {
    status("update failed (" + error.message + "), retrying", true);
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
"""

_BODY: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<link rel="icon" href="data:,">
<title>reciprocity: live</title>
<style>__STYLE__</style>
</head>
<body>
<header><h1>Reciprocity, live</h1><span id="status" class="status">loading...</span></header>
<main>
<div class="col">
<section id="heatmap-section">
  <h2>Pair reciprocity</h2>
  <p class="meta" id="heatmap-meta"></p>
  <p class="error" id="heatmap-error"></p>
  <div class="scroll" id="heatmap"></div>
  <div class="legend">0 one-sided <span class="bar"></span> 1 even;
    <span>&middot; no engagement either way</span></div>
</section>
<section id="snubs-section">
  <h2>Latest snubs</h2>
  <p class="meta">engagements not returned within the horizon</p>
  <p class="error" id="snubs-error"></p>
  <div class="scroll" id="snubs"></div>
</section>
<section id="omissions-section">
  <h2>Latest omissions</h2>
  <p class="meta">posts featuring an org's people without naming it</p>
  <p class="error" id="omissions-error"></p>
  <div class="scroll" id="omissions"></div>
</section>
</div>
<div class="col">
<section id="rate-section">
  <h2>Event rate</h2>
  <p class="meta" id="rate-meta"></p>
  <p class="error" id="event_rate-error"></p>
  <div class="figures">
    <div class="headline"><span class="big" id="rate-current">&ndash;</span>
      <span class="label">events this minute</span></div>
    <div><span id="rate-events">&ndash;</span><span class="label">events</span></div>
    <div><span id="rate-messages">&ndash;</span><span class="label">messages</span></div>
    <div><span id="rate-late">&ndash;</span><span class="label">late</span></div>
    <div><span id="rate-duplicates">&ndash;</span><span class="label">duplicates</span></div>
    <div><span id="rate-dead_lettered">&ndash;</span><span class="label">dead-lettered</span>
    </div>
  </div>
  <svg class="rate" id="rate-chart" viewBox="0 0 300 90" preserveAspectRatio="none"
    role="img" aria-label="events per minute"></svg>
</section>
<section id="alerts-section">
  <h2>Latest alerts</h2>
  <p class="error" id="alerts-error"></p>
  <div class="scroll" id="alerts"></div>
</section>
</div>
</main>
<script>__SCRIPT__</script>
</body>
</html>
"""


def _csp_hash(source: str) -> str:
    digest = hashlib.sha256(source.encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


def render_page(refresh_s: float = REFRESH_S) -> tuple[str, dict[str, str]]:
    """The page's HTML and its response headers. The page holds no data (it
    fetches ``api/live``); its Content-Security-Policy allows only its own
    inline script and style (by hash) and requests to its own origin."""
    script = _SCRIPT.replace("__REFRESH_MS__", str(int(refresh_s * 1000)))
    html = _BODY.replace("__STYLE__", _STYLE).replace("__SCRIPT__", script)
    csp = (f"default-src 'none'; script-src {_csp_hash(script)}; "
           f"style-src {_csp_hash(_STYLE)}; connect-src 'self'; img-src data:; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    headers = {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff",
               "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}
    return html, headers
