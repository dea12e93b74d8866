"""A worker killed after writing but before committing: the restart replays
the batch and the store does not double-count.

Two real ``reciprocity run`` worker processes, a real Tansu broker and a real
clickhouse-server. The first worker never commits (huge commit interval) and is
SIGKILLed once the store holds every event; the second, same app id, recovers
its tables from the changelogs and re-consumes the topic from offset 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient

from pipeline.broker import EmbeddedBroker, ensure_topics
from pipeline.report import pair_rows
from pipeline.runner import produce_lines
from pipeline.settings import Settings
from pipeline.sinks import open_backend
from producers.file_source import jsonl_lines
from tests.reference import recompute
from tests.support.files import write_case

pytestmark = pytest.mark.integration


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    # cwd: Faust keeps its table data in ``{app_id}-data`` there
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=log.parent)


def totals(url: str) -> int:
    store = open_backend(url)
    try:
        store.ensure_schema()
        return sum(r["engagements"] for r in pair_rows(store, "1d"))
    finally:
        store.close()


def wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen, log: Path) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            raise AssertionError(f"worker exited early ({proc.returncode}): {tail}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:]}")
        time.sleep(0.5)


def test_kill_before_commit_then_replay(broker: EmbeddedBroker, clickhouse_url: str,
                                        tmp_path: Path) -> None:
    events, registry, _ = write_case(tmp_path, n_events=2000, seed=3)
    expected = recompute(events, registry, {"1h": 3600, "1d": 86400})
    want_total = sum(sum(c.values()) for k, c in expected["pairs"].items() if k[0] == "1d")
    topic, app_id = f"crash-{uuid.uuid4().hex[:6]}", f"crash-{uuid.uuid4().hex[:6]}"
    settings = Settings(broker=broker.url, topic=topic, dlq_topic=f"{topic}.dlq", partitions=2)
    ensure_topics(settings.bootstrap_servers, [topic, settings.dlq_topic], 2)
    _, produced = produce_lines(settings, jsonl_lines(events))
    env = {**os.environ, "RECIPROCITY_BROKER": broker.url, "RECIPROCITY_TOPIC": topic,
           "RECIPROCITY_DLQ_TOPIC": f"{topic}.dlq", "RECIPROCITY_PARTITIONS": "2",
           "RECIPROCITY_CLICKHOUSE_URL": clickhouse_url, "RECIPROCITY_REGISTRY": str(registry),
           "RECIPROCITY_APP_ID": app_id, "RECIPROCITY_SESSION_TIMEOUT_S": "6",
           "RECIPROCITY_HEARTBEAT_INTERVAL_S": "1", "RECIPROCITY_REBALANCE_TIMEOUT_S": "20",
           "RECIPROCITY_BATCH_MAX": "300", "RECIPROCITY_LOG_LEVEL": "INFO",
           # table recovery on Tansu reads changelogs only that far (ListOffsets)
           "RECIPROCITY_PRODUCER_MAX_BATCH_BYTES": "1"}

    log1 = tmp_path / "worker1.log"
    first = start_worker({**env, "RECIPROCITY_COMMIT_INTERVAL_S": "3600"}, log1)
    try:
        wait_for(lambda: totals(clickhouse_url) == want_total, 90, "first worker", first, log1)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    report_before = {w: pair_rows(open_backend(clickhouse_url), w) for w in ("1h", "1d")}

    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)

    def committed_to_end() -> bool:
        offsets = admin.list_group_offsets(app_id).get(app_id, {})
        ends = {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}
        return all(ends.get(p, -1) > last for p, last in produced.last_offsets.items())

    assert not committed_to_end(), "the first worker must not have committed"
    # Restart like an orchestrator would. Faust's recovery races with its
    # fetcher (faust-streaming#596); pipeline.fetch reads what the race skipped
    # again, so the restarted worker never meets a hole and never stops.
    log2 = tmp_path / "worker2.log"
    second = start_worker(env, log2)
    try:
        deadline = time.monotonic() + 90
        while not committed_to_end():
            assert second.poll() is None, log2.read_text()[-3000:]
            assert time.monotonic() < deadline, log2.read_text()[-3000:]
            time.sleep(0.5)
    finally:
        if second.poll() is None:
            second.send_signal(signal.SIGTERM)
            second.wait(30)
        admin.close()
    assert "never reached the stream" not in log2.read_text()
    assert {w: pair_rows(open_backend(clickhouse_url), w) for w in ("1h", "1d")} == report_before
    assert totals(clickhouse_url) == want_total
