"""Rows to Arrow for the embedded store (``pipeline.sinks.embedded.arrow_table``):
the same table as building each column from the rows, for every table and
column type, with nulls, raw bytes and lists."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest

from pipeline.sinks.base import (
    AlertRow,
    DeadLetterRow,
    OmissionRow,
    OrgLineageRow,
    PairWindowRow,
    PipelineBatchRow,
    RegistryRow,
    SinkBatch,
    SnubRow,
)
from pipeline.sinks.embedded import _ARROW_TYPES, arrow_table
from pipeline.sinks.schema import TABLES, Table

NOW = datetime(2026, 3, 2, 10, 0, 5, tzinfo=UTC)
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def by_columns(table: Table, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """The plain construction: one Arrow array per column."""
    columns = {}
    for (name, kind), values in zip(table.columns, zip(*rows, strict=True), strict=True):
        arrow_type = _ARROW_TYPES[kind]
        if kind == "String" and isinstance(values[0], bytes):
            arrow_type = pa.binary()
        columns[name] = pa.array(values, arrow_type)
    return pa.table(columns)


def every_table() -> SinkBatch:
    return SinkBatch(
        pair_windows=[
            PairWindowRow("1h", START, "a", "b", "s", 0, 1, 2, 3, 4, 5, 6, 7.5, 1, 2, None, 9, NOW),
            PairWindowRow("1d", START, "b", "a", "s", 3, 0, 0, 0, 0, 0, 2**40, 0.0, 0, 0, 12.25,
                          2**63, NOW),
        ],
        org_lineage=[OrgLineageRow("r1", "a", "root", "c", NOW)],
        registries=[RegistryRow("r1", 3, NOW)],
        snubs=[SnubRow("e1", "a", "b", "like", 1.5, 2.5, START, "s", NOW)],
        omissions=[OmissionRow("p1", "a", "b", ["x", "y"], 1.0, START, "s", NOW),
                   OmissionRow("p2", "a", "b", [], 2.0, START, "s", NOW)],
        alerts=[AlertRow("snub:e1", "snub", "a", "b", 2.5, START, "m \u00e9", "{}", "s", NOW)],
        dead_letters=[DeadLetterRow("s", 1, 2, 0, "invalid_json", "bad", b"\xff{", NOW)],
        pipeline_batches=[PipelineBatchRow("s", 0, 1, 2, 3, 4, 0, 0, 0, None, 5.5, NOW),
                          PipelineBatchRow("s", 1, 1, 2, 3, 4, 0, 0, 0, 4.25, 5.5, NOW)],
    )


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_same_table_as_column_by_column(table: Table) -> None:
    rows = getattr(every_table(), table.name)
    assert rows, f"no sample rows for {table.name}"
    got = arrow_table(table, rows)
    assert got.equals(by_columns(table, rows))
    assert got.column_names == list(table.column_names)
    assert got.num_rows == len(rows)


def test_raw_bytes_go_as_binary() -> None:
    [dead_letters] = [t for t in TABLES if t.name == "dead_letters"]
    got = arrow_table(dead_letters, every_table().dead_letters)
    assert got.schema.field("raw").type == pa.binary()
    assert got.column("raw").to_pylist() == [b"\xff{"]


def test_a_row_of_the_wrong_width_is_refused() -> None:
    [registries] = [t for t in TABLES if t.name == "registries"]
    with pytest.raises((ValueError, pa.ArrowInvalid)):
        arrow_table(registries, [("r1", 3)])
    with pytest.raises((ValueError, pa.ArrowInvalid)):
        arrow_table(registries, [("r1", 3, NOW), ("r2", 4)])
