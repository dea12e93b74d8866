"""Sinks: where window rows land. One contract (:class:`Backend`), two backends.

- ``clickhouse://...`` a real ClickHouse server (:mod:`pipeline.sinks.clickhouse`)
- ``chdb:///path`` the embedded engine, the default (:mod:`pipeline.sinks.embedded`)
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pipeline.sinks.base import (
    AlertRow,
    Backend,
    ColumnBlock,
    DeadLetterRow,
    OmissionRow,
    OrgLineageRow,
    PairWindowRow,
    PipelineBatchRow,
    RegistryRow,
    SinkBatch,
    SnubRow,
    StoreError,
)

__all__ = [
    "AlertRow", "AsyncSink", "Backend", "ColumnBlock", "DeadLetterRow", "OmissionRow",
    "OrgLineageRow", "PairWindowRow", "PipelineBatchRow", "RegistryRow", "SinkBatch", "SnubRow",
    "StoreError", "open_backend",
]

log = logging.getLogger(__name__)


def open_backend(url: str) -> Backend:
    """Open the backend a URL names. Raises ``ValueError`` for unknown schemes."""
    if url.startswith("chdb://"):
        from pipeline.sinks.embedded import ChdbBackend

        return ChdbBackend(url)
    if url.startswith(("clickhouse://", "clickhouses://")):
        from pipeline.sinks.clickhouse import ClickHouseServerBackend

        return ClickHouseServerBackend(url)
    raise ValueError("ClickHouse URL must start with clickhouse://, clickhouses:// or chdb://")


@dataclass
class _Group:
    """Batches written together: those that came while the thread was busy,
    each with the tables it has rows for and its own completion."""

    batch: SinkBatch
    members: list[tuple[frozenset[str], asyncio.Future[None]]] = field(default_factory=list)
    #: the tables the current attempt has written
    written: set[str] = field(default_factory=set)

    def progress(self, table: str) -> None:
        """``table``'s rows are in: the members with nothing else to write are done."""
        self.written.add(table)
        for tables, done in self.members:
            if not done.done() and tables <= self.written:
                done.set_result(None)


class AsyncSink:
    """Runs a blocking backend on one dedicated thread, off the event loop.

    :meth:`write` retries a failing batch with exponential backoff
    (``retry_delays`` seconds between attempts) and raises the last error when
    they are exhausted; the caller then must not ack the batch's offsets.
    Batches that arrive while a write is in progress (the three agents each
    write every batch) wait for it together and go in one write, one INSERT
    per table for all of them: an insert has a fixed cost (a new part in the
    store), about 6 ms on the embedded engine however few its rows. Each of
    them is done once the INSERTs of its own tables are (in
    :data:`pipeline.sinks.base.WRITE_ORDER`: a pair-stage batch before the
    omissions and batch records of a stage-1 batch written with it).
    """

    def __init__(
        self,
        backend: Backend,
        retry_delays: tuple[float, ...] = (0.2, 0.5, 1, 2, 5, 10, 20),
    ) -> None:
        self.backend = backend
        self.retry_delays = retry_delays
        self.failures = 0
        self.batches = 0
        #: seconds spent in successful writes (with their retries), for metrics
        self.write_seconds = 0.0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        #: the batches waiting for the thread, to be written together
        self._forming: _Group | None = None
        self._writing = asyncio.Lock()
        self._flushes: set[asyncio.Task[None]] = set()

    async def run(self, fn: object, *args: object) -> object:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)  # type: ignore[arg-type]

    async def ensure_schema(self, cluster: str | None = None) -> None:
        await self.run(self.backend.ensure_schema, cluster)

    async def write(self, batch: SinkBatch) -> None:
        """Write ``batch`` (with the others waiting meanwhile); returns once
        its rows are stored, raises if they could not be."""
        if not batch:
            return
        loop = asyncio.get_running_loop()
        group = self._forming
        if group is None:
            group = self._forming = _Group(SinkBatch())
            flush = asyncio.ensure_future(self._flush(group))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)
        group.batch.extend(batch)
        done: asyncio.Future[None] = loop.create_future()
        group.members.append((batch.tables(), done))
        await asyncio.shield(done)

    async def _flush(self, group: _Group) -> None:
        async with self._writing:
            if self._forming is group:
                self._forming = None  # later batches form the next group
            try:
                await self._write(group)
            except Exception as exc:
                for _tables, done in group.members:
                    if not done.done():
                        done.set_exception(exc)
            else:
                self.batches += len(group.members)
                for _tables, done in group.members:
                    if not done.done():
                        done.set_result(None)

    async def _write(self, group: _Group) -> None:
        loop = asyncio.get_running_loop()

        def written(table: str) -> None:  # on the sink's thread
            loop.call_soon_threadsafe(group.progress, table)

        started = time.monotonic()
        for attempt, delay in enumerate((*self.retry_delays, None)):
            group.written.clear()
            try:
                await self.run(self.backend.write, group.batch, written)
            except Exception as exc:
                self.failures += 1
                if delay is None:
                    raise
                log.warning("sink write failed (attempt %d), retrying in %ss: %s",
                            attempt + 1, delay, exc)
                await asyncio.sleep(delay)
            else:
                self.write_seconds += time.monotonic() - started
                return

    async def close(self) -> None:
        """Stop the sink thread once pending writes finish. The backend stays
        open: whoever opened it closes it."""
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
