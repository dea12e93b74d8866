"""pipeline.batches.Lane: batches bounded by count and bytes, acked when done,
messages of an earlier consumer generation dropped. The real worker runs it in
the integration tests (test_worker.py, test_crash_recovery.py)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.batches import Lane


@dataclass(eq=False)
class Message:
    offset: int
    value: bytes
    generation_id: int = 1
    key: bytes | None = None
    headers: Any = None
    refcount: int = 0
    acked: bool = False

    def incref(self) -> None:
        self.refcount += 1


@dataclass
class Event:
    app: Any
    key: Any
    value: Any
    headers: Any
    message: Message

    def ack(self) -> None:
        self.message.refcount -= 1
        self.message.acked = self.message.refcount == 0


class Flow:
    def __init__(self) -> None:
        self.active = asyncio.Event()
        self.active.set()

    async def acquire(self) -> None:
        await self.active.wait()


def make_lane(max_count: int = 100, max_bytes: int = 1000) -> tuple[Lane, Any]:
    app = SimpleNamespace(conf=SimpleNamespace(Event=Event), consumer_generation_id=1,
                          flow_control=Flow())
    return Lane(app, max_count, max_bytes), app


def messages(n: int, size: int = 10, start: int = 0) -> list[Message]:
    return [Message(start + i, b"x" * size) for i in range(n)]


def test_a_batch_is_full_at_max_count_and_then_takes_nothing_more() -> None:
    lane, _ = make_lane(max_count=3)
    assert [lane.offer(m) for m in messages(4)] == [True, True, True, False]
    assert len(lane) == 3


def test_a_batch_is_full_once_its_values_reach_max_bytes() -> None:
    lane, _ = make_lane(max_bytes=25)
    assert [lane.offer(m) for m in messages(4)] == [True, True, True, False]  # 30 >= 25


def test_one_message_larger_than_max_bytes_is_a_batch_of_its_own() -> None:
    lane, _ = make_lane(max_bytes=25)
    assert lane.offer(Message(0, b"x" * 100)) is True
    assert lane.offer(Message(1, b"x")) is False


def test_batches_come_in_order_and_are_acked_when_the_next_is_asked_for() -> None:
    lane, _ = make_lane(max_count=2)
    sent = messages(5)

    async def go() -> list[list[int]]:
        taken: list[list[int]] = []
        batches = lane.batches(within=0.01)
        pending = list(sent)
        while pending:
            while pending and lane.offer(pending[0]):
                pending.pop(0)
            batch = await anext(batches)
            assert not any(e.message.acked for e in batch)  # not before we are done
            taken.append([e.message.offset for e in batch])
        if len(lane):
            taken.append([e.message.offset for e in await anext(batches)])
        await batches.aclose()
        return taken

    taken = asyncio.run(go())
    assert [o for batch in taken for o in batch] == [0, 1, 2, 3, 4]
    assert all(len(batch) <= 2 for batch in taken)
    assert all(m.acked for m in sent[:-len(taken[-1])])  # every batch but the last one


def test_the_next_batch_fills_while_the_agent_works_on_one() -> None:
    lane, _ = make_lane(max_count=2)

    async def go() -> None:
        batches = lane.batches(within=0.01)
        for m in messages(2):
            lane.offer(m)
        await anext(batches)
        assert [lane.offer(m) for m in messages(3, start=2)] == [True, True, False]
        await batches.aclose()

    asyncio.run(go())


def test_messages_of_an_earlier_generation_are_dropped_unacked() -> None:
    lane, app = make_lane()
    stale, current = Message(0, b"x", generation_id=1), Message(1, b"y", generation_id=2)

    async def go() -> list[int]:
        lane.offer(stale)
        lane.offer(current)
        app.consumer_generation_id = 2  # a rebalance: the fetch loop reads again
        batches = lane.batches(within=0.01)
        batch = await anext(batches)
        await batches.aclose()
        return [e.message.offset for e in batch]

    assert asyncio.run(go()) == [1]
    assert not stale.acked


def test_nothing_is_taken_while_the_flow_is_suspended() -> None:
    lane, app = make_lane()

    async def go() -> None:
        app.flow_control.active.clear()
        lane.offer(Message(0, b"x"))
        batches = lane.batches(within=0.01)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(anext(batches), 0.1)

    asyncio.run(go())


def test_room_waits_until_the_full_batch_is_taken() -> None:
    lane, _ = make_lane(max_count=1)

    async def go() -> bool:
        lane.offer(Message(0, b"x"))
        room = asyncio.ensure_future(lane.room())
        await asyncio.sleep(0.01)
        assert not room.done()
        batches = lane.batches(within=0.01)
        await anext(batches)
        await asyncio.wait_for(room, 1)
        await batches.aclose()
        return lane.offer(Message(1, b"y"))

    assert asyncio.run(go()) is True


def test_a_batch_waits_within_from_its_first_message_not_from_the_ask() -> None:
    lane, _ = make_lane()

    async def go() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        batches = lane.batches(within=0.3)
        lane.offer(Message(0, b"x"))
        started = loop.time()
        await anext(batches)
        fresh = loop.time() - started
        lane.offer(Message(1, b"y"))  # arrives while the agent works on the batch
        await asyncio.sleep(0.3)
        started = loop.time()
        await anext(batches)
        waited = loop.time() - started
        await batches.aclose()
        return fresh, waited

    fresh, waited = asyncio.run(go())
    assert fresh >= 0.25  # a new message waits for company
    assert waited < 0.1  # one that already waited its time is taken at once
