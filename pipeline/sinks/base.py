"""The sink contract: what the pipeline needs from a store, and nothing more.

A backend is blocking and single-threaded by design; the pipeline only ever
calls it from one executor thread (see :class:`pipeline.sinks.AsyncSink`), so
the event loop never waits on ClickHouse.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def check_identifier(name: str) -> str:
    """Refuse database names that are not plain identifiers (they go into DDL)."""
    if not _IDENTIFIER.match(name):
        raise ValueError(
            f"database name {name!r} must be a plain identifier [A-Za-z_][A-Za-z0-9_]*"
        )
    return name


def quote(value: str) -> str:
    """A ClickHouse string literal for ``value`` (backslash and quote escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class PairWindowRow:
    """Absolute engagement counts of one (window, pair) from one source partition."""

    window: str
    window_start: datetime
    src: str
    dst: str
    stream: str
    partition: int
    counts: tuple[int, int, int, int, int, int]  # follow, like, share, reply, mention, thanks
    version: int  # highest source offset applied + 1
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class DeadLetterRow:
    stream: str
    partition: int
    offset: int
    item: int
    reason: str
    error: str
    raw: bytes
    received_at: datetime


@dataclass(frozen=True, slots=True)
class SinkBatch:
    pair_windows: Sequence[PairWindowRow] = ()
    dead_letters: Sequence[DeadLetterRow] = ()

    def __bool__(self) -> bool:
        return bool(self.pair_windows or self.dead_letters)


class StoreError(RuntimeError):
    """The store cannot be opened or used (locked, unreachable, missing tables)."""


class Backend(ABC):
    """A ClickHouse store: schema, idempotent batch writes, and reads for reports."""

    database: str

    def has_table(self, name: str) -> bool:
        """Whether our database holds table ``name`` (plain identifier)."""
        check_identifier(name)
        rows = self.query(
            "SELECT count() FROM system.tables "  # noqa: S608 - quoted literals
            f"WHERE database = {quote(self.database)} AND name = {quote(name)}"
        )
        return bool(rows) and int(rows[0][0]) > 0

    @abstractmethod
    def ensure_schema(self) -> None:
        """Create the database and tables if missing. Safe to call on every start."""

    @abstractmethod
    def write(self, batch: SinkBatch) -> None:
        """Write one batch, one INSERT per table. Idempotent: writing the same
        rows again leaves the same query results. Raises on failure; the caller
        retries and never acks the source offsets of a failed batch."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a read query and return its rows. Never pass user text in ``sql``."""

    @abstractmethod
    def close(self) -> None:
        """Release connections or files. Idempotent."""
