"""The sink contract: what the pipeline needs from a store, and nothing more.

A backend is blocking and single-threaded by design; the pipeline only ever
calls it from one executor thread (see :class:`pipeline.sinks.AsyncSink`), so
the event loop never waits on ClickHouse.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple

import numpy as np

from pipeline.sinks.schema import BY_NAME, TABLES, Table

log = logging.getLogger(__name__)
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


class PairWindowRow(NamedTuple):
    """Absolute figures of one directed pair window (columns of ``pair_windows``)."""

    window: str
    window_start: datetime
    src: str
    dst: str
    stream: str
    partition: int
    follows: int
    likes: int
    shares: int
    replies: int
    mentions: int
    thanks: int
    value: float
    reciprocated: int
    snubbed: int
    median_reciprocate_s: float | None
    version: int  # position of the last input applied + 1: the newest state wins
    updated_at: datetime


class OrgLineageRow(NamedTuple):
    """An org (``member``) and one org it rolls up to: itself or an ancestor."""

    registry: str
    member: str
    org: str
    community: str
    updated_at: datetime


class RegistryRow(NamedTuple):
    registry: str
    orgs: int
    loaded_at: datetime


class SnubRow(NamedTuple):
    id: str
    src: str
    dst: str
    kind: str
    ts: float
    snub_ts: float
    time: datetime
    stream: str
    updated_at: datetime


class OmissionRow(NamedTuple):
    post_id: str
    left_out: str
    by_org: str
    entities: list[str]
    ts: float
    time: datetime
    stream: str
    updated_at: datetime


class AlertRow(NamedTuple):
    id: str
    kind: str
    org: str
    other: str
    ts: float
    time: datetime
    message: str
    details: str  # JSON object
    stream: str
    created_at: datetime


class DeadLetterRow(NamedTuple):
    stream: str
    partition: int
    offset: int
    item: int
    reason: str
    error: str
    raw: bytes
    received_at: datetime


class PipelineBatchRow(NamedTuple):
    """One input partition's share of one stage-1 batch: rate and lag figures."""

    stream: str
    partition: int
    first_offset: int
    last_offset: int
    messages: int
    events: int
    late: int
    duplicates: int
    dead_lettered: int
    max_event_ts: float | None
    processed_ts: float
    time: datetime


@dataclass(slots=True)
class ColumnBlock:
    """Rows of one table as columns, in the table's column order: each a list
    or a 1-D numpy array, all of one length. A ``DateTime`` column holds epoch
    seconds (ints). What a stage that computes in columns hands the store,
    without a tuple per row (:meth:`Backend.insert_columns`)."""

    columns: list[Any]

    def __len__(self) -> int:
        return len(self.columns[0]) if self.columns else 0

    def lists(self, table: Table) -> list[list[Any]]:
        """The columns as Python lists (``DateTime`` columns as UTC datetimes)."""
        columns = []
        for (_name, kind), column in zip(table.columns, self.columns, strict=True):
            values = column.tolist() if hasattr(column, "tolist") else list(column)
            if kind.startswith("DateTime"):
                cache: dict[int, datetime] = {}
                values = [cache.get(v) or cache.setdefault(v, datetime.fromtimestamp(v, UTC))
                          for v in values]
            columns.append(values)
        return columns

    def rows(self, table: Table) -> list[tuple[Any, ...]]:
        """The block as row tuples (``DateTime`` columns as UTC datetimes)."""
        return list(zip(*self.lists(table), strict=True))

    @staticmethod
    def concat(blocks: Sequence[ColumnBlock]) -> ColumnBlock:
        """One block of several, in order."""
        if len(blocks) == 1:
            return blocks[0]
        joined: list[Any] = []
        for parts in zip(*(b.columns for b in blocks), strict=True):
            if all(hasattr(p, "dtype") for p in parts):
                joined.append(np.concatenate(parts))
            else:
                joined.append([v for p in parts for v in (p.tolist() if hasattr(p, "tolist")
                                                         else p)])
        return ColumnBlock(joined)


