"""ClickHouse views the dashboards and the live page read.

Plain (not materialized) views over the tables of :mod:`pipeline.sinks.schema`:
rows there are absolute, versioned states, so a view first picks each key's
newest version (``argMax(column, version)``, the same on ClickHouse 18.16 and
23.8+, and correct on unmerged parts where ``FINAL`` would be slower) and then
aggregates. SQL here must run on 18.16: no CTEs, no window functions, no
``toStartOfInterval``, explicit types on both sides of ``UNION ALL``.

The daily views and the rolling reciprocity views read the ``1d`` pair windows
(part of the default ``RECIPROCITY_WINDOWS``). The rolling views end at
``now()``: "the last 7 UTC days" includes today.

Definitions of the figures: docs/metrics.md. The views: docs/dashboards.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pipeline.sinks.schema import KIND_COLUMNS

DAY_WINDOW: Final = "1d"
#: days of the rolling reciprocity views
ROLLING_DAYS: Final = (7, 30)


@dataclass(frozen=True)
class View:
    """One view: its name and its SELECT, with ``{db}`` for the database."""

    name: str
    select: str
    doc: str

    def create(self, database: str, on_cluster: str = "") -> str:
        return (f"CREATE VIEW IF NOT EXISTS {database}.{self.name}{on_cluster} AS\n"
                + self.select.format(db=database).strip())


def _latest_pair_windows() -> str:
    inner = ",\n        ".join(f"argMax({c}, version) AS {c}_" for c in KIND_COLUMNS)
    outer = ",\n    ".join(f"sum({c}_) AS {c}" for c in KIND_COLUMNS)
    total = " + ".join(f"{c}_" for c in KIND_COLUMNS)
    return f"""
SELECT
    window, window_start, src, dst,
    {outer},
    sum({total}) AS engagements,
    sum(value_) AS value,
    sum(reciprocated_) AS reciprocated,
    sum(snubbed_) AS snubbed,
    max(median_) AS median_reciprocate_s
FROM (
    SELECT
        window, window_start, src, dst, stream, partition,
        {inner},
        argMax(value, version) AS value_,
        argMax(reciprocated, version) AS reciprocated_,
        argMax(snubbed, version) AS snubbed_,
        argMax(median_reciprocate_s, version) AS median_
    FROM {{db}}.pair_windows
    GROUP BY window, window_start, src, dst, stream, partition
)
GROUP BY window, window_start, src, dst
"""  # noqa: S608 - our own constants


_CURRENT_LINEAGE = """
SELECT member, org, any(community) AS community
FROM {db}.org_lineage
WHERE registry = (SELECT argMax(registry, loaded_at) FROM {db}.registries)
GROUP BY member, org
"""

_ROLLUP_SIDE = """
    SELECT window, window_start, org, '{direction}' AS direction, src, dst, engagements, value,
           reciprocated, snubbed, {other} AS other
    FROM (
        SELECT window, window_start, src, dst, engagements, value, reciprocated, snubbed,
               {member} AS member
        FROM {{db}}.pair_windows_latest
    ) AS windows
    ALL INNER JOIN (SELECT member, org FROM {{db}}.org_lineage_current) AS lineage
    USING (member)"""

# Two joins need two query levels on ClickHouse 18.16 (one JOIN per SELECT).
_LATEST_ORG_ROLLUPS = f"""
SELECT
    window, window_start, org, direction, src, dst,
    if(other_community = '', 'external', other_community) AS community,
    engagements, value, reciprocated, snubbed
FROM ({_ROLLUP_SIDE.format(direction="given", member="src", other="dst")}
    UNION ALL{_ROLLUP_SIDE.format(direction="received", member="dst", other="src")}
) AS sides
ANY LEFT JOIN (
    SELECT member AS other, any(community) AS other_community
    FROM {{db}}.org_lineage_current
    GROUP BY member
) AS others USING (other)
"""  # noqa: S608 - our own constants


def _rolling_reciprocity(days: int) -> str:
    since = f"toStartOfDay(now()) - INTERVAL {days - 1} DAY"
    where = f"window = '{DAY_WINDOW}' AND window_start >= {since}"
    return f"""
SELECT
    a, b,
    sum(v_ab) AS value_ab,
    sum(v_ba) AS value_ba,
    sum(e_ab) AS engagements_ab,
    sum(e_ba) AS engagements_ba,
    if(value_ab >= value_ba, if(value_ab = 0, 0., value_ba / value_ab),
       value_ab / value_ba) AS reciprocity,
    if(value_ab + value_ba = 0, 0., (value_ab - value_ba) / (value_ab + value_ba)) AS balance
FROM (
    SELECT src AS a, dst AS b, value AS v_ab, toFloat64(0) AS v_ba,
           engagements AS e_ab, toUInt64(0) AS e_ba
    FROM {{db}}.pair_windows_latest WHERE {where}
    UNION ALL
    SELECT dst AS a, src AS b, toFloat64(0) AS v_ab, value AS v_ba,
           toUInt64(0) AS e_ab, engagements AS e_ba
    FROM {{db}}.pair_windows_latest WHERE {where}
)
GROUP BY a, b
"""  # noqa: S608 - our own constants


_LATEST_SNUBS = """
SELECT
    id, src, dst, kind, stream,
    any(ts) AS ts_, any(snub_ts) AS snub_ts_, any(time) AS time_
FROM {db}.snubs
GROUP BY stream, src, dst, id, kind
"""

_LATEST_OMISSIONS = """
SELECT
    post_id, left_out, stream,
    any(by_org) AS by_org_, any(entities) AS entities_, any(ts) AS ts_, any(time) AS time_
