"""pipeline.fetch: the fetch loop delivers guarded partitions gap-free.

A fake consumer stands in for Faust's (the loop only uses the few attributes
below); the real one is exercised by the integration tests (crash recovery,
replay from zero), where faust-streaming#596 used to stop restarted workers.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from pipeline import fetch
from pipeline.fetch import MAX_SEEKS, GapFreeFetch


@dataclass(frozen=True)
class TP:
    topic: str
    partition: int


IN0, IN1 = TP("in", 0), TP("in", 1)
CHANGELOG = TP("states-changelog", 0)


@dataclass
class Message:
    tp: TP
    offset: int

    @property
    def topic(self) -> str:
        return self.tp.topic


class FakeLane:
    """A lane whose batch takes ``capacity`` records until it is taken; what it
    takes also goes to ``sink`` when given."""

    def __init__(self, capacity: int = 10**9, sink: list[tuple[TP, int]] | None = None) -> None:
        self.capacity = capacity
        self.sink = sink
        self.batch: list[int] = []
        self.taken: list[list[int]] = []
        self.room_waits = 0
        #: the runs offered: (partition, offsets taken)
        self.runs: list[tuple[TP, list[int]]] = []
        self._room = asyncio.Event()
        self._room.set()

    def offer(self, tp: TP, records: list[Message], generation: int) -> int:
        taken = records[:max(0, self.capacity - len(self.batch))]
        assert all(r.tp == tp for r in records)
        assert [r.offset for r in records] == list(range(records[0].offset,
                                                         records[0].offset + len(records)))
        for message in taken:
            self.batch.append(message.offset)
            if self.sink is not None:
                self.sink.append((message.tp, message.offset))
        if taken:
            self.runs.append((tp, [m.offset for m in taken]))
        if len(self.batch) >= self.capacity:
            self._room.clear()
        return len(taken)

    async def room(self) -> None:
        self.room_waits += 1
        await self._room.wait()

    def take(self) -> None:
        self.taken.append(self.batch)
        self.batch = []
        self._room.set()


@dataclass
class FakeConsumer:
    """Just enough of Faust's consumer: a log per partition, a position per
    partition, scripted fetches that go wrong the ways Faust's do."""

    logs: dict[TP, list[int]]
    #: fetches served before the log's own: {tp: offsets} (stale or lossy)
    script: list[dict[TP, list[int]]] = field(default_factory=list)
    committed: dict[TP, int] = field(default_factory=dict)
    #: offsets whose delivery waits (for room in a full stream buffer)
    slow: set[int] = field(default_factory=set)
    delivered: list[tuple[TP, int]] = field(default_factory=list)
    seeks: list[dict[TP, int]] = field(default_factory=list)
    #: deliveries that needed Faust's wait_first (a task each)
    waits: int = 0

    def __post_init__(self) -> None:
        self.position = {tp: 0 for tp in self.logs}
        self._read_offset: defaultdict[TP, int | None] = defaultdict(lambda: None)
        self._committed_offset: dict[TP, int | None] = {}
        self._commit_every = None
        self._n_acked = 0
        self._stopped = asyncio.Event()
        self.should_stop = False
        self.suspend_flow = asyncio.Event()
        self.app = SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda t: False),
                                   rebalancing=False, in_recovery=False,
                                   consumer_generation_id=1,
                                   monitor=SimpleNamespace(track_tp_end_offset=lambda *a: None))
        self.flow_active = True
        self._buffered_partitions: set[TP] = set()
        self._paused_partitions: set[TP] = set()
        #: every pause and resume call, in order
        self.switches: list[tuple[str, set[TP]]] = []
        self.transport = SimpleNamespace(app=SimpleNamespace(should_stop=True))
        self.consumer_stopped_errors = ()
        self.fetcher = SimpleNamespace(_stopped=asyncio.Event())

    # -- Faust's consumer ---------------------------------------------------------

    async def _wait_next_records(
            self, timeout: float) -> tuple[dict[TP, list[Message]], set[TP] | None]:
        if self.script:
            batch = self.script.pop(0)
        else:
            batch = {tp: [o for o in log if o >= self.position[tp]]
                     for tp, log in self.logs.items() if tp not in self._paused_partitions}
            if not any(batch.values()):
                self.fetcher._stopped.set()
        for tp, offsets in batch.items():  # the position moves when a fetch returns
            if offsets:
                self.position[tp] = offsets[-1] + 1
        return {tp: [Message(tp, offset) for offset in offsets]
                for tp, offsets in batch.items()}, None

    def highwater(self, tp: TP) -> int:
        return len(self.logs.get(tp, ()))

    def _to_message(self, tp: TP, record: Message) -> Message:
        return record

    async def callback(self, message: Message) -> None:
        if message.offset in self.slow:
            self.slow.discard(message.offset)
            await asyncio.sleep(0.01)
        self.delivered.append((message.tp, message.offset))

    async def wait_first(self, *waits: Awaitable[Any]) -> Any:
        self.waits += 1
        futures = [asyncio.ensure_future(w) for w in waits]
        await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)
        for f in futures:
            f.cancel()
        return SimpleNamespace(done=[w for w, f in zip(waits, futures, strict=True)
                                     if f.done() and not f.cancelled()])

    async def seek_wait(self, partitions: dict[TP, int]) -> None:
        self.seeks.append(dict(partitions))
        self.position.update(partitions)

    async def perform_seek(self) -> None:
        for tp in self.logs:
            offset = self.committed.get(tp)
            self._read_offset[tp] = offset
            if offset is not None:
                self._committed_offset[tp] = offset
                self.position[tp] = offset

    async def earliest_offsets(self, *tps: TP) -> dict[TP, int]:
        return {tp: self.logs[tp][0] if self.logs[tp] else 0 for tp in tps}

    def assignment(self) -> set[TP]:
        return set(self.logs)

    def pause_partitions(self, tps: set[TP]) -> None:
        self.switches.append(("pause", set(tps)))
        self._paused_partitions |= tps

    def resume_partitions(self, tps: set[TP]) -> None:
        self.switches.append(("resume", set(tps)))
        self._paused_partitions -= tps

    async def _add_gap(self, tp: TP, start: int, end: int) -> None:
        pass


