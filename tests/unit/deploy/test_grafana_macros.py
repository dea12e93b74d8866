"""The Grafana / ClickHouse-plugin query expansion the functional dashboard tests
rely on (tests/functional/grafana_macros.py), checked against the plugin's own
test vectors (pkg/macros/macros_test.go) and Grafana's variable formats."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.functional.grafana_macros import (
    ALL,
    MacroError,
    QueryContext,
    Selection,
    VariableValue,
    conditional_all,
    expand,
)

# the plugin's TestInterpolate range: 2014-11-12T11:45:26.123Z .. 2015-11-12T11:45:26.456Z
PLUGIN_RANGE = QueryContext(
    datetime(2014, 11, 12, 11, 45, 26, 123000, tzinfo=UTC),
    datetime(2015, 11, 12, 11, 45, 26, 456000, tzinfo=UTC),
    interval_s=20,
)


@pytest.mark.parametrize(("sql", "expected"), [
    ("select * from foo where $__timeFilter(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) "
     "AND cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter(cast(sth as timestamp) )",
     "select * from foo where cast(sth as timestamp) >= toDateTime(1415792726) "
     "AND cast(sth as timestamp) <= toDateTime(1447328726)"),
    ("select * from foo where $__timeFilter_ms(cast(sth as timestamp))",
     "select * from foo where cast(sth as timestamp) >= fromUnixTimestamp64Milli(1415792726123) "
     "AND cast(sth as timestamp) <= fromUnixTimestamp64Milli(1447328726456)"),
    ("select * from foo where ( date >= $__fromTime and date <= $__toTime ) limit 100",
     "select * from foo where ( date >= toDateTime(1415792726) and "
     "date <= toDateTime(1447328726) ) limit 100"),
    ("select * from foo where ( date >= $__fromTime_ms ) and ( date <= $__toTime_ms ) limit 100",
     "select * from foo where ( date >= fromUnixTimestamp64Milli(1415792726123) ) and "
     "( date <= fromUnixTimestamp64Milli(1447328726456) ) limit 100"),
    ("select $__timeInterval(col) from foo",
     "select toStartOfInterval(toDateTime(col), INTERVAL 20 second) from foo"),
    ("select $__timeInterval_ms(col) from foo",
     "select toStartOfInterval(toDateTime64(col, 3), INTERVAL 20000 millisecond) from foo"),
    ("select toStartOfInterval(col, INTERVAL $__interval_s second) AS time from foo",
     "select toStartOfInterval(col, INTERVAL 20 second) AS time from foo"),
    ("select 1 where $__dateFilter(d)",
     "select 1 where d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')"),
    ("select 1 where $__dt(d, t)",
     "select 1 where (d >= toDate('2014-11-12') AND d <= toDate('2015-11-12')) AND "
     "(t >= toDateTime(1415792726) AND t <= toDateTime(1447328726))"),
])
def test_backend_macros_match_the_plugin(sql: str, expected: str) -> None:
    assert expand(sql, PLUGIN_RANGE) == expected


def test_interval_is_at_least_one_second() -> None:
    context = QueryContext(PLUGIN_RANGE.time_from, PLUGIN_RANGE.time_to, interval_s=0.2)
    assert expand("divide(x, $__interval_s)", context) == "divide(x, 1)"


def test_variables_and_formats() -> None:
    variables: dict[str, VariableValue] = {
        "org": "O'Brien", "window": "7d", "orgs": Selection(("a", "b"))}
    sql = "FROM t_${window} WHERE o = ${org:sqlstring} AND p = '$org' AND q IN ($orgs)"
    assert expand(sql, PLUGIN_RANGE, variables) == (
        "FROM t_7d WHERE o = 'O''Brien' AND p = 'O'Brien' AND q IN ('a','b')"
    )
    assert expand("${orgs:sqlstring}|${orgs:raw}", PLUGIN_RANGE, variables) == "'a','b'|a,b"


def test_conditional_all() -> None:
    sql = "WHERE $__conditionalAll((a IN (${org:sqlstring}) OR b IN (${org:sqlstring})), $org)"
    every = Selection(("x", "y"), all=True)
    assert conditional_all(sql, {"org": every}) == "WHERE 1=1"
    assert conditional_all(sql, {"org": ""}) == "WHERE 1=1"
    assert conditional_all(sql, {"org": ALL}) == "WHERE 1=1"
    assert expand(sql, PLUGIN_RANGE, {"org": Selection(("x",))}) == (
        "WHERE (a IN ('x') OR b IN ('x'))"
    )


@pytest.mark.parametrize("sql", [
    "WHERE x = $nope",                              # unknown variable
    "WHERE $__conditionalAll(x IN ($org), $nope)",  # unknown variable in conditionalAll
    "WHERE x = ${org:json}",                        # unsupported format
    "WHERE $__timeGroup(t, '1h')",                  # a macro the plugin does not define
    "WHERE $__timeFilter(t",                        # unclosed arguments
    # an argument-less macro before '(': older plugins take '(y)' as its arguments
    "SELECT x / $__interval_s AS r FROM (SELECT y)",
])
def test_refuses_what_it_cannot_expand_faithfully(sql: str) -> None:
    with pytest.raises(MacroError):
        expand(sql, PLUGIN_RANGE, {"org": "a"})


def test_needs_an_aware_time_range() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        QueryContext(datetime(2024, 1, 1), datetime(2024, 1, 2))  # noqa: DTZ001
