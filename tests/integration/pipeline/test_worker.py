"""The Faust worker against a real Tansu broker and a real store.

Checks what only a real broker shows: the dead-letter topic's records
(original bytes, reason headers), and that producing the same events again
into the same topic (a producer retrying a whole file) changes nothing.
Redelivery after a crash is covered by test_crash_recovery.py.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from pathlib import Path

import pytest
from kafka import KafkaConsumer

from pipeline.broker import EmbeddedBroker
from pipeline.report import pair_rows
from pipeline.runner import EMBEDDED_TIMINGS, run_lines
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

        # the same file produced again: every event is now a duplicate
        summary = asyncio.run(run_lines(settings, registry, store, jsonl_lines(events)))
        assert summary.counts.duplicates == summary.counts.valid
        assert {w: pair_rows(store, w) for w in ("1h", "1d")} == first
    finally:
        store.close()
