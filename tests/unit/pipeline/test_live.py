"""The live page's pure parts: SQL builders, row shaping, the store read with a
fake backend, the read cache, and the page's self-containment and CSP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from pipeline import live
from pipeline.live import (
    LiveData,
    alerts_sql,
    event_rate_sql,
    heatmap_sql,
    newest_window_sql,
    omissions_sql,
    rate_since,
    read_live,
    render_page,
    shape_alerts,
    shape_event_rate,
    shape_heatmap,
    shape_omissions,
    shape_snubs,
    snubs_sql,
)
from pipeline.sinks.base import Backend, SinkBatch

NEWEST = 1773964800  # 2026-03-20T00:00:00Z, a UTC midnight
DAY = 86400


def all_sql(database: str = "db") -> list[str]:
    return [newest_window_sql(database, "1d"), heatmap_sql(database, "1d", NEWEST),
            snubs_sql(database), omissions_sql(database), alerts_sql(database),
            event_rate_sql(database, NEWEST)]


@pytest.mark.parametrize("sql", all_sql())
def test_sql_is_portable_to_clickhouse_18_16(sql: str) -> None:
    """No CTE, window function, DateTime64 or toStartOfInterval (18.16 lacks them)."""
    assert not re.search(r"\bWITH\b", sql, re.IGNORECASE)
    assert not re.search(r"\bOVER\s*\(", sql, re.IGNORECASE)
    assert "DateTime64" not in sql
    assert "toStartOfInterval" not in sql
    assert " db." in sql  # every table qualified by the database


@pytest.mark.parametrize("builder", [
    lambda db: newest_window_sql(db, "1d"), lambda db: heatmap_sql(db, "1d", NEWEST),
    snubs_sql, omissions_sql, alerts_sql, lambda db: event_rate_sql(db, NEWEST),
])
def test_sql_refuses_a_database_that_is_not_an_identifier(builder: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="identifier"):
        builder("db; DROP TABLE x")


def test_window_label_is_quoted() -> None:
    sql = heatmap_sql("db", "1d' OR '1'='1", NEWEST)
    assert "window = '1d\\' OR \\'1\\'=\\'1'" in sql
    assert "window = '1d'" in heatmap_sql("db", "1d", NEWEST)


def test_heatmap_sql_sums_the_30_days_up_to_the_newest_window() -> None:
    sql = heatmap_sql("db", "1d", NEWEST)
    assert f"window_start > toDateTime({NEWEST - 30 * DAY})" in sql
    assert f"window_start <= toDateTime({NEWEST})" in sql
    assert "FROM db.pair_windows_latest" in sql
    assert f"toDateTime({NEWEST - 7 * DAY})" in heatmap_sql("db", "1d", NEWEST, days=7)


def test_list_sql_orders_newest_first_and_limits() -> None:
    assert snubs_sql("db", 5).endswith("ORDER BY snub_ts DESC, src, dst, id, kind LIMIT 5")
    assert omissions_sql("db", 7).endswith("ORDER BY ts DESC, post_id, left_out LIMIT 7")
    assert alerts_sql("db", 3).endswith("ORDER BY ts DESC, kind, org, id LIMIT 3")
    assert "FROM db.snubs_latest" in snubs_sql("db")
    assert "FROM db.omissions_latest" in omissions_sql("db")
    assert "FROM db.alerts_latest" in alerts_sql("db")


def test_event_rate_sql_starts_at_the_given_minute() -> None:
    sql = event_rate_sql("db", 1773964740)
    assert "FROM db.pipeline_event_rate WHERE minute >= toDateTime(1773964740)" in sql
    assert "GROUP BY minute ORDER BY minute" in sql


def test_heatmap_pairs_reciprocity_and_balance() -> None:
    rows = [("a", "b", 10.0, 6), ("b", "a", 4.0, 3), ("a", "c", 5, 5), ("c", "c", 9.0, 9)]
    heat = shape_heatmap(rows, "1d", DAY, NEWEST)
    assert heat["orgs"] == ["a", "b", "c"]
    assert heat["orgs_total"] == 3
    assert heat["pairs"] == [
        {"a": "a", "b": "b", "value_ab": 10.0, "value_ba": 4.0, "engagements_ab": 6,
         "engagements_ba": 3, "reciprocity": 0.4, "balance": 6 / 14},
        {"a": "a", "b": "c", "value_ab": 5.0, "value_ba": 0.0, "engagements_ab": 5,
         "engagements_ba": 0, "reciprocity": 0.0, "balance": 1.0},
    ]
    # the 30 daily windows ending with the newest one
    assert heat["from"] == "2026-02-19T00:00:00Z"
    assert heat["to"] == "2026-03-21T00:00:00Z"
    assert (heat["window"], heat["days"]) == ("1d", 30)


def test_heatmap_orders_both_directions_into_one_pair() -> None:
    heat = shape_heatmap([("z", "a", 2.0, 2), ("a", "z", 8.0, 4)], "1h", 3600, NEWEST)
    [pair] = heat["pairs"]
    assert (pair["a"], pair["b"], pair["value_ab"], pair["value_ba"]) == ("a", "z", 8.0, 2.0)
    assert pair["reciprocity"] == 0.25
    assert heat["to"] == "2026-03-20T01:00:00Z"


def test_heatmap_keeps_the_orgs_with_most_value() -> None:
    rows = [("a", "b", 100.0, 1), ("c", "d", 50.0, 1), ("e", "f", 1.0, 1), ("a", "e", 1.0, 1)]
    heat = shape_heatmap(rows, "1d", DAY, NEWEST, max_orgs=4)
    assert heat["orgs"] == ["a", "b", "c", "d"]
    assert heat["orgs_total"] == 6
    assert [(p["a"], p["b"]) for p in heat["pairs"]] == [("a", "b"), ("c", "d")]


def test_heatmap_drops_pairs_without_engagement_and_keeps_zero_value_ones() -> None:
    heat = shape_heatmap([("a", "b", 0.0, 0), ("a", "c", 0.0, 2)], "1d", DAY, NEWEST)
    assert [(p["a"], p["b"], p["reciprocity"]) for p in heat["pairs"]] == [("a", "c", 0.0)]


def test_empty_heatmap() -> None:
    heat = shape_heatmap([], "1d", DAY, None)
    assert heat == {"window": "1d", "days": 30, "from": None, "to": None, "orgs": [],
                    "orgs_total": 0, "pairs": []}


def test_list_shapes() -> None:
    assert shape_snubs([("e1", "a", "b", "like", 1773964800.25, 1774224000.25)]) == [
        {"id": "e1", "src": "a", "dst": "b", "kind": "like",
         "ts": "2026-03-20T00:00:00.250000Z", "snub_ts": "2026-03-23T00:00:00.250000Z"}]
    assert shape_omissions([("p1", "a", "b", ["x", "y"], 1773964800)]) == [
        {"post_id": "p1", "left_out": "a", "by": "b", "entities": ["x", "y"],
         "ts": "2026-03-20T00:00:00Z"}]
    assert shape_alerts([("id1", "snub", "a", "b", 1773964800.0, "b did not return")]) == [
        {"id": "id1", "kind": "snub", "org": "a", "other": "b", "ts": "2026-03-20T00:00:00Z",
         "message": "b did not return"}]


def test_event_rate_fills_missing_minutes_with_zeros() -> None:
    now = NEWEST + 125.5  # 00:02:05.5: the chart's last minute is 00:02
    assert rate_since(now, 3) == NEWEST
    rate = shape_event_rate([(NEWEST, 10, 9, 1, 0, 1), (NEWEST + 120, 4, 4, 0, 0, 0)],
                            now, minutes=3)
    assert [m["minute"] for m in rate["minutes"]] == [
        "2026-03-20T00:00:00Z", "2026-03-20T00:01:00Z", "2026-03-20T00:02:00Z"]
    assert [m["events"] for m in rate["minutes"]] == [9, 0, 4]
    assert rate["minutes"][0] == {"minute": "2026-03-20T00:00:00Z", "messages": 10,
                                  "events": 9, "late": 1, "duplicates": 0, "dead_lettered": 1}
    assert rate["totals"] == {"messages": 14, "events": 13, "late": 1, "duplicates": 0,
                              "dead_lettered": 1}
    assert rate["current_minute_events"] == 4
    assert len(shape_event_rate([], now)["minutes"]) == live.RATE_MINUTES


class FakeBackend(Backend):
    """Answers each query by the view it reads; records the SQL it was given."""

    database = "rdb"

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.sql: list[str] = []

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        self.sql.append(sql)
        for marker, answer in self.answers.items():
            if marker in sql:
                if isinstance(answer, Exception):
                    raise answer
                return list(answer)
        raise AssertionError(f"unexpected query {sql}")

    def insert(self, table: Any, rows: Any) -> None:  # pragma: no cover - never written
        raise AssertionError("the live page never writes")

    def execute(self, statement: str) -> None:  # pragma: no cover
        raise AssertionError("the live page runs no DDL")

    def write(self, batch: SinkBatch, written: Any = None) -> None:  # pragma: no cover
        raise AssertionError("the live page never writes")

    def close(self) -> None:  # pragma: no cover
        pass


def answers(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "count()": [(NEWEST, 3)],
        "sum(value)": [("a", "b", 3.0, 3), ("b", "a", 1.0, 1)],
        "snubs_latest": [("e1", "a", "b", "like", 1773964800.0, 1774224000.0)],
        "omissions_latest": [("p1", "a", "b", ["x"], 1773964800.0)],
        "alerts_latest": [("id1", "snub", "a", "b", 1774224000.0, "m")],
        "pipeline_event_rate": [(NEWEST, 5, 5, 0, 0, 0)],
    }
    base.update(overrides)
    return base


def test_read_live_reads_every_section_from_the_database() -> None:
    backend = FakeBackend(answers())
    out = read_live(backend, DAY, NEWEST + 30)
    assert out["errors"] == {}
    assert out["generated_at"] == "2026-03-20T00:00:30Z"
    assert out["heatmap"]["pairs"][0]["reciprocity"] == pytest.approx(1 / 3)
    assert [s["id"] for s in out["snubs"]] == ["e1"]
    assert [o["post_id"] for o in out["omissions"]] == ["p1"]
    assert [a["id"] for a in out["alerts"]] == ["id1"]
    assert out["event_rate"]["current_minute_events"] == 5
    assert all(" rdb." in sql for sql in backend.sql)
    assert "window = '1d'" in backend.sql[1]  # the window size's label
    assert f"toDateTime({rate_since(NEWEST + 30)})" in backend.sql[-1]


def test_read_live_skips_the_heatmap_query_when_nothing_is_stored() -> None:
    backend = FakeBackend(answers(**{"count()": [(0, 0)]}))
    out = read_live(backend, DAY, NEWEST)
    assert out["heatmap"]["orgs"] == [] and out["heatmap"]["to"] is None
    assert not any("sum(value)" in sql for sql in backend.sql)


def test_a_failing_section_leaves_the_others_and_says_why() -> None:
    backend = FakeBackend(answers(snubs_latest=RuntimeError("no such view " + "x" * 500)))
    out = read_live(backend, DAY, NEWEST)
    assert out["snubs"] == []
    assert out["errors"]["snubs"].startswith("RuntimeError: no such view")
    assert len(out["errors"]["snubs"]) <= 300
    assert [o["post_id"] for o in out["omissions"]] == ["p1"]
    assert out["heatmap"]["pairs"]


class FakeSink:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls = 0

    async def run(self, fn: Any, *args: Any) -> Any:
        self.calls += 1
        await asyncio.sleep(0.01)  # let concurrent requests pile up
        return fn(*args)


def test_live_data_reads_the_store_at_most_once_per_interval() -> None:
    sink = FakeSink(FakeBackend(answers()))

    async def scenario() -> None:
        data = LiveData(sink, DAY, clock=lambda: NEWEST, min_interval_s=60)  # type: ignore[arg-type]
        first, second, third = await asyncio.gather(data.get(), data.get(), data.get())
        assert sink.calls == 1
        assert first is second is third
        data.min_interval_s = 0
        await data.get()
        assert sink.calls == 2

    asyncio.run(scenario())


def _hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


def test_page_is_self_contained_and_its_csp_allows_only_its_own_code() -> None:
    html, headers = render_page(refresh_s=4)
    [script] = re.findall(r"<script>(.*?)</script>", html, re.DOTALL)
    [style] = re.findall(r"<style>(.*?)</style>", html, re.DOTALL)
    csp = headers["Content-Security-Policy"]
    assert f"script-src {_hash(script)};" in csp
    assert f"style-src {_hash(style)};" in csp
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert "unsafe-inline" not in csp
    assert "const REFRESH_MS = 4000;" in script
    # nothing loaded from elsewhere: no src= or external href, no @import
    assert "src=" not in html
    assert re.findall(r'href="([^"]*)"', html) == ["data:,"]
    assert "@import" not in html and "url(" not in style
    # user data only ever reaches the DOM as text or attribute values
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script
    assert "document.write" not in script
    assert 'fetch("api/live"' in script
    assert headers["X-Content-Type-Options"] == "nosniff"
