"""Many Kafka records at once: table changelogs, alerts and dead letters through the
producer's batch API, and stage 1's internal messages straight to aiokafka.

Faust sends each table write and each ``topic.send`` on its own: a pending
message, a future, a callback, sensors, then ``AIOKafkaProducer.send``, tens of
microseconds per record. A batch touches a table key per pair, and a busy
worker writes hundreds of thousands of them, so the per-record path costs more
than the maths. Here the records of one (topic, partition) are appended to
aiokafka record batches (``create_batch``, ``send_batch``), each batch as large
as the producer's ``max_batch_size`` (``RECIPROCITY_PRODUCER_MAX_BATCH_BYTES``),
and the caller awaits their delivery. Stage 1's internal messages
(:meth:`BulkProducer.send_each`) go to aiokafka's ``send`` one by one without
Faust's path around it, which passes through the event loop three times per
message.

Table writes keep Faust's table semantics: the value goes into the table's
store, and the changelog record is serialized by the changelog topic exactly as
Faust's own ``table[key] = value`` would, into the partition Faust would choose
(the partition of the input being processed), so Faust's recovery and standby
replicas read it as usual.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import struct
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import faust
import numpy as np
import orjson
from aiokafka.partitioner import DefaultPartitioner
from faust.streams import _current_event
from faust.types import TP

#: (key, value) of one Kafka record, serialized
Record = tuple[bytes | None, bytes | None]
#: a Kafka record's headers: (name, value) pairs (aiokafka's record batch
#: takes a list)
Headers = list[tuple[str, bytes]]
_NO_HEADERS: Headers = []  # never changed: aiokafka only reads it


class BulkProducer:
    """Batched sends on a Faust app's producer (started with the app)."""

    def __init__(self, app: faust.App) -> None:
        self.app = app
        self._key_encoders: dict[tuple[str, Any], Callable[[Any], bytes]] = {}
        #: the event of the message being written for (see :meth:`_processing`)
        self._current: Any = None

    def _producer(self) -> Any:
        # Faust's aiokafka driver keeps the AIOKafkaProducer behind this method
        return self.app.producer._ensure_producer()  # type: ignore[attr-defined]

    def _default_partitions(self, topic: str) -> list[int] | None:
        """``topic``'s partitions as aiokafka's producer lists them, when it
        uses the default partitioner (murmur2) and knows the topic; else None."""
        producer = self._producer()
        partitioner = getattr(producer, "_partitioner", None)
        if partitioner is DefaultPartitioner or type(partitioner) is DefaultPartitioner:
            partitions = producer._metadata.partitions_for_topic(topic)
            if partitions:
                return list(partitions)
        return None

    def _producer_partition(self, topic: str, key: bytes) -> int:
        return int(self.app.producer.key_partition(topic, key).partition)

    def partitioner(self, topic: str) -> Callable[[bytes], int]:
        """What the producer would pick for a key of ``topic``, looked up once
        for many keys: :func:`murmur2` when the producer uses aiokafka's
        default partitioner and knows the topic, else the producer itself."""
        ordered = self._default_partitions(topic)
        if ordered is None:
            return functools.partial(self._producer_partition, topic)
        return lambda key: int(ordered[default_partition(key, len(ordered))])

    async def partitions_for(self, topic: str) -> list[int]:
        """``topic``'s partitions, in order (the first call waits for its metadata)."""
        return sorted(await self._producer().partitions_for(topic))

    def partitions_of(self, topic: str, keys: Sequence[bytes]) -> list[int]:
        """:meth:`partitioner` of many keys at once (:func:`murmur2_many`)."""
        ordered = self._default_partitions(topic)
        if ordered is None or not keys:
            return [self._producer_partition(topic, key) for key in keys]
        picked: list[int] = np.array(ordered, dtype=np.int64)[
            (murmur2_many(keys) & 0x7FFFFFFF) % len(ordered)].tolist()
        return picked

    async def send(self, topic: str, partition: int, records: Iterable[Record],
                   headers: Iterable[Headers] | None = None) -> list[asyncio.Future[Any]]:
        """Queue ``records`` for one partition, in order, each with its
        ``headers`` when given; returns the futures of their record batches
        (await them to know they are delivered)."""
        return [future for future, _ in await self._send(topic, partition, records, headers)]

    async def send_spread(self, topic: str, partitions: Iterable[int],
                          records: Iterable[Record], headers: Iterable[Headers] | None = None,
                          ) -> list[asyncio.Future[Any]]:
        """:meth:`send` of each record (with its headers, when given) to its
        partition in ``partitions``, in order within a partition."""
        grouped: dict[int, tuple[list[Record], list[Headers]]] = {}
        with_headers = (zip(partitions, records, itertools.repeat(_NO_HEADERS)) if headers is None
                        else zip(partitions, records, headers, strict=True))
        for partition, record, extra in with_headers:
            group = grouped.get(partition)
            if group is None:
                group = grouped[partition] = ([], [])
            group[0].append(record)
            group[1].append(extra)
        pending = []
        for partition, (in_partition, their_headers) in grouped.items():
            pending += await self.send(topic, partition, in_partition, their_headers)
        return pending

    async def send_each(self, topic: str, partition: int,
                        values: Iterable[bytes]) -> list[asyncio.Future[Any]]:
        """Queue keyless records for one partition, in order, each appended to
        the partition's open record batch (aiokafka's ``send``, which waits
        only when that batch is full); returns their futures. Faust's
        ``Topic.send`` passes through the event loop three times per record
        (its check that the producer is started), and every pass lets the
        other stages' work run first: stage 1's 32 internal messages a batch
        took about 100 ms to hand over at 10,000 events/s, now about 10
        (docs/benchmarks.md). The app's producer must be started (it is
        before any agent runs)."""
        producer = self._producer()
        return [await producer.send(topic, value, partition=partition) for value in values]

    async def _send(self, topic: str, partition: int, records: Iterable[Record],
                    headers: Iterable[Headers] | None = None,
                    ) -> list[tuple[asyncio.Future[Any], int]]:
        """The batches' futures, each with its number of records."""
        producer = self._producer()
        sent: list[tuple[asyncio.Future[Any], int]] = []
        batch, count = None, 0
        with_headers = (zip(records, itertools.repeat(_NO_HEADERS)) if headers is None
                        else zip(records, headers, strict=True))
        for (key, value), extra in with_headers:
            if batch is not None and batch.append(key=key, value=value, timestamp=None,
                                                  headers=extra) is not None:
                count += 1
                continue
            if batch is not None:  # full: send it, start the next
                sent.append((await producer.send_batch(batch, topic, partition=partition), count))
            batch, count = producer.create_batch(), 1
            # a first record always fits
            batch.append(key=key, value=value, timestamp=None, headers=extra)
        if batch is not None:
            sent.append((await producer.send_batch(batch, topic, partition=partition), count))
        return sent

    async def write_table(self, table: Any, message: Any,
                          items: Sequence[tuple[str, bytes | None]]) -> list[asyncio.Future[Any]]:
        """``table[key] = value`` for each item (``del table[key]`` for a None
        value: a tombstone), in order, as Faust would do it while processing
        ``message`` (a fetched record: the changelog partition and the store's
        partition are its partition), with the changelog records sent in
        batches. Each delivered batch moves the store's persisted offset, as
        Faust's own changelog callback does (a RocksDB store then recovers
        from there)."""
        changelog = table.changelog_topic
        topic = changelog.get_topic_name()
        partition = message.partition
        store = table.data
        encode_key = self._key_encoder(changelog, table.key_serializer)
        value_serializer = table.value_serializer
        raw_values = value_serializer == "raw"
        self._processing(message)
        records: list[Record] = []
        for key, value in items:
            if value is None:
                store.pop(key, None)
                records.append((encode_key(key), None))
                continue
            store[key] = value
            records.append((encode_key(key), value if raw_values and type(value) is bytes
                            else changelog.prepare_value(value, value_serializer)[0]))
        return await self._send_changelog(store, topic, partition, records)

    def _key_encoder(self, changelog: Any, serializer: Any) -> Callable[[Any], bytes]:
        """How ``changelog`` serializes a table key. Faust's ``json`` codec is
        ``orjson.dumps``: for str keys the same bytes come straight from orjson,
        without Faust's per-key codec dispatch (about 3 % of the worker's thread
        at 10k events/s). Used only once checked to give Faust's own bytes."""
        name = changelog.get_topic_name()
        encoder = self._key_encoders.get((name, serializer))
        if encoder is None:
            def faust_key(key: Any) -> bytes:
                return bytes(changelog.prepare_key(key, serializer)[0])

            def fast_key(key: Any) -> bytes:
                return orjson.dumps(key) if type(key) is str else faust_key(key)

            probe = '["\u00e9\u2603", "x\\y"]'
            same = serializer == "json" and faust_key(probe) == orjson.dumps(probe)
            encoder = fast_key if same else faust_key
            self._key_encoders[(name, serializer)] = encoder
        return encoder

    async def delete_table(self, table: Any, message: Any,
                           keys: Sequence[str]) -> list[asyncio.Future[Any]]:
        """``del table[key]`` for each key, like :meth:`write_table`
        (tombstones in the changelog)."""
        changelog = table.changelog_topic
        store = table.data
        encode_key = self._key_encoder(changelog, table.key_serializer)
        self._processing(message)
        for key in keys:
            store.pop(key, None)
        return await self._send_changelog(store, changelog.get_topic_name(),
                                          message.partition,
                                          [(encode_key(key), None) for key in keys])

    def _processing(self, message: Any) -> None:
        """Faust's current event, as while a stream processes ``message`` (a
        fetched record): a store that keeps a database per partition (RocksDB)
        reads the partition from it."""
        make_event: Any = self.app.conf.Event
        event = make_event(self.app, message.key, message.value, message.headers, message)
        self._current = event  # the context holds a weak reference only
        _current_event.set(weakref.ref(event))

    async def _send_changelog(self, store: Any, topic: str, partition: int,
                              records: Sequence[Record]) -> list[asyncio.Future[Any]]:
        sent = await self._send(topic, partition, records)
        tp = TP(topic, partition)
        for future, count in sent:
            future.add_done_callback(functools.partial(_persisted, store, tp, count))
        return [future for future, _ in sent]


