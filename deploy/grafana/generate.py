"""Generate the reciprocity Grafana dashboards and alert rules.

Run from the repository root::

    python deploy/grafana/generate.py                # rewrite the committed files
    python deploy/grafana/generate.py --out /tmp/g   # write elsewhere (tests compare)

Writes ``dashboards/reciprocity-overview.json``, ``dashboards/reciprocity-org.json``
and ``provisioning/alerting/reciprocity.yaml`` under ``--out`` (default: this
directory). Output is deterministic (sorted JSON keys, fixed YAML order, trailing
newline), so ``tests/unit/deploy/test_grafana.py`` can check the committed files
are what this script makes. The datasource and dashboard-provider YAML beside
them are hand-written; they share :data:`DATASOURCE_UID`.

Dashboards are classic (v1) dashboard JSON built with grafana-foundation-sdk
0.0.21. The SDK has no ClickHouse query type, so :class:`ClickHouseQuery`
emits the grafana-clickhouse-datasource (4.x) query model. Alert rules are in
Grafana's file-provisioning shape, written here directly (the SDK's alert
builders emit the HTTP API shape).

SQL conventions (the plugin's macro expansion, see README.md): a macro without
arguments (``$__interval_s``) is always followed by ``)``, so that no plugin
version reads a later parenthesis as its argument list; dashboard variables are
quoted with ``${org:sqlstring}``; ``$__conditionalAll(cond, $org)`` drops a
filter when "All" is selected. Alert SQL uses backend macros only (alerting
has no dashboard variables).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent
from typing import Any, Final, Literal

import yaml
from grafana_foundation_sdk.builders import table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common, units
from grafana_foundation_sdk.models import dashboard as model

with warnings.catch_warnings():
    # The v1 builder warns that a v2 schema exists; file provisioning and the
    # schema the tests validate against are v1.
    warnings.simplefilter("ignore", DeprecationWarning)
    from grafana_foundation_sdk.builders import dashboard as dash

HERE: Final = Path(__file__).resolve().parent
DATASOURCE_TYPE: Final = "grafana-clickhouse-datasource"
DATASOURCE_UID: Final = "reciprocity-clickhouse"
EXPRESSION_UID: Final = "__expr__"
DATABASE: Final = "reciprocity"
OVERVIEW_UID: Final = "reciprocity-overview"
ORG_UID: Final = "reciprocity-org"
FOLDER: Final = "Reciprocity"
TAGS: Final = ["reciprocity"]
WINDOWS: Final = ("7d", "30d")
#: the plugin's query formats (grafana-plugin-sdk-go sqlutil.FormatQueryOption)
FORMAT_TIME_SERIES: Final = 0
FORMAT_TABLE: Final = 1
QueryKind = Literal["table", "timeseries"]

DATASOURCE: Final = common.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)


def datasource_json() -> dict[str, str]:
    return {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID}


@dataclass(frozen=True)
class ClickHouseQuery(cogvariants.Dataquery):
    """A raw-SQL query of the ClickHouse plugin, as a panel target or alert model."""

    raw_sql: str
    kind: QueryKind = "table"
    ref_id: str = "A"

    def to_json(self) -> dict[str, object]:
        return {
            "datasource": datasource_json(),
            "editorType": "sql",
            "format": FORMAT_TABLE if self.kind == "table" else FORMAT_TIME_SERIES,
            "queryType": self.kind,
            "rawSql": self.raw_sql,
            "refId": self.ref_id,
        }


class Target(cogbuilder.Builder[cogvariants.Dataquery]):
    """The SDK's panels take query builders; this one hands back a fixed query."""

    def __init__(self, query: ClickHouseQuery) -> None:
        self._query = query

    def build(self) -> cogvariants.Dataquery:
        return self._query


