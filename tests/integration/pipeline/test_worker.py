"""The Faust worker against a real Tansu broker and a real store.

Checks what only a real broker shows: the dead-letter topic's records
(original bytes, reason headers), and that re-consuming a topic from offset 0
with the same app id (what happens after a crash before a commit) leaves the
store exactly as it was.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from pipeline.broker import EmbeddedBroker
from pipeline.report import pair_rows
from pipeline.runner import EMBEDDED_TIMINGS, drained, run_lines, run_worker
from pipeline.settings import Settings
from pipeline.sinks import open_backend
from producers.file_source import jsonl_lines
from schemas.registry import load_registry
from tests.support.files import write_case

pytestmark = pytest.mark.integration
_ids = itertools.count()


def settings_for(broker: EmbeddedBroker, store: str, app_id: str, topic: str) -> Settings:
    return Settings(
        broker=broker.url, topic=topic, dlq_topic=f"{topic}.dlq", clickhouse_url=store,
        app_id=app_id, partitions=3, batch_max=500, batch_within_s=0.2, **EMBEDDED_TIMINGS,
    )


def read_topic(broker: EmbeddedBroker, topic: str, expected: int) -> list:
    consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap,
                             auto_offset_reset="earliest", group_id=None,
                             consumer_timeout_ms=3000)
    records = []
    try:
        for record in consumer:
            records.append(record)
            if len(records) >= expected:
                break
    finally:
        consumer.close()
    return records


def test_dlq_topic_and_replay_from_zero(broker: EmbeddedBroker, tmp_path: Path) -> None:
    events, registry_path, malformed = write_case(tmp_path, n_events=1500, seed=5)
    registry = load_registry(registry_path)
    topic = f"events-{next(_ids)}-{uuid.uuid4().hex[:6]}"
    app_id = f"test-{uuid.uuid4().hex[:8]}"
    store = open_backend(f"chdb://{tmp_path / 'store'}")
    try:
        settings = settings_for(broker, f"chdb://{tmp_path / 'store'}", app_id, topic)
        summary = asyncio.run(run_lines(settings, registry, store, jsonl_lines(events)))
        first = {w: pair_rows(store, w) for w in ("1h", "1d")}
        assert summary.counts.dead_lettered == len(malformed)
        assert first["1h"] and first["1d"]

        dlq = read_topic(broker, settings.dlq_topic, len(malformed))
        assert sorted(r.value for r in dlq) == sorted(malformed)
        for record in dlq:
            headers = dict(record.headers)
            assert headers["dlq.reason"] in (b"invalid_json", b"invalid_event")
            assert headers["dlq.error"]
            assert headers["dlq.topic"] == topic.encode()

        # Rewind the group to 0, as if the worker died before committing anything.
        targets = dict(summary.produced.last_offsets)
        # Join the (now empty) group as a member, commit 0, and leave only after
        # the assignment arrived (Tansu quirk: leaving mid-join wedges a group).
        consumer = KafkaConsumer(topic, bootstrap_servers=broker.bootstrap, group_id=app_id,
                                 enable_auto_commit=False, session_timeout_ms=6000,
                                 heartbeat_interval_ms=2000)
        deadline = time.monotonic() + 30
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200, max_records=1)
        partitions = [TopicPartition(topic, p) for p in targets]
        assert set(partitions) <= consumer.assignment()
        consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in partitions})
        consumer.close()

        stats = asyncio.run(run_worker(settings, registry, store, drained(targets)))
        assert stats.counts.messages >= sum(o + 1 for o in targets.values())
        assert {w: pair_rows(store, w) for w in ("1h", "1d")} == first
    finally:
        store.close()
