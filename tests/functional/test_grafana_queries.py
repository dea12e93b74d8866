"""Every query Grafana will send for us, run on chdb against a designed store.

The committed dashboards (deploy/grafana/dashboards/*.json) and alert rules
(deploy/grafana/provisioning/alerting/reciprocity.yaml) are read as shipped; each
panel target, template-variable query and alert query is expanded the way
Grafana and grafana-clickhouse-datasource expand it (tests/functional/
grafana_macros.py) and run on the views of ``pipeline.sinks``, filled through
``Backend.write`` with the fixture below. Expected columns and values are worked
out by hand from that fixture (comments say how), not from the SQL.

The fixture: orgs uni (with lab), news and city; D0 is today (UTC midnight),
D1 yesterday, D10 ten days ago. uni and news engage each other on D1 (uni gives
value 6 over two partitions, a stale version and a 1h window that must not
count; news gives 1), uni and lab evenly on D0, city gives uni 4 on D10.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.sinks import (
    AlertRow,
    Backend,
    OmissionRow,
    OrgLineageRow,
    PairWindowRow,
    PipelineBatchRow,
    RegistryRow,
    SinkBatch,
    SnubRow,
    open_backend,
)
from tests.functional.grafana_macros import QueryContext, Selection, VariableValue, expand

GRAFANA = Path(__file__).resolve().parents[2] / "deploy" / "grafana"
OVERVIEW = "reciprocity-overview"
ORG = "reciprocity-org"
DASHBOARDS: dict[str, dict[str, Any]] = {
    uid: json.loads((GRAFANA / "dashboards" / f"{uid}.json").read_text(encoding="utf-8"))
    for uid in (OVERVIEW, ORG)
}
ALERTING: dict[str, Any] = yaml.safe_load(
    (GRAFANA / "provisioning" / "alerting" / "reciprocity.yaml").read_text(encoding="utf-8"))

DAY = timedelta(days=1)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)
D0 = datetime.now(tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
D1, D2, D10 = D0 - DAY, D0 - 2 * DAY, D0 - 10 * DAY
#: the start of the minute of the pipeline batches
P = D0 + 10 * HOUR
#: when the alert rules are evaluated
T = D0 + 12 * HOUR

WEEK = QueryContext(D0 - 7 * DAY, D0 + DAY, interval_s=60)
MONTH = QueryContext(D0 - 30 * DAY, D0 + DAY, interval_s=60)
ALL_ORGS = Selection(("city", "lab", "news", "uni"), all=True)
OVERVIEW_VARS: dict[str, VariableValue] = {"org": ALL_ORGS, "window": "7d"}
UNI_VARS: dict[str, VariableValue] = {"org": "uni", "window": "7d"}


# ---------------------------------------------------------------------------- fixture


def pair(window: str, start: datetime, src: str, dst: str, *, partition: int = 0,
         likes: int = 0, shares: int = 0, replies: int = 0, mentions: int = 0,
         value: float, reciprocated: int = 0, snubbed: int = 0,
         median: float | None = None, version: int) -> PairWindowRow:
    return PairWindowRow(window, start, src, dst, "bsky", partition, 0, likes, shares, replies,
                         mentions, 0, value, reciprocated, snubbed, median, version, T)


def lineage(member: str, community: str) -> OrgLineageRow:
    """A flat registry: every org rolls up to itself only."""
    return OrgLineageRow("r1", member, member, community, T)


def snub(event: str, src: str, dst: str, kind: str, time: datetime) -> SnubRow:
    return SnubRow(event, src, dst, kind, (time - 72 * HOUR).timestamp(), time.timestamp(),
                   time, "bsky", T)


def omission(post: str, left_out: str, by: str, entities: list[str],
             time: datetime) -> OmissionRow:
    return OmissionRow(post, left_out, by, entities, time.timestamp(), time, "bsky", T)


def alert(ident: str, kind: str, org: str, other: str, time: datetime,
          created: datetime) -> AlertRow:
    return AlertRow(ident, kind, org, other, time.timestamp(), time, f"message {ident}", "{}",
                    "bsky", created)


def batch(stream: str, partition: int, first: int, last: int, messages: int, events: int,
          dead: int, max_event: datetime | None, processed: datetime) -> PipelineBatchRow:
    return PipelineBatchRow(stream, partition, first, last, messages, events, 0, 0, dead,
                            max_event.timestamp() if max_event else None,
                            processed.timestamp(), processed)


FIXTURE = SinkBatch(
    pair_windows=[
        # uni -> news on D1: 3 likes + 1 share = value 6 over two partitions; the
        # version-4 row is stale and the 1h window is another window size
        pair("1d", D1, "uni", "news", likes=2, shares=1, value=5.0, reciprocated=1, snubbed=2,
             median=3600.0, version=9),
        pair("1d", D1, "uni", "news", likes=1, value=1.0, version=4),
        pair("1d", D1, "uni", "news", partition=1, likes=1, value=1.0, snubbed=1, version=2),
        pair("1h", D1 + 5 * HOUR, "uni", "news", likes=100, value=100.0, version=10),
        pair("1d", D1, "news", "uni", likes=1, value=1.0, reciprocated=1, median=7200.0,
             version=6),
        pair("1d", D0, "uni", "lab", replies=1, value=2.0, reciprocated=1, median=600.0,
             version=3),
        pair("1d", D0, "lab", "uni", mentions=1, value=2.0, reciprocated=1, median=900.0,
             version=3),
        pair("1d", D10, "city", "uni", likes=4, value=4.0, snubbed=4, version=2),
    ],
    # the org rollups come from the pair windows and this registry
    org_lineage=[lineage("uni", "internal"), lineage("lab", "internal"),
                 lineage("news", "external"), lineage("city", "external")],
    registries=[RegistryRow("r1", 4, T)],
    snubs=[
        snub("e1", "uni", "news", "like", D1 + 2 * HOUR),
        snub("e1", "uni", "news", "like", D1 + 2 * HOUR),  # delivered twice
        snub("e2", "uni", "news", "share", D1 + 3 * HOUR),
        snub("e3", "city", "uni", "like", D1 + 4 * HOUR),
        snub("e4", "uni", "news", "like", D10),  # before the week
    ],
    omissions=[
        omission("p1", "lab", "news", ["ent:a", "ent:b"], D1 + 9 * HOUR),
        omission("p2", "uni", "city", ["ent:c"], D0 + HOUR),
        omission("p3", "lab", "news", ["ent:a"], D10),
    ],
    alerts=[
        alert("snub:e1", "snub", "uni", "news", D1 + 2 * HOUR, T - 5 * MINUTE),
        alert("snub:e1", "snub", "uni", "news", D1 + 2 * HOUR, T - MINUTE),  # redelivered
        alert("snub:e2", "snub", "uni", "news", D1 + 3 * HOUR, T - 3 * MINUTE),
        alert("snub:e3", "snub", "city", "uni", D1 + 4 * HOUR, T - 2 * HOUR),
        alert("omission:p1:lab", "omission", "lab", "news", D1 + 9 * HOUR, T - MINUTE),
        alert("drop_pair:city:uni", "drop_pair", "uni", "city", D1, T - 30 * MINUTE),
        alert("drop_inbound:news", "drop_inbound", "news", "", D2, T - 2 * HOUR),
        alert("drop_pair:old", "drop_pair", "uni", "news", D10, D10 + DAY),
    ],
    pipeline_batches=[
        batch("bsky", 0, 0, 9, 10, 8, 2, P - 25 * SECOND, P + 5 * SECOND),
        batch("bsky", 0, 0, 9, 10, 8, 2, P - 25 * SECOND, P + 5 * SECOND),  # redelivered
        batch("bsky", 1, 0, 4, 5, 5, 0, P, P + 10 * SECOND),
        batch("mastodon", 0, 0, 2, 3, 3, 0, P - 80 * SECOND, P + 20 * SECOND),
        batch("bsky", 0, 10, 19, 10, 10, 0, P + 60 * SECOND, P + 65 * SECOND),
        batch("bsky", 1, 5, 5, 1, 0, 1, None, P + 70 * SECOND),  # only a dead letter
    ],
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One chdb store for the module (chdb allows one session per process)."""
    backend = open_backend(f"chdb://{tmp_path_factory.mktemp('grafana') / 'store'}")
    try:
        backend.ensure_schema()
        backend.write(FIXTURE)
        yield backend
    finally:
        backend.close()