class Sql:
    """The SQL of every panel, variable and alert, for one database."""

    def __init__(self, database: str = DATABASE) -> None:
        self.database = database

    def __call__(self, text: str, **fragments: str) -> str:
        """``text`` dedented, with ``{db}`` and each ``{name}`` of ``fragments``
        replaced (plain replacement: Grafana's ``${...}`` stays as it is)."""
        text = dedent(text).strip().replace("{db}", self.database)
        for name, fragment in fragments.items():
            text = text.replace("{" + name + "}", fragment)
        return text

    @staticmethod
    def org_filter(*columns: str) -> str:
        """Rows where any of ``columns`` is a selected org; no filter for "All"."""
        condition = " OR ".join(f"{column} IN (${{org:sqlstring}})" for column in columns)
        if len(columns) > 1:
            condition = f"({condition})"
        return f"$__conditionalAll({condition}, $org)"

    # -- template variables ------------------------------------------------------

    @property
    def orgs(self) -> str:
        return self("SELECT DISTINCT org FROM {db}.org_roi_daily ORDER BY org")

    # -- overview ------------------------------------------------------------------

    @property
    def reciprocity_matrix(self) -> str:
        return self("""
            SELECT a, b, reciprocity
            FROM {db}.pair_reciprocity_${window}
            WHERE {org_filter}
            ORDER BY a, b
        """, org_filter=self.org_filter("a"))

    @property
    def top_snubs(self) -> str:
        return self("""
            SELECT dst AS snubbing_org, src AS snubbed_org, count() AS snubs,
                   max(time) AS last_snub
            FROM {db}.snubs_latest
            WHERE $__timeFilter(time)
              AND {org_filter}
            GROUP BY snubbing_org, snubbed_org
            ORDER BY snubs DESC, snubbing_org, snubbed_org
            LIMIT 20
        """, org_filter=self.org_filter("src", "dst"))

    @property
    def omissions(self) -> str:
        return self("""
            SELECT time, left_out, by_org, arrayStringConcat(entities, ', ') AS entity_ids,
                   post_id
            FROM {db}.omissions_latest
            WHERE $__timeFilter(time)
              AND {org_filter}
            ORDER BY time DESC, left_out, post_id
            LIMIT 100
        """, org_filter=self.org_filter("left_out", "by_org"))

    @property
    def drops(self) -> str:
        return self("""
            SELECT time AS day, kind, org, other, message
            FROM {db}.alerts_latest
            WHERE kind IN ('drop_pair', 'drop_inbound') AND $__timeFilter(time)
              AND {org_filter}
            ORDER BY day DESC, kind, org, other
            LIMIT 100
        """, org_filter=self.org_filter("org", "other"))

    @property
    def event_rate(self) -> str:
        return self("""
            SELECT $__timeInterval(minute) AS time, stream,
                   divide(sum(messages), $__interval_s) AS messages_per_s,
                   divide(sum(events), $__interval_s) AS events_per_s,
                   divide(sum(dead_lettered), $__interval_s) AS dead_lettered_per_s
            FROM {db}.pipeline_event_rate
            WHERE $__timeFilter(minute)
            GROUP BY time, stream
            ORDER BY time, stream
        """)

    @property
    def lag(self) -> str:
        return self("""
            SELECT $__timeInterval(minute) AS time,
                   concat(stream, '/', toString(partition)) AS stream_partition,
                   max(lag_s) AS max_lag_s
            FROM {db}.pipeline_lag
            WHERE $__timeFilter(minute)
            GROUP BY time, stream_partition
            ORDER BY time, stream_partition
        """)

    # -- per org -------------------------------------------------------------------

    @property
    def value_over_time(self) -> str:
        return self("""
            SELECT day AS time, sum(value_given) AS given, sum(value_received) AS received
            FROM {db}.org_roi_daily
            WHERE org = ${org:sqlstring} AND $__timeFilter(day)
            GROUP BY time
            ORDER BY time
        """)

    @property
    def community_split(self) -> str:
        return self("""
            SELECT community,
                   sum(value_given) AS given_value, sum(value_received) AS received_value,
                   sum(engagements_given) AS given_engagements,
                   sum(engagements_received) AS received_engagements,
                   sum(reciprocated) AS reciprocated_given, sum(snubbed) AS snubbed_given
            FROM {db}.org_roi_daily
            WHERE org = ${org:sqlstring} AND $__timeFilter(day)
            GROUP BY community
            ORDER BY community
        """)

    @property
    def partners(self) -> str:
        return self("""
            SELECT b AS partner, value_ab AS value_given, value_ba AS value_received,
                   engagements_ab AS engagements_given, engagements_ba AS engagements_received,
                   reciprocity, balance
            FROM {db}.pair_reciprocity_${window}
            WHERE a = ${org:sqlstring}
            ORDER BY value_given + value_received DESC, reciprocity DESC, partner
        """)

    @property
    def partners_return_time(self) -> str:
        return self("""
            SELECT day AS time, dst AS partner, median_reciprocate_s
            FROM {db}.time_to_reciprocate_daily
            WHERE src = ${org:sqlstring} AND $__timeFilter(day)
            ORDER BY time, partner
        """)

    @property
    def org_return_time(self) -> str:
        return self("""
            SELECT day AS time, src AS partner, median_reciprocate_s
            FROM {db}.time_to_reciprocate_daily
            WHERE dst = ${org:sqlstring} AND $__timeFilter(day)
            ORDER BY time, partner
        """)

    # -- alerts: one row per (org, other) with new alert records ---------------------

    def new_alerts(self, kinds: Sequence[str], *, by_kind: bool = False) -> str:
        kind_list = ", ".join(f"'{k}'" for k in kinds)
        # the alert kind is a column (label) of its own: the rule's static
        # label `kind` names the rule
        group = "org, other, alert_kind" if by_kind else "org, other"
        select = "org, other, kind AS alert_kind" if by_kind else group
        return self("""
            SELECT {select}, count() AS alerts
            FROM {db}.alerts_latest
            WHERE kind IN ({kinds}) AND $__timeFilter(created_at)
            GROUP BY {group}
            ORDER BY {group}
        """, select=select, kinds=kind_list, group=group)


