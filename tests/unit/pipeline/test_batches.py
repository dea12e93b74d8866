"""pipeline.batches.Lane: batches bounded by count and bytes, acked when the agent says,
messages of an earlier consumer generation dropped; ``ack`` against Faust's own
``Consumer.ack``. The real worker runs it in the integration tests
(test_worker.py, test_crash_recovery.py)."""

from __future__ import annotations

import asyncio
import random
from collections import defaultdict
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from faust.transport.consumer import Consumer
from faust.types import TP

from pipeline.batches import Lane, ack

IN = TP("in", 0)


@dataclass(eq=False)
class Message:
    """A fetched record (and enough of a Faust message for ``Consumer.ack``)."""

    offset: int
    value: bytes | None
    generation_id: int = 1
    tp: TP = IN
    key: bytes | None = None
    headers: Any = None
    acked: bool = False  # Faust's Consumer.ack sets it

    @property
    def topic(self) -> str:
        return self.tp.topic

    @property
    def partition(self) -> int:
        return self.tp.partition


class FakeConsumer:
    """The ack bookkeeping of Faust's consumer (the attributes ``Consumer.ack``
    and the commit read)."""

    def __init__(self, acks_for: tuple[str, ...] = ("in",),
                 committed: dict[TP, int] | None = None) -> None:
        self._acked: defaultdict[TP, list[int]] = defaultdict(list)
        self._acked_index: defaultdict[TP, set[int]] = defaultdict(set)
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset.update(committed or {})
        self._unacked_messages: set[Any] = set()
        self._n_acked = 0
        self._waiting_for_ack = None
        self.app = SimpleNamespace(topics=SimpleNamespace(
            acks_enabled_for=lambda topic: topic in acks_for))

    def acked(self) -> dict[TP, list[int]]:
        return {tp: sorted(offsets) for tp, offsets in self._acked.items() if offsets}


class Flow:
    def __init__(self) -> None:
        self.active = asyncio.Event()
        self.active.set()

    async def acquire(self) -> None:
        await self.active.wait()


def make_lane(max_count: int = 100, max_bytes: int = 1000) -> tuple[Lane, Any]:
    app = SimpleNamespace(consumer_generation_id=1, flow_control=Flow(),
                          consumer=FakeConsumer())
    return Lane(app, max_count, max_bytes), app


def messages(n: int, size: int = 10, start: int = 0) -> list[Message]:
    return [Message(start + i, b"x" * size) for i in range(n)]


def offer(lane: Lane, message: Message) -> bool:
    """Offer one record; True when the lane took it."""
    return lane.offer(message.tp, [message], message.generation_id) == 1


def test_a_batch_is_full_at_max_count_and_then_takes_nothing_more() -> None:
    lane, _ = make_lane(max_count=3)
    assert [offer(lane, m) for m in messages(4)] == [True, True, True, False]
    assert len(lane) == 3


def test_a_batch_is_full_once_its_values_reach_max_bytes() -> None:
    lane, _ = make_lane(max_bytes=25)
    assert [offer(lane, m) for m in messages(4)] == [True, True, True, False]  # 30 >= 25


def test_a_run_of_records_is_taken_as_far_as_the_batch_has_room() -> None:
    for max_count, max_bytes, sizes, taken in [
            (3, 1000, [10] * 5, [3, 0]), (100, 25, [10] * 5, [3, 0]),
            (100, 25, [30, 1], [1, 0]), (100, 25, [5, 5, 20, 5], [3, 0]),
            (100, 1000, [10] * 4, [4, 4]), (5, 1000, [0, 0, 0], [3, 2])]:
        lane, _ = make_lane(max_count=max_count, max_bytes=max_bytes)
        run = [Message(i, b"x" * size) for i, size in enumerate(sizes)]
        assert lane.offer(IN, run, 1) == taken[0]
        assert lane.offer(IN, run, 1) == taken[1]
        assert len(lane) == sum(taken)
    lane, _ = make_lane()
    assert lane.offer(IN, [Message(0, None), Message(1, b"")], 1) == 2
    assert lane.offer(IN, [], 1) == 0


def test_one_message_larger_than_max_bytes_is_a_batch_of_its_own() -> None:
    lane, _ = make_lane(max_bytes=25)
    assert offer(lane, Message(0, b"x" * 100)) is True
    assert offer(lane, Message(1, b"x")) is False


def test_batches_come_in_order_and_are_acked_once_the_agent_acks_them() -> None:
    lane, app = make_lane(max_count=2)
    sent = messages(5)

    async def go() -> list[list[int]]:
        taken: list[list[int]] = []
        batches = lane.batches(within=0.01)
        pending = list(sent)
        before = None
        while pending:
            while pending and offer(lane, pending[0]):
                pending.pop(0)
            batch = await anext(batches)
            assert batch.records[0] is sent[sum(map(len, taken))]  # Faust's messages themselves
            # not before the agent is done with it, even once the next is taken
            assert set(app.consumer._acked_index[IN]).isdisjoint(m.offset for m in batch.records)
            if before is not None:
                assert set(app.consumer._acked_index[IN]).isdisjoint(
                    m.offset for m in before.records)
                before.ack()
            taken.append([m.offset for m in batch.records])
            before = batch
        if len(lane):
            taken.append([m.offset for m in (await anext(batches)).records])
        await batches.aclose()
        return taken

    taken = asyncio.run(go())
    assert [o for batch in taken for o in batch] == [0, 1, 2, 3, 4]
    assert all(len(batch) <= 2 for batch in taken)
    # every batch the agent acked: all but the last
    assert app.consumer.acked() == {IN: list(range(5 - len(taken[-1])))}