# ------------------------------------------------------------------- expectations

TIME, TEXT, NUMBER = "time", "text", "number"


@dataclass(frozen=True)
class Case:
    """One run of a query: what Grafana sends and the rows it must get back."""

    rows: list[tuple[Any, ...]]
    variables: Mapping[str, VariableValue] = field(default_factory=dict)
    context: QueryContext = WEEK


@dataclass(frozen=True)
class Expected:
    columns: list[tuple[str, str]]
    cases: list[Case]


SIXTH, FIVE_SEVENTHS = 1 / 6, 5 / 7

PANELS: dict[tuple[str, str], Expected] = {
    # value_ab / value_ba over the last 7 days: uni->news 6, news->uni 1 (r = 1/6);
    # uni<->lab 2 each (r = 1); city->uni 4 is 10 days old, so only in 30d (r = 0)
    (OVERVIEW, "Reciprocity matrix (${window})"): Expected(
        [("a", TEXT), ("b", TEXT), ("reciprocity", NUMBER)],
        [Case([("lab", "uni", 1.0), ("news", "uni", SIXTH), ("uni", "lab", 1.0),
               ("uni", "news", SIXTH)], OVERVIEW_VARS),
         Case([("city", "uni", 0.0), ("lab", "uni", 1.0), ("news", "uni", SIXTH),
               ("uni", "city", 0.0), ("uni", "lab", 1.0), ("uni", "news", SIXTH)],
              {"org": ALL_ORGS, "window": "30d"}),
         Case([("news", "uni", SIXTH)], {"org": Selection(("news",)), "window": "7d"})],
    ),
    # e1 (twice) and e2: news did not return uni's; e3: uni did not return city's
    (OVERVIEW, "Top snubs"): Expected(
        [("snubbing_org", TEXT), ("snubbed_org", TEXT), ("snubs", NUMBER),
         ("last_snub", TIME)],
        [Case([("news", "uni", 2, D1 + 3 * HOUR), ("uni", "city", 1, D1 + 4 * HOUR)],
              OVERVIEW_VARS),
         Case([("news", "uni", 3, D1 + 3 * HOUR), ("uni", "city", 1, D1 + 4 * HOUR)],
              OVERVIEW_VARS, MONTH),
         Case([("uni", "city", 1, D1 + 4 * HOUR)],
              {"org": Selection(("city",)), "window": "7d"})],
    ),
    (OVERVIEW, "Omissions"): Expected(
        [("time", TIME), ("left_out", TEXT), ("by_org", TEXT), ("entity_ids", TEXT),
         ("post_id", TEXT)],
        [Case([(D0 + HOUR, "uni", "city", "ent:c", "p2"),
               (D1 + 9 * HOUR, "lab", "news", "ent:a, ent:b", "p1")], OVERVIEW_VARS),
         Case([(D1 + 9 * HOUR, "lab", "news", "ent:a, ent:b", "p1")],
              {"org": Selection(("lab", "news")), "window": "7d"})],
    ),
    (OVERVIEW, "Engagement drops"): Expected(
        [("day", TIME), ("kind", TEXT), ("org", TEXT), ("other", TEXT), ("message", TEXT)],
        [Case([(D1, "drop_pair", "uni", "city", "message drop_pair:city:uni"),
               (D2, "drop_inbound", "news", "", "message drop_inbound:news")], OVERVIEW_VARS),
         Case([(D1, "drop_pair", "uni", "city", "message drop_pair:city:uni")],
              {"org": Selection(("city",)), "window": "7d"})],
    ),
    # minute P: bsky 10 + 5 messages, 8 + 5 events, 2 dead letters (the redelivered
    # batch counts once), mastodon 3/3/0; minute P+1: bsky 10 + 1, 10 + 0, 0 + 1
    (OVERVIEW, "Event rate"): Expected(
        [("time", TIME), ("stream", TEXT), ("messages_per_s", NUMBER),
         ("events_per_s", NUMBER), ("dead_lettered_per_s", NUMBER)],
        [Case([(P, "bsky", 15 / 60, 13 / 60, 2 / 60), (P, "mastodon", 3 / 60, 3 / 60, 0.0),
               (P + MINUTE, "bsky", 11 / 60, 10 / 60, 1 / 60)]),
         # two-minute buckets: P is a multiple of 120 s since the epoch
         Case([(P, "bsky", 26 / 120, 23 / 120, 3 / 120),
               (P, "mastodon", 3 / 120, 3 / 120, 0.0)],
              context=QueryContext(WEEK.time_from, WEEK.time_to, interval_s=120))],
    ),
    # processed minus newest event time: bsky/0 5 - (-25) = 30 then 65 - 60 = 5,
    # bsky/1 10 - 0 = 10 (its second batch has no valid event), mastodon/0 20 - (-80)
    (OVERVIEW, "Pipeline lag"): Expected(
        [("time", TIME), ("stream_partition", TEXT), ("max_lag_s", NUMBER)],
        [Case([(P, "bsky/0", 30.0), (P, "bsky/1", 10.0), (P, "mastodon/0", 100.0),
               (P + MINUTE, "bsky/0", 5.0)])],
    ),
    (ORG, "Value given vs received"): Expected(
        [("time", TIME), ("given", NUMBER), ("received", NUMBER)],
        [Case([(D1, 6.0, 1.0), (D0, 2.0, 2.0)], UNI_VARS),
         Case([(D10, 0.0, 4.0), (D1, 6.0, 1.0), (D0, 2.0, 2.0)], UNI_VARS, MONTH),
         Case([(D1, 1.0, 6.0)], {"org": "news", "window": "7d"})],
    ),
    (ORG, "Internal vs external"): Expected(
        [("community", TEXT), ("given_value", NUMBER), ("received_value", NUMBER),
         ("given_engagements", NUMBER), ("received_engagements", NUMBER),
         ("reciprocated_given", NUMBER), ("snubbed_given", NUMBER)],
        [Case([("external", 6.0, 1.0, 4, 1, 1, 3), ("internal", 2.0, 2.0, 1, 1, 1, 0)],
              UNI_VARS),
         Case([("external", 6.0, 5.0, 4, 5, 1, 3), ("internal", 2.0, 2.0, 1, 1, 1, 0)],
              UNI_VARS, MONTH)],
    ),
    # ranked by value given + received (news 7, lab 4, city 4), then reciprocity
    (ORG, "Partners (${window})"): Expected(
        [("partner", TEXT), ("value_given", NUMBER), ("value_received", NUMBER),
         ("engagements_given", NUMBER), ("engagements_received", NUMBER),
         ("reciprocity", NUMBER), ("balance", NUMBER)],
        [Case([("news", 6.0, 1.0, 4, 1, SIXTH, FIVE_SEVENTHS), ("lab", 2.0, 2.0, 1, 1, 1.0, 0.0)],
              UNI_VARS),
         Case([("news", 6.0, 1.0, 4, 1, SIXTH, FIVE_SEVENTHS), ("lab", 2.0, 2.0, 1, 1, 1.0, 0.0),
               ("city", 0.0, 4.0, 0, 4, 0.0, -1.0)], {"org": "uni", "window": "30d"}),
         Case([("uni", 4.0, 0.0, 4, 0, 0.0, 1.0)], {"org": "city", "window": "30d"})],
    ),
    (ORG, "Time for partners to return ${org}'s engagement"): Expected(
        [("time", TIME), ("partner", TEXT), ("median_reciprocate_s", NUMBER)],
        [Case([(D1, "news", 3600.0), (D0, "lab", 600.0)], UNI_VARS)],
    ),
    (ORG, "Time for ${org} to return partners' engagement"): Expected(
        [("time", TIME), ("partner", TEXT), ("median_reciprocate_s", NUMBER)],
        [Case([(D1, "news", 7200.0), (D0, "lab", 900.0)], UNI_VARS)],
    ),
}