# --------------------------------------------------------------------------- dashboards


def variable_window() -> dash.CustomVariable:
    return (
        dash.CustomVariable("window")
        .label("Window")
        .description("Rolling reciprocity period: the last 7 or 30 UTC days, today included")
        .values(",".join(WINDOWS))
        .current(model.VariableOption(selected=True, text=WINDOWS[0], value=WINDOWS[0]))
    )


def variable_org(sql: Sql, *, multi: bool) -> dash.QueryVariable:
    variable = (
        dash.QueryVariable("org")
        .label("Org")
        .datasource(DATASOURCE)
        .query({"editorType": "sql", "queryType": "sql", "rawSql": sql.orgs, "refId": "org"})
        .refresh(model.VariableRefresh.ON_DASHBOARD_LOAD)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
    )
    if multi:
        variable = (variable.multi(True).include_all(True)
                    .current(model.VariableOption(selected=True, text=["All"], value=["$__all"])))
    return variable


def table_panel(panel_id: int, title: str, description: str, sql: str,
                width: int = 12, height: int = 9) -> table.Panel:
    return (
        table.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(Target(ClickHouseQuery(sql)))
        .span(width)
        .height(height)
    )


def time_series_panel(panel_id: int, title: str, description: str, sql: str, unit: str,
                      width: int = 12, height: int = 8) -> timeseries.Panel:
    return (
        timeseries.Panel()
        .id(panel_id)
        .title(title)
        .description(description)
        .datasource(DATASOURCE)
        .with_target(Target(ClickHouseQuery(sql, kind="timeseries")))
        .unit(unit)
        .span(width)
        .height(height)
    )


def links() -> list[cogbuilder.Builder[model.DashboardLink]]:
    return [dash.DashboardLink("Reciprocity").type(model.DashboardLinkType.DASHBOARDS)
            .tags(TAGS).as_dropdown(False).include_vars(True).keep_time(True)]


#: ids of the overview panels that alert rules link to
PANEL_SNUBS: Final = 2
PANEL_OMISSIONS: Final = 3
PANEL_DROPS: Final = 4


