"""Property: for random registries and event streams, what the live pipeline
leaves in ClickHouse equals the independent batch reference, exactly.

Each example runs real ``reciprocity run`` worker processes (one or two, like
the compose file runs them) against the session's Tansu broker and
clickhouse-server, on a fresh topic, consumer group and database. Streams have
events out of order within the lateness, duplicate ids, packed messages and
unknown accounts, over one to three partitions. A short horizon and drop
baseline make snubs, reciprocation and drops frequent in small examples.

Examples: ``HYPOTHESIS_PROFILE=nightly`` runs 200, the default (CI) a few.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.broker import EmbeddedBroker
from pipeline.runner import ensure_pipeline_topics
from pipeline.settings import Settings
from pipeline.sinks import StoreError, open_backend
from producers.kafka_writer import KafkaEventWriter
from tests.reference_analytics import Params, Result, recompute
from tests.support.compare import assert_rollups_match, assert_store_matches
from tests.support.files import write_case

pytestmark = pytest.mark.integration

settings.register_profile("ci", max_examples=3, deadline=None, derandomize=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("nightly", max_examples=200, deadline=None,
                          suppress_health_check=list(HealthCheck))
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

T0 = 1772409600  # 2026-03-02T00:00:00Z
LATENESS = 300
PARAMS = Params(horizon_s=7200, lateness_s=LATENESS, drop_days=2, drop_min_baseline=1.0)
ENV = {"RECIPROCITY_HORIZON": "2h", "RECIPROCITY_LATENESS": "5m",
       "RECIPROCITY_DROP_DAYS": "2", "RECIPROCITY_DROP_MIN_BASELINE": "1"}
KINDS = ["follow", "like", "share", "reply", "mention", "thanks", "unfollow", "post"]


@st.composite
def registries(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(2, 5))
    orgs = []
    for i in range(n):
        org: dict[str, Any] = {"id": f"o{i}"}
        if i and draw(st.booleans()):
            org["parent"] = f"o{draw(st.integers(0, i - 1))}"
        community = draw(st.sampled_from([None, "internal", "external"]))
        if community:
            org["community"] = community
        orgs.append(org)
    accounts = {f"a{i}{j}": f"o{i}" for i in range(n) for j in range(draw(st.integers(1, 2)))}
    entities = {f"e{i}{j}": f"o{i}" for i in range(n) for j in range(draw(st.integers(0, 2)))}
    return {"orgs": orgs, "accounts": accounts, "entities": entities or None}


@st.composite
def streams(draw: st.DrawFn, registry: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Lines of events (a line with several events is a packed message)."""
    accounts = [*registry["accounts"], "stranger"]
    entities = list(registry["entities"] or {}) or ["nobody"]
    n = draw(st.integers(1, 60))
    high = float(T0)
    events: list[dict[str, Any]] = []
    for i in range(n):
        # never behind the newest event by the lateness: nothing is late
        ts = max(T0, high + draw(st.integers(-(LATENESS - 1), 9000)))
        high = max(high, ts)
        kind = draw(st.sampled_from(KINDS))
        event: dict[str, Any] = {"id": f"ev{i}", "ts": ts + draw(st.sampled_from([0, 0.25])),
                                 "kind": kind, "actor": draw(st.sampled_from(accounts))}
        if kind != "post":
            event["target"] = draw(st.sampled_from(accounts))
        if kind in ("post", "reply"):
            event["mentions"] = draw(st.lists(st.sampled_from(accounts), max_size=2))
        if kind == "post":
            event["features"] = draw(st.lists(st.sampled_from(entities), max_size=2))
        events.append(event)
    lines: list[list[dict[str, Any]]] = []
    while events:
        size = draw(st.sampled_from([1, 1, 1, 2, 3]))
        lines.append(events[:size])
        if draw(st.integers(0, 9)) == 0:
            # a producer's retry: the same message again, same key (duplicate ids
            # are recognised when copies share a key, docs/pipeline.md#duplicates)
            lines.append(events[:size])
        events = events[size:]
    return lines


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT)


def _matches(url: str, expected: Result) -> Exception | None:
    store = open_backend(url)
    try:
        assert_store_matches(store, expected)
        assert_rollups_match(store, expected)
    except (AssertionError, StoreError) as exc:  # not there yet (or never: then it fails)
        return exc
    finally:
        store.close()
    return None