def test_the_next_batch_fills_while_the_agent_works_on_one() -> None:
    lane, _ = make_lane(max_count=2)

    async def go() -> None:
        batches = lane.batches(within=0.01)
        for m in messages(2):
            offer(lane, m)
        await anext(batches)
        assert [offer(lane, m) for m in messages(3, start=2)] == [True, True, False]
        await batches.aclose()

    asyncio.run(go())


def test_messages_of_an_earlier_generation_are_dropped_unacked() -> None:
    lane, app = make_lane()
    stale, current = Message(0, b"x", generation_id=1), Message(1, b"y", generation_id=2)

    async def go() -> list[int]:
        offer(lane, stale)
        offer(lane, current)
        app.consumer_generation_id = 2  # a rebalance: the fetch loop reads again
        batches = lane.batches(within=0.01)
        batch = await anext(batches)
        batch.ack()
        await batches.aclose()
        return [m.offset for m in batch.records]

    assert asyncio.run(go()) == [1]
    assert app.consumer.acked() == {IN: [1]}


def test_nothing_is_taken_while_the_flow_is_suspended() -> None:
    lane, app = make_lane()

    async def go() -> None:
        app.flow_control.active.clear()
        offer(lane, Message(0, b"x"))
        batches = lane.batches(within=0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(anext(batches), 0.1)

    asyncio.run(go())


def test_room_waits_until_the_full_batch_is_taken() -> None:
    lane, _ = make_lane(max_count=1)

    async def go() -> bool:
        offer(lane, Message(0, b"x"))
        room = asyncio.ensure_future(lane.room())
        await asyncio.sleep(0.01)
        assert not room.done()
        batches = lane.batches(within=0.01)
        await anext(batches)
        await asyncio.wait_for(room, 1)
        await batches.aclose()
        return offer(lane, Message(1, b"y"))

    assert asyncio.run(go()) is True


def test_a_batch_waits_within_from_its_first_message_not_from_the_ask() -> None:
    lane, _ = make_lane()

    async def go() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        batches = lane.batches(within=0.3)
        offer(lane, Message(0, b"x"))
        started = loop.time()
        await anext(batches)
        fresh = loop.time() - started
        offer(lane, Message(1, b"y"))  # arrives while the agent works on the batch
        await asyncio.sleep(0.3)
        started = loop.time()
        await anext(batches)
        waited = loop.time() - started
        await batches.aclose()
        return fresh, waited

    fresh, waited = asyncio.run(go())
    assert fresh >= 0.25  # a new message waits for company
    assert waited < 0.1  # one that already waited its time is taken at once


def test_a_failed_batch_is_never_acked() -> None:
    lane, app = make_lane()

    async def go() -> None:
        for m in messages(3):
            offer(lane, m)
        batches = lane.batches(within=0.01)
        await anext(batches)
        await batches.aclose()  # the agent failed on it and never asks again

    asyncio.run(go())
    assert app.consumer.acked() == {}


def faust_ack(consumer: FakeConsumer, messages: list[Message]) -> None:
    for message in messages:
        Consumer.ack(consumer, message)  # type: ignore[arg-type]


def test_ack_is_fausts_ack_of_each_message() -> None:
    rng = random.Random(3)
    other, changelog = TP("in", 1), TP("in-changelog", 0)
    for _ in range(200):
        committed = {tp: rng.randrange(0, 12) for tp in (IN, other) if rng.random() < 0.5}
        done_before = [Message(o, b"", tp=IN) for o in range(rng.randrange(0, 8))]
        batch = []
        for tp in (IN, other, changelog):
            start = rng.randrange(0, 10)
            batch += [Message(o, b"", tp=tp) for o in range(start, start + rng.randrange(1, 6))]
        rng.shuffle(batch)
        batch.sort(key=lambda m: (m.tp.partition, m.tp.topic, m.offset))  # in order per tp
        mine, faust = (FakeConsumer(committed=committed) for _ in range(2))
        for consumer in (mine, faust):
            faust_ack(consumer, [Message(m.offset, b"", tp=m.tp) for m in done_before])
        ack(mine, [(m.tp, m.offset, m.offset) for m in batch])
        faust_ack(faust, batch)
        assert mine.acked() == faust.acked()
        assert {tp: set(i) for tp, i in mine._acked_index.items() if i} == \
            {tp: set(i) for tp, i in faust._acked_index.items() if i}
        assert mine._n_acked == faust._n_acked