FROM {db}.omissions
GROUP BY stream, left_out, post_id
"""

_LATEST_ALERTS = """
SELECT
    id, kind, org, stream,
    any(other) AS other_, any(ts) AS ts_, any(time) AS time_, any(message) AS message_,
    any(details) AS details_, min(created_at) AS created_at_
FROM {db}.alerts
GROUP BY stream, kind, org, id
"""


def _renamed(select: str, columns: str) -> str:
    """``select`` with its ``x_`` columns renamed to ``x`` (an alias may not
    shadow the column its aggregate reads)."""
    return f"SELECT {columns}\nFROM ({select.strip()}\n)"


_ORG_ROI_DAILY = f"""
SELECT
    window_start AS day, org, community,
    sumIf(engagements, direction = 'given') AS engagements_given,
    sumIf(engagements, direction = 'received') AS engagements_received,
    sumIf(value, direction = 'given') AS value_given,
    sumIf(value, direction = 'received') AS value_received,
    sumIf(reciprocated, direction = 'given') AS reciprocated,
    sumIf(snubbed, direction = 'given') AS snubbed
FROM {{db}}.org_rollups_latest
WHERE window = '{DAY_WINDOW}'
GROUP BY day, org, community
"""  # noqa: S608 - our own constants

_TIME_TO_RECIPROCATE_DAILY = f"""
SELECT
    window_start AS day, src, dst, reciprocated,
    assumeNotNull(median_reciprocate_s) AS median_reciprocate_s
FROM {{db}}.pair_windows_latest
WHERE window = '{DAY_WINDOW}' AND reciprocated > 0 AND isNotNull(median_reciprocate_s)
"""  # noqa: S608 - our own constants

_LATEST_BATCHES = """
SELECT
    stream, partition, first_offset,
    argMax(messages, last_offset) AS messages_,
    argMax(events, last_offset) AS events_,
    argMax(late, last_offset) AS late_,
    argMax(duplicates, last_offset) AS duplicates_,
    argMax(dead_lettered, last_offset) AS dead_lettered_,
    argMax(max_event_ts, last_offset) AS max_event_ts_,
    argMax(processed_ts, last_offset) AS processed_ts_,
    argMax(time, last_offset) AS time_
FROM {db}.pipeline_batches
GROUP BY stream, partition, first_offset
"""

_EVENT_RATE = f"""
SELECT
    toStartOfMinute(time_) AS minute, stream,
    sum(messages_) AS messages,
    sum(events_) AS events,
    sum(late_) AS late,
    sum(duplicates_) AS duplicates,
    sum(dead_lettered_) AS dead_lettered
FROM ({_LATEST_BATCHES.strip()}
)
GROUP BY minute, stream
"""  # noqa: S608 - our own constants

_LAG = f"""
SELECT
    toStartOfMinute(time_) AS minute, stream, partition,
    max(processed_ts_ - assumeNotNull(max_event_ts_)) AS lag_s
FROM ({_LATEST_BATCHES.strip()}
)
WHERE isNotNull(max_event_ts_)
GROUP BY minute, stream, partition
"""  # noqa: S608 - our own constants

VIEWS: Final = (
    View("pair_windows_latest", _latest_pair_windows(),
         "Newest state of each directed pair window, summed over streams and partitions."),
    View("org_lineage_current", _CURRENT_LINEAGE,
         "Each org (member) and the orgs it rolls up to, in the newest registry."),
    View("org_rollups_latest", _LATEST_ORG_ROLLUPS,
         "Each pair window seen from every org on either side (itself and ancestors), "
         "with the other side's community: the rollups of docs/metrics.md."),
    *(View(f"pair_reciprocity_{days}d", _rolling_reciprocity(days),
           f"Per ordered org pair (a, b): values both ways over the last {days} UTC days "
           "(1d windows, today included), reciprocity and balance; both orientations.")
      for days in ROLLING_DAYS),
    View("snubs_latest", _renamed(
        _LATEST_SNUBS, "id, src, dst, kind, ts_ AS ts, snub_ts_ AS snub_ts, time_ AS time, stream"),
        "One row per snub (src engaged, dst did not return it)."),
    View("snubs_daily", """
SELECT toStartOfDay(time) AS day, src, dst, count() AS snubs
FROM {db}.snubs_latest
GROUP BY day, src, dst
""", "Snubs per UTC day and pair, by the day they were decided."),
    View("omissions_latest", _renamed(
        _LATEST_OMISSIONS, "post_id, left_out, by_org_ AS by_org, entities_ AS entities, "
        "ts_ AS ts, time_ AS time, stream"),
        "One row per (post, left-out org)."),
    View("omissions_daily", """
SELECT toStartOfDay(time) AS day, left_out, by_org, count() AS omissions
FROM {db}.omissions_latest
GROUP BY day, left_out, by_org
""", "Omissions per UTC day, left-out org and posting org."),
    View("alerts_latest", _renamed(
        _LATEST_ALERTS, "id, kind, org, other_ AS other, ts_ AS ts, time_ AS time, "
        "message_ AS message, details_ AS details, created_at_ AS created_at, stream"),
        "One row per alert."),
    View("org_roi_daily", _ORG_ROI_DAILY,
         "Per UTC day, org (with its descendants) and the other side's community: "
         "engagement and value given and received."),
    View("time_to_reciprocate_daily", _TIME_TO_RECIPROCATE_DAILY,
         "Median time to reciprocate per UTC day and directed pair (reciprocated only)."),
    View("pipeline_event_rate", _EVENT_RATE,
         "Input messages and events processed per minute of processing time."),
    View("pipeline_lag", _LAG,
         "Largest event-time lag (processing time minus the newest event time of a "
         "batch) per minute and input partition."),
)
BY_NAME: Final = {v.name: v for v in VIEWS}