def install(consumer: FakeConsumer) -> GapFreeFetch:
    """The loop with a lane for topic "in" that records into ``consumer.delivered``."""
    return fetch.install(consumer, {"in": FakeLane(sink=consumer.delivered)})  # type: ignore[dict-item]


def drain(consumer: FakeConsumer) -> GapFreeFetch:
    async def go() -> GapFreeFetch:
        loop = install(consumer)
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)
        return loop
    return asyncio.run(go())


def offsets_of(consumer: FakeConsumer, tp: TP) -> list[int]:
    return [o for t, o in consumer.delivered if t == tp]


def test_install_replaces_the_consumers_fetch_loop() -> None:
    consumer = FakeConsumer({IN0: [0]})
    loop = install(consumer)
    assert consumer._drain_messages == loop.run  # type: ignore[attr-defined]


def test_in_order_records_are_delivered_once_and_counted_as_read() -> None:
    consumer = FakeConsumer({IN0: list(range(10)), IN1: list(range(5))})
    drain(consumer)
    assert offsets_of(consumer, IN0) == list(range(10))
    assert offsets_of(consumer, IN1) == list(range(5))
    assert consumer._read_offset[IN0] == 9
    assert consumer.seeks == []
    assert consumer.waits == 0  # every message went to the lane without a task


def test_records_past_a_hole_are_not_delivered_the_hole_is_read_again() -> None:
    # faust-streaming#596: records 0..3 were fetched and dropped, the position
    # moved on; the next fetch starts at 4
    consumer = FakeConsumer({IN0: list(range(10))}, script=[{IN0: list(range(4, 10))}])
    loop = drain(consumer)
    assert offsets_of(consumer, IN0) == list(range(10))
    assert consumer.seeks == [{IN0: 0}]
    assert loop.seeks_back == 1


def test_records_already_delivered_are_dropped() -> None:
    # a fetch made before a seek comes back after it: its records repeat
    consumer = FakeConsumer({IN0: list(range(6))},
                            script=[{IN0: [0, 1, 2]}, {IN0: [0, 1, 2, 3]}])
    loop = drain(consumer)
    assert offsets_of(consumer, IN0) == list(range(6))
    assert loop.dropped == 3


def test_other_topics_go_to_fausts_conductor_in_order_waiting_or_not() -> None:
    consumer = FakeConsumer({CHANGELOG: list(range(5))}, slow={2})
    drain(consumer)
    assert offsets_of(consumer, CHANGELOG) == list(range(5))