VARIABLES: dict[tuple[str, str], Expected] = {
    (uid, "org"): Expected([("org", TEXT)],
                           [Case([("city",), ("lab",), ("news",), ("uni",)])])
    for uid in (OVERVIEW, ORG)
}

@dataclass(frozen=True)
class AlertExpected:
    """A rule's query at T (one row per alert instance) and at a later evaluation
    that finds nothing (no data: the rule's noDataState OK)."""

    columns: list[tuple[str, str]]
    firing: list[tuple[Any, ...]]
    quiet_at: datetime


# Snubs and omissions look back 15 minutes from T: e1 counts once, at its first
# delivery (T - 5 min), e2 at T - 3 min, e3 is two hours old. Drops look back
# one hour: the drop_inbound is two hours old.
ALERT_RULES: dict[str, AlertExpected] = {
    "reciprocity-snub": AlertExpected(
        [("org", TEXT), ("other", TEXT), ("alerts", NUMBER)], [("uni", "news", 2)], T + HOUR),
    "reciprocity-omission": AlertExpected(
        [("org", TEXT), ("other", TEXT), ("alerts", NUMBER)], [("lab", "news", 1)], T + HOUR),
    "reciprocity-drop": AlertExpected(
        [("org", TEXT), ("other", TEXT), ("alert_kind", TEXT), ("alerts", NUMBER)],
        [("uni", "city", "drop_pair", 1)], T + 2 * HOUR),
}


