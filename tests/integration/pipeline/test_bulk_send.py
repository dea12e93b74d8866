"""pipeline.bulk.BulkProducer.send_each on a real broker: records land in order,
and handing them over does not pass through the event loop once per record
(stage 1's internal messages waited behind the other stages' work at every
pass, docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import itertools

import faust
from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.broker import EmbeddedBroker, ensure_topics
from pipeline.bulk import BulkProducer

PARTITIONS = 4
_names = itertools.count()


def _loop_passes() -> list[int]:
    """[passes, running]: counts the event loop's passes until running is 0."""
    counter = [0, 1]
    loop = asyncio.get_running_loop()

    def tick() -> None:
        if counter[1]:
            counter[0] += 1
            loop.call_soon(tick)

    loop.call_soon(tick)
    return counter


async def _send_and_read(bootstrap: str, topic: str) -> int:
    app = faust.App(f"bulk-send-{topic}", broker=f"kafka://{bootstrap}", store="memory://",
                    producer_acks=-1)
    await app.producer.start()
    try:
        bulk = BulkProducer(app)
        await bulk.send_each(topic, 0, [b"warm-up"])  # metadata fetched once, as in the worker
        values = {p: [f"{p}:{i}".encode() for i in range(8)] for p in range(PARTITIONS)}
        counter = _loop_passes()
        pending = []
        for partition, batch in values.items():
            pending += await bulk.send_each(topic, partition, batch)
        passes, counter[1] = counter[0], 0
        delivered = await asyncio.wait_for(asyncio.gather(*pending), 30)
    finally:
        await app.producer.stop()
    assert [(m.topic, m.partition) for m in delivered] == [
        (topic, p) for p in range(PARTITIONS) for _ in range(8)]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        read: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        while sum(map(len, read)) < PARTITIONS * 8 + 1:
            for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                read[tp.partition] += [r.value for r in records]
    finally:
        await consumer.stop()
    assert read[0][0] == b"warm-up"
    read[0] = read[0][1:]
    assert read == [values[p] for p in range(PARTITIONS)]
    return passes


def test_send_each_keeps_order_without_a_loop_pass_per_record(
        broker: EmbeddedBroker) -> None:
    topic = f"bulk-send-each-{next(_names)}"
    ensure_topics([broker.bootstrap], [topic], PARTITIONS)
    passes = asyncio.run(_send_and_read(broker.bootstrap, topic))
    # Faust's Topic.send made three passes per record (96 here)
    assert passes <= 8
