"""Backend for the embedded engine chdb (``chdb:///path/to/dir``), the default.

chdb is ClickHouse in-process: one process at a time may open a store
directory (a second one fails with "Cannot lock file"). Rows go in through
Arrow tables, the fast path (about 1M rows/s here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
import pyarrow as pa

from pipeline.sinks.base import Backend, SinkBatch, StoreError, check_identifier
from pipeline.sinks.schema import DEAD_LETTER_COLUMNS, PAIR_WINDOW_COLUMNS, ddl

DEFAULT_DATABASE = "reciprocity"
_TS = pa.timestamp("s", tz="UTC")


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
        try:
            self._session: Any = session.Session(str(self.path))
        except Exception as exc:
            raise StoreError(
                f"cannot open the store {self.path}: {exc} (only one process at a time "
                "may open an embedded store; is a reciprocity run still using it?)"
            ) from exc

    def ensure_schema(self) -> None:
        for statement in ddl(self.database):
            self._session.query(statement)

    def write(self, batch: SinkBatch) -> None:
        if batch.pair_windows:
            rows = batch.pair_windows
            counts = list(zip(*(r.counts for r in rows), strict=True))
            pairs = pa.table(  # noqa: F841 - read by name by chdb's Python() table function
                {
                    "window": [r.window for r in rows],
                    "window_start": pa.array([r.window_start for r in rows], _TS),
                    "src": [r.src for r in rows],
                    "dst": [r.dst for r in rows],
                    "stream": [r.stream for r in rows],
                    "partition": pa.array([r.partition for r in rows], pa.uint32()),
                    **{
                        name: pa.array(counts[i], pa.uint64())
                        for i, name in enumerate(PAIR_WINDOW_COLUMNS[6:12])
                    },
                    "version": pa.array([r.version for r in rows], pa.uint64()),
                    "updated_at": pa.array([r.updated_at for r in rows], _TS),
                }
            )
            cols = ", ".join(PAIR_WINDOW_COLUMNS)
            table = f"{self.database}.pair_windows"  # validated identifier
            self._session.query(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM Python(pairs)")  # noqa: S608
        if batch.dead_letters:
            dls = batch.dead_letters
            dead = pa.table(  # noqa: F841 - read by name by chdb's Python() table function
                {
                    "stream": [d.stream for d in dls],
                    "partition": pa.array([d.partition for d in dls], pa.uint32()),
                    "offset": pa.array([d.offset for d in dls], pa.uint64()),
                    "item": pa.array([d.item for d in dls], pa.uint32()),
                    "reason": [d.reason for d in dls],
                    "error": [d.error for d in dls],
                    "raw": pa.array([d.raw for d in dls], pa.binary()),
                    "received_at": pa.array([d.received_at for d in dls], _TS),
                }
            )
            cols = ", ".join(DEAD_LETTER_COLUMNS)
            table = f"{self.database}.dead_letters"  # validated identifier
            self._session.query(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM Python(dead)")  # noqa: S608

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        result = self._session.query(
            sql + " SETTINGS output_format_json_quote_64bit_integers=0", "JSONCompact"
        )
        text = result.bytes()
        if not text:
            return []
        return [tuple(row) for row in orjson.loads(text)["data"]]

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
