"""AsyncSink: off-loop writes, retries with backoff, and a clear failure."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from pipeline.sinks import AsyncSink, Backend, DeadLetterRow, SinkBatch
from pipeline.sinks.schema import Table


class FlakyBackend(Backend):
    database = "test"

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.written: list[SinkBatch] = []
        self.threads: set[str] = set()

    def ensure_schema(self) -> None:
        pass

    def write(self, batch: SinkBatch) -> None:
        self.threads.add(threading.current_thread().name)
        if self.failures:
            self.failures -= 1
            raise ConnectionError("store unreachable")
        self.written.append(batch)

    def insert(self, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        raise AssertionError("write() is the only path the sink uses")

    def execute(self, statement: str) -> None:
        pass

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        return []

    def close(self) -> None:
        pass


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

    def write(self, batch: SinkBatch) -> None:
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