def test_a_delivery_cancelled_by_a_rebalance_is_not_read() -> None:
    consumer = FakeConsumer({CHANGELOG: list(range(5)), IN0: list(range(5))}, slow={2})

    async def go() -> list[bool]:
        loop = fetch.install(consumer, {"in": FakeLane(capacity=1)})  # type: ignore[dict-item]
        verdicts = [await loop._deliver(IN0, [Message(IN0, 0)], 1)]  # the batch is full now
        slow = asyncio.ensure_future(loop._conduct(CHANGELOG, [Message(CHANGELOG, 2)]))
        blocked = asyncio.ensure_future(loop._deliver(IN0, [Message(IN0, 1)], 1))  # no room
        await asyncio.sleep(0)
        consumer.suspend_flow.set()  # the rebalance suspends the flow mid-delivery
        verdicts.append(await blocked)
        await slow
        consumer.suspend_flow.clear()
        await loop._conduct(CHANGELOG, [Message(CHANGELOG, 3)])
        return verdicts

    assert asyncio.run(go()) == [True, False]
    assert consumer.delivered == [(CHANGELOG, 3)]
    assert consumer._read_offset[IN0] == 0 and consumer._read_offset[CHANGELOG] == 3


def test_partitions_without_a_commit_go_back_to_the_log_start_on_seek() -> None:
    # Faust's perform_seek leaves them where dropped fetches left them
    consumer = FakeConsumer({IN0: list(range(8)), IN1: list(range(8))}, committed={IN1: 5})
    consumer.position[IN0] = 6  # records 0..5 fetched before the rebalance, dropped

    async def go() -> None:
        loop = install(consumer)
        await consumer.perform_seek()
        assert loop.next == {IN0: 0, IN1: 5}
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)

    asyncio.run(go())
    assert consumer.seeks == [{IN0: 0}]
    assert offsets_of(consumer, IN0) == list(range(8))
    assert offsets_of(consumer, IN1) == [5, 6, 7]


def test_a_first_record_past_the_start_of_an_unpositioned_partition_is_a_hole() -> None:
    consumer = FakeConsumer({IN0: list(range(6))}, script=[{IN0: [3, 4, 5]}])
    drain(consumer)
    assert offsets_of(consumer, IN0) == list(range(6))
    assert consumer.seeks == [{IN0: 0}]


def test_other_topics_keep_fausts_rules_gaps_included() -> None:
    # compacted changelogs have offset gaps by design
    consumer = FakeConsumer({CHANGELOG: [0, 3, 4, 9]})
    drain(consumer)
    assert offsets_of(consumer, CHANGELOG) == [0, 3, 4, 9]
    assert consumer.seeks == []


def test_a_gap_that_rereading_never_fills_is_let_through_after_max_seeks() -> None:
    # a guarded log with a real gap: re-read MAX_SEEKS times, then delivered (the
    # stream's sequence check then stops the worker)
    consumer = FakeConsumer({IN0: [0, 1, 5, 6]})
    drain(consumer)
    assert offsets_of(consumer, IN0) == [0, 1, 5, 6]
    assert consumer.seeks == [{IN0: 2}] * MAX_SEEKS


def test_guarded_topics_go_to_their_lane_and_wait_for_room_when_it_is_full() -> None:
    consumer = FakeConsumer({IN0: list(range(7)), CHANGELOG: [0, 1]})
    lane = FakeLane(capacity=3)

    async def go() -> None:
        loop = fetch.install(consumer, {"in": lane})  # type: ignore[dict-item]
        drain = asyncio.ensure_future(loop.run(consumer.fetcher))
        while not drain.done():
            await asyncio.sleep(0.005)
            if len(lane.batch) == lane.capacity:
                lane.take()  # the agent takes the full batch
        await drain

    asyncio.run(go())
    assert [*lane.taken, lane.batch] == [[0, 1, 2], [3, 4, 5], [6]]
    assert consumer.delivered == [(CHANGELOG, 0), (CHANGELOG, 1)]  # not the lane's
    assert consumer._read_offset[IN0] == 6
    assert lane.room_waits == 2  # once per full batch, not per message


# -- holding partitions (watermark alignment) ----------------------------------------


def test_a_held_partition_is_paused_before_the_next_fetch_and_not_read() -> None:
    consumer = FakeConsumer({IN0: list(range(5)), IN1: list(range(5))})
    loop = install(consumer)
    loop.hold({IN1})
    assert consumer.switches == []  # not while a fetch may be handed out
    asyncio.run(asyncio.wait_for(loop.run(consumer.fetcher), 5))
    assert consumer.switches == [("pause", {IN1})]
    assert offsets_of(consumer, IN0) == list(range(5))
    assert offsets_of(consumer, IN1) == []
    assert loop.held == {IN1} and loop.holds == 1


