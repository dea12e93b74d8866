"""Rows to Arrow for the embedded store (``pipeline.sinks.embedded.arrow_table``):
the same table as building each column from the rows, for every table and
column type, with nulls, raw bytes and lists."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pipeline.sinks.base import (
    AlertRow,
    ColumnBlock,
    DeadLetterRow,
    OmissionRow,
    OrgLineageRow,
    PairWindowRow,
    PipelineBatchRow,
    RegistryRow,
    SinkBatch,
    SnubRow,
    _rows_block,
)
from pipeline.sinks.embedded import _ARROW_TYPES, arrow_columns, arrow_table
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


@pytest.mark.parametrize("table", TABLES, ids=lambda t: t.name)
def test_a_block_of_columns_makes_the_same_table_as_its_rows(table: Table) -> None:
    """Rows as a column block (DateTime columns in epoch seconds, numbers as
    numpy arrays where they can be) give the same Arrow table, and its rows
    back are the rows."""
    rows = getattr(every_table(), table.name)
    block = _rows_block(table, rows)
    numeric = ColumnBlock([np.array(c) if kind in ("UInt32", "UInt64", "Float64")
                           else c for (_n, kind), c in zip(table.columns, block.columns,
                                                           strict=True)])
    for candidate in (block, numeric):
        assert arrow_columns(table, candidate).equals(arrow_table(table, rows))
        assert candidate.rows(table) == [tuple(r) for r in rows]


def test_blocks_join_and_go_out_with_the_rows() -> None:
    [pairs] = [t for t in TABLES if t.name == "pair_windows"]
    rows = every_table().pair_windows
    batch = SinkBatch(pair_windows=[rows[0]])
    assert batch
    other = SinkBatch()
    assert not other
    other.add_block("pair_windows", ColumnBlock([[] for _ in pairs.columns]))
    assert not other  # an empty block is no rows
    other.add_block("pair_windows", _rows_block(pairs, [rows[1]]))
    assert other
    batch.extend(other)
    assert batch.pair_windows == [rows[0]]
    assert ColumnBlock.concat(batch.blocks["pair_windows"]).rows(pairs) == [tuple(rows[1])]
    joined = ColumnBlock.concat([_rows_block(pairs, [r]) for r in rows])
    assert joined.rows(pairs) == [tuple(r) for r in rows]