_MASK = 0xFFFFFFFF
_M = 0x5BD1E995


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (``org.apache.kafka.common.utils.Utils.murmur2``), the
    same value as aiokafka's ``murmur2`` in half its time: the 4-byte words
    unpacked at once, masks only where a product can pass 32 bits. Alerts are
    partitioned by it, one call per alert."""
    length = len(data)
    h = 0x9747B28C ^ length
    words = length >> 2
    for k in struct.unpack_from(f"<{words}I", data):
        k = (k * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail:
        base = words << 2
        if tail >= 3:
            h ^= data[base + 2] << 16
        if tail >= 2:
            h ^= data[base + 1] << 8
        h = ((h ^ data[base]) * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    return h ^ (h >> 15)


def murmur2_many(keys: Sequence[bytes]) -> np.ndarray:
    """:func:`murmur2` of many keys at once (numpy, one step per 4-byte word
    of the longest key); uint32 values."""
    n = len(keys)
    lengths = np.fromiter(map(len, keys), dtype=np.int64, count=n)
    width = max(4, int((lengths.max(initial=0) + 3) // 4 * 4))
    data = np.frombuffer(b"".join(key.ljust(width, b"\0") for key in keys),
                         dtype=np.uint8).reshape(n, width)
    words = data.view("<u4")
    m = np.uint32(_M)
    h = np.uint32(0x9747B28C) ^ lengths.astype(np.uint32)
    count = lengths >> 2
    for w in range(width // 4):
        k = words[:, w] * m
        k ^= k >> np.uint32(24)
        k *= m
        h = np.where(count > w, (h * m) ^ k, h)
    tail = lengths & 3
    base = count * 4
    rows = np.arange(n)
    last = width - 1
    h = np.where(tail >= 3, h ^ (data[rows, np.minimum(base + 2, last)].astype(np.uint32)
                                 << np.uint32(16)), h)
    h = np.where(tail >= 2, h ^ (data[rows, np.minimum(base + 1, last)].astype(np.uint32)
                                 << np.uint32(8)), h)
    h = np.where(tail >= 1, (h ^ data[rows, np.minimum(base, last)].astype(np.uint32)) * m, h)
    h ^= h >> np.uint32(13)
    h *= m
    h ^= h >> np.uint32(15)
    return h.astype(np.int64)


def default_partition(key: bytes, partitions: int) -> int:
    """The partition (an index) Kafka's default partitioner picks for a key."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def _persisted(store: Any, tp: TP, count: int, future: asyncio.Future[Any]) -> None:
    """A changelog batch was delivered: the store holds the table up to its last
    record (what Faust's own changelog callback records, per record)."""
    if not future.cancelled() and future.exception() is None:
        store.set_persisted_offset(tp, future.result().offset + count - 1)
