"""Two workers, the way the compose file runs them (separate processes, separate
web ports, one consumer group), give the same results as one worker; each
serves /health and a token-protected /metrics while it runs."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import EmbeddedBroker, free_port
from pipeline.report import alert_rows, omission_rows, org_rows, pair_rows, snub_rows
from pipeline.sinks import open_backend
from producers.kafka_writer import KafkaEventWriter
from tests.reference_analytics import Params, recompute
from tests.support.files import write_case
from tests.support.live import LiveStack, live_workers

pytestmark = pytest.mark.integration
TOKEN = "metrics-token-for-tests"  # noqa: S105 - a test token on loopback
ENV = {"RECIPROCITY_HORIZON": "2h", "RECIPROCITY_WEB_TOKEN": TOKEN}
PARAMS = Params(horizon_s=7200)


def produce(broker: EmbeddedBroker, stack: LiveStack, events: Path) -> None:
    writer = KafkaEventWriter([broker.bootstrap], stack.topic)
    try:
        for line in events.read_bytes().splitlines():
            if line.strip():
                writer.send(line)
        writer.flush()
    finally:
        writer.close()


def snapshot(url: str) -> dict[str, Any]:
    store = open_backend(url)
    try:
        return {"pairs_1h": pair_rows(store, "1h"), "pairs_1d": pair_rows(store, "1d"),
                "snubs": snub_rows(store), "omissions": omission_rows(store),
                "alerts": alert_rows(store), "orgs": org_rows(store, "1d")}
    finally:
        store.close()


def get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310 - loopback
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_two_workers_equal_one(broker: EmbeddedBroker, clickhouse_url: str,
                               tmp_path: Path) -> None:
    events, registry, _ = write_case(tmp_path, n_events=1200, seed=31)
    expected = recompute(events, registry, PARAMS)
    with live_workers(broker, clickhouse_url, registry, tmp_path, partitions=4, workers=1,
                      extra_env=ENV) as one:
        produce(broker, one, events)
        one.wait_until_matches(expected)
        single = snapshot(one.url)
    ports = [free_port(), free_port()]
    with live_workers(broker, clickhouse_url, registry, tmp_path, partitions=4, workers=2,
                      extra_env=ENV, web_ports=ports) as two:
        produce(broker, two, events)
        two.wait_until_matches(expected)
        for port in ports:
            status, body = get(port, "/health")
            assert status == 200 and b'"ok"' in body
            assert get(port, "/metrics")[0] == 401  # the token is required
            status, body = get(port, "/metrics", TOKEN)
            assert status == 200
            assert b"reciprocity_events_total" in body and b"reciprocity_up 1.0" in body
            assert b"reciprocity_consumer_lag" in body
        double = snapshot(two.url)
    assert double == single
    assert single["pairs_1h"] and single["snubs"] and single["omissions"]
