"""A new worker continues from the pair states it recovers from the changelogs.

The pair table holds a snapshot per pair plus deltas (docs/pipeline.md). A
first ``reciprocity run`` worker processes the first part of a stream in small
batches, so busy pairs get deltas on top of their snapshots, and stops. A
second worker on the same topic, group and database starts with nothing in
memory: Faust recovers the tables from their changelogs on the real Tansu
broker, the pair stage replays each snapshot's deltas, and the rest of the
stream then returns, snubs and extends engagements the first worker left
pending. The store must equal the batch reference over the whole stream: an
engagement lost or doubled in the recovered states would change a figure.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.broker import EmbeddedBroker
from pipeline.sinks import StoreError, open_backend
from producers.kafka_writer import KafkaEventWriter
from producers.simulator import build_institution, simulate_events
from schemas.event import ENGAGEMENT_KINDS, encode_event
from schemas.registry import dump_registry
from tests.reference_analytics import Params, recompute
from tests.support.compare import store_pairs
from tests.support.live import live_workers

pytestmark = pytest.mark.integration

T0 = 1772409600.0  # 2026-03-02T00:00:00Z
PARAMS = Params(horizon_s=7200, lateness_s=300, drop_days=2, drop_min_baseline=1.0)
ENV = {"RECIPROCITY_HORIZON": "2h", "RECIPROCITY_LATENESS": "5m",
       "RECIPROCITY_DROP_DAYS": "2", "RECIPROCITY_DROP_MIN_BASELINE": "1",
       # small batches: a busy pair changes in many of them, so it gets deltas
       "RECIPROCITY_BATCH_MAX": "10",
       # table recovery on Tansu reads changelogs only that far (PLATFORM.md)
       "RECIPROCITY_PRODUCER_MAX_BATCH_BYTES": "1"}


def engagements(pairs: dict[Any, dict[str, Any]]) -> int:
    return sum(f[k] for key, f in pairs.items() if key[0] == "1d"
               for k in ENGAGEMENT_KINDS if k in f)


def send(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    writer = KafkaEventWriter([bootstrap], topic)
    try:
        for line in lines:
            writer.send(line)
        writer.flush()
    finally:
        writer.close()


def test_a_new_worker_continues_from_recovered_snapshots_and_deltas(
        broker: EmbeddedBroker, clickhouse_url: str, tmp_path: Path) -> None:
    inst = build_institution(seed=21, n_orgs=6)
    registry = tmp_path / "registry.yaml"
    registry.write_text(dump_registry(inst.registry))
    # in event-time order, so the second part is never behind the first's watermark
    lines = [encode_event(e) for e in simulate_events(inst, 1500, T0, 2, 21)]
    cut = len(lines) * 3 // 5
    (tmp_path / "first.jsonl").write_bytes(b"\n".join(lines[:cut]) + b"\n")
    (tmp_path / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    first = recompute(tmp_path / "first.jsonl", registry, PARAMS)
    expected = recompute(tmp_path / "events.jsonl", registry, PARAMS)
    assert not expected.late and expected.snubs and engagements(first.pairs) > 300

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    # the first worker never declares its partitions idle: the watermark stays
    # where the first part leaves it, and engagements stay pending across the stop
    with live_workers(broker, clickhouse_url, registry, tmp_path / "one",
                      extra_env={**ENV, "RECIPROCITY_IDLE_TIMEOUT_S": "3600"}) as one:
        send(broker.bootstrap, one.topic, lines[:cut])
        deadline = time.monotonic() + 90
        while True:
            store = open_backend(one.url)
            try:
                got = engagements(store_pairs(store))
            except StoreError:
                got = 0  # the worker has not created its database yet
            finally:
                store.close()
            if got == engagements(first.pairs):
                break
            assert one.procs[0].poll() is None, one.logs[0].read_text()[-3000:]
            assert time.monotonic() < deadline, f"{got} of {engagements(first.pairs)} stored"
            time.sleep(1)
    log = one.logs[0].read_text()
    assert "Traceback" not in log, log[-3000:]

    with live_workers(broker, clickhouse_url, registry, tmp_path / "two", extra_env=ENV,
                      name=one.topic) as two:
        send(broker.bootstrap, two.topic, lines[cut:])
        two.wait_until_matches(expected)
