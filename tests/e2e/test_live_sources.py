"""``reciprocity produce bluesky`` from the CLI against a local Jetstream-speaking
server on loopback, feeding a running worker: the store ends up with exactly
what the batch reference computes from the events the frames map to."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
    """An async server context (``serve()`` -> its URL) run on its own event
    loop in a thread, so a CLI subprocess can talk to it."""

    def __init__(self, serve: Callable[[], Any]) -> None:
        self.serve = serve
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            async with self.serve() as url:
                self.url = url
                self._ready.set()
                await self._stop.wait()

        self.loop.run_until_complete(main())

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def call(self, fn: Callable[..., Any], *args: Any) -> None:
        self.loop.call_soon_threadsafe(fn, *args)

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def test_bluesky_cli_feeds_the_running_pipeline(broker: EmbeddedBroker, clickhouse_url: str,
                                                tmp_path: Path) -> None:
    server = FakeJetstream()
    with ServerThread(lambda: serve(server)) as jetstream:
        run_bluesky(broker, clickhouse_url, tmp_path, server, jetstream)


def run_bluesky(broker: EmbeddedBroker, clickhouse_url: str, tmp_path: Path,
                server: FakeJetstream, jetstream: ServerThread) -> None:
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
            while not server.requests:  # connected: frames now go out live
                assert producer.poll() is None, producer.communicate()[1][-2000:]
                assert time.monotonic() < deadline, "the producer never connected"
                time.sleep(0.1)
            jetstream.call(server.publish, FRAMES)
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


def test_mastodon_cli_feeds_the_running_pipeline(broker: EmbeddedBroker, clickhouse_url: str,
                                                 tmp_path: Path) -> None:
    """``reciprocity produce mastodon`` with a tokens file, against a local
    server speaking Mastodon's streaming protocol, feeding a running worker."""
    from schemas.registry import parse_registry
    from tests.integration.producers.test_mastodon_live import (
        MED_ID,
        UNI_ID,
        Conn,
        FakeMastodon,
        Instance,
        acct,
        frame,
        notif,
        status,
    )

    registry = parse_registry({
        "orgs": [{"id": "uni", "name": "U"}, {"id": "med", "name": "M"},
                 {"id": "natlab", "name": "N"}],
        "accounts": {
            "med_news": {"org": "med", "identities": ["mednews@mastodon.social"]},
            "uni_main": {"org": "uni", "identities": ["uni@uni.social"]},
            "natlab_acc": {"org": "natlab", "identities": ["natlab@fediscience.org"]},
        },
    })
    registry_path = tmp_path / "registry.yaml"
    registry_path.write_text(dump_registry(registry))
    frames = [
        frame("notification", notif("11", "favourite", "natlab@fediscience.org",
                                    status("2", acct("mednews", MED_ID)))),
        frame("notification", notif("12", "reblog", "uni@uni.social",
                                    status("3", acct("mednews", MED_ID)))),
        frame("notification", notif("13", "follow", "natlab@fediscience.org")),
        frame("notification", notif("14", "mention", "uni@uni.social", status(
            "4", acct("uni", UNI_ID), "<p>Thanks <span>@mednews</span>!</p>", reply_to=MED_ID,
            mentions=[{"id": MED_ID, "acct": "mednews"}]))),
        b"{broken",
    ]
    token = "tok-med-e2e"  # noqa: S105 - a test token for the local fake server
    server = FakeMastodon({token: Instance(MED_ID, "mednews", script=[Conn(frames)])})

    @contextlib.asynccontextmanager
    async def serve_mastodon() -> Any:
        async with server:
            yield server.base

    with ServerThread(serve_mastodon):
        run_mastodon(broker, clickhouse_url, tmp_path, registry, registry_path, frames,
                     server.base, token)


def run_mastodon(broker: EmbeddedBroker, clickhouse_url: str, tmp_path: Path, registry: Any,
                 registry_path: Path, frames: list[bytes], base: str, token: str) -> None:
    from producers.mastodon import load_accounts, mapper_factory
    from producers.thanks import ThanksRule

    tokens = tmp_path / "tokens.yaml"
    tokens.write_text(f"med_news:\n  instance: {base}\n  token: {token}\n")
    tokens.chmod(0o600)
    accounts = load_accounts(tokens, registry=registry)
    mapper = mapper_factory(registry, accounts, ThanksRule())(accounts[0])
    events = [m.event for m in map(mapper.map_message, frames) if m.event is not None]
    assert len(events) == 4
    (tmp_path / "events.jsonl").write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    expected = recompute(tmp_path / "events.jsonl", registry_path)
    with live_workers(broker, clickhouse_url, registry_path, tmp_path) as stack:
        producer = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli", "produce", "mastodon", "--tokens",
             str(tokens), "--broker", broker.url],
            env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            stack.wait_until_matches(expected)
        finally:
            producer.send_signal(signal.SIGTERM)
            out, err = producer.communicate(timeout=30)
        assert producer.returncode == 0, err[-3000:]
        assert token.encode() not in out + err  # the secret is never printed
        counts = dict(line.decode().rsplit(maxsplit=1) for line in out.splitlines()
                      if line.strip() and not line.startswith(b" "))
        assert int(counts["produced"]) == 4 and int(counts["dead-lettered"]) == 1
