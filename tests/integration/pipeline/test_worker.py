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
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer
from pydantic import SecretStr

from pipeline.broker import EmbeddedBroker
from pipeline.bulk import default_partition
from pipeline.report import pair_rows
from pipeline.runner import EMBEDDED_TIMINGS, PipelineFailed, run_lines
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
        # one record per producer batch: a restarted worker's table recovery on
        # Tansu otherwise stops short of the last changelog batch (PLATFORM.md)
        settings = settings_for(broker, f"chdb://{tmp_path / 'store'}", app_id,
                                topic).model_copy(update={"producer_max_batch_bytes": 1})
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
            # records go out in batches: a keyed one where the key hashes to,
            # one without a key to its input partition's number
            if record.key is None:
                assert record.partition == int(headers["dlq.partition"]) % settings.partitions
            else:
                assert record.partition == default_partition(record.key, settings.partitions)
        assert {r.key is None for r in dlq} == {True, False}  # both kinds checked

        # the same file produced again: every event is now a duplicate. This run
        # recovers the tables from their changelogs, where Faust's own fetch loop
        # could skip messages (faust-streaming#596) and the worker then had to
        # stop; pipeline.fetch reads them again, so one run is enough.
        summary = asyncio.run(run_lines(settings, registry, store, jsonl_lines(events)))
        assert summary.counts.duplicates == summary.counts.valid
        assert {w: pair_rows(store, w) for w in ("1h", "1d")} == first
    finally:
        store.close()