# ------------------------------------------------------------------------ helpers


def targets() -> list[tuple[str, str, dict[str, Any]]]:
    return [(uid, panel["title"], target) for uid, board in DASHBOARDS.items()
            for panel in board["panels"] for target in panel.get("targets", [])]


def variable_queries() -> list[tuple[str, str, str]]:
    return [(uid, variable["name"], variable["query"]["rawSql"])
            for uid, board in DASHBOARDS.items() for variable in board["templating"]["list"]
            if variable["type"] == "query"]


def alert_queries() -> list[tuple[str, dict[str, Any]]]:
    return [(rule["uid"], query) for group in ALERTING["groups"] for rule in group["rules"]
            for query in rule["data"] if query["datasourceUid"] != "__expr__"]


def kind_of(clickhouse_type: str) -> str:
    base = clickhouse_type.removeprefix("Nullable(").removeprefix("LowCardinality(")
    if base.startswith("DateTime"):
        return TIME
    if base.startswith("String"):
        return TEXT
    if base.startswith(("UInt", "Int", "Float", "Decimal")):
        return NUMBER
    return clickhouse_type


def run(store: Backend, sql: str) -> tuple[list[tuple[str, str]], list[tuple[Any, ...]]]:
    """Column (name, kind) pairs and rows of ``sql``."""
    columns = [(str(row[0]), kind_of(str(row[1]))) for row in store.query(f"DESCRIBE ({sql})")]
    return columns, store.query(sql)