def overview(sql: Sql) -> dash.Dashboard:
    matrix = (
        table_panel(1, "Reciprocity matrix (${window})",
                    "Reciprocity min(v_ab, v_ba) / max(v_ab, v_ba) of each org pair over the "
                    "rolling window (row a, column b); 100% is even, 0% one-sided. "
                    "The time picker does not apply.", sql.reciprocity_matrix, height=10)
        .with_transformation(model.DataTransformerConfig(
            id_val="groupingToMatrix",
            options={"columnField": "b", "rowField": "a", "valueField": "reciprocity",
                     "emptyValue": "null"},
        ))
        .unit(units.PercentUnit).decimals(0).min(0).max(1)
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.CONTINUOUS_RD_YL_GR))
        .cell_options(common.TableColoredBackgroundCellOptions())
    )
    return (
        dash.Dashboard("Reciprocity overview")
        .uid(OVERVIEW_UID)
        .description("Reciprocity of engagement between organizations: who returns whose "
                     "engagement, snubs, omissions, drops, and the pipeline's health.")
        .tags(TAGS)
        .links(links())
        .time("now-7d", "now")
        .timezone("utc")
        .refresh("1m")
        .with_variable(variable_org(sql, multi=True))
        .with_variable(variable_window())
        .with_panel(matrix)
        .with_panel(table_panel(
            PANEL_SNUBS, "Top snubs",
            "Pairs with the most snubs decided in the time range: engagements of "
            "snubbed_org that snubbing_org did not return within the horizon.",
            sql.top_snubs, height=10))
        .with_panel(table_panel(
            PANEL_OMISSIONS, "Omissions",
            "Posts by by_org featuring people of left_out without naming left_out.",
            sql.omissions))
        .with_panel(table_panel(
            PANEL_DROPS, "Engagement drops",
            "Days on which engagement from a partner (drop_pair) or in total "
            "(drop_inbound) fell well below the previous days' mean.", sql.drops))
        .with_panel(time_series_panel(
            5, "Event rate", "Input messages, events and dead letters per second, per stream.",
            sql.event_rate, units.EventsPerSecond).interval("1m"))
        .with_panel(time_series_panel(
            6, "Pipeline lag",
            "Largest event-time lag per input partition: processing time minus the newest "
            "event time of a batch.", sql.lag, units.Seconds).interval("1m"))
    )


def per_org(sql: Sql) -> dash.Dashboard:
    return (
        dash.Dashboard("Reciprocity by org")
        .uid(ORG_UID)
        .description("One organization's engagement: value given and received, internal "
                     "and external, partners, and how fast engagement is returned.")
        .tags(TAGS)
        .links(links())
        .time("now-30d", "now")
        .timezone("utc")
        .refresh("5m")
        .with_variable(variable_org(sql, multi=False))
        .with_variable(variable_window())
        .with_panel(time_series_panel(
            1, "Value given vs received",
            "Daily value of the engagement ${org} (with its descendants) gave and received.",
            sql.value_over_time, units.Short).draw_style(common.GraphDrawStyle.BARS))
        .with_panel(table_panel(
            2, "Internal vs external",
            "Totals over the time range, split by the other side's community.",
            sql.community_split, height=8))
        .with_panel(table_panel(
            3, "Partners (${window})",
            "Orgs ${org} engages with over the rolling window, ranked by total value, then "
            "reciprocity. The time picker does not apply.", sql.partners, width=24, height=10))
        .with_panel(time_series_panel(
            4, "Time for partners to return ${org}'s engagement",
            "Daily median time until each partner returned an engagement of ${org}.",
            sql.partners_return_time, units.Seconds).display_name("${__field.labels.partner}"))
        .with_panel(time_series_panel(
            5, "Time for ${org} to return partners' engagement",
            "Daily median time until ${org} returned each partner's engagement.",
            sql.org_return_time, units.Seconds).display_name("${__field.labels.partner}"))
    )


def dashboard_json(dashboard: dash.Dashboard) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(dashboard.build(), cls=JSONEncoder))
    for variable in data["templating"]["list"]:
        # The SDK gives every variable the interval-only auto options; the
        # dashboard schema allows them on none.
        for key in ("auto", "auto_count", "auto_min"):
            variable.pop(key, None)
    return data


# ------------------------------------------------------------------------------ alerts


@dataclass(frozen=True)
class AlertRule:
    uid: str
    title: str
    sql: str
    lookback_s: int
    pending: str
    severity: str
    kind: str
    summary: str
    panel_id: int


