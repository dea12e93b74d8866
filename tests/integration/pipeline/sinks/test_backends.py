"""Both sink backends against real engines: chdb in-process and clickhouse-server 18.16.

No mocks: the same contract tests run on each backend.
"""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipeline.report import alert_rows, omission_rows, pair_rows, snub_rows
from pipeline.sinks import (
    AlertRow,
    Backend,
    DeadLetterRow,
    OmissionRow,
    PairWindowRow,
    SinkBatch,
    SnubRow,
)

pytestmark = pytest.mark.integration
T0 = datetime(2026, 3, 2, 10, tzinfo=UTC)
NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


def row(partition: int, counts: tuple[int, ...], version: int, src: str = "a",
        dst: str = "b", stream: str = "s") -> PairWindowRow:
    follows, likes, shares, replies, mentions, thanks = counts
    return PairWindowRow("1h", T0, src, dst, stream, partition, follows, likes, shares, replies,
                         mentions, thanks, float(sum(counts)), 0, 0, None, version, NOW)


def test_schema_creation_is_idempotent(backend: Backend) -> None:
    backend.ensure_schema()
    backend.ensure_schema()
    assert pair_rows(backend, "1h") == []


def test_rewriting_a_batch_does_not_double_count(backend: Backend) -> None:
    batch = SinkBatch([row(0, (1, 2, 0, 0, 0, 0), 10), row(1, (0, 0, 3, 0, 0, 1), 5)])
    batch.snubs.append(SnubRow("e1", "a", "b", "like", 1772445600.123, 1772704800.123, T0, "s",
                               NOW))
    batch.omissions.append(OmissionRow("p1", "a", "b", ["x", "y"], 1772445600.5, T0, "s", NOW))
    batch.alerts.append(AlertRow("omission:p1:a", "omission", "a", "b", 1772445600.5, T0, "m",
                                 "{}", "s", NOW))
    backend.write(batch)
    backend.write(batch)  # re-delivery after a crash
    [only] = pair_rows(backend, "1h")
    assert only == {"window_start": "2026-03-02T10:00:00Z", "window": "1h", "src": "a",
                    "dst": "b", "engagements": 7, "follow": 1, "like": 2, "share": 3,
                    "reply": 0, "mention": 0, "thanks": 1}
    assert snub_rows(backend) == [{"id": "e1", "src": "a", "dst": "b", "kind": "like",
                                   "ts": "2026-03-02T10:00:00.123000Z",
                                   "snub_ts": "2026-03-05T10:00:00.123000Z"}]
    assert omission_rows(backend) == [{"post_id": "p1", "left_out": "a", "by": "b",
                                       "entities": ["x", "y"],
                                       "ts": "2026-03-02T10:00:00.500000Z"}]
    assert [a["id"] for a in alert_rows(backend)] == ["omission:p1:a"]


def test_newest_version_wins_and_partitions_and_streams_add_up(backend: Backend) -> None:
    backend.write(SinkBatch([row(0, (1, 0, 0, 0, 0, 0), 3)]))
    backend.write(SinkBatch([row(0, (4, 0, 0, 0, 0, 0), 9), row(0, (1, 0, 0, 0, 0, 0), 1,
                                                                    stream="other")]))
    backend.write(SinkBatch([row(0, (2, 0, 0, 0, 0, 0), 5)]))  # stale: older version
    [only] = pair_rows(backend, "1h")
    assert only["follow"] == 5
    assert pair_rows(backend, "1d") == []


def test_dead_letters_keep_original_bytes_and_are_idempotent(backend: Backend) -> None:
    raw = b"\xff\xfe{not json"
    dead = DeadLetterRow("s", 2, 41, 0, "invalid_json", "unexpected byte", raw, NOW)
    backend.write(SinkBatch(dead_letters=[dead]))
    backend.write(SinkBatch(dead_letters=[dead]))
    rows = backend.query(
        f"SELECT hex(raw), reason, partition, offset FROM {backend.database}.dead_letters FINAL"
    )
    assert [(bytes.fromhex(r[0]), r[1], int(r[2]), int(r[3])) for r in rows] == [
        (raw, "invalid_json", 2, 41)
    ]


