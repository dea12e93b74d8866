"""Expand a grafana-clickhouse-datasource query the way Grafana and the plugin do,
so tests can run dashboard and alert SQL on a real engine.

Three steps, in Grafana's order:

1. ``$__conditionalAll(condition, $var)`` (the plugin's frontend,
   ``CHDatasource.applyConditionalAll``): the condition, or ``1=1`` when the
   variable's value is "All" or empty. Innermost-last occurrences first, each
   replaced once, as the plugin does.
2. Dashboard variables (Grafana's template service): ``$var``, ``${var}`` and
   ``${var:format}``. Without a format the plugin's own formatter applies (a
   single value as it is, several as ``'a','b'``); ``sqlstring`` quotes each
   value (``'`` doubled) and joins them with commas; ``raw`` leaves them as they
   are. Names starting with ``__`` are left to the backend.
3. The backend macros of ``pkg/macros/macros.go``, matched the way
   grafana-plugin-sdk-go's ``sqlutil.Interpolate`` does (longest name first, an
   argument list only where ``(`` follows the name at once)::

       $__timeFilter(c)    c >= toDateTime(<from s>) AND c <= toDateTime(<to s>)
       $__timeFilter_ms(c) c >= fromUnixTimestamp64Milli(<ms>) AND ... <= ...
       $__dateFilter(c)    c >= toDate('<from day>') AND c <= toDate('<to day>')
       $__dateTimeFilter(d, t) / $__dt(d, t)  both of the above, in parentheses
       $__fromTime / $__toTime          toDateTime(<s>)
       $__fromTime_ms / $__toTime_ms    fromUnixTimestamp64Milli(<ms>)
       $__timeInterval(c)   toStartOfInterval(toDateTime(c), INTERVAL <n> second)
       $__timeInterval_ms(c) toStartOfInterval(toDateTime64(c, 3), INTERVAL <n> millisecond)
       $__interval_s        <n>   (n = max(interval in seconds, 1))

Anything the steps cannot expand raises :class:`MacroError` instead of reaching
the engine half-expanded. So does an argument-less macro followed by text that
opens a parenthesis before it closes one: older plugin versions read that
parenthesis as the macro's argument list.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

#: the value of a variable whose "All" option is selected
ALL = "$__all"


class MacroError(ValueError):
    """The query uses a macro or variable the expansion does not know, or uses one
    in a way that depends on the plugin version."""


@dataclass(frozen=True)
class Selection:
    """A multi-value variable's selection: ``values`` as Grafana passes them to
    the formatter (every option's value when "All" is selected)."""

    values: tuple[str, ...]
    all: bool = False


VariableValue = str | Selection


@dataclass(frozen=True)
class QueryContext:
    """What Grafana sends with a query: the time range and the interval."""

    time_from: datetime
    time_to: datetime
    interval_s: float = 60.0

    def __post_init__(self) -> None:
        if self.time_from.tzinfo is None or self.time_to.tzinfo is None:
            raise ValueError("time range must be timezone-aware")


def expand(sql: str, context: QueryContext,
           variables: Mapping[str, VariableValue] | None = None) -> str:
    """``sql`` as ClickHouse receives it from the plugin."""
    variables = variables or {}
    sql = conditional_all(sql, variables)
    sql = replace_variables(sql, variables)
    return backend_macros(sql, context)


# ----------------------------------------------------------------------- step 1


def conditional_all(sql: str, variables: Mapping[str, VariableValue]) -> str:
    macro = "$__conditionalAll("
    index = sql.rfind(macro)
    while index != -1:
        args = _split_args(sql, index + len(macro) - 1)
        if len(args) != 2:
            raise MacroError(f"$__conditionalAll needs 2 arguments: {sql[index:index + 80]!r}")
        condition, reference = args
        name = reference.strip()[1:]
        if name not in variables:
            raise MacroError(f"$__conditionalAll names no known variable: {reference!r}")
        value = variables[name]
        text = (ALL if value.all else ",".join(value.values)) if isinstance(value, Selection) \
            else value
        phrase = "1=1" if text in ("", ALL) else condition
        sql = sql.replace(f"{macro}{condition},{reference})", phrase, 1)
        index = sql.rfind(macro)
    return sql


def _split_args(sql: str, open_index: int) -> list[str]:
    """The comma-separated arguments of the parenthesis at ``open_index``,
    untrimmed (as the plugin's ``getMacroArgs`` splits them)."""
    args: list[str] = []
    depth = 0
    start = open_index + 1
    for position in range(open_index, len(sql)):
        char = sql[position]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                args.append(sql[start:position])
                return args
        elif char == "," and depth == 1:
            args.append(sql[start:position])
            start = position + 1
    raise MacroError(f"unclosed macro arguments: {sql[open_index:open_index + 80]!r}")


# ----------------------------------------------------------------------- step 2

_VARIABLE = re.compile(
    r"\$(?P<plain>\w+)"
    r"|\[\[(?P<bracket>\w+?)(?::(?P<bracket_format>\w+))?\]\]"
    r"|\$\{(?P<braced>\w+)(?:\.(?P<path>[^:^}]+))?(?::(?P<format>[^}]+))?\}"
)


def replace_variables(sql: str, variables: Mapping[str, VariableValue]) -> str:
    def substitute(match: re.Match[str]) -> str:
        name = match["plain"] or match["braced"] or match["bracket"]
        if name.startswith("__"):
            return match[0]  # a backend macro (or a global Grafana variable)
        if match["bracket"] or match["path"]:
            raise MacroError(f"unsupported variable syntax {match[0]!r}")
        if name not in variables:
            raise MacroError(f"unknown dashboard variable {match[0]!r}")
        return _format(variables[name], match["format"])

    return _VARIABLE.sub(substitute, sql)


def _format(value: VariableValue, fmt: str | None) -> str:
    values = value.values if isinstance(value, Selection) else (value,)
    if fmt == "sqlstring":
        return ",".join("'" + v.replace("'", "''") + "'" for v in values)
    if fmt == "raw":
        return ",".join(values)
    if fmt is not None:
        raise MacroError(f"unsupported variable format {fmt!r}")
    # the plugin's formatter (CHDatasource.format)
    if isinstance(value, Selection):
        return "'" + "','".join(values) + "'"
    return value


# ----------------------------------------------------------------------- step 3

MacroFunc = Callable[[QueryContext, Sequence[str]], str]


def _seconds(moment: datetime) -> int:
    return int(moment.timestamp() // 1)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000 // 1)


def _date_time(moment: datetime) -> str:
    return f"toDateTime({_seconds(moment)})"


def _date_time64(moment: datetime) -> str:
    return f"fromUnixTimestamp64Milli({_millis(moment)})"


def _date(moment: datetime) -> str:
    return f"toDate('{moment.astimezone(UTC):%Y-%m-%d}')"


def _interval_s(context: QueryContext) -> int:
    return int(max(context.interval_s, 1.0))


def _one(name: str, args: Sequence[str]) -> str:
    if len(args) != 1:
        raise MacroError(f"$__{name} expects 1 argument, got {len(args)}")
    return args[0]


def _range(render: Callable[[datetime], str]) -> Callable[[QueryContext, str], str]:
    def between(context: QueryContext, column: str) -> str:
        return (f"{column} >= {render(context.time_from)} AND "
                f"{column} <= {render(context.time_to)}")
    return between


def _date_time_filter(context: QueryContext, args: Sequence[str]) -> str:
    if len(args) != 2:
        raise MacroError(f"$__dateTimeFilter expects 2 arguments, got {len(args)}")
    date_column, time_column = args
    return (f"({_range(_date)(context, date_column)}) AND "
            f"({_range(_date_time)(context, time_column)})")


MACROS: dict[str, MacroFunc] = {
    "fromTime": lambda c, _: _date_time(c.time_from),
    "toTime": lambda c, _: _date_time(c.time_to),
    "fromTime_ms": lambda c, _: _date_time64(c.time_from),
    "toTime_ms": lambda c, _: _date_time64(c.time_to),
    "timeFilter": lambda c, a: _range(_date_time)(c, _one("timeFilter", a)),
    "timeFilter_ms": lambda c, a: _range(_date_time64)(c, _one("timeFilter_ms", a)),
    "dateFilter": lambda c, a: _range(_date)(c, _one("dateFilter", a)),
    "dateTimeFilter": _date_time_filter,
    "dt": _date_time_filter,
    "timeInterval": lambda c, a: (f"toStartOfInterval(toDateTime({_one('timeInterval', a)}), "
                                  f"INTERVAL {_interval_s(c)} second)"),
    "timeInterval_ms": lambda c, a: (
        f"toStartOfInterval(toDateTime64({_one('timeInterval_ms', a)}, 3), "
        f"INTERVAL {int(max(c.interval_s * 1000, 1))} millisecond)"),
    "interval_s": lambda c, _: str(_interval_s(c)),
}
#: macros that take no arguments
_NO_ARGS = frozenset({"fromTime", "toTime", "fromTime_ms", "toTime_ms", "interval_s"})


def backend_macros(sql: str, context: QueryContext) -> str:
    _check_portable(sql)
    for name in sorted(MACROS, key=len, reverse=True):
        for full, args in _matches(sql, name):
            sql = sql.replace(full, MACROS[name](context, args))
    leftover = re.search(r"\$\w+", sql)
    if leftover:
        raise MacroError(f"unexpanded {leftover[0]!r} in {sql!r}")
    return sql


def _matches(sql: str, name: str) -> list[tuple[str, list[str]]]:
    """(matched text, arguments) of each use of ``$__name`` in ``sql``."""
    found: list[tuple[str, list[str]]] = []
    for match in re.finditer(rf"\$__{name}\b", sql):
        rest = sql[match.end():]
        if not rest.startswith("("):
            found.append((match[0], []))
            continue
        args = [arg.strip() for arg in _split_args(rest, 0)]
        found.append((match[0] + rest[:_closing_paren(rest) + 1], args))
    return found


def _closing_paren(text: str) -> int:
    depth = 0
    for position, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return position
    raise MacroError(f"unclosed macro arguments: {text[:80]!r}")


def _check_portable(sql: str) -> None:
    """Plugin versions before the SDK's ``parseArgs`` scanned from an
    argument-less macro to the next parenthesis and took ``(...)`` there as its
    arguments: require a ``)`` (or nothing) to come first."""
    for name in _NO_ARGS:
        for match in re.finditer(rf"\$__{name}\b", sql):
            rest = sql[match.end():]
            paren = re.search(r"[()]", rest)
            if paren and paren[0] == "(":
                raise MacroError(
                    f"$__{name} is followed by '(' before any ')': older plugin versions "
                    f"would swallow {rest[:paren.end() + 20]!r} as its arguments"
                )
