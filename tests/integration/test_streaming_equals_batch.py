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
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.broker import EmbeddedBroker
from producers.kafka_writer import KafkaEventWriter
from tests.reference_analytics import Params, recompute
from tests.support.files import write_case
from tests.support.live import live_workers

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


def run_case(broker: EmbeddedBroker, clickhouse_url: str, tmp: Path,
             keys: list[bytes | None], partitions: int, workers: int) -> None:
    """Produce ``tmp/events.jsonl`` (line i keyed by ``keys[i]``, None: by its
    event id) to a fresh topic while ``workers`` worker processes run, and wait
    until the store equals the reference (or fail with the difference)."""
    expected = recompute(tmp / "events.jsonl", tmp / "registry.yaml", PARAMS)
    assert not expected.late
    lines = (tmp / "events.jsonl").read_bytes().splitlines()
    with live_workers(broker, clickhouse_url, tmp / "registry.yaml", tmp, partitions, workers,
                      ENV) as stack:
        writer = KafkaEventWriter([broker.bootstrap], stack.topic)
        try:
            for line, key in zip(lines, keys, strict=True):
                writer.send(line, key=key)
            writer.flush()
        finally:
            writer.close()
        stack.wait_until_matches(expected)


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
