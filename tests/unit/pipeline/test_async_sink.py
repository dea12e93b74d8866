"""AsyncSink: off-loop writes, retries with backoff, and a clear failure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.sinks import AsyncSink, Backend, DeadLetterRow, SinkBatch
from pipeline.sinks.schema import Table


class NoStore(Backend):
    """A backend with nothing behind it: what each test's backend does not override."""

    database = "test"

    def insert(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        raise AssertionError("write() is the only path the sink uses")

    def execute(self, statement: str) -> None:
        pass

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return []

    def close(self) -> None:
        pass


class FlakyBackend(NoStore):
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[SinkBatch] = []
        self.threads: set[str] = set()

    def ensure_schema(self, cluster: str | None = None) -> None:
        pass

    def write(self, batch: SinkBatch, written: Callable[[str], None] | None = None) -> None:
        self.threads.add(threading.current_thread().name)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.written.append(batch)


NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)
BATCH = SinkBatch(dead_letters=[DeadLetterRow("s", 0, 7, 0, "invalid_json", "bad", b"{", NOW)])


def test_write_retries_then_succeeds_off_the_loop() -> None:
    backend = FlakyBackend(failures=2)
    sink = AsyncSink(backend, retry_delays=(0.01, 0.01, 0.01))

    async def go() -> None:
        await sink.write(BATCH)
        await sink.close()

    asyncio.run(go())
    assert backend.written == [BATCH]
    assert sink.failures == 2 and sink.batches == 1
    assert all(name.startswith("sink") for name in backend.threads)


def test_write_raises_after_the_last_retry() -> None:
    backend = FlakyBackend(failures=10)
    sink = AsyncSink(backend, retry_delays=(0.01, 0.01))

    async def go() -> None:
        try:
            await sink.write(BATCH)
        finally:
            await sink.close()

    with pytest.raises(ConnectionError):
        asyncio.run(go())
    assert backend.written == [] and sink.failures == 3


def test_empty_batches_are_not_written() -> None:
    backend = FlakyBackend(failures=0)
    sink = AsyncSink(backend)
    asyncio.run(sink.write(SinkBatch()))
    assert backend.written == []


class GatedBackend(FlakyBackend):
    """Each write blocks until released: a slow store."""

    def __init__(self, failures: int = 0) -> None:
        super().__init__(failures)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def write(self, batch: SinkBatch, written: Callable[[str], None] | None = None) -> None:
        self.entered.set()
        self.gate.wait(5)
        super().write(batch)


def rows(n: int) -> SinkBatch:
    return SinkBatch(dead_letters=[DeadLetterRow("s", 0, i, 0, "invalid_json", "bad", b"{", NOW)
                                   for i in range(n)])


def test_batches_that_wait_for_a_write_in_progress_go_together() -> None:
    backend = GatedBackend()
    sink = AsyncSink(backend, retry_delays=())

    async def go() -> None:
        first = asyncio.ensure_future(sink.write(rows(1)))
        await asyncio.get_running_loop().run_in_executor(None, backend.entered.wait, 5)
        waiting = [asyncio.ensure_future(sink.write(rows(n))) for n in (2, 3)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in [first, *waiting])
        backend.gate.set()
        await asyncio.gather(first, *waiting)
        await sink.close()

    asyncio.run(go())
    assert [len(b.dead_letters) for b in backend.written] == [1, 5]
    assert sink.batches == 3


def test_a_failed_group_write_fails_every_batch_in_it() -> None:
    backend = GatedBackend(failures=2)
    sink = AsyncSink(backend, retry_delays=())

    async def go() -> list[Any]:
        first = asyncio.ensure_future(sink.write(rows(1)))
        await asyncio.get_running_loop().run_in_executor(None, backend.entered.wait, 5)
        waiting = [asyncio.ensure_future(sink.write(rows(n))) for n in (2, 3)]
        backend.gate.set()
        outcomes = await asyncio.gather(first, *waiting, return_exceptions=True)
        await sink.close()
        return outcomes

    outcomes = asyncio.run(go())
    assert all(isinstance(o, ConnectionError) for o in outcomes)
    assert backend.written == [] and sink.batches == 0


class TableBackend(NoStore):
    """Inserts table by table, as the real backends do; the INSERT of
    ``held`` waits until released."""

    def __init__(self, held: str, fail_held: bool = False) -> None:
        self.held = held
        self.fail_held = fail_held
        self.release = threading.Event()
        self.inserted: list[str] = []

    def insert(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        if table.name == self.held:
            self.release.wait(5)
            if self.fail_held:
                raise ConnectionError("store unreachable")
        self.inserted.append(table.name)


def _batch_row_values() -> tuple[Any, ...]:
    return ("s", 0, 0, 9, 10, 10, 0, 0, 0, 1.0, 2.0, NOW)


def test_a_batch_is_done_once_its_own_tables_are_written() -> None:
    """A pair-stage batch (windows) written in one group with a stage-1 batch
    (omissions, batch records) is done before the stage-1 tables go in; the
    stage-1 batch only once they have."""
    from pipeline.sinks import OmissionRow, PairWindowRow, PipelineBatchRow

    backend = TableBackend(held="pipeline_batches")
    sink = AsyncSink(backend, retry_delays=())
    window = PairWindowRow("1h", NOW, "a", "b", "s", 0, 1, 0, 0, 0, 0, 0, 1.0, 0, 0, None,
                           1, NOW)
    pairs = SinkBatch(pair_windows=[window])
    stage1 = SinkBatch(omissions=[OmissionRow("p", "a", "b", ["x"], 1.0, NOW, "s", NOW)],
                       pipeline_batches=[PipelineBatchRow(*_batch_row_values())])

    async def go() -> None:
        both = [asyncio.ensure_future(sink.write(b)) for b in (stage1, pairs)]
        await asyncio.wait_for(both[1], 5)  # while pipeline_batches is held
        assert not both[0].done()
        assert "pipeline_batches" not in backend.inserted
        backend.release.set()
        await asyncio.wait_for(both[0], 5)
        await sink.close()

    asyncio.run(go())
    assert backend.inserted == ["pair_windows", "omissions", "pipeline_batches"]
    assert sink.batches == 2


def test_a_batch_already_written_stays_done_when_its_group_fails() -> None:
    from pipeline.sinks import PairWindowRow, PipelineBatchRow

    backend = TableBackend(held="pipeline_batches", fail_held=True)
    backend.release.set()
    sink = AsyncSink(backend, retry_delays=(0.01,))
    window = PairWindowRow("1h", NOW, "a", "b", "s", 0, 1, 0, 0, 0, 0, 0, 1.0, 0, 0, None,
                           1, NOW)

    async def go() -> list[Any]:
        writes = [sink.write(SinkBatch(pipeline_batches=[PipelineBatchRow(*_batch_row_values())])),
                  sink.write(SinkBatch(pair_windows=[window]))]
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
        await sink.close()
        return outcomes

    failed, stored = asyncio.run(go())
    assert isinstance(failed, ConnectionError) and stored is None
    assert sink.batches == 0 and sink.failures == 2


def test_the_write_order_names_every_table_once() -> None:
    from pipeline.sinks.base import WRITE_ORDER
    from pipeline.sinks.schema import TABLES

    assert sorted(t.name for t in WRITE_ORDER) == sorted(t.name for t in TABLES)
    assert len(WRITE_ORDER) == len(TABLES)
