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
