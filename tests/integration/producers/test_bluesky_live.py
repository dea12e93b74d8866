"""The Jetstream client against a real websocket server on 127.0.0.1.

``FakeJetstream`` is an aiohttp server speaking enough of Jetstream's
``/subscribe``: recorded v1 frames, ``wantedCollections`` / ``wantedDids``
filters, replay of the frames with ``time_us > cursor`` then live frames, and
on demand a connection dropped mid-stream. The checks are on the exact events
the client hands to its output: no loss, no duplicates within a process, and
across a restart only the documented rewind window produced twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web

from producers.bluesky import (
    FOLLOW,
    LIKE,
    POST,
    REPOST,
    JetstreamClient,
    JetstreamMapper,
    Mapped,
    read_cursor,
    write_cursor,
)
from producers.output import ListOutput
from producers.thanks import ThanksRule
from schemas.event import Event
from schemas.registry import Registry, parse_registry

UNI, MED, CITY = "did:plc:uni111", "did:plc:med222", "did:plc:city333"
STRANGER = "did:plc:stranger999"
T0 = 1_772_445_600_000_000  # 2026-03-02T10:00:00Z
SECOND = 1_000_000
REWIND = 3.0

REGISTRY: Registry = parse_registry({
    "orgs": [{"id": "uni", "name": "Uni"}, {"id": "med", "name": "Med"},
             {"id": "city", "name": "City"}],
    "accounts": {
        "uni_main": {"org": "uni", "identities": [UNI]},
        "med_news": {"org": "med", "identities": [MED]},
        "city_hosp": {"org": "city", "identities": [CITY]},
    },
})


# -- recorded frames (Jetstream /subscribe v1 shape), one per second


def _commit(did: str, time_us: int, operation: str, collection: str, rkey: str,
            record: dict[str, Any] | None = None) -> bytes:
    commit: dict[str, Any] = {"rev": f"rev{time_us}", "operation": operation,
                              "collection": collection, "rkey": rkey}
    if record is not None:
        commit["record"] = {"$type": collection, "createdAt": "2026-03-02T10:00:00Z", **record}
        commit["cid"] = f"bafy{time_us}"
    return orjson.dumps({"did": did, "time_us": time_us, "kind": "commit", "commit": commit})


def _recorded() -> list[bytes]:
    t = iter(range(T0, T0 + 1000 * SECOND, SECOND))
    thanks = "Merci 🎉 @city.example !"
    start = thanks.encode().index(b"@city")
    thanks_facet = {"index": {"byteStart": start, "byteEnd": len(thanks.encode()) - 2},
                    "features": [{"$type": "app.bsky.richtext.facet#mention", "did": CITY}]}
    city_post = f"at://{CITY}/{POST}/3kcity1"
    return [
        _commit(UNI, next(t), "create", FOLLOW, "f1", {"subject": CITY}),
        _commit(MED, next(t), "create", LIKE, "l1", {"subject": {"uri": city_post, "cid": "c"}}),
        orjson.dumps({"did": CITY, "time_us": next(t), "kind": "identity",
                      "identity": {"did": CITY, "handle": "city.example", "seq": 7,
                                   "time": "2026-03-02T10:00:02Z"}}),
        _commit(CITY, next(t), "create", POST, "3kcity1", {"text": "Open day at the hospital"}),
        _commit(MED, next(t), "create", REPOST, "r1", {"subject": {"uri": city_post, "cid": "c"}}),
        _commit(UNI, next(t), "create", POST, "p1", {"text": thanks, "facets": [thanks_facet]}),
        # malformed (a create without its record): dead-lettered, cursor still advances
        _commit(UNI, next(t), "create", LIKE, "l2"),
        _commit(CITY, next(t), "create", POST, "p2", {
            "text": "Agreed", "reply": {"root": {"uri": city_post}, "parent": {
                "uri": f"at://{UNI}/{POST}/p1"}}}),
        orjson.dumps({"did": MED, "time_us": next(t), "kind": "account",
                      "account": {"active": True, "did": MED, "seq": 8,
                                  "time": "2026-03-02T10:00:08Z"}}),
        _commit(UNI, next(t), "delete", FOLLOW, "f1"),
        _commit(MED, next(t), "create", FOLLOW, "f2", {"subject": UNI}),
        _commit(CITY, next(t), "create", POST, "p3", {
            "text": "Look", "embed": {"$type": "app.bsky.embed.record",
                                      "record": {"uri": f"at://{MED}/{POST}/x", "cid": "c"}}}),
        _commit(UNI, next(t), "delete", LIKE, "l9"),
        _commit(MED, next(t), "create", LIKE, "l3", {"subject": {"uri": city_post, "cid": "c"}}),
        # filtered out by the server (wantedDids, wantedCollections)
        _commit(STRANGER, next(t), "create", FOLLOW, "f9", {"subject": UNI}),
        _commit(UNI, next(t), "create", "app.bsky.graph.block", "b1", {"subject": MED}),
    ]


FRAMES = _recorded()


def time_of(raw: bytes) -> int:
    return int(orjson.loads(raw)["time_us"])


def expected_events(frames: list[bytes]) -> list[Event]:
    """What the mapper makes of the frames the server would send, in order."""
    mapper = JetstreamMapper(REGISTRY, ThanksRule())
    out: list[Event] = []
    for raw in frames:
        doc = orjson.loads(raw)
        if doc["did"] == STRANGER or doc.get("commit", {}).get("collection") not in (
                None, FOLLOW, LIKE, REPOST, POST):
            continue
        result = mapper.map(raw)
        if isinstance(result, Mapped):
            out.extend(result.events)
    return out


def test_the_recording_covers_every_kind() -> None:
    events = expected_events(FRAMES)
    assert [(e.kind, e.actor, e.target) for e in events] == [
        ("follow", "uni_main", "city_hosp"),
        ("like", "med_news", "city_hosp"),
        ("post", "city_hosp", None),
        ("share", "med_news", "city_hosp"),
        ("thanks", "uni_main", "city_hosp"),
        ("reply", "city_hosp", "uni_main"),
        ("unfollow", "uni_main", "city_hosp"),
        ("follow", "med_news", "uni_main"),
        ("share", "city_hosp", "med_news"),
        ("like", "med_news", "city_hosp"),
    ]


# -- the fake Jetstream


@dataclass
class FakeJetstream:
    frames: list[bytes] = field(default_factory=list)
    drop_after: int | None = None  # drop the first connection after this many frames
    requests: list[dict[str, Any]] = field(default_factory=list)
    _queues: set[asyncio.Queue[bytes]] = field(default_factory=set)
    _sockets: set[web.WebSocketResponse] = field(default_factory=set)
    _dropped: bool = False

    def publish(self, frames: list[bytes]) -> None:
        """New frames: kept for replays and sent live to the connected clients."""
        self.frames.extend(frames)
        for queue in self._queues:
            for raw in frames:
                queue.put_nowait(raw)

    async def subscribe(self, request: web.Request) -> web.WebSocketResponse:
        cursor = int(request.query["cursor"]) if "cursor" in request.query else None
        collections = set(request.query.getall("wantedCollections", []))
        dids = set(request.query.getall("wantedDids", []))
        self.requests.append({"cursor": cursor, "collections": collections, "dids": dids})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self._sockets.add(ws)
        queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._queues.add(queue)  # before the replay: nothing published meanwhile is missed
        reader = asyncio.ensure_future(self._read_until_closed(ws))
        last = cursor if cursor is not None else time_of(self.frames[-1]) if self.frames else 0
        sent = 0

        def wanted(raw: bytes) -> bool:
            doc = orjson.loads(raw)
            if dids and doc["did"] not in dids:
                return False
            collection = doc.get("commit", {}).get("collection")
            return not (collection and collections and collection not in collections)

        async def send(raw: bytes) -> bool:
            """Send one frame; False when this connection is to be dropped now."""
            nonlocal last, sent
            time_us = time_of(raw)
            if time_us <= last or not wanted(raw):
                return True
            await ws.send_bytes(raw) if sent % 2 else await ws.send_str(raw.decode())
            last, sent = time_us, sent + 1
            if self.drop_after is not None and not self._dropped and sent >= self.drop_after:
                self._dropped = True
                assert request.transport is not None
                request.transport.close()  # abrupt: no websocket close handshake
                return False
            return True

        try:
            # live tail without a cursor (like Jetstream); replay after it with one
            for raw in list(self.frames) if cursor is not None else []:
                if not await send(raw):
                    return ws
            while not reader.done():
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, reader}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    break
                if not await send(get.result()):
                    return ws
        finally:
            self._queues.discard(queue)
            self._sockets.discard(ws)
            reader.cancel()
        return ws

    @staticmethod
    async def _read_until_closed(ws: web.WebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is WSMsgType.ERROR:
                break

    async def close_all(self, _app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close()


@contextlib.asynccontextmanager
async def serve(server: FakeJetstream, port: int = 0) -> Any:
    app = web.Application()
    app.router.add_get("/subscribe", server.subscribe)
    app.on_shutdown.append(server.close_all)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    host, bound = runner.addresses[0][:2]
    try:
        yield f"ws://{host}:{bound}/subscribe"
    finally:
        await runner.cleanup()


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


def make_client(url: str, output: Any, cursor_path: Path, **options: Any) -> JetstreamClient:
    defaults: dict[str, Any] = {"backoff": (0.01, 0.02), "rewind_seconds": REWIND,
                                "checkpoint_frames": 4, "checkpoint_seconds": 0.05}
    return JetstreamClient(url, JetstreamMapper(REGISTRY, ThanksRule()), output, cursor_path,
                           **{**defaults, **options})


async def run_until(client: JetstreamClient, condition: Callable[[], bool],
                    timeout: float = 3.0) -> None:
    stop = asyncio.Event()
    task = asyncio.ensure_future(client.run(stop))
    try:
        await until(lambda: condition() or task.done(), timeout)
    finally:
        stop.set()
        await asyncio.wait_for(task, 3.0)


def ids(events: list[Event]) -> list[str]:
    return [e.id for e in events]


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(coro())


@pytest.fixture
def cursor_path(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "bluesky.cursor"
    write_cursor(path, T0 - 1)  # start with everything recorded
    yield path


# -- tests


def test_a_dropped_connection_loses_nothing_and_duplicates_nothing(cursor_path: Path) -> None:
    expected = expected_events(FRAMES)

    async def scenario() -> None:
        server = FakeJetstream(list(FRAMES), drop_after=7)
        output = ListOutput()
        async with serve(server) as url:
            client = make_client(url, output, cursor_path)
            await run_until(client, lambda: len(output.events) >= len(expected))
        assert ids(output.events) == ids(expected)
        assert output.events == expected
        # the client asked for its collections and the registry's DIDs ...
        first, second = server.requests[:2]
        assert first["collections"] == {FOLLOW, LIKE, REPOST, POST}
        assert first["dids"] == {UNI, MED, CITY}
        assert first["cursor"] == T0 - 1 - 3 * SECOND
        # ... and resumed, after the drop, from the last frame it handled, rewound
        sent = [raw for raw in FRAMES if orjson.loads(raw)["did"] != STRANGER][:7]
        assert second["cursor"] == time_of(sent[-1]) - 3 * SECOND
        assert len(server.requests) == 2
        counts = output.counts
        assert counts.produced == len(expected)
        assert counts.dead_lettered == 1
        assert output.dead == [(FRAMES[6], "invalid_frame", "bluesky")]  # once, replayed or not
        # the rewind replays 3 frames (one of them a post giving one event)
        assert counts.reasons["duplicate"] >= 1
        assert counts.reasons["identity_frame"] == 1 and counts.reasons["account_frame"] == 1
        assert counts.reasons["undo_ignored"] == 1
        assert read_cursor(cursor_path) == time_of(FRAMES[13])  # last frame the server sent

    run(scenario)


@pytest.mark.parametrize("rewind", [0.0, REWIND])
def test_restart_resumes_from_the_cursor_file(cursor_path: Path, rewind: float) -> None:
    first_half, second_half = FRAMES[:8], FRAMES[8:]
    expected_first = expected_events(first_half)
    expected_all = expected_events(FRAMES)

    async def scenario() -> None:
        server = FakeJetstream(list(first_half))
        async with serve(server) as url:
            before = ListOutput()
            client = make_client(url, before, cursor_path, rewind_seconds=rewind)
            await run_until(client, lambda: len(before.events) >= len(expected_first))
            assert before.events == expected_first
            saved = read_cursor(cursor_path)
            assert saved == time_of(first_half[-1])  # flushed, then persisted, on stop

            server.publish(second_half)  # while the connector is down
            after = ListOutput()
            restarted = make_client(url, after, cursor_path, rewind_seconds=rewind)
            replay_from = saved - round(rewind * SECOND)
            # the unfollow of a follow seen before the restart maps too (saved follows)
            expected_after = [e for e in expected_all if round(e.ts * SECOND) > replay_from]
            assert any(e.kind == "unfollow" for e in expected_after)
            await run_until(restarted, lambda: len(after.events) >= len(expected_after))

        assert server.requests[-1]["cursor"] == replay_from
        assert after.events == expected_after
        # nothing lost; produced twice only what the rewind window replays
        assert set(ids(before.events)) | set(ids(after.events)) == set(ids(expected_all))
        overlap = set(ids(before.events)) & set(ids(after.events))
        in_window = {e.id for e in expected_first if round(e.ts * SECOND) > replay_from}
        assert overlap == in_window
        assert (overlap == set()) == (rewind == 0.0)
        assert read_cursor(cursor_path) == time_of(FRAMES[13])

    run(scenario)


class FlakyOutput(ListOutput):
    """Delivers at flush; the ``fail_at``-th flush loses what it was given and raises."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.delivered: list[Event] = []
        self._buffer: list[Event] = []
        self._flushes = 0
        self._fail_at = fail_at

    def send(self, event: Event) -> None:
        super().send(event)
        self._buffer.append(event)

    def flush(self) -> None:
        self._flushes += 1
        buffer, self._buffer = self._buffer, []
        if self._flushes == self._fail_at and buffer:
            raise RuntimeError("broker unavailable")
        self.delivered.extend(buffer)