def test_a_released_partition_resumes_at_once_when_nothing_of_it_was_skipped() -> None:
    consumer = FakeConsumer({IN0: list(range(5)), IN1: list(range(5))},
                            script=[{IN0: [0, 1], IN1: [0, 1]}])
    loop = install(consumer)

    async def go() -> None:
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)  # all read
        loop.hold({IN1})
        await loop._switch()
        loop.hold(set())
        assert consumer.switches == [("pause", {IN1}), ("resume", {IN1})]  # at once

    asyncio.run(go())
    assert consumer.seeks == [] and loop.held == loop.skipped == set()


def hold_during_fetch(consumer: FakeConsumer, at: tuple[TP, int],
                      tps: set[TP]) -> GapFreeFetch:
    """The loop, with ``hold(tps)`` decided as record ``at`` is delivered (a
    fetch is being handed out)."""
    loop = install(consumer)
    lane = loop.lanes["in"]

    def offer(tp: TP, records: list[Message], generation: int) -> int:
        if any((r.tp, r.offset) == at for r in records):
            loop.hold(tps)
        return FakeLane.offer(lane, tp, records, generation)  # type: ignore[arg-type]

    lane.offer = offer  # type: ignore[method-assign]
    return loop


def test_records_of_a_fetch_under_way_are_parked_and_delivered_first_on_release() -> None:
    # the second fetch was made before IN1 was held: its records of IN1 wait,
    # and go first, in order, once IN1 is released; nothing is fetched twice
    consumer = FakeConsumer({IN0: list(range(5)), IN1: list(range(5))},
                            script=[{IN0: [0, 1], IN1: [0, 1]}, {IN0: [2], IN1: [2, 3]}])
    loop = hold_during_fetch(consumer, (IN0, 2), {IN1})

    async def go() -> None:
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)  # IN0 to the end
        assert offsets_of(consumer, IN1) == [0, 1]
        assert [m.offset for m in loop.parked[IN1]] == [2, 3]
        assert consumer._read_offset[IN1] == 1  # parked is not read
        loop.hold(set())
        assert consumer.switches == [("pause", {IN1}), ("resume", {IN1})]
        consumer.fetcher._stopped.clear()
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)

    asyncio.run(go())
    assert offsets_of(consumer, IN1) == list(range(5))  # each once, in order
    assert consumer.seeks == [] and loop.unread == 0 and loop.parked_records == 2
    assert loop.held == loop.skipped == set() and loop.parked == {}


def test_a_partition_held_again_while_its_parked_records_go_out_keeps_the_rest() -> None:
    consumer = FakeConsumer({IN0: list(range(3)), IN1: list(range(8))},
                            script=[{IN0: [0, 1], IN1: [0]}, {IN0: [2], IN1: list(range(1, 8))}])
    loop = hold_during_fetch(consumer, (IN0, 2), {IN1})

    async def go() -> None:
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)
        assert [m.offset for m in loop.parked[IN1]] == list(range(1, 8))
        lane = cast(FakeLane, loop.lanes["in"])
        lane.capacity = len(lane.batch) + 3  # room for offsets 1, 2 and 3 of IN1
        loop.hold(set())
        switch = asyncio.ensure_future(loop._switch())
        await asyncio.sleep(0.01)  # the parked records go out until the batch is full
        assert offsets_of(consumer, IN1) == [0, 1, 2, 3]
        loop.hold({IN1})  # stage 1 saw offsets 1 to 3 run ahead
        lane.take()
        await asyncio.wait_for(switch, 5)
        assert offsets_of(consumer, IN1) == [0, 1, 2, 3]
        assert [m.offset for m in loop.parked[IN1]] == [4, 5, 6, 7]
        assert loop.next[IN1] == 4

    asyncio.run(go())


def test_the_partitions_of_a_fetch_go_in_turn_a_slice_at_a_time() -> None:
    consumer = FakeConsumer({IN0: list(range(250)), IN1: list(range(120)),
                             CHANGELOG: list(range(3))})
    loop = drain(consumer)
    lane = cast(FakeLane, loop.lanes["in"])
    assert [(tp, len(offsets)) for tp, offsets in lane.runs] == [
        (IN0, 100), (IN1, 100), (IN0, 100), (IN1, 20), (IN0, 50)]
    assert offsets_of(consumer, IN0) == list(range(250))
    assert offsets_of(consumer, CHANGELOG) == list(range(3))