def run_case(broker: EmbeddedBroker, clickhouse_url: str, tmp: Path,
             keys: list[bytes | None], partitions: int, workers: int) -> None:
    """Produce ``tmp/events.jsonl`` (line i keyed by ``keys[i]``, None: by its
    event id) to a fresh topic while ``workers`` worker processes run, and wait
    until the store equals the reference (or fail with the difference)."""
    expected = recompute(tmp / "events.jsonl", tmp / "registry.yaml", PARAMS)
    assert not expected.late
    lines = (tmp / "events.jsonl").read_bytes().splitlines()
    name = f"prop-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(clickhouse_url)  # a fresh database per example
    url = urlunsplit(parts._replace(path=f"/{parts.path.strip('/')}_{name[5:]}"))
    ensure_pipeline_topics(Settings(broker=broker.url, topic=name, dlq_topic=f"{name}.dlq",
                                    alerts_topic=f"{name}.alerts", app_id=name,
                                    partitions=partitions))
    env = {**os.environ, **ENV, "RECIPROCITY_BROKER": broker.url, "RECIPROCITY_TOPIC": name,
           "RECIPROCITY_DLQ_TOPIC": f"{name}.dlq", "RECIPROCITY_ALERTS_TOPIC": f"{name}.alerts",
           "RECIPROCITY_PARTITIONS": str(partitions), "RECIPROCITY_CLICKHOUSE_URL": url,
           "RECIPROCITY_REGISTRY": str(tmp / "registry.yaml"), "RECIPROCITY_APP_ID": name,
           "RECIPROCITY_SESSION_TIMEOUT_S": "6", "RECIPROCITY_HEARTBEAT_INTERVAL_S": "1",
           "RECIPROCITY_REBALANCE_TIMEOUT_S": "20", "RECIPROCITY_IDLE_TIMEOUT_S": "2",
           "RECIPROCITY_BATCH_WITHIN_S": "0.2", "RECIPROCITY_LOG_LEVEL": "INFO"}
    procs = [_worker(env, tmp / f"w{i}.log") for i in range(workers)]
    try:
        writer = KafkaEventWriter([broker.bootstrap], name)
        try:
            for line, key in zip(lines, keys, strict=True):
                writer.send(line, key=key)
            writer.flush()
        finally:
            writer.close()
        deadline = time.monotonic() + 90
        problem = _matches(url, expected)
        while problem is not None and time.monotonic() < deadline:
            for i, proc in enumerate(procs):
                assert proc.poll() is None, (tmp / f"w{i}.log").read_text()[-3000:]
            time.sleep(1)
            problem = _matches(url, expected)
        if problem is not None:
            raise problem
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.timeout(120 * (settings.get_profile(PROFILE).max_examples + 5))
@settings(settings.get_profile(PROFILE))
@given(data=st.data())
def test_streaming_equals_batch(data: st.DataObject, broker: EmbeddedBroker,
                                clickhouse_url: str, tmp_path_factory: pytest.TempPathFactory
                                ) -> None:
    registry = data.draw(registries(), "registry")
    lines = data.draw(streams(registry), "stream")
    partitions = data.draw(st.integers(1, 3), "partitions")
    workers = data.draw(st.integers(1, 2), "workers")
    tmp = tmp_path_factory.mktemp("prop")
    (tmp / "registry.yaml").write_text(yaml.safe_dump(registry))
    body = [orjson.dumps(line[0] if len(line) == 1 else line) for line in lines]
    (tmp / "events.jsonl").write_bytes(b"\n".join(body) + b"\n")
    keys: list[bytes | None] = [events[0]["id"].encode() for events in lines]
    run_case(broker, clickhouse_url, tmp, keys, partitions, workers)


def test_two_workers_three_partitions(broker: EmbeddedBroker, clickhouse_url: str,
                                      tmp_path: Path) -> None:
    """A fixed larger case that always runs the way the compose file does: two
    workers, three partitions, simulated events with duplicates and bad lines."""
    write_case(tmp_path, n_events=800, seed=21)
    lines = (tmp_path / "events.jsonl").read_bytes().splitlines()
    kept = [line for line in lines if line.strip()]
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(kept) + b"\n")
    run_case(broker, clickhouse_url, tmp_path, [None] * len(kept), partitions=3, workers=2)
