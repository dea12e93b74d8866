"""Mastodon streamer against a real aiohttp server speaking the streaming protocol.

The fake instance (127.0.0.1, a free port) checks the bearer token on every
request, sends frames whose payload is JSON text, serves the REST endpoints
the streamer uses (verify_credentials, v2 instance, notifications and account
statuses with ``min_id`` paging) and follows a per-account script: which
frames each websocket connection sends, then whether it drops the connection.
Items "created while disconnected" only become visible to the REST API once
the next connection has started.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from producers.mastodon import MastodonAccount, MastodonStreamer, mapper_factory
from producers.output import ListOutput
from schemas.event import Event, parse_ts
from schemas.registry import Registry, parse_registry

TS = "2026-03-02T10:00:00.000Z"
MED_ID, UNI_ID = "100", "200"
HOST = "127.0.0.1"


@dataclass
class Conn:
    frames: list[bytes] = field(default_factory=list)
    drop: bool = False  # close the TCP connection (no close frame) after the frames
    refuse: int | None = None  # answer the handshake with this HTTP status instead


@dataclass
class Instance:
    """What the fake server knows of one token's account."""

    id: str
    acct: str
    script: list[Conn] = field(default_factory=list)
    #: REST-visible notifications / own statuses: (visible from connection n, item)
    notifications: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    statuses: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    verify_status: int = 200
    stream_status: int | None = None  # refuse every stream handshake with this status
    connections: int = 0  # handshakes accepted
    attempts: int = 0


