"""Sources feed a running pipeline: ``reciprocity produce replay`` (JSONL and
CSV) and a third-party Kafka client (Debian's kcat) producing contract-v1 JSON.

Each test starts a real worker process against the session's Tansu broker and
clickhouse-server, produces with the CLI or kcat, and waits until every figure
in the store equals the batch reference for the file.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer

from pipeline.broker import EmbeddedBroker
from producers.replay import CSV_COLUMNS
from tests.reference_analytics import recompute
from tests.support.files import write_case
from tests.support.live import live_workers

pytestmark = pytest.mark.e2e


def produce(stack_env: dict[str, str], *args: str) -> dict[str, float]:
    result = subprocess.run(
        ["python", "-m", "pipeline.cli", "produce", *args], env=stack_env,
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition(" ")
        if name.strip() and value.replace(".", "", 1).isdigit():
            counts[name.strip()] = float(value)
    return counts


def test_replay_jsonl_feeds_the_running_pipeline(broker: EmbeddedBroker, clickhouse_url: str,
                                                 tmp_path: Path) -> None:
    events, registry, _ = write_case(tmp_path, n_events=600, seed=8)
    expected = recompute(events, registry)
    with live_workers(broker, clickhouse_url, registry, tmp_path) as stack:
        summary = produce(stack.env, "replay", str(events), "--broker", broker.url)
        lines = [line for line in events.read_bytes().splitlines() if line.strip()]
        assert summary["produced"] == summary["delivered"] == len(lines)
        assert summary["failed"] == summary["dead-lettered"] == 0
        stack.wait_until_matches(expected)


def test_replay_csv_feeds_the_running_pipeline(broker: EmbeddedBroker, clickhouse_url: str,
                                               tmp_path: Path) -> None:
    events, registry, _ = write_case(tmp_path, n_events=400, seed=9)
    good = [orjson.loads(line) for line in events.read_bytes().splitlines()
            if line.strip() and line.startswith(b'{"id"')]
    clean = tmp_path / "clean.jsonl"
    clean.write_bytes(b"".join(orjson.dumps(doc) + b"\n" for doc in good))
    table = tmp_path / "events.csv"
    with open(table, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for doc in good:
            writer.writerow([doc.get("id", ""), doc.get("ts", ""), doc.get("kind", ""),
                             doc.get("actor", ""), doc.get("target", ""),
                             " ".join(doc.get("mentions", [])),
                             " ".join(doc.get("features", [])), doc.get("subject", ""),
                             doc.get("platform", "")])
        writer.writerow(["too", "few", "cells"])
    expected = recompute(clean, registry)
    with live_workers(broker, clickhouse_url, registry, tmp_path) as stack:
        summary = produce(stack.env, "replay", str(table), "--format", "csv",
                          "--broker", broker.url)
        assert summary["produced"] == len(good)
        assert summary["dead-lettered"] == 1
        stack.wait_until_matches(expected)
        consumer = KafkaConsumer(stack.env["RECIPROCITY_SOURCE_DLQ_TOPIC"],
                                 bootstrap_servers=broker.bootstrap,
                                 auto_offset_reset="earliest", consumer_timeout_ms=3000)
        try:
            [dead] = list(consumer)
        finally:
            consumer.close()
        assert dead.value == b"too,few,cells"
        assert dict(dead.headers)["source.reason"] == b"invalid_csv"


def kcat_env(tmp: Path) -> dict[str, str]:
    """Debian's kcat links librdkafka 2.0, which fails Tansu's ApiVersion reply
    (Apache Kafka brokers are fine); run it with the newer librdkafka that the
    confluent-kafka wheel ships (see PLATFORM notes in docs/producers.md)."""
    import confluent_kafka

    libs = Path(confluent_kafka.__file__).parents[1] / "confluent_kafka.libs"
    [lib] = sorted(libs.glob("librdkafka-*.so.1"))
    folder = tmp / "rdkafka"
    folder.mkdir()
    (folder / "librdkafka.so.1").symlink_to(lib)
    return {**os.environ, "LD_LIBRARY_PATH": str(folder)}


def test_kcat_producing_contract_v1_is_accepted(broker: EmbeddedBroker, clickhouse_url: str,
                                                tmp_path: Path) -> None:
    assert shutil.which("kcat"), "kcat is missing: ./scripts/test.sh installs it (apt kcat)"
    events, registry, _ = write_case(tmp_path, n_events=500, seed=10)
    expected = recompute(events, registry)
    keyed = []
    for line in events.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            key = orjson.loads(line)["id"].encode()
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            key = b"none"
        if b"\t" in line or b"\n" in line:
            continue
        keyed.append(key + b"\t" + line)
    with live_workers(broker, clickhouse_url, registry, tmp_path) as stack:
        subprocess.run(["kcat", "-P", "-b", broker.bootstrap, "-t", stack.topic, "-K", "\t"],
                       input=b"\n".join(keyed) + b"\n", check=True, timeout=60,
                       env=kcat_env(tmp_path))
        stack.wait_until_matches(expected)


def test_produce_simulate_feeds_the_running_pipeline(broker: EmbeddedBroker,
                                                     clickhouse_url: str, tmp_path: Path) -> None:
    from producers.simulator import SimulationConfig, simulate
    from schemas.event import encode_event
    from schemas.registry import dump_registry

    config = SimulationConfig(seed=3, n_orgs=12, accounts_per_org=2, days=1.0, n_events=800,
                              start_ts=1772409600.0)
    registry, events = simulate(config)
    registry_path = tmp_path / "registry.yaml"
    registry_path.write_text(dump_registry(registry))
    (tmp_path / "events.jsonl").write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    expected = recompute(tmp_path / "events.jsonl", registry_path)
    with live_workers(broker, clickhouse_url, registry_path, tmp_path) as stack:
        summary = produce(stack.env, "simulate", "--fast", "--seed", "3", "--orgs", "12",
                          "--accounts-per-org", "2", "--days", "1", "--events", "800",
                          "--start", "2026-03-02T00:00:00Z", "--registry-out",
                          str(tmp_path / "written.yaml"), "--broker", broker.url)
        assert summary["produced"] == summary["delivered"] == 800
        assert (tmp_path / "written.yaml").read_text() == registry_path.read_text()
        stack.wait_until_matches(expected)
