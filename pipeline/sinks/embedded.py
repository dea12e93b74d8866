"""Backend for the embedded engine chdb (``chdb:///path/to/dir``), the default.

chdb is ClickHouse in-process: one process at a time may open a store
directory (a second one fails with "Cannot lock file"). Large blocks of rows
go in through Arrow tables, the fast path for them (about 1M rows/s here).
Small ones (under :data:`JSON_ROWS`) go as JSON columns in the INSERT's own
text (:func:`json_columns`): chdb reads an Arrow table back through Python,
taking the GIL several times per INSERT, and while the worker's event loop
holds it each take waits up to the interpreter's switch interval. In the
latency phase of ``reciprocity bench`` (10k events/s) a stage-1 INSERT of
about 30 rows took 34-37 ms (10-12 ms of its thread's CPU) through Arrow and
13-14 ms (3 ms) as text, and the store's thread wrote 12 s of a 37 s phase
instead of 19 s.

Every INSERT writes a new part, and the worker's are mostly a few rows (a
batch's omissions, alerts and batch records): the store keeps parts under
:data:`PACKED_PART_BYTES` packed, one file each instead of about ten
(ClickHouse's ``min_bytes_for_full_part_storage``), so such an INSERT costs
fewer file operations (a 2-row INSERT 9.5 -> 7.5 ms in a probe; the latency
phase of ``reciprocity bench`` at 10k events/s p50 1.69 s -> 1.46-1.53 s).

:meth:`ChdbBackend.ensure_schema`, which a worker calls before its first
batch, also loads what the Arrow path imports on first use
(:meth:`ChdbBackend._load_arrow_path`), so that a running stream's first
large block does not; commands that only read the store do not pay for it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import orjson
import pyarrow as pa

from pipeline.sinks.base import Backend, ColumnBlock, StoreError, _rows_block, check_identifier
from pipeline.sinks.schema import TABLES, Table

log = logging.getLogger(__name__)

DEFAULT_DATABASE = "reciprocity"
_TS = pa.timestamp("s", tz="UTC")
_ARROW_TYPES: dict[str, pa.DataType] = {
    "String": pa.string(),
    "DateTime('UTC')": _TS,
    "UInt32": pa.uint32(),
    "UInt64": pa.uint64(),
    "Float64": pa.float64(),
    "Nullable(Float64)": pa.float64(),
    "Array(String)": pa.list_(pa.string()),
}


def arrow_table(table: Table, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    """Rows (tuples in column order) as an Arrow table typed like the columns.
    A String column holding bytes (a dead letter's raw input) goes as binary.

    The rows go to Arrow as one struct array, converted in C++ row by row,
    instead of being transposed into columns in Python first: 2.5 times
    faster, and the conversion holds the GIL that the worker's event loop
    needs (docs/benchmarks.md)."""
    fields = []
    for (name, kind), value in zip(table.columns, rows[0], strict=True):
        arrow_type = _ARROW_TYPES[kind]
        if kind == "String" and isinstance(value, bytes):
            arrow_type = pa.binary()
        fields.append(pa.field(name, arrow_type))
    struct = pa.array(rows, type=pa.struct(fields))
    return pa.Table.from_batches([pa.RecordBatch.from_struct_array(struct)])


def arrow_columns(table: Table, block: ColumnBlock) -> pa.Table:
    """A block of columns as an Arrow table typed like the columns (a String
    column of bytes as binary, a DateTime column from epoch seconds)."""
    arrays, fields = [], []
    for (name, kind), column in zip(table.columns, block.columns, strict=True):
        arrow_type = _ARROW_TYPES[kind]
        if kind == "String" and len(column) and isinstance(column[0], bytes):
            arrow_type = pa.binary()
        arrays.append(pa.array(column, type=arrow_type))
        fields.append(pa.field(name, arrow_type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


#: parts under this size are stored packed (merges make larger ones full again)
PACKED_PART_BYTES = 10 * 1024 * 1024

#: the most rows of one INSERT through Arrow; a larger table goes in as several,
#: one after another. While an INSERT runs the worker's resident memory grows
#: with its rows (the engine's copy of the block, sorted, and its compressed
#: columns): a backlog's pair-window INSERT of 170,000 rows took 55-95 MiB
#: above the RSS before it, and those spikes set the worker's peak; in
#: INSERTs of 40,000 rows, 23-50 MiB (docs/benchmarks.md). Each is its own
#: part, as any INSERT is; rows are versioned, so a batch written in part
#: before a crash is written again whole on its replay.
INSERT_ROWS = 40_000
#: blocks of fewer rows go in as JSON text; ClickHouse parses JSON on one
#: thread, so a large block is faster as Arrow (100k rows: 254 against 135 ms)
JSON_ROWS = 10_000


def json_columns(table: Table, block: ColumnBlock) -> str | None:
    """A block as the data of ``INSERT ... FORMAT JSONColumns`` (one JSON
    object of a list per column), or None when a column cannot go as JSON
    exactly: bytes in a String column (a dead letter's raw input), a Float64
    that is not finite (JSON has no NaN or infinity), a string orjson refuses
    (a lone surrogate). ``DateTime`` columns hold epoch seconds, which
    ClickHouse reads from JSON numbers; orjson writes floats so that they
    read back as the same doubles."""
    doc: dict[str, Any] = {}
    for (name, kind), column in zip(table.columns, block.columns, strict=True):
        if isinstance(column, np.ndarray) and column.dtype == object:
            column = column.tolist()
        if kind in ("String", "Array(String)"):
            if not isinstance(column, np.ndarray) and bytes in set(map(type, column)):
                return None
        elif kind == "Float64":
            if not np.isfinite(np.asarray(column, dtype=np.float64)).all():
                return None
        elif kind == "Nullable(Float64)":
            present = np.asarray([v for v in column if v is not None], dtype=np.float64)
            if not np.isfinite(present).all():
                return None
        doc[name] = column
    try:
        return orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    except TypeError:  # orjson.JSONEncodeError
        return None


def store_path(url: str) -> Path:
    """The directory of a ``chdb://`` URL (``chdb:///abs`` or ``chdb://./rel``)."""
    parts = urlsplit(url)
    if parts.scheme != "chdb":
        raise ValueError(f"not a chdb:// URL: {url!r}")
    path = (parts.netloc + parts.path) if parts.netloc in (".", "..", "~") else parts.path
    if not path:
        raise ValueError(f"chdb URL {url!r} names no directory")
    return Path(path).expanduser()


class ChdbBackend(Backend):
    def __init__(self, url: str) -> None:
        from chdb import session  # heavy import: only when this backend is used

        self.path = store_path(url)
        self.path.mkdir(parents=True, exist_ok=True)
        self.database = check_identifier(DEFAULT_DATABASE)
        self._purge = True
        try:
            self._session: Any = session.Session(str(self.path))
        except Exception as exc:
            raise StoreError(
                f"cannot open the store {self.path}: {exc} (only one process at a time "
                "may open an embedded store; is a reciprocity run still using it?)"
            ) from exc

    def _load_arrow_path(self) -> None:
        """Import now what the Arrow path (:meth:`_insert`) imports on first
        use: pyarrow imports pandas on its first array, chdb's ``Python()``
        table function pyarrow's dataset modules; about 400 modules, 0.5 s on
        an idle machine, holding the GIL throughout. Left to the first block of
        :data:`JSON_ROWS` rows, that import stalled the worker's event loop for
        1-1.5 s in the middle of a stream (the latency phase of ``reciprocity
        bench``: the whole p99, docs/benchmarks.md)."""
        data = pa.table({"x": pa.array([0], type=pa.uint64())})  # noqa: F841 - read by Python()
        self._session.query("SELECT count() FROM Python(data)")

    def ensure_schema(self, cluster: str | None = None) -> None:
        """The migrations, then small parts packed (see the module doc), also in
        a store made before (the setting changes no data, only new parts); then
        the Arrow path loaded for the writes to come."""
        super().ensure_schema(cluster)
        for table in TABLES:
            self.execute(f"ALTER TABLE {self.database}.{table.name} MODIFY SETTING "
                         f"min_bytes_for_full_part_storage = {PACKED_PART_BYTES}")
        self._load_arrow_path()

    def execute(self, statement: str) -> None:
        self._session.query(statement)

    def insert(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        if len(rows) < JSON_ROWS:
            self.insert_columns(table, _rows_block(table, rows))
        else:
            self._insert(table, arrow_table(table, rows))

    def insert_columns(self, table: Table, block: ColumnBlock) -> None:
        text = json_columns(table, block) if len(block) < JSON_ROWS else None
        if text is None:
            self._insert(table, arrow_columns(table, block))
            return
        self._session.query(f"{self._into(table)} FORMAT JSONColumns {text}")

    def _insert(self, table: Table, rows: pa.Table) -> None:
        """An Arrow table's rows, in INSERTs of at most :data:`INSERT_ROWS`."""
        cols = ", ".join(table.column_names)
        for start in range(0, rows.num_rows, INSERT_ROWS):
            data = rows.slice(start, INSERT_ROWS)  # noqa: F841 - read by name by Python()
            self._session.query(f"{self._into(table)} SELECT {cols} FROM Python(data)")  # noqa: S608

    def _into(self, table: Table) -> str:
        """``INSERT INTO`` the table's columns (validated identifiers)."""
        return f"INSERT INTO {self.database}.{table.name} ({', '.join(table.column_names)})"

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        result = self._session.query(
            sql + " SETTINGS output_format_json_quote_64bit_integers=0", "JSONCompact"
        )
        text = result.bytes()
        if not text:
            return []
        return [tuple(row) for row in orjson.loads(text)["data"]]

    def release_memory(self) -> None:
        """Purge the engine's allocator (jemalloc, inside chdb): it keeps the
        pages of freed blocks for seconds, and each pair-window INSERT of a
        backlog frees tens of MiB (``SYSTEM JEMALLOC PURGE``, about 1 ms;
        docs/benchmarks.md). A chdb built without jemalloc refuses it: then
        nothing is done, and the refusal is logged once."""
        if self._session is None or not self._purge:
            return
        try:
            self._session.query("SYSTEM JEMALLOC PURGE")
        except Exception as exc:  # an engine built without jemalloc refuses it
            self._purge = False
            log.info("the embedded store cannot purge its allocator: %s", exc)

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
