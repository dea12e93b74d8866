"""``reciprocity produce bluesky`` from the CLI against a local Jetstream-speaking
server on loopback, feeding a running worker: the store ends up with exactly
what the batch reference computes from the events the frames map to."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from schemas.event import encode_event
from schemas.registry import dump_registry
from tests.integration.producers.test_bluesky_live import (
    FRAMES,
    REGISTRY,
    FakeJetstream,
    expected_events,
    serve,
)
from tests.reference_analytics import recompute
from tests.support.live import live_workers

pytestmark = pytest.mark.e2e


class ServerThread:
    """A FakeJetstream served from its own event loop in a thread."""

    def __init__(self) -> None:
        self.server = FakeJetstream()
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            async with serve(self.server) as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()

        self.loop.run_until_complete(main())

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def publish(self, frames: list[bytes]) -> None:
        self.loop.call_soon_threadsafe(self.server.publish, frames)

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def jetstream() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


def test_bluesky_cli_feeds_the_running_pipeline(broker: EmbeddedBroker, clickhouse_url: str,
                                                tmp_path: Path, jetstream: ServerThread) -> None:
    registry = tmp_path / "registry.yaml"
    registry.write_text(dump_registry(REGISTRY))
    events = expected_events(FRAMES)
    (tmp_path / "events.jsonl").write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    expected = recompute(tmp_path / "events.jsonl", registry)
    with live_workers(broker, clickhouse_url, registry, tmp_path) as stack:
        producer = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "produce", "bluesky", "--url", jetstream.url,
             "--cursor-file", str(tmp_path / "bsky.cursor"), "--broker", broker.url],
            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 30
            while not jetstream.server.requests:  # connected: frames now go out live
                assert producer.poll() is None, producer.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the producer never connected"
                time.sleep(0.1)
            jetstream.publish(FRAMES)
            stack.wait_until_matches(expected)
        finally:
            producer.send_signal(signal.SIGTERM)
            out, err = producer.communicate(timeout=30)
        assert producer.returncode == 0, err[-3000:]
        counts = dict(line.decode().rsplit(maxsplit=1) for line in out.splitlines()
                      if line.strip() and not line.startswith(b" "))
        assert int(counts["produced"]) == len(events)
        assert int(counts["dead-lettered"]) == 1  # the like without its record
        # delivered counts events and dead letters the brokers acknowledged
        assert int(counts["delivered"]) == len(events) + 1 and int(counts["failed"]) == 0
        assert (tmp_path / "bsky.cursor").is_file()  # resumable