def test_a_failed_flush_produces_again_what_was_not_delivered(cursor_path: Path) -> None:
    expected = expected_events(FRAMES)

    async def scenario() -> None:
        server = FakeJetstream(list(FRAMES))
        output = FlakyOutput(fail_at=2)
        async with serve(server) as url:
            client = make_client(url, output, cursor_path, checkpoint_frames=3,
                                 checkpoint_seconds=10.0)
            # until the last frame is handed (the rest is delivered by the flush on stop)
            await run_until(client, lambda: client.cursor == time_of(FRAMES[13]))
        assert output.delivered == expected  # each once, in order
        assert len(server.requests) == 2  # reconnected after the failure ...
        assert server.requests[1]["cursor"] == time_of(FRAMES[2]) - 3 * SECOND  # ... from durable
        assert read_cursor(cursor_path) == time_of(FRAMES[13])

    run(scenario)


def test_reconnects_with_backoff_until_the_server_is_up(
        cursor_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    expected = expected_events(FRAMES)
    with socket.socket() as probe:  # a free port, nothing listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario() -> None:
        output = ListOutput()
        client = make_client(f"ws://127.0.0.1:{port}/subscribe", output, cursor_path,
                             backoff=(0.01, 0.02, 0.05))
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await until(lambda: "connection to" in caplog.text)
        async with serve(FakeJetstream(list(FRAMES)), port) as _url:
            await until(lambda: len(output.events) >= len(expected))
            stop.set()
            await asyncio.wait_for(task, 3.0)
        assert output.events == expected

    with caplog.at_level(logging.WARNING, logger="producers.bluesky"):
        run(scenario)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reconnecting in" in w for w in warnings)
    assert not any("wantedDids" in w or "did:plc" in w or "cursor=" in w for w in warnings)


def test_live_frames_after_the_replay_and_a_prompt_stop(cursor_path: Path) -> None:
    async def scenario() -> None:
        server = FakeJetstream(list(FRAMES[:4]))
        output = ListOutput()
        async with serve(server) as url:
            client = make_client(url, output, cursor_path, checkpoint_seconds=60.0,
                                 checkpoint_frames=1000)
            stop = asyncio.Event()
            task = asyncio.ensure_future(client.run(stop))
            await until(lambda: len(output.events) == 3)
            server.publish(FRAMES[4:])
            await until(lambda: len(output.events) == len(expected_events(FRAMES)))
            assert read_cursor(cursor_path) == T0 - 1  # no checkpoint due yet
            started = asyncio.get_running_loop().time()
            stop.set()
            await asyncio.wait_for(task, 3.0)
            assert asyncio.get_running_loop().time() - started < 1.0
        assert output.events == expected_events(FRAMES)
        assert read_cursor(cursor_path) == time_of(FRAMES[13])  # persisted on stop

    run(scenario)
