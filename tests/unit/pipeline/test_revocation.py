"""Revoked partitions and the batches in flight (``Pipeline._on_partitions_revoked``
with ``Pipeline._run_batches``): a revocation waits for the batch in flight to
finish before the worker forgets the partitions' state, so that batch never
loads a revoked partition again or writes its state after it is forgotten;
a failed batch (parked for good) does not hold a revocation up, and a stuck one
holds it up for at most its share of the session timeout."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from faust.types import TP

from pipeline.app import Pipeline
from pipeline.settings import Settings

TOPIC = "events"


class _Lane:
    """Hands out the given batches, then waits (as a lane with no records does)."""

    def __init__(self, batches: list[list[Any]]) -> None:
        self._batches = batches
        self.acked: list[list[Any]] = []

    async def batches(self, within: float) -> AsyncIterator[Any]:
        for batch in self._batches:
            yield SimpleNamespace(records=batch, ack=functools.partial(self.acked.append, batch))
        await asyncio.Event().wait()


class _Channel:
    """What iterating an agent's channel needs (it subscribes the worker)."""

    def __aiter__(self) -> _Channel:
        return self

    async def __anext__(self) -> Any:
        raise StopAsyncIteration


class _Stage:
    def __init__(self) -> None:
        self.forgotten: list[int] = []

    def forget(self, partition: int) -> None:
        self.forgotten.append(partition)


def _worker(batches: list[list[Any]], session_timeout_s: float = 60.0) -> Any:
    """The parts of a Pipeline that running batches and revoking partitions use."""
    worker: Any = Pipeline.__new__(Pipeline)
    worker.settings = Settings(topic=TOPIC, session_timeout_s=session_timeout_s)
    worker.stats = SimpleNamespace(fatal=None, progress=asyncio.Event())
    forgotten: list[Any] = []
    worker.fetch = SimpleNamespace(lanes={TOPIC: _Lane(batches)}, forget=forgotten.extend)
    worker.forgotten = forgotten
    worker.guards = {}
    worker.pair_stage, worker.inbound_stage = _Stage(), _Stage()
    worker._legacy_keys = {}
    worker._indexed, worker._seen_records, worker._max_ts = set(), {}, {}
    worker._last_input, worker._idle = {}, set()
    worker._busy = 0
    worker._no_batch = asyncio.Event()
    worker._no_batch.set()
    return worker


async def _run(worker: Any, handle: Callable[[list[Any]], Awaitable[None]]) -> asyncio.Task[None]:
    task = asyncio.ensure_future(worker._run_batches(SimpleNamespace(channel=_Channel()),
                                                     TOPIC, handle))
    await asyncio.sleep(0.01)
    return task


def test_a_revocation_waits_for_the_batch_in_flight() -> None:
    async def main() -> None:
        gate, seen = asyncio.Event(), []

        async def handle(batch: list[Any]) -> None:
            seen.append(("started", batch))
            await gate.wait()
            seen.append(("finished", batch))

        worker = _worker([["m1"]])
        agent = await _run(worker, handle)
        revoked = {TP(worker.settings.pairs_topic, 2), TP(TOPIC, 1)}
        revoking = asyncio.ensure_future(worker._on_partitions_revoked(None, revoked))
        await asyncio.sleep(0.05)
        assert not revoking.done() and worker.forgotten == []  # the batch is in flight
        assert worker.pair_stage.forgotten == []
        gate.set()
        await asyncio.wait_for(revoking, 1)
        assert seen == [("started", ["m1"]), ("finished", ["m1"])]
        assert set(worker.forgotten) == revoked and worker.pair_stage.forgotten == [2]
        assert worker._busy == 0 and worker._no_batch.is_set()
        # with none in flight a revocation goes through at once
        await asyncio.wait_for(worker._on_partitions_revoked(None, {TP(TOPIC, 0)}), 0.1)
        agent.cancel()

    asyncio.run(main())


def test_a_failed_batch_does_not_hold_a_revocation_up() -> None:
    async def main() -> None:
        async def handle(batch: list[Any]) -> None:
            raise RuntimeError("the store is gone")

        worker = _worker([["m1"], ["m2"]])
        agent = await _run(worker, handle)
        assert isinstance(worker.stats.fatal, RuntimeError)  # parked, never resumed
        assert worker._busy == 0
        await asyncio.wait_for(worker._on_partitions_revoked(None, {TP(TOPIC, 0)}), 0.5)
        assert worker.forgotten == [TP(TOPIC, 0)]
        assert not agent.done()  # still parked: the next batch is never taken
        agent.cancel()

    asyncio.run(main())


