"""Report helpers: ClickHouse literal quoting, row formatting, pair-row assembly."""

from __future__ import annotations

import io
from typing import Any

import orjson
import pytest

from pipeline.report import PAIR_FIELDS, pair_rows, write_rows
from pipeline.sinks.base import quote


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("", "''"),
        ("1h", "'1h'"),
        ("it's", r"'it\'s'"),
        ("back\\slash", r"'back\\slash'"),
        ("\\'", r"'\\\''"),
        ("'; DROP TABLE x; --", r"'\'; DROP TABLE x; --'"),
        ("ünïcode ✓", "'ünïcode ✓'"),
    ],
)
def test_quote(value: str, literal: str) -> None:
    assert quote(value) == literal


@pytest.mark.parametrize("value", ["", "a'b", "a\\b", "\\'\\'", "'", "\\", "x\\\\'y"])
def test_quote_is_reversible(value: str) -> None:
    """Un-escaping the literal body gives back the value, and no quote is left bare."""
    literal = quote(value)
    assert literal[0] == literal[-1] == "'"
    body = literal[1:-1]
    out, i = [], 0
    while i < len(body):
        if body[i] == "\\":
            out.append(body[i + 1])
            i += 2
        else:
            assert body[i] != "'", f"unescaped quote in {literal!r}"
            out.append(body[i])
            i += 1
    assert "".join(out) == value


ROWS: list[dict[str, Any]] = [
    {"window_start": "2026-03-02T10:00:00Z", "window": "1h", "src": "uni", "dst": "med",
     "engagements": 12, "extra": "ignored"},
    {"window_start": "2026-03-02T11:00:00Z", "window": "1h", "src": "press_office",
     "dst": "x", "engagements": 3, "extra": None},
]


def test_write_rows_table() -> None:
    out = io.StringIO()
    write_rows(ROWS, ["src", "dst", "engagements"], "table", out)
    assert out.getvalue() == (
        "src           dst  engagements\n"
        "uni           med  12\n"
        "press_office  x    3\n"
    )


def test_write_rows_table_field_order_and_widths() -> None:
    out = io.StringIO()
    write_rows(ROWS, ["engagements", "window_start", "src"], "table", out)
    lines = out.getvalue().splitlines()
    assert lines[0] == "engagements  window_start          src"
    assert lines[1] == "12           2026-03-02T10:00:00Z  uni"
    assert lines[2] == "3            2026-03-02T11:00:00Z  press_office"


def test_write_rows_table_without_rows_prints_the_header() -> None:
    out = io.StringIO()
    write_rows([], ["src", "dst"], "table", out)
    assert out.getvalue() == "src  dst\n"


def test_write_rows_jsonl_preserves_field_order() -> None:
    out = io.StringIO()
    fields = ["engagements", "src", "window_start", "dst"]
    write_rows(iter(ROWS), fields, "jsonl", out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert out.getvalue().endswith("\n")
    assert lines[0] == (
        '{"engagements":12,"src":"uni","window_start":"2026-03-02T10:00:00Z","dst":"med"}'
    )
    for line, row in zip(lines, ROWS, strict=True):
        decoded = orjson.loads(line)
        assert list(decoded) == fields
        assert decoded == {f: row[f] for f in fields}


def test_write_rows_jsonl_keeps_types_and_unicode() -> None:
    out = io.StringIO()
    write_rows([{"src": "École", "n": 0, "none": None}], ["src", "n", "none"], "jsonl", out)
    assert out.getvalue() == '{"src":"École","n":0,"none":null}\n'


def test_write_rows_missing_field_raises() -> None:
    with pytest.raises(KeyError):
        write_rows(ROWS, ["nope"], "jsonl", io.StringIO())


@pytest.mark.parametrize("fmt", ["csv", "JSONL", "", "json"])
def test_write_rows_unknown_format(fmt: str) -> None:
    out = io.StringIO()
    with pytest.raises(ValueError, match="format must be table or jsonl"):
        write_rows(ROWS, ["src"], fmt, out)
    assert out.getvalue() == ""


class FakeBackend:
    """Just enough of a Backend for pair_rows: records the SQL, returns canned rows."""

    database = "analytics"

    def __init__(self, rows: list[tuple[Any, ...]]) -> None:
        self.rows = rows
        self.sql: list[str] = []

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        self.sql.append(sql)
        return self.rows


def test_pair_rows_shapes_rows_in_pair_fields_order() -> None:
    backend = FakeBackend([
        (1772445600, "uni", "med", 1, 2, 0, 3, 4, 5),
        (1772449200, "med", "uni", 0, 0, 0, 0, 0, 7),
    ])
    rows = pair_rows(backend, "60m")  # type: ignore[arg-type]
    assert PAIR_FIELDS == ("window_start", "window", "src", "dst", "engagements", "follow",
                           "like", "share", "reply", "mention", "thanks")
    assert rows[0] == {
        "window_start": "2026-03-02T10:00:00Z", "window": "1h", "src": "uni", "dst": "med",
        "engagements": 15, "follow": 1, "like": 2, "share": 0, "reply": 3, "mention": 4,
        "thanks": 5,
    }
    assert list(rows[0]) == list(PAIR_FIELDS)
    assert rows[1]["engagements"] == 7
    assert rows[1]["window_start"] == "2026-03-02T11:00:00Z"
    (sql,) = backend.sql
    # the window is normalised before it reaches SQL, and only as a quoted literal
    assert "window = '1h'" in sql
    assert "60m" not in sql
    assert "analytics.pair_windows" in sql


def test_pair_rows_rejects_bad_window_before_querying() -> None:
    backend = FakeBackend([])
    with pytest.raises(ValueError, match="must look like"):
        pair_rows(backend, "1h' OR '1'='1")  # type: ignore[arg-type]
    assert backend.sql == []