@dataclass(slots=True)
class SinkBatch:
    """Rows of one pipeline batch, per table. Field names are table names;
    ``blocks`` holds more rows of some tables as columns (:class:`ColumnBlock`)."""

    pair_windows: list[PairWindowRow] = field(default_factory=list)
    org_lineage: list[OrgLineageRow] = field(default_factory=list)
    registries: list[RegistryRow] = field(default_factory=list)
    snubs: list[SnubRow] = field(default_factory=list)
    omissions: list[OmissionRow] = field(default_factory=list)
    alerts: list[AlertRow] = field(default_factory=list)
    dead_letters: list[DeadLetterRow] = field(default_factory=list)
    pipeline_batches: list[PipelineBatchRow] = field(default_factory=list)
    blocks: dict[str, list[ColumnBlock]] = field(default_factory=dict)

    def add_block(self, table: str, block: ColumnBlock) -> None:
        if len(block):
            self.blocks.setdefault(table, []).append(block)

    def extend(self, other: SinkBatch) -> None:
        for t in TABLES:
            getattr(self, t.name).extend(getattr(other, t.name))
        for name, blocks in other.blocks.items():
            self.blocks.setdefault(name, []).extend(blocks)

    def tables(self) -> frozenset[str]:
        """The names of the tables this batch has rows for."""
        return frozenset(t.name for t in TABLES if getattr(self, t.name)) | frozenset(
            name for name, blocks in self.blocks.items() if any(len(b) for b in blocks))

    def __bool__(self) -> bool:
        return bool(self.tables())


def _rows_block(table: Table, rows: Sequence[tuple[Any, ...]]) -> ColumnBlock:
    """Row tuples as a block (``DateTime`` values to epoch seconds)."""
    columns: list[Any] = [list(c) for c in zip(*rows, strict=True)]
    for i, (_name, kind) in enumerate(table.columns):
        if kind.startswith("DateTime"):
            columns[i] = [int(v.timestamp()) for v in columns[i]]
    return ColumnBlock(columns)


#: the order of a write's INSERTs: the pair stage's tables (its windows, snubs
#: and alerts) before stage 1's omissions and batch records, so a pair-stage
#: batch written together with a stage-1 batch is stored, and its windows
#: queryable, without waiting for those (:class:`pipeline.sinks.AsyncSink`)
WRITE_ORDER: Final = tuple(BY_NAME[name] for name in (
    "pair_windows", "snubs", "alerts", "dead_letters", "omissions", "pipeline_batches",
    "org_lineage", "registries"))


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

    def ensure_schema(self, cluster: str | None = None) -> None:
        """Apply the schema migrations the store lacks (see
        :mod:`pipeline.sinks.migrations`). Safe to call on every start."""
        from pipeline.sinks.migrations import migrate

        migrate(self, cluster or None, log=log.info)

    def write(self, batch: SinkBatch,
              written: Callable[[str], None] | None = None) -> None:
        """Write one batch, one INSERT per table, in :data:`WRITE_ORDER`;
        ``written`` (when given) is called with each table's name once its rows
        are in. Idempotent: writing the same rows again leaves the same query
        results. Raises on failure; the caller retries and never acks the
        source offsets of a failed batch."""
        for table in WRITE_ORDER:
            rows = getattr(batch, table.name)
            blocks = batch.blocks.get(table.name)
            if blocks:
                if rows:
                    blocks = [_rows_block(table, rows), *blocks]
                self.insert_columns(table, ColumnBlock.concat(blocks))
            elif rows:
                self.insert(table, rows)
            else:
                continue
            if written is not None:
                written(table.name)

    def insert_columns(self, table: Table, block: ColumnBlock) -> None:
        """Insert a block of rows in one batch (as tuples unless a backend
        takes columns)."""
        self.insert(table, block.rows(table))

    @abstractmethod
    def insert(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows (tuples in ``table``'s column order) in one batch."""

    @abstractmethod
    def execute(self, statement: str) -> None:
        """Run one DDL statement (from our own code, never user text)."""

    @abstractmethod
    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Run a read query and return its rows. Never pass user text in ``sql``."""

    @abstractmethod
    def close(self) -> None:
        """Release connections or files. Idempotent."""

    def release_memory(self) -> None:
        """Give memory the store holds in this process and no longer uses back
        to the system; called from the sink's thread every
        ``RECIPROCITY_MALLOC_TRIM_S``. Nothing to do for a store in another
        process (a ClickHouse server)."""
        return None