def test_a_run_is_delivered_up_to_a_gap_in_it_and_the_gap_read_again() -> None:
    consumer = FakeConsumer({IN0: list(range(8))}, script=[{IN0: [0, 1, 2, 5, 6]}])
    loop = drain(consumer)
    assert offsets_of(consumer, IN0) == list(range(8))
    assert consumer.seeks == [{IN0: 3}] and loop.seeks_back == 1


def test_a_parked_sequence_that_breaks_is_dropped_and_read_again_on_release() -> None:
    # offset 3 of IN1 never came (faust-streaming#596): what was parked is
    # dropped, and IN1 is sought back to 2 once released
    consumer = FakeConsumer({IN0: list(range(5)), IN1: list(range(6))},
                            script=[{IN0: [0, 1], IN1: [0, 1]}, {IN0: [2], IN1: [2, 4, 5]}])
    loop = hold_during_fetch(consumer, (IN0, 2), {IN1})

    async def go() -> None:
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)
        assert loop.skipped == {IN1} and IN1 not in loop.parked
        loop.hold(set())
        assert consumer.switches == [("pause", {IN1})]  # not at once: re-read first
        consumer.fetcher._stopped.clear()
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)

    asyncio.run(go())
    assert offsets_of(consumer, IN1) == list(range(6))
    assert consumer.seeks == [{IN1: 2}] and loop.unread == 3  # 2, 4 and 5
    assert consumer.switches[-1] == ("resume", {IN1})


def test_a_seek_drops_what_was_parked_it_is_read_again_from_the_new_position() -> None:
    consumer = FakeConsumer({IN0: list(range(5)), IN1: list(range(5))},
                            script=[{IN0: [0, 1], IN1: [0, 1]}, {IN0: [2], IN1: [2, 3]}])
    loop = hold_during_fetch(consumer, (IN0, 2), {IN1})

    async def go() -> None:
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)
        assert IN1 in loop.parked
        await consumer.seek_wait({IN1: 2})  # tracked by the loop, as a rebalance's
        assert loop.parked == {} and loop.next[IN1] == 2
        loop.hold(set())
        consumer.fetcher._stopped.clear()
        await asyncio.wait_for(loop.run(consumer.fetcher), 5)

    asyncio.run(go())
    assert offsets_of(consumer, IN1) == list(range(5))


def test_nothing_is_switched_during_a_rebalance_or_a_recovery() -> None:
    consumer = FakeConsumer({IN0: [0], IN1: [0]})
    loop = install(consumer)
    loop.hold({IN1})
    for flag in ("rebalancing", "in_recovery"):
        setattr(consumer.app, flag, True)
        asyncio.run(loop._switch())
        assert consumer.switches == []
        setattr(consumer.app, flag, False)
    asyncio.run(loop._switch())
    assert consumer.switches == [("pause", {IN1})]
    consumer.app.in_recovery = True
    loop.hold(set())  # the recovery's own pauses are left alone
    assert consumer.switches == [("pause", {IN1})]
    consumer.app.in_recovery = False
    asyncio.run(loop._switch())
    assert consumer.switches[-1] == ("resume", {IN1})


def test_a_held_partition_that_faust_resumed_is_paused_again() -> None:
    consumer = FakeConsumer({IN0: [0], IN1: [0]})
    loop = install(consumer)
    loop.hold({IN1})
    asyncio.run(loop._switch())
    consumer.resume_partitions({IN1})  # the end of a table recovery resumes all
    asyncio.run(loop._switch())
    assert consumer.switches[-1] == ("pause", {IN1})
    assert loop.holds == 1  # the same hold


def test_revoked_partitions_are_forgotten_and_never_resumed() -> None:
    consumer = FakeConsumer({IN0: [0], IN1: [0]})
    loop = install(consumer)
    loop.hold({IN0, IN1})
    asyncio.run(loop._switch())
    loop.forget({IN1})
    consumer._paused_partitions.discard(IN1)  # Faust forgets the pause of a revoked one
    assert loop.wanted == loop.held == {IN0}
    loop.hold(set())
    assert consumer.switches[-1] == ("resume", {IN0})


def test_partitions_not_assigned_are_not_paused() -> None:
    consumer = FakeConsumer({IN0: [0]})
    loop = install(consumer)
    loop.hold({IN1})
    asyncio.run(loop._switch())
    assert consumer.switches == [] and loop.held == set()
