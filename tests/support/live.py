"""Live workers for tests: real ``reciprocity run`` processes on a fresh topic,
consumer group and database, and a wait until the store equals the reference."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pipeline.broker import EmbeddedBroker
from pipeline.runner import ensure_pipeline_topics
from pipeline.settings import Settings
from pipeline.sinks import StoreError, open_backend
from tests.reference_analytics import Result
from tests.support.compare import assert_rollups_match, assert_store_matches


@dataclass
class LiveStack:
    topic: str
    url: str
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]]
    logs: list[Path]

    def wait_until_matches(self, expected: Result, timeout_s: float = 90) -> None:
        """Poll the store until every figure equals ``expected``; fail with the
        last difference after ``timeout_s``, or as soon as a worker exits."""
        deadline = time.monotonic() + timeout_s
        problem = matches(self.url, expected)
        while problem is not None and time.monotonic() < deadline:
            for proc, log in zip(self.procs, self.logs, strict=True):
                assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(1)
            problem = matches(self.url, expected)
        if problem is not None:
            raise problem


def matches(url: str, expected: Result) -> Exception | None:
    store = open_backend(url)
    try:
        assert_store_matches(store, expected)
        assert_rollups_match(store, expected)
    except (AssertionError, StoreError) as exc:  # not there yet (or never: then it fails)
        return exc
    finally:
        store.close()
    return None


@contextlib.contextmanager
def live_workers(broker: EmbeddedBroker, clickhouse_url: str, registry: Path, tmp: Path,
                 partitions: int = 2, workers: int = 1,
                 extra_env: dict[str, str] | None = None,
                 web_ports: list[int] | None = None,
                 name: str | None = None) -> Iterator[LiveStack]:
    """Start ``workers`` worker processes on a fresh topic (created with
    ``partitions``), consumer group and database; stop them on exit. With
    ``web_ports``, worker i serves /health and /metrics on ``web_ports[i]``.
    With the ``name`` of an earlier stack (``LiveStack.topic``), the workers
    continue that stack's topic, group and database instead."""
    name = name or f"live-{uuid.uuid4().hex[:8]}"
    parts = urlsplit(clickhouse_url)
    url = urlunsplit(parts._replace(path=f"/{parts.path.strip('/')}_{name[5:]}"))
    ensure_pipeline_topics(Settings(broker=broker.url, topic=name, dlq_topic=f"{name}.dlq",
                                    alerts_topic=f"{name}.alerts", app_id=name,
                                    partitions=partitions))
    env = {**os.environ, "RECIPROCITY_BROKER": broker.url, "RECIPROCITY_TOPIC": name,
           "RECIPROCITY_DLQ_TOPIC": f"{name}.dlq", "RECIPROCITY_ALERTS_TOPIC": f"{name}.alerts",
           "RECIPROCITY_SOURCE_DLQ_TOPIC": f"{name}.source-dlq",
           "RECIPROCITY_PARTITIONS": str(partitions), "RECIPROCITY_CLICKHOUSE_URL": url,
           "RECIPROCITY_REGISTRY": str(registry), "RECIPROCITY_APP_ID": name,
           "RECIPROCITY_SESSION_TIMEOUT_S": "6", "RECIPROCITY_HEARTBEAT_INTERVAL_S": "1",
           "RECIPROCITY_REBALANCE_TIMEOUT_S": "20", "RECIPROCITY_IDLE_TIMEOUT_S": "2",
           "RECIPROCITY_BATCH_WITHIN_S": "0.2", "RECIPROCITY_LOG_LEVEL": "INFO",
           **(extra_env or {})}
    logs = [tmp / f"worker{i}.log" for i in range(workers)]
    procs = []
    for i, log in enumerate(logs):
        own = dict(env)
        if web_ports is not None:
            own.update(RECIPROCITY_WEB_ENABLED="true", RECIPROCITY_WEB_PORT=str(web_ports[i]))
        with open(log, "wb") as out:  # the child keeps its own descriptor
            # cwd: Faust keeps its table data in ``{app_id}-data`` there
            procs.append(subprocess.Popen([sys.executable, "-m", "pipeline.cli", "run"],
                                          env=own, stdout=out, stderr=subprocess.STDOUT,
                                          cwd=tmp))
    try:
        yield LiveStack(name, url, env, procs, logs)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