def test_rows_given_as_columns_are_stored_as_rows_are(backend: Backend) -> None:
    """A column block (what the pair stage hands the store) beside row tuples:
    one INSERT, the same stored rows, the newest version winning."""
    from pipeline.sinks.base import _rows_block
    from pipeline.sinks.schema import TABLES

    [table] = [t for t in TABLES if t.name == "pair_windows"]
    batch = SinkBatch([row(0, (1, 0, 0, 0, 0, 0), 10)])
    batch.add_block("pair_windows", _rows_block(table, [row(0, (1, 2, 0, 0, 0, 0), 11),
                                                        row(1, (0, 0, 3, 0, 0, 0), 5)]))
    backend.write(batch)
    [only] = pair_rows(backend, "1h")
    assert (only["follow"], only["like"], only["share"], only["engagements"]) == (1, 2, 3, 6)


def test_the_embedded_store_keeps_small_parts_packed(tmp_path: Path) -> None:
    """chdb: every INSERT makes a part; small ones are one file each (packed),
    in a new store and in one made before the setting (ensure_schema again)."""
    from pipeline.sinks import open_backend
    from pipeline.sinks.embedded import PACKED_PART_BYTES
    from pipeline.sinks.schema import TABLES

    store = open_backend(f"chdb://{tmp_path}/packed")
    try:
        store.ensure_schema()
        store.ensure_schema()  # idempotent
        queries = dict(store.query(
            "SELECT name, create_table_query FROM system.tables WHERE database = 'reciprocity'"))
        for table in TABLES:
            assert f"min_bytes_for_full_part_storage = {PACKED_PART_BYTES}" in queries[table.name]
        store.write(SinkBatch([row(0, (1, 0, 0, 0, 0, 0), 1)]))
        assert store.query("SELECT DISTINCT part_storage_type FROM system.parts "
                           "WHERE database = 'reciprocity' AND table = 'pair_windows' "
                           "AND active") == [("Packed",)]
        assert [r["engagements"] for r in pair_rows(store, "1h")] == [1]
    finally:
        store.close()


def test_small_blocks_as_json_text_store_what_arrow_stores(tmp_path: Path) -> None:
    """chdb: a block under JSON_ROWS goes as JSON text in the INSERT, a larger
    one (and any with bytes or a float JSON cannot hold) through Arrow; both
    store exactly the same values."""
    from pipeline.sinks import open_backend
    from pipeline.sinks.base import ColumnBlock, _rows_block
    from pipeline.sinks.embedded import ChdbBackend, arrow_columns, json_columns
    from pipeline.sinks.schema import TABLES

    tables = {t.name: t for t in TABLES}
    store = open_backend(f"chdb://{tmp_path}/json")
    assert isinstance(store, ChdbBackend)
    try:
        store.ensure_schema()
        awkward = [0.1, 1e-7, 1 / 3, 2.0 ** 60 + 0.5, 1772445600.123456, 5e-324, -0.0]
        rows = [PairWindowRow("1h", T0, f"src-{i}\u00e9\u2603\"\\\n", "dst\t", stream, i, i,
                              2 ** 40 + i, 0, 0, 0, 0, value, i, 0,
                              None if i % 2 else value, 2 ** 62 + i, NOW)
                for stream in ("json", "arrow") for i, value in enumerate(awkward)]
        table = tables["pair_windows"]
        json_block, arrow_block = (_rows_block(table, [r for r in rows if r.stream == s])
                                   for s in ("json", "arrow"))
        assert json_columns(table, json_block) is not None
        store.insert_columns(table, json_block)
        store._insert(table, arrow_columns(table, arrow_block))
        columns = ", ".join(c for c in table.column_names if c != "stream")
        got = {s: store.query(f"SELECT {columns} FROM reciprocity.pair_windows "
                              f"WHERE stream = '{s}' ORDER BY partition")
               for s in ("json", "arrow")}
        assert got["json"] == got["arrow"] and len(got["json"]) == len(awkward)
        # what JSON cannot hold goes through Arrow
        dead = tables["dead_letters"]
        raw = DeadLetterRow("s", 0, 1, 0, "invalid_json", "x", b"\xff\xfe not utf-8", NOW)
        assert json_columns(dead, _rows_block(dead, [raw])) is None
        store.insert(dead, [raw])
        assert store.query("SELECT hex(raw) FROM reciprocity.dead_letters") == [
            (b"\xff\xfe not utf-8".hex().upper(),)]
        nan = ColumnBlock([[c[0]] for c in json_block.columns])
        nan.columns[table.column_names.index("value")] = [float("nan")]
        assert json_columns(table, nan) is None
    finally:
        store.close()