def test_a_stuck_batch_holds_a_revocation_up_for_a_bounded_time(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async def handle(batch: list[Any]) -> None:
            await asyncio.Event().wait()

        worker = _worker([["m1"]], session_timeout_s=0.2)
        agent = await _run(worker, handle)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await asyncio.wait_for(worker._on_partitions_revoked(None, {TP(TOPIC, 0)}), 2)
        assert 0.09 <= loop.time() - started < 1.0  # half the session timeout
        assert worker.forgotten == [TP(TOPIC, 0)]
        agent.cancel()

    with caplog.at_level(logging.WARNING, logger="pipeline.app"):
        asyncio.run(main())
    assert "still in flight" in caplog.text


def test_a_tail_finishes_while_the_next_batch_runs_and_batches_are_acked_in_order() -> None:
    async def main() -> None:
        gate, seen = asyncio.Event(), []

        async def tail(batch: list[Any]) -> None:
            await gate.wait()
            seen.append(("tail", batch))

        async def handle(batch: list[Any]) -> Any:
            seen.append(("head", batch))
            return tail(batch) if batch == ["m1"] else None

        worker = _worker([["m1"], ["m2"], ["m3"]])
        lane = worker.fetch.lanes[TOPIC]
        agent = await _run(worker, handle)
        # m2's head ran while m1's tail waits; neither is acked, m3 not taken yet
        assert seen == [("head", ["m1"]), ("head", ["m2"])]
        assert lane.acked == [] and worker._busy == 2
        revoking = asyncio.ensure_future(worker._on_partitions_revoked(None, {TP(TOPIC, 0)}))
        await asyncio.sleep(0.05)
        assert not revoking.done()  # m1's tail is still in flight
        gate.set()
        await asyncio.wait_for(revoking, 1)
        await asyncio.sleep(0.01)
        assert seen == [("head", ["m1"]), ("head", ["m2"]), ("tail", ["m1"]), ("head", ["m3"])]
        assert lane.acked == [["m1"], ["m2"], ["m3"]] and worker._busy == 0
        agent.cancel()

    asyncio.run(main())


def test_a_failed_tail_leaves_its_batch_and_every_later_one_unacked() -> None:
    async def main() -> None:
        async def tail() -> None:
            raise RuntimeError("the store is gone")

        async def handle(batch: list[Any]) -> Any:
            return tail() if batch == ["m1"] else None

        worker = _worker([["m1"], ["m2"], ["m3"]])
        lane = worker.fetch.lanes[TOPIC]
        agent = await _run(worker, handle)
        assert isinstance(worker.stats.fatal, RuntimeError)
        assert lane.acked == [] and worker._busy == 0  # m2 ran, but is never acked
        assert not agent.done()  # parked: m3 is never taken
        await asyncio.wait_for(worker._on_partitions_revoked(None, {TP(TOPIC, 0)}), 0.5)
        agent.cancel()

    asyncio.run(main())


class _BrokenLane(_Lane):
    """Hands out the given batches, then fails to take the next one."""

    async def batches(self, within: float) -> AsyncIterator[Any]:
        for batch in self._batches:
            yield SimpleNamespace(records=batch, ack=functools.partial(self.acked.append, batch))
        raise OSError("the fetch loop is gone")


def test_a_lane_that_fails_stops_the_worker_once_the_batch_before_is_done() -> None:
    async def main() -> None:
        gate = asyncio.Event()

        async def tail() -> None:
            await gate.wait()

        async def handle(batch: list[Any]) -> Any:
            return tail()

        worker = _worker([])
        lane = worker.fetch.lanes[TOPIC] = _BrokenLane([["m1"]])
        agent = await _run(worker, handle)
        assert worker.stats.fatal is None and lane.acked == []  # m1's tail still runs
        gate.set()
        await asyncio.sleep(0.01)
        assert isinstance(worker.stats.fatal, OSError) and worker.stats.progress.is_set()
        assert lane.acked == [["m1"]] and worker._busy == 0
        assert not agent.done()  # parked until the runner stops the worker, not restarted
        agent.cancel()

    asyncio.run(main())