def test_alerts_reach_the_topic_the_table_and_the_webhook(broker: EmbeddedBroker,
                                                          tmp_path: Path) -> None:
    """The seed scenario's alerts: every one in the alerts table, on the alerts
    topic (JSON, keyed by id) and POSTed to a Slack-compatible webhook."""
    from aiohttp import web

    from pipeline.broker import free_port
    from pipeline.report import alert_rows
    from producers.scenarios import write_scenario

    events, registry_path = write_scenario("seed", tmp_path)
    registry = load_registry(registry_path)
    topic = f"events-{next(_ids)}-{uuid.uuid4().hex[:6]}"
    received: list[dict] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.Response(text="ok")

    async def go() -> None:
        app = web.Application()
        app.router.add_post("/hooks/secret-token", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        settings = settings_for(broker, f"chdb://{tmp_path / 'store'}",
                                f"test-{uuid.uuid4().hex[:8]}", topic).model_copy(update={
            "alerts_topic": f"{topic}.alerts", "watched_orgs": ("sci",),
            "webhook_url": SecretStr(f"http://127.0.0.1:{port}/hooks/secret-token"),
        })
        try:
            await run_lines(settings, registry, store, jsonl_lines(events))
        finally:
            await runner.cleanup()

    store = open_backend(f"chdb://{tmp_path / 'store'}")
    try:
        asyncio.run(go())
        stored = alert_rows(store)
    finally:
        store.close()
    ids = {a["id"] for a in stored}
    assert ids and {a["org"] for a in stored} == {"sci"}  # watched orgs only
    assert {a["kind"] for a in stored} == {"snub", "omission", "drop_pair"}
    on_topic = read_topic(broker, f"{topic}.alerts", len(ids))
    assert {r.key.decode() for r in on_topic} == ids
    assert all(orjson.loads(r.value)["id"] == r.key.decode() for r in on_topic)
    assert {h["alert"]["id"] for h in received} == ids  # at least once: repeats allowed
    assert all(h["text"] == h["alert"]["message"] for h in received)


def test_packed_input_in_small_chunks_gives_the_same_results(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Internal messages and dedup records are split in chunks (a packed batch
    can hold far more engagements than one Kafka request takes): with tiny
    chunks, packed input gives exactly what one event per message gives."""
    from pipeline import app
    from tests.support.compare import store_alerts, store_omissions, store_pairs, store_snubs

    events, registry_path, _ = write_case(tmp_path, n_events=1200, seed=11)
    registry = load_registry(registry_path)
    lines = [line for line in jsonl_lines(events) if _is_object(line)]
    packed = [b"[" + b",".join(lines[i:i + 250]) + b"]" for i in range(0, len(lines), 250)]
    results = []
    for name, variant, chunk in (("single", lines, app.CHUNK_RECORDS), ("packed", packed, 7)):
        monkeypatch.setattr(app, "CHUNK_RECORDS", chunk)
        url = f"chdb://{tmp_path / name}"
        topic = f"chunks-{name}-{uuid.uuid4().hex[:6]}"
        settings = settings_for(broker, url, f"test-{uuid.uuid4().hex[:8]}", topic)
        settings = settings.model_copy(update={"stream_id": "s"})
        store = open_backend(url)
        try:
            summary = asyncio.run(run_lines(settings, registry, store, iter(variant)))
            results.append((summary.counts.valid, summary.counts.engagements,
                            store_pairs(store), store_snubs(store), store_omissions(store),
                            store_alerts(store)))
        finally:
            store.close()
    single, packed_result = results
    assert single[2] and single == packed_result


def _is_object(line: bytes) -> bool:
    try:
        return isinstance(orjson.loads(line), dict)
    except orjson.JSONDecodeError:
        return False


def test_a_producer_that_cannot_deliver_fails_the_worker_instead_of_hanging(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust sends from a background buffer; an oversized internal message crashes
    it and the message's future never resolves. The batch must fail (the worker
    stops, to be restarted) rather than wait forever."""
    from pipeline import app

    events, registry_path, _ = write_case(tmp_path, n_events=3000, seed=3)
    lines = [line for line in jsonl_lines(events) if _is_object(line)]
    packed = [b"[" + b",".join(lines[i:i + 500]) + b"]" for i in range(0, len(lines), 500)]
    # the real producer, with a request size limit below one internal message
    real_app = app.faust_app
    monkeypatch.setattr(app, "faust_app", lambda settings, **options: real_app(
        settings, **{**options, "producer_max_request_size": 20_000}))
    monkeypatch.setattr(app, "CHUNK_RECORDS", 10**9)  # one internal message per target
    settings = settings_for(broker, f"chdb://{tmp_path / 'store'}",
                            f"test-{uuid.uuid4().hex[:8]}", f"big-{uuid.uuid4().hex[:6]}")
    settings = settings.model_copy(update={"partitions": 1, "batch_max": 100})
    store = open_backend(f"chdb://{tmp_path / 'store'}")
    try:
        with pytest.raises(PipelineFailed, match="MessageSizeTooLarge"):
            asyncio.run(asyncio.wait_for(
                run_lines(settings, load_registry(registry_path), store, iter(packed)), 120))
    finally:
        store.close()


def test_dedup_ids_expire_after_the_retention(broker: EmbeddedBroker, tmp_path: Path) -> None:
    """With a short dedup retention the worker forgets ids (index entries and
    table records) once they are older than it and committed, and the results
    are those of a worker that remembers every id."""
    events, registry_path, _ = write_case(tmp_path, n_events=1500, seed=5)
    registry = load_registry(registry_path)
    results = []
    for name, retention in (("forever", 1e9), ("short", 60.0)):
        url = f"chdb://{tmp_path / name}"
        topic = f"expiry-{name}-{uuid.uuid4().hex[:6]}"
        settings = settings_for(broker, url, f"test-{uuid.uuid4().hex[:8]}", topic)
        # small batches, so commits (which expiry waits for) come between them
        # while the worker works through the backlog its startup leaves
        settings = settings.model_copy(update={"stream_id": "s", "dedup_retention_s": retention,
                                               "commit_interval_s": 0.3, "batch_max": 50})
        held: list = []
        store = open_backend(url)
        try:
            summary = asyncio.run(run_lines(settings, registry, store, jsonl_lines(events),
                                            rate=400, on_ready=held.append))
            pipeline = held[0]
            results.append((summary.counts.valid, summary.counts.duplicates,
                            len(pipeline._seen_index),
                            len(pipeline.seen_table.data),
                            {w: pair_rows(store, w) for w in ("1h", "1d")}))
        finally:
            store.close()
    (valid, duplicates, ids, records, pairs), short = results
    assert valid == short[0] and duplicates == short[1] > 0
    assert ids == valid - duplicates  # every distinct id remembered
    assert short[2] < ids / 2 and short[3] < records  # most forgotten, records deleted
    assert short[4] == pairs and pairs["1h"]


def test_batches_are_bounded_by_bytes_as_they_are_taken(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With RECIPROCITY_BATCH_MAX_BYTES and RECIPROCITY_INGEST_BATCH_MAX_BYTES
    small, every batch of every agent stops at the first message that reaches
    the bound (a backlog of packed messages is never taken whole), and every
    event is still processed once."""
    from pipeline.batches import Lane, Taken

    events, registry_path, _ = write_case(tmp_path, n_events=1200, seed=3)
    registry = load_registry(registry_path)
    lines = [line for line in jsonl_lines(events) if _is_object(line)]
    packed = [b"[" + b",".join(lines[i:i + 100]) + b"]" for i in range(0, len(lines), 100)]
    max_bytes = 2 * max(len(m) for m in packed)
    taken: list[list[int]] = []
    batches = Lane.batches

    async def recording(lane: Lane, within: float) -> AsyncIterator[Taken]:
        async for batch in batches(lane, within):
            taken.append([len(e.value or b"") for e in batch.records])
            yield batch

    monkeypatch.setattr(Lane, "batches", recording)
    url = f"chdb://{tmp_path / 'bounded'}"
    settings = settings_for(broker, url, f"test-{uuid.uuid4().hex[:8]}",
                            f"bounded-{uuid.uuid4().hex[:6]}")
    settings = settings.model_copy(update={"stream_id": "s", "batch_max_bytes": max_bytes,
                                           "ingest_batch_max_bytes": max_bytes})
    store = open_backend(url)
    try:
        summary = asyncio.run(run_lines(settings, registry, store, iter(packed)))
    finally:
        store.close()
    assert summary.counts.events == len(lines)
    assert sum(1 for sizes in taken if len(sizes) > 1) > 0  # batching happened
    for sizes in taken:  # under the bound until the last message
        assert sum(sizes[:-1]) < max_bytes


def test_input_partitions_are_held_to_the_slowest_and_results_do_not_change(
        broker: EmbeddedBroker, tmp_path: Path) -> None:
    """Watermark alignment: with a drift of one second stage 1 holds input
    partitions that run ahead (it pauses and resumes them many times), the run
    still drains (a partition whose log is read to the end holds no other back),
    and the results are exactly those of a run that never holds."""
    from pipeline.app import Pipeline
    from tests.support.compare import store_alerts, store_omissions, store_pairs, store_snubs

    events, registry_path, _ = write_case(tmp_path, n_events=1500, seed=5)
    registry = load_registry(registry_path)
    lines = list(jsonl_lines(events))
    results, holds = [], []
    for name, drift in (("never", 0.0), ("aligned", 1.0)):
        url = f"chdb://{tmp_path / name}"
        settings = settings_for(broker, url, f"test-{uuid.uuid4().hex[:8]}",
                                f"align-{name}-{uuid.uuid4().hex[:6]}")
        settings = settings.model_copy(update={"stream_id": "s", "align_drift_s": drift,
                                               "batch_max": 40})
        pipelines: list[Pipeline] = []
        store = open_backend(url)
        try:
            summary = asyncio.run(run_lines(settings, registry, store, iter(lines),
                                            on_ready=pipelines.append))
            results.append((summary.counts.valid, store_pairs(store), store_snubs(store),
                            store_omissions(store), store_alerts(store)))
        finally:
            store.close()
        holds.append(pipelines[0].fetch.holds)
    assert holds[0] == 0 and holds[1] > 0
    assert results[0][1] and results[0] == results[1]