def test_a_large_arrow_table_goes_in_as_several_inserts_of_every_row(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """chdb: an Arrow table of more than INSERT_ROWS rows goes in as INSERTs
    of at most that many (a part each, merges stopped here to count them),
    and every row is stored exactly as one INSERT stores it."""
    from pipeline.sinks import embedded, open_backend
    from pipeline.sinks.base import _rows_block
    from pipeline.sinks.schema import TABLES

    table = {t.name: t for t in TABLES}["pair_windows"]
    rows = [row(i, (i, 1, 0, 0, 0, 0), 10 + i, src=f"s{i}", stream=stream)
            for stream in ("whole", "split") for i in range(20)]
    store = open_backend(f"chdb://{tmp_path}/split")
    assert isinstance(store, embedded.ChdbBackend)
    try:
        store.ensure_schema()
        store.execute("SYSTEM STOP MERGES reciprocity.pair_windows")
        store._insert(table, embedded.arrow_columns(
            table, _rows_block(table, [r for r in rows if r.stream == "whole"])))
        monkeypatch.setattr(embedded, "INSERT_ROWS", 7)
        store._insert(table, embedded.arrow_columns(
            table, _rows_block(table, [r for r in rows if r.stream == "split"])))
        columns = ", ".join(c for c in table.column_names if c != "stream")
        got = {s: store.query(f"SELECT {columns} FROM reciprocity.pair_windows "
                              f"WHERE stream = '{s}' ORDER BY partition")
               for s in ("whole", "split")}
        assert got["whole"] == got["split"] and len(got["split"]) == 20
        parts = store.query("SELECT count() FROM system.parts WHERE database = 'reciprocity' "
                            "AND table = 'pair_windows' AND active")
        assert parts == [(1 + 3,)]  # 20 rows in one, then in 7 + 7 + 6
    finally:
        store.close()


def test_a_large_block_imports_nothing_once_the_schema_is_ensured(tmp_path: Path) -> None:
    """chdb: ensure_schema (a worker's step before its first batch) loads what
    the Arrow path imports on first use (pandas, through pyarrow, and
    pyarrow's dataset modules: 0.5-1.5 s holding the GIL), so a stream's first
    block of JSON_ROWS rows does not stall the worker. In a fresh interpreter:
    this test's process has imported them."""
    script = f"""
import sys
from pipeline.sinks import open_backend
from pipeline.sinks.base import ColumnBlock
from pipeline.sinks.embedded import JSON_ROWS
from pipeline.sinks.schema import TABLES

store = open_backend("chdb://{tmp_path}/warm")
store.ensure_schema()
table = next(t for t in TABLES if t.name == "pair_windows")
n = JSON_ROWS
columns = []
for name, kind in table.columns:
    if kind == "String":
        columns.append([f"{{name}}-{{i % 50}}" for i in range(n)])
    elif kind == "Nullable(Float64)":
        columns.append([None if i % 2 else 0.5 for i in range(n)])
    elif kind == "Float64":
        columns.append([float(i) for i in range(n)])
    else:
        columns.append(list(range(1_772_445_600, 1_772_445_600 + n)))
before = set(sys.modules)
store.insert_columns(table, ColumnBlock(columns))
print(sorted(set(sys.modules) - before))
print(store.query("SELECT count() FROM reciprocity.pair_windows")[0][0])
store.close()
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    from pipeline.sinks.embedded import JSON_ROWS

    imported, stored = done.stdout.splitlines()[-2:]
    assert (imported, int(stored)) == ("[]", JSON_ROWS)


def test_releasing_memory_leaves_the_data_as_it_was(backend: Backend) -> None:
    """The worker's every-second ``release_memory``: the embedded engine
    purges its allocator (and takes the command: no refusal recorded); a
    server's store has nothing to do. Either way the rows stay."""
    backend.ensure_schema()
    backend.write(SinkBatch([row(0, (1, 0, 0, 0, 0, 0), 1), row(1, (0, 2, 0, 0, 0, 0), 1)]))
    before = pair_rows(backend, "1h")
    backend.release_memory()
    backend.release_memory()
    assert pair_rows(backend, "1h") == before
    assert getattr(backend, "_purge", True) is True