def alert_rules(sql: Sql) -> list[AlertRule]:
    return [
        AlertRule(
            "reciprocity-snub", "Watched org snubbed", sql.new_alerts(["snub"]), 900, "1m",
            "warning", "snub",
            "{{ $labels.other }} did not return {{ $values.B.Value }} engagement(s) of "
            "{{ $labels.org }} (snubs recorded in the last 15 minutes)",
            PANEL_SNUBS),
        AlertRule(
            "reciprocity-omission", "Watched org left out of a post",
            sql.new_alerts(["omission"]), 900, "1m", "info", "omission",
            "{{ $labels.other }} featured people of {{ $labels.org }} without naming "
            "{{ $labels.org }} in {{ $values.B.Value }} post(s) (last 15 minutes)",
            PANEL_OMISSIONS),
        AlertRule(
            "reciprocity-drop", "Engagement with a watched org dropped",
            sql.new_alerts(["drop_pair", "drop_inbound"], by_kind=True), 3600, "5m",
            "warning", "drop",
            "Engagement of {{ $labels.org }} dropped ({{ $labels.alert_kind }}"
            "{{ if $labels.other }} from {{ $labels.other }}{{ end }}) on a recent day",
            PANEL_DROPS),
    ]


def provisioned_rule(rule: AlertRule) -> dict[str, Any]:
    """One rule in the file-provisioning shape: query A (ClickHouse, one row per
    org pair with new alert records), B = last(A), C = B > 0."""
    expression = {"type": EXPRESSION_UID, "uid": EXPRESSION_UID}
    query = ClickHouseQuery(rule.sql).to_json() | {"intervalMs": 60000, "maxDataPoints": 43200}
    return {
        "uid": rule.uid,
        "title": rule.title,
        "condition": "C",
        "data": [
            {"refId": "A", "relativeTimeRange": {"from": rule.lookback_s, "to": 0},
             "datasourceUid": DATASOURCE_UID, "model": query},
            {"refId": "B", "relativeTimeRange": {"from": 0, "to": 0},
             "datasourceUid": EXPRESSION_UID,
             "model": {"refId": "B", "type": "reduce", "expression": "A", "reducer": "last",
                       "datasource": expression}},
            {"refId": "C", "relativeTimeRange": {"from": 0, "to": 0},
             "datasourceUid": EXPRESSION_UID,
             "model": {"refId": "C", "type": "threshold", "expression": "B",
                       "conditions": [{"evaluator": {"type": "gt", "params": [0]}}],
                       "datasource": expression}},
        ],
        "dashboardUid": OVERVIEW_UID,
        "panelId": rule.panel_id,
        "noDataState": "OK",  # no new records, no alert
        "execErrState": "Error",
        "for": rule.pending,
        "isPaused": False,
        "labels": {"team": "comms", "severity": rule.severity, "kind": rule.kind},
        "annotations": {"summary": rule.summary},
    }


def alerting_yaml(sql: Sql) -> str:
    document = {
        "apiVersion": 1,
        "groups": [{
            "orgId": 1,
            "name": "reciprocity",
            "folder": FOLDER,
            "interval": "1m",
            "rules": [provisioned_rule(rule) for rule in alert_rules(sql)],
        }],
    }
    head = ("# Generated by deploy/grafana/generate.py; do not edit by hand.\n"
            "# Grafana alert rules (file provisioning) over the ClickHouse datasource\n"
            f"# {DATASOURCE_UID}; route them with notification policies on team=comms.\n")
    return head + yaml.dump(document, Dumper=_LiteralDumper, sort_keys=False, width=1000,
                            allow_unicode=True)


class _LiteralDumper(yaml.SafeDumper):
    """Multi-line strings (the SQL) as literal blocks, for readable diffs; no
    anchors for repeated objects."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_LiteralDumper.add_representer(str, _represent_str)


# -------------------------------------------------------------------------------- main


def outputs(database: str = DATABASE) -> dict[str, str]:
    """Relative path -> file content of everything this script writes."""
    sql = Sql(database)
    files = {}
    for board in (overview(sql), per_org(sql)):
        data = dashboard_json(board)
        files[f"dashboards/{data['uid']}.json"] = json.dumps(data, indent=2, sort_keys=True) + "\n"
    files["provisioning/alerting/reciprocity.yaml"] = alerting_yaml(sql)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE,
                        help="directory to write into (default: deploy/grafana)")
    parser.add_argument("--database", default=DATABASE,
                        help=f"ClickHouse database of the views (default: {DATABASE})")
    args = parser.parse_args(argv)
    for relative, content in outputs(args.database).items():
        path = args.out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