class FakeMastodon:
    def __init__(self, accounts: dict[str, Instance], *, query_tokens: bool = False) -> None:
        self.accounts = accounts
        self.query_tokens = query_tokens
        self.requests: list[tuple[str, dict[str, str], bool]] = []  # path, query, had header
        self.streams: list[str] = []
        self.base = ""
        self.app = web.Application()
        self.app.router.add_get("/api/v1/accounts/verify_credentials", self.verify)
        self.app.router.add_get("/api/v2/instance", self.instance)
        self.app.router.add_get("/api/v1/notifications", self.notifications)
        self.app.router.add_get("/api/v1/accounts/{id}/statuses", self.statuses)
        self.app.router.add_get("/api/v1/streaming", self.streaming)
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> FakeMastodon:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((HOST, 0))
        self.base = f"http://{HOST}:{sock.getsockname()[1]}"
        self._runner = web.AppRunner(self.app, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def token_of(self, request: web.Request, allow_query: bool = False) -> str | None:
        header = request.headers.get("Authorization", "")
        self.requests.append((request.path, dict(request.query), bool(header)))
        if header.startswith("Bearer "):
            return header.removeprefix("Bearer ")
        if allow_query and self.query_tokens:
            return request.query.get("access_token")
        return None

    def account(self, request: web.Request, allow_query: bool = False) -> Instance:
        token = self.token_of(request, allow_query)
        if token is None or token not in self.accounts:
            raise web.HTTPUnauthorized(text='{"error": "The access token is invalid"}')
        return self.accounts[token]

    async def verify(self, request: web.Request) -> web.Response:
        acc = self.account(request)
        if acc.verify_status != 200:
            return web.json_response({"error": "refused"}, status=acc.verify_status)
        return web.json_response({"id": acc.id, "acct": acc.acct, "username": acc.acct})

    async def instance(self, request: web.Request) -> web.Response:
        return web.json_response({"domain": HOST, "configuration": {"urls": {
            "streaming": self.base.replace("http://", "ws://")}}})

    @staticmethod
    def page(request: web.Request, acc: Instance,
             items: list[tuple[int, dict[str, Any]]]) -> web.Response:
        def key(item: dict[str, Any]) -> tuple[int, str]:
            return (len(item["id"]), item["id"])

        visible = sorted((i for after, i in items if acc.connections >= after), key=key)
        limit = int(request.query.get("limit", "20"))
        if "min_id" in request.query:
            floor = (len(request.query["min_id"]), request.query["min_id"])
            chosen = [i for i in visible if key(i) > floor][:limit]
        else:
            chosen = visible[-limit:]
        return web.json_response(list(reversed(chosen)))  # newest first, like Mastodon

    async def notifications(self, request: web.Request) -> web.Response:
        acc = self.account(request)
        return self.page(request, acc, acc.notifications)

    async def statuses(self, request: web.Request) -> web.Response:
        acc = self.account(request)
        assert request.match_info["id"] == acc.id
        return self.page(request, acc, acc.statuses)

    async def streaming(self, request: web.Request) -> web.StreamResponse:
        acc = self.account(request, allow_query=True)
        acc.attempts += 1
        if acc.stream_status is not None:
            return web.json_response({"error": "refused"}, status=acc.stream_status)
        conn = acc.script[acc.connections] if acc.connections < len(acc.script) else Conn()
        if conn.refuse is not None:
            acc.script.pop(acc.connections)
            return web.json_response({"error": "busy"}, status=conn.refuse)
        self.streams.append(request.query.get("stream", ""))
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        acc.connections += 1
        for raw in conn.frames:
            await ws.send_str(raw.decode())
        if conn.drop:
            await asyncio.sleep(0.02)
            assert request.transport is not None
            request.transport.close()  # abrupt: no close frame
            return ws
        async for _ in ws:  # hold the connection until the client goes
            pass
        return ws


# -- payloads --------------------------------------------------------------------


def acct(handle: str, account_id: str = "900") -> dict[str, Any]:
    return {"id": account_id, "acct": handle, "url": f"https://x.org/@{handle}"}


MED = acct("mednews", MED_ID)


def status(sid: str, author: dict[str, Any], content: str = "<p>hi</p>",
           reply_to: str | None = None,
           mentions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": sid, "uri": f"https://{HOST}/statuses/{sid}", "content": content,
            "created_at": TS, "account": author, "in_reply_to_account_id": reply_to,
            "mentions": mentions or [], "spoiler_text": ""}


def notif(nid: str, ntype: str, actor: str, st: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": nid, "type": ntype, "created_at": TS, "account": acct(actor)}
    if st is not None:
        out["status"] = st
    return out


def frame(event: str, payload: dict[str, Any]) -> bytes:
    return orjson.dumps({"stream": ["user"], "event": event,
                         "payload": orjson.dumps(payload).decode()})


def ev(local_id: str, kind: str, actor: str, target: str | None, subject: str | None = None,
       mentions: tuple[str, ...] = ()) -> Event:
    return Event(f"masto:{HOST}:{local_id}", parse_ts(TS), kind, actor, target, mentions,
                 subject=subject, platform="mastodon")


def uri(sid: str) -> str:
    return f"https://{HOST}/statuses/{sid}"


@pytest.fixture(scope="module")
def registry() -> Registry:
    return parse_registry({
        "orgs": [{"id": "uni", "name": "U"}, {"id": "med", "name": "M"},
                 {"id": "natlab", "name": "N"}],
        "accounts": {
            "med_news": {"org": "med", "identities": ["mednews@mastodon.social"]},
            "uni_main": {"org": "uni", "identities": ["uni@uni.social"]},
            "natlab_acc": {"org": "natlab", "identities": ["natlab@fediscience.org"]},
            "lab_revoked": "natlab",
            "lab_nostream": "natlab",
        },
    })


class FlushCountingOutput(ListOutput):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1


async def run_until(streamer: MastodonStreamer, done: Callable[[], bool],
                    timeout: float = 3.0) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(streamer.run(stop))
    deadline = time.monotonic() + timeout
    while not done() and not task.done():
        assert time.monotonic() < deadline, "timed out waiting for the stream"
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # anything extra (duplicates) would arrive now
    stop.set()
    await asyncio.wait_for(task, 2.0)


# -- the main scenario -------------------------------------------------------------

N_OLD = notif("10", "favourite", "natlab@fediscience.org", status("1", MED))
N_LIKE = notif("11", "favourite", "natlab@fediscience.org", status("2", MED))
N_THANKS = notif("12", "mention", "stranger", status(
    "3", acct("stranger"), "<p>Merci <a class='u-url mention'>@<span>mednews</span></a></p>",
    reply_to=MED_ID, mentions=[{"id": MED_ID, "acct": "mednews"}]))
N_GAP = notif("13", "reblog", "natlab@fediscience.org", status("2", MED))
N_FOLLOW = notif("14", "follow", "uni@uni.social")
S_OLD = status("500", MED)
S_POST = status("501", MED, mentions=[{"id": "7", "acct": "natlab@fediscience.org"},
                                      {"id": UNI_ID, "acct": "uni@uni.social"}])
S_GAP = status("502", MED, "<p>see you</p>", reply_to="7",
               mentions=[{"id": "7", "acct": "natlab@fediscience.org"}])
U_LIKE = notif("30", "favourite", "mednews@mastodon.social", status("600", acct("uni", UNI_ID)))
U_MENTION = notif("31", "mention", "mednews@mastodon.social", status(
    "501", MED, mentions=[{"id": "7", "acct": "natlab@fediscience.org"},
                          {"id": UNI_ID, "acct": "uni"}]))

TOKENS = {"med_news": "tok-med-ABC123", "uni_main": "tok-uni-DEF456",
          "lab_revoked": "tok-revoked-GHI789", "lab_nostream": "tok-nostream-JKL012"}


def scenario_server() -> dict[str, Instance]:
    med = Instance(MED_ID, "mednews", script=[
        Conn([frame("notification", N_LIKE), frame("notification", N_THANKS),
              frame("update", S_POST), b"{broken", orjson.dumps(
                  {"stream": ["user"], "event": "delete", "payload": "499"}),
              frame("update", status("900", acct("natlab@fediscience.org")))], drop=True),
        # after the reconnection: a repeat of a delivered notification, then a new one
        Conn([frame("notification", N_THANKS), frame("notification", N_FOLLOW)]),
    ], notifications=[(0, N_OLD), (1, N_LIKE), (1, N_THANKS), (2, N_GAP), (3, N_FOLLOW)],
       statuses=[(0, S_OLD), (1, S_POST), (2, S_GAP)])
    uni = Instance(UNI_ID, "uni", script=[
        Conn(refuse=503), Conn(refuse=503),  # transient: retried with backoff
        Conn([frame("notification", U_LIKE), frame("notification", U_MENTION)]),
    ], notifications=[(1, U_LIKE), (1, U_MENTION)])
    revoked = Instance("300", "revoked", verify_status=401)
    nostream = Instance("400", "nostream", stream_status=401)  # verify passes, stream refuses
    return {TOKENS["med_news"]: med, TOKENS["uni_main"]: uni,
            TOKENS["lab_revoked"]: revoked, TOKENS["lab_nostream"]: nostream}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@dataclass
class Outcome:
    output: FlushCountingOutput
    streamer: MastodonStreamer
    server: FakeMastodon
    instances: dict[str, Instance]
    logs: list[str]
    seconds: float


@pytest.fixture(scope="module")
def outcome(registry: Registry) -> Outcome:
    instances = scenario_server()
    records = _Records()
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(records)
    root.setLevel(logging.DEBUG)

    async def scenario() -> Outcome:
        async with FakeMastodon(instances) as server:
            accounts = [
                MastodonAccount("med_news", "mednews@mastodon.social", server.base,
                                TOKENS["med_news"]),
                MastodonAccount("uni_main", "", server.base, TOKENS["uni_main"]),
                MastodonAccount("lab_revoked", "", server.base, TOKENS["lab_revoked"]),
                MastodonAccount("lab_nostream", "", server.base, TOKENS["lab_nostream"]),
            ]
            output = FlushCountingOutput()
            streamer = MastodonStreamer(accounts, mapper_factory(registry, accounts), output,
                                        backoff=(0.01, 0.05), heartbeat=None, request_timeout=2)
            started = time.monotonic()
            await run_until(streamer,
                            lambda: len(output.events) >= 7 and len(streamer.stopped) == 2)
            return Outcome(output, streamer, server, instances, records.lines,
                           time.monotonic() - started)

    try:
        return asyncio.run(scenario())
    finally:
        root.removeHandler(records)
        root.setLevel(old_level)


MED_EVENTS = [
    ev("11", "like", "natlab_acc", "med_news", uri("2")),
    ev("12", "thanks", "stranger@mastodon.social", "med_news", uri("3")),  # not in the registry
    ev("status:501", "post", "med_news", None, uri("501"), ("natlab_acc", "uni_main")),
    # -- dropped; reconnected; backfilled from the last ids seen:
    ev("13", "share", "natlab_acc", "med_news", uri("2")),
    ev("status:502", "reply", "med_news", "natlab_acc", uri("502")),
    # -- then the stream again (its repeat of notification 12 is dropped)
    ev("14", "follow", "uni_main", "med_news"),
]
UNI_EVENTS = [ev("30", "like", "med_news", "uni_main", uri("600"))]


def test_exact_events_in_stream_order(outcome: Outcome) -> None:
    events = outcome.output.events
    assert [e for e in events if e in MED_EVENTS] == MED_EVENTS
    assert sorted(events, key=lambda e: e.id) == sorted(MED_EVENTS + UNI_EVENTS,
                                                        key=lambda e: e.id)


def test_no_duplicates_and_every_frame_accounted_for(outcome: Outcome) -> None:
    ids = [e.id for e in outcome.output.events]
    assert len(ids) == len(set(ids))
    counts = outcome.output.counts
    assert counts.reasons == {"duplicate": 1, "invalid_json": 1, "ignored_event": 1,
                              "not_own_status": 1, "author_streamed": 1}
    assert outcome.output.dead == [(b"{broken", "invalid_json", "mastodon")]
    assert outcome.output.flushes == 1


def test_reconnects_and_backfills_the_gap(outcome: Outcome) -> None:
    med = outcome.instances[TOKENS["med_news"]]
    assert med.connections == 2 and outcome.streamer.connections["med_news"] == 2
    uni = outcome.instances[TOKENS["uni_main"]]
    assert (uni.attempts, uni.connections) == (3, 1)  # two refusals (503), then connected
    backfills = [(path, query) for path, query, _ in outcome.server.requests
                 if "min_id" in query]
    assert backfills == [
        ("/api/v1/notifications", {"min_id": "12", "limit": "40"}),
        (f"/api/v1/accounts/{MED_ID}/statuses", {"min_id": "501", "limit": "40"}),
    ]
    assert outcome.server.streams == ["user", "user", "user"]


def test_a_refused_token_stops_only_its_account(outcome: Outcome) -> None:
    stopped = outcome.streamer.stopped
    assert set(stopped) == {"lab_revoked", "lab_nostream"}
    assert "401" in stopped["lab_revoked"] and "401" in stopped["lab_nostream"]
    assert outcome.instances[TOKENS["lab_revoked"]].attempts == 0
    assert outcome.instances[TOKENS["lab_nostream"]].attempts == 1  # not retried
    assert "med_news" not in stopped and "uni_main" not in stopped


def test_tokens_in_headers_never_in_urls_or_logs(outcome: Outcome) -> None:
    assert all(had_header for path, _, had_header in outcome.server.requests
               if path != "/api/v2/instance")
    assert all("access_token" not in query for _, query, _ in outcome.server.requests)
    text = "\n".join(outcome.logs)
    assert "lab_nostream" in text  # the refusal was logged ...
    for token in TOKENS.values():
        assert token not in text  # ... without the token


def test_fast(outcome: Outcome) -> None:
    assert outcome.seconds < 3


def test_query_token_fallback_and_notifications_only(registry: Registry) -> None:
    token = "tok-query-XYZ"  # noqa: S105
    instance = Instance(MED_ID, "mednews", script=[Conn([frame("notification", N_LIKE)])])
    records = _Records()
    logging.getLogger("producers.mastodon").addHandler(records)

    async def scenario() -> tuple[ListOutput, FakeMastodon]:
        async with FakeMastodon({token: instance}, query_tokens=True) as server:
            account = MastodonAccount("med_news", "mednews@mastodon.social", server.base, token,
                                      streaming_url=server.base)
            output = ListOutput()
            streamer = MastodonStreamer([account], mapper_factory(registry, [account],
                                                                  posts=False),
                                        output, backoff=(0.01,), posts=False,
                                        token_in_query=True, heartbeat=None)
            await run_until(streamer, lambda: len(output.events) >= 1)
            return output, server

    try:
        output, server = asyncio.run(scenario())
    finally:
        logging.getLogger("producers.mastodon").removeHandler(records)
    assert output.events == [ev("11", "like", "natlab_acc", "med_news", uri("2"))]
    assert server.streams == ["user:notification"]
    stream_requests = [(q, h) for path, q, h in server.requests if path == "/api/v1/streaming"]
    assert stream_requests == [({"stream": "user:notification", "access_token": token}, False)]
    assert not any(path == "/api/v2/instance" for path, _, _ in server.requests)  # configured
    assert not any(token in line for line in records.lines)


def test_run_returns_when_every_account_is_refused(registry: Registry) -> None:
    token = "tok-gone"  # noqa: S105

    async def scenario() -> tuple[FlushCountingOutput, MastodonStreamer]:
        async with FakeMastodon({token: Instance("1", "x", verify_status=401)}) as server:
            accounts = [MastodonAccount("med_news", "", server.base, token),
                        MastodonAccount("uni_main", "", server.base, "tok-unknown")]
            output = FlushCountingOutput()
            streamer = MastodonStreamer(accounts, mapper_factory(registry, accounts), output,
                                        backoff=(0.01,), heartbeat=None)
            await asyncio.wait_for(streamer.run(asyncio.Event()), 2.0)
            return output, streamer

    output, streamer = asyncio.run(scenario())
    assert set(streamer.stopped) == {"med_news", "uni_main"}
    assert output.flushes == 1 and output.events == []


def test_a_token_of_another_account_is_refused(registry: Registry) -> None:
    token = "tok-wrong"  # noqa: S105

    async def scenario() -> MastodonStreamer:
        async with FakeMastodon({token: Instance(UNI_ID, "uni")}) as server:
            account = MastodonAccount("med_news", "mednews@mastodon.social", server.base, token)
            streamer = MastodonStreamer([account], mapper_factory(registry, [account]),
                                        ListOutput(), backoff=(0.01,), heartbeat=None)
            await asyncio.wait_for(streamer.run(asyncio.Event()), 2.0)
            return streamer

    streamer = asyncio.run(scenario())
    assert "belongs to @uni" in streamer.stopped["med_news"]
