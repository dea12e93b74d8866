"""pipeline.bulk: changelog records byte for byte as Faust's own table writes."""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import faust
import pytest
from aiokafka.partitioner import DefaultPartitioner

from pipeline.bulk import BulkProducer, murmur2, murmur2_many

KEYS = ['["ctr1","fac2"]', "__tracker__0", '"org"', "\u00e9\u2603 \\ \"q\"", "", "a#3"]


@pytest.mark.parametrize("key_type", [str, None])
def test_table_keys_are_the_bytes_faust_writes(key_type: type | None) -> None:
    app = faust.App("bulk-test", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("states", partitions=4, key_type=key_type, value_type=bytes)
    bulk = BulkProducer(app)
    changelog = table.changelog_topic
    encode = bulk._key_encoder(changelog, table.key_serializer)
    for key in KEYS:
        assert encode(key) == changelog.prepare_key(key, table.key_serializer)[0]
    assert bulk._key_encoder(changelog, table.key_serializer) is encode  # once per table


def test_other_serializers_go_through_faust() -> None:
    app = faust.App("bulk-test-raw", broker="kafka://127.0.0.1:1", store="memory://")
    table = app.Table("raw-states", partitions=4, key_type=bytes, value_type=bytes)
    bulk = BulkProducer(app)
    encode = bulk._key_encoder(table.changelog_topic, "raw")
    assert encode(b"k") == b"k"
    assert encode("k") == b"k"


def test_murmur2_is_kafkas() -> None:
    from aiokafka.partitioner import murmur2 as aiokafka_murmur2

    rng = random.Random(3)
    for length in range(0, 80):
        for _ in range(10):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) == aiokafka_murmur2(data)
    assert murmur2(b"21") == -973932308 & 0xFFFFFFFF  # Kafka's UtilsTest: -973932308


class FakeMetadata:
    def partitions_for_topic(self, topic: str) -> set[int] | None:
        return {0, 1, 2, 3, 4, 5} if topic == "alerts" else None


def test_alert_partitions_are_the_default_partitioners() -> None:
    producer = SimpleNamespace(_partitioner=DefaultPartitioner(), _metadata=FakeMetadata())
    faust_picks: list[tuple[str, bytes]] = []

    def key_partition(topic: str, key: bytes) -> Any:
        faust_picks.append((topic, key))
        return SimpleNamespace(partition=9)

    app = SimpleNamespace(producer=SimpleNamespace(_ensure_producer=lambda: producer,
                                                   key_partition=key_partition))
    bulk = BulkProducer(app)  # type: ignore[arg-type]
    for i in range(500):
        key = f"snub:ev{i:08d}:ctr{i % 97}:fac{i % 13}:likes".encode()
        assert bulk.partitioner("alerts")(key) == DefaultPartitioner()(key, list(range(6)),
                                                                      list(range(6)))
    assert faust_picks == []
    assert bulk.partitioner("unknown")(b"k") == 9  # no metadata: the producer decides
    assert faust_picks == [("unknown", b"k")]


def test_murmur2_many_is_murmur2_of_each() -> None:
    rng = random.Random(4)
    keys = [bytes(rng.randrange(256) for _ in range(length))
            for length in range(0, 70) for _ in range(5)]
    assert murmur2_many(keys).tolist() == [murmur2(k) for k in keys]
    assert murmur2_many([b"21"]).tolist() == [-973932308 & 0xFFFFFFFF]
    assert murmur2_many([]).tolist() == []


def test_partitions_of_many_keys_are_the_partitioners() -> None:
    producer = SimpleNamespace(_partitioner=DefaultPartitioner(), _metadata=FakeMetadata())
    app = SimpleNamespace(producer=SimpleNamespace(
        _ensure_producer=lambda: producer,
        key_partition=lambda topic, key: SimpleNamespace(partition=9)))
    bulk = BulkProducer(app)  # type: ignore[arg-type]
    keys = [f"snub:ev{i:08d}:ctr{i % 97}:fac{i % 13}:like".encode() for i in range(500)]
    one = bulk.partitioner("alerts")
    assert bulk.partitions_of("alerts", keys) == [one(key) for key in keys]
    assert bulk.partitions_of("unknown", keys[:3]) == [9, 9, 9]
    assert bulk.partitions_of("alerts", []) == []


def test_a_default_record_batch_holds_three_parts_of_a_pair_state_snapshot() -> None:
    """A partition's changelog writes take one round trip per record batch
    (aiokafka queues one batch per partition): a snapshot's 256 KiB parts go
    three to a batch of the default size, and a batch stays under Kafka's
    default message.max.bytes (1,048,588)."""
    from aiokafka.producer.message_accumulator import BatchBuilder

    from pipeline.pair_columns import PART_BYTES
    from pipeline.settings import Settings

    size = Settings().producer_max_batch_bytes
    builder = BatchBuilder(size, 0, is_transactional=False)  # 0: no compression
    key, value = b'"cols:0:s0:0"', bytes(PART_BYTES)
    fitted = 0
    while builder.append(key=key, value=value, timestamp=None) is not None:
        fitted += 1
    assert fitted == 3
    assert size <= 1_048_588