def normal(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    """Rows comparable across the engine's JSON and Python values: times as the
    engine prints UTC DateTime, floats to 9 places."""
    def value(v: Any) -> Any:
        if isinstance(v, datetime):
            return v.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(v, float):
            return round(v, 9)
        return v
    return [tuple(value(v) for v in row) for row in rows]


def check(store: Backend, sql: str, expected: Expected) -> None:
    for case in expected.cases:
        columns, rows = run(store, expand(sql, case.context, case.variables))
        assert columns == expected.columns
        assert normal(rows) == normal(case.rows), case


# -------------------------------------------------------------------------- tests


def test_every_query_has_expectations() -> None:
    """A new panel, variable or rule must come with its hand-checked figures."""
    assert sorted((uid, title) for uid, title, _ in targets()) == sorted(PANELS)
    assert sorted((uid, name) for uid, name, _ in variable_queries()) == sorted(VARIABLES)
    assert sorted(uid for uid, _ in alert_queries()) == sorted(ALERT_RULES)


@pytest.mark.parametrize(("uid", "title", "target"), targets(),
                         ids=[f"{uid}:{title}" for uid, title, _ in targets()])
def test_panel_query(store: Backend, uid: str, title: str, target: dict[str, Any]) -> None:
    expected = PANELS[(uid, title)]
    if target["format"] == 0:
        # Grafana's time series: one time column named time, first, and numbers
        assert expected.columns[0] == ("time", TIME)
        assert any(kind == NUMBER for _, kind in expected.columns)
    check(store, target["rawSql"], expected)


@pytest.mark.parametrize(("uid", "name", "sql"), variable_queries())
def test_variable_query(store: Backend, uid: str, name: str, sql: str) -> None:
    check(store, sql, VARIABLES[(uid, name)])


@pytest.mark.parametrize(("rule", "query"), alert_queries(),
                         ids=[rule for rule, _ in alert_queries()])
def test_alert_query(store: Backend, rule: str, query: dict[str, Any]) -> None:
    """Grafana reads a table as one number per row, labelled by its text columns."""
    expected = ALERT_RULES[rule]
    assert [kind for _, kind in expected.columns].count(NUMBER) == 1
    assert all(kind in (TEXT, NUMBER) for _, kind in expected.columns)
    span = query["relativeTimeRange"]
    for at, rows in ((T, expected.firing), (expected.quiet_at, [])):
        context = QueryContext(at - timedelta(seconds=span["from"]),
                               at - timedelta(seconds=span["to"]),
                               interval_s=query["model"]["intervalMs"] / 1000)
        columns, got = run(store, expand(query["model"]["rawSql"], context))
        assert columns == expected.columns
        assert normal(got) == normal(rows), (rule, at)
