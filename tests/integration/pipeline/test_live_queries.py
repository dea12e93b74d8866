"""The live page's queries on real engines: chdb in-process and clickhouse-server 18.16.

Rows with stale versions, several partitions and streams, re-delivered batches
and windows just outside the heatmap's 30 days go in through the sink; what
:func:`pipeline.live.read_live` returns must be the figures of
docs/metrics.md, on both engines.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from pipeline.live import LIST_LIMIT, read_live
from pipeline.sinks import (
    AlertRow,
    Backend,
    OmissionRow,
    PairWindowRow,
    PipelineBatchRow,
    SinkBatch,
    SnubRow,
)

pytestmark = pytest.mark.integration
DAY = 86400
NEWEST = 1773964800  # 2026-03-20T00:00:00Z
NOW = NEWEST + 3 * 3600 + 125  # the page is read at 03:02:05
WRITTEN = datetime(2026, 3, 20, 3, tzinfo=UTC)


def pair(start: int, src: str, dst: str, likes: int, value: float, version: int,
         partition: int = 0, stream: str = "s", window: str = "1d") -> PairWindowRow:
    return PairWindowRow(window, datetime.fromtimestamp(start, tz=UTC), src, dst, stream,
                         partition, 0, likes, 0, 0, 0, 0, value, 0, 0, None, version, WRITTEN)


def test_heatmap_sums_the_newest_versions_over_30_days(backend: Backend) -> None:
    rows = [
        pair(NEWEST, "a", "b", 2, 2.0, 1),
        pair(NEWEST, "a", "b", 5, 9.0, 7),  # newer version of the same window: wins
        pair(NEWEST, "a", "b", 1, 1.0, 3, partition=1),  # another partition adds
        pair(NEWEST, "a", "b", 1, 2.0, 1, stream="t"),  # another stream adds
        pair(NEWEST - 29 * DAY, "b", "a", 3, 4.0, 1),  # the oldest of the 30 days
        pair(NEWEST - 30 * DAY, "b", "a", 50, 50.0, 1),  # one day too old
        pair(NEWEST - 3 * DAY, "c", "a", 1, 0.0, 1),  # engagement without value
        pair(NEWEST + 3600, "b", "a", 40, 40.0, 1, window="1h"),  # another window size
    ]
    backend.write(SinkBatch(rows))
    backend.write(SinkBatch(rows))  # re-delivered
    heat = read_live(backend, DAY, NOW)["heatmap"]
    assert heat["orgs"] == ["a", "b", "c"]
    assert (heat["from"], heat["to"]) == ("2026-02-19T00:00:00Z", "2026-03-21T00:00:00Z")
    assert heat["pairs"] == [
        {"a": "a", "b": "b", "value_ab": 12.0, "value_ba": 4.0, "engagements_ab": 7,
         "engagements_ba": 3, "reciprocity": 4.0 / 12.0, "balance": 0.5},
        {"a": "a", "b": "c", "value_ab": 0.0, "value_ba": 0.0, "engagements_ab": 0,
         "engagements_ba": 1, "reciprocity": 0.0, "balance": 0.0},
    ]
    hourly = read_live(backend, 3600, NOW)["heatmap"]
    assert hourly["to"] == "2026-03-20T02:00:00Z"
    assert [(p["a"], p["b"], p["value_ba"]) for p in hourly["pairs"]] == [("a", "b", 40.0)]


def test_lists_are_the_newest_records_once_each(backend: Backend) -> None:
    n = LIST_LIMIT + 3
    snubs = [SnubRow(f"e{i:02d}", "a", "b", "like", NEWEST + i, NEWEST + 3 * DAY + i, WRITTEN,
                     "s", WRITTEN) for i in range(n)]
    omissions = [OmissionRow(f"p{i:02d}", "a", "b", ["x", "y"], NEWEST + i, WRITTEN, "s",
                             WRITTEN) for i in range(n)]
    alerts = [AlertRow(f"id{i:02d}", "snub", "a", "b", NEWEST + i, WRITTEN, f"<b>{i}</b> it's",
                       "{}", "s", WRITTEN) for i in range(n)]
    batch = SinkBatch(snubs=snubs, omissions=omissions, alerts=alerts)
    backend.write(batch)
    backend.write(batch)  # re-delivered: still one row each
    out = read_live(backend, DAY, NOW)
    assert out["errors"] == {}
    newest_first = list(range(n - 1, n - 1 - LIST_LIMIT, -1))
    assert [s["id"] for s in out["snubs"]] == [f"e{i:02d}" for i in newest_first]
    assert out["snubs"][0] == {"id": f"e{n - 1}", "src": "a", "dst": "b", "kind": "like",
                               "ts": "2026-03-20T00:00:17Z", "snub_ts": "2026-03-23T00:00:17Z"}
    assert [o["post_id"] for o in out["omissions"]] == [f"p{i:02d}" for i in newest_first]
    assert out["omissions"][0]["entities"] == ["x", "y"]
    assert [a["id"] for a in out["alerts"]] == [f"id{i:02d}" for i in newest_first]
    assert out["alerts"][0]["message"] == f"<b>{n - 1}</b> it's"


def test_event_rate_per_minute_of_processing_time(backend: Backend) -> None:
    def batch(partition: int, first: int, last: int, events: int, at: float,
              late: int = 0) -> PipelineBatchRow:
        return PipelineBatchRow("s", partition, first, last, events + late, events, late, 0,
                                late, NEWEST, at, datetime.fromtimestamp(int(at), tz=UTC))

    # processing time is recent (modern servers expire old pipeline_batches rows)
    now = time.time()
    minute = int(now) // 60 * 60
    rows = [
        batch(0, 0, 9, 10, minute + 1),
        batch(1, 0, 4, 5, minute + 2, late=1),
        batch(0, 10, 19, 10, minute - 60),  # the minute before
        batch(0, 20, 29, 10, minute - 30 * 60),  # before the chart
    ]
    backend.write(SinkBatch(pipeline_batches=rows))
    backend.write(SinkBatch(pipeline_batches=rows[:1]))  # re-delivered
    out = read_live(backend, DAY, now)
    assert out["errors"] == {}
    rate = out["event_rate"]
    assert rate["current_minute_events"] == 15
    assert [m["events"] for m in rate["minutes"][-3:]] == [0, 10, 15]
    assert rate["totals"] == {"messages": 26, "events": 25, "late": 1, "duplicates": 0,
                              "dead_lettered": 1}


def test_an_empty_store_gives_an_empty_page(backend: Backend) -> None:
    out = read_live(backend, DAY, NOW)
    assert out["errors"] == {}
    assert out["heatmap"]["orgs"] == [] and out["heatmap"]["from"] is None
    assert out["snubs"] == out["omissions"] == out["alerts"] == []
    assert out["event_rate"]["totals"]["events"] == 0
