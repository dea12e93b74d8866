"""WebhookNotifier against a real local HTTP server: delivery, retries, drops,
and that neither a slow receiver nor a dead one ever holds up the caller."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from pipeline.webhook import WebhookNotifier

HOOK_PATH = "/services/T000/B000/s3cr3t-t0ken"
FAST = (0.01, 0.01, 0.01)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1; yields the webhook URL (secret path included).
    The socket is bound here (port 0), so there is no race for a free port."""
    app = web.Application()
    app.router.add_post(HOOK_PATH, handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{port}{HOOK_PATH}"
    finally:
        await runner.cleanup()


class Recorder:
    """A handler that records bodies and answers from a script of statuses
    (then 200 for ever)."""

    def __init__(self, *statuses: int, headers: dict[str, str] | None = None,
                 delay_s: float = 0.0) -> None:
        self.statuses = list(statuses)
        self.headers = headers or {}
        self.delay_s = delay_s
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self.times: list[float] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.times.append(time.monotonic())
        self.content_types.append(request.content_type)
        self.bodies.append(json.loads(await request.read()))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok",
                            headers=self.headers if status != 200 else None)


async def until(predicate: Callable[[], bool], timeout_s: float = 3.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alert(n: int) -> dict[str, Any]:
    return {"kind": "drop", "org": f"org-{n}", "n": n, "message": f"alert {n}"}


def test_delivers_a_slack_compatible_payload() -> None:
    recorder = Recorder()
    sent = {"kind": "drop", "message": "Engagements fell 60%", "ratio": 0.4,
            "at": datetime(2026, 3, 2, 12, tzinfo=UTC), "tags": ("a", "b")}

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            notifier.notify(sent)
            sent["message"] = "changed after notify"  # the queued alert is a snapshot
            await notifier.close()
            return notifier

    notifier = asyncio.run(go())
    assert recorder.content_types == ["application/json"]
    assert recorder.bodies == [{
        "text": "Engagements fell 60%",
        "alert": {"kind": "drop", "message": "Engagements fell 60%", "ratio": 0.4,
                  "at": "2026-03-02T12:00:00+00:00", "tags": ["a", "b"]},
    }]
    assert notifier.stats.sent == 1
    assert (notifier.stats.failed, notifier.stats.dropped, notifier.stats.retries) == (0, 0, 0)


def test_alert_without_message_or_json_values_still_goes_out() -> None:
    recorder = Recorder()

    async def go() -> None:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            notifier.notify({"kind": "x", "obj": object(), 3: "int key"})
            await notifier.close()

    asyncio.run(go())
    [body] = recorder.bodies
    assert body["alert"]["kind"] == "x" and body["alert"]["3"] == "int key"
    assert body["alert"]["obj"].startswith("<object object")
    assert json.loads(body["text"]) == body["alert"]  # Slack needs some text


def test_sends_in_order() -> None:
    recorder = Recorder()

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            for n in range(50):
                notifier.notify(alert(n))
                if n % 7 == 0:
                    await asyncio.sleep(0)  # interleave with the sender
            await notifier.close()
            return notifier

    notifier = asyncio.run(go())
    assert [body["alert"]["n"] for body in recorder.bodies] == list(range(50))
    assert notifier.stats.sent == 50


def test_retries_server_errors_then_succeeds() -> None:
    recorder = Recorder(500, 503)

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            notifier.notify(alert(1))
            notifier.notify(alert(2))
            await notifier.close()
            return notifier

    notifier = asyncio.run(go())
    # alert 1 three times (500, 503, 200), then alert 2: the retry kept the order
    assert [body["alert"]["n"] for body in recorder.bodies] == [1, 1, 1, 2]
    assert notifier.stats.sent == 2 and notifier.stats.retries == 2
    assert notifier.stats.failed == 0


def test_429_honours_retry_after() -> None:
    recorder = Recorder(429, headers={"Retry-After": "0.15"})

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=(0.01, 0.5))
            notifier.start()
            notifier.notify(alert(1))
            await notifier.close()
            return notifier

    notifier = asyncio.run(go())
    assert notifier.stats.sent == 1 and notifier.stats.retries == 1
    gap = recorder.times[1] - recorder.times[0]
    assert 0.14 <= gap < 0.45  # the header's 0.15 s, not the scheduled 0.01 s


def test_429_retry_after_is_capped_at_the_largest_delay() -> None:
    recorder = Recorder(429, headers={"Retry-After": "3600"})

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=(0.01, 0.05))
            notifier.start()
            notifier.notify(alert(1))
            await notifier.close(drain_timeout_s=3)
            return notifier

    notifier = asyncio.run(go())
    assert notifier.stats.sent == 1
    assert recorder.times[1] - recorder.times[0] < 1


def test_client_error_is_permanent_and_the_log_hides_the_secret(
    caplog: pytest.LogCaptureFixture,
) -> None:
    recorder = Recorder(400)

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            notifier.notify(alert(1))
            notifier.notify(alert(2))
            await notifier.close()
            return notifier

    with caplog.at_level(logging.INFO, logger="pipeline.webhook"):
        notifier = asyncio.run(go())
    assert [body["alert"]["n"] for body in recorder.bodies] == [1, 2]  # no retry of 1
    assert (notifier.stats.sent, notifier.stats.failed, notifier.stats.retries) == (1, 1, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("127.0.0.1" in m and "HTTP 400" in m for m in warnings)
    assert not any("s3cr3t" in r.getMessage() or "/services" in r.getMessage()
                   for r in caplog.records)
    assert "s3cr3t" not in repr(notifier)


def test_server_down_gives_up_after_the_delays(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}{HOOK_PATH}"  # nothing listens here

    async def go() -> WebhookNotifier:
        notifier = WebhookNotifier(url, retry_delays=FAST)
        notifier.start()
        notifier.notify(alert(1))
        notifier.notify(alert(2))
        await until(lambda: notifier.stats.failed == 2)
        await notifier.close()
        return notifier

    with caplog.at_level(logging.INFO, logger="pipeline.webhook"):
        notifier = asyncio.run(go())
    assert (notifier.stats.sent, notifier.stats.failed, notifier.stats.dropped) == (0, 2, 0)
    assert notifier.stats.retries == 2 * len(FAST)
    assert any("after 4 attempts" in r.getMessage() for r in caplog.records)
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)


def test_timeouts_are_retried_then_fail() -> None:
    recorder = Recorder(delay_s=0.3)

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, timeout_s=0.05, retry_delays=(0.01,))
            notifier.start()
            notifier.notify(alert(1))
            await until(lambda: notifier.stats.failed == 1)
            await notifier.close(drain_timeout_s=0)
            return notifier

    notifier = asyncio.run(go())
    assert len(recorder.bodies) == 2 and notifier.stats.retries == 1


def test_full_queue_drops_the_oldest(caplog: pytest.LogCaptureFixture) -> None:
    release = asyncio.Event()
    seen: list[int] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((await request.json())["alert"]["n"])
        await release.wait()
        return web.Response(text="ok")

    async def go() -> WebhookNotifier:
        async with serve(handler) as url:
            notifier = WebhookNotifier(url, queue_max=3, retry_delays=FAST)
            notifier.start()
            notifier.notify(alert(0))
            await until(lambda: seen == [0])  # 0 is in flight, the queue is empty
            for n in range(1, 10):
                notifier.notify(alert(n))
            assert notifier.stats.dropped == 6  # 1..6 pushed out by 7, 8, 9
            release.set()
            await notifier.close()
            return notifier

    with caplog.at_level(logging.WARNING, logger="pipeline.webhook"):
        notifier = asyncio.run(go())
    assert seen == [0, 7, 8, 9]
    assert notifier.stats.sent == 4 and notifier.stats.dropped == 6
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1  # rate-limited to one line a minute


def test_notify_never_blocks_on_a_hanging_server() -> None:
    release = asyncio.Event()  # set only after close, so the server can shut down

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="ok")

    async def go() -> tuple[WebhookNotifier, float, float]:
        async with serve(hang) as url:
            notifier = WebhookNotifier(url, queue_max=1000, timeout_s=30, retry_delays=FAST)
            notifier.start()
            notifier.notify(alert(-1))
            await asyncio.sleep(0.05)  # the sender is now stuck in a POST
            started = time.perf_counter()
            for n in range(1000):
                notifier.notify(alert(n))
            spent = time.perf_counter() - started
            started = time.perf_counter()
            await notifier.close(drain_timeout_s=0.2)
            closing = time.perf_counter() - started
            release.set()
            return notifier, spent, closing

    notifier, spent, closing = asyncio.run(go())
    assert spent < 0.1
    assert 0.15 <= closing < 1.0  # close gave up on the hanging receiver at its timeout
    # every alert is accounted for: nothing was delivered, everything was dropped
    assert (notifier.stats.sent, notifier.stats.failed, notifier.stats.dropped) == (0, 0, 1001)


def test_close_drains_the_queue_within_its_timeout() -> None:
    recorder = Recorder(delay_s=0.01)

    async def go() -> tuple[WebhookNotifier, float]:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            for n in range(20):
                notifier.notify(alert(n))
            started = time.perf_counter()
            await notifier.close(drain_timeout_s=3)
            closing = time.perf_counter() - started
            await notifier.close()  # idempotent
            return notifier, closing

    notifier, closing = asyncio.run(go())
    assert closing < 3
    assert [body["alert"]["n"] for body in recorder.bodies] == list(range(20))
    assert notifier.stats.sent == 20 and notifier.stats.dropped == 0


def test_concurrent_closes_both_wait_for_the_drain() -> None:
    recorder = Recorder(delay_s=0.05)

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            notifier.notify(alert(1))
            await asyncio.gather(notifier.close(), notifier.close())
            assert notifier.stats.sent == 1  # the second close did not return early
            return notifier

    asyncio.run(go())


def test_notify_before_start_and_after_close_is_dropped() -> None:
    recorder = Recorder()

    async def go() -> WebhookNotifier:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.notify(alert(0))
            notifier.start()
            notifier.notify(alert(1))
            await notifier.close()
            notifier.notify(alert(2))
            with pytest.raises(RuntimeError):
                notifier.start()
            return notifier

    notifier = asyncio.run(go())
    assert [body["alert"]["n"] for body in recorder.bodies] == [1]
    assert notifier.stats.sent == 1 and notifier.stats.dropped == 2


def test_close_without_start_is_harmless() -> None:
    async def go() -> None:
        notifier = WebhookNotifier("https://hooks.example.com" + HOOK_PATH)
        await notifier.close()
        await notifier.close()
        notifier.notify(alert(1))
        assert notifier.stats.dropped == 1

    asyncio.run(go())


def test_notify_from_another_thread_is_handed_to_the_loop() -> None:
    recorder = Recorder()

    async def go() -> None:
        async with serve(recorder.handle) as url:
            notifier = WebhookNotifier(url, retry_delays=FAST)
            notifier.start()
            await asyncio.to_thread(notifier.notify, alert(1))
            await until(lambda: notifier.stats.sent == 1)
            await notifier.close()

    asyncio.run(go())
    assert [body["alert"]["n"] for body in recorder.bodies] == [1]


@pytest.mark.parametrize("url", [
    "ftp://hooks.example.com/services/T000/B000/s3cr3t-t0ken",
    "hooks.example.com/services/T000/B000/s3cr3t-t0ken",
    "https:///services/T000/B000/s3cr3t-t0ken",
    "https://hooks.example.com:notaport/services/T000/B000/s3cr3t-t0ken?token=s3cr3t",
    "",
])
def test_rejects_non_http_urls_without_quoting_them(url: str) -> None:
    with pytest.raises(ValueError, match="http") as info:
        WebhookNotifier(url)
    assert "s3cr3t" not in str(info.value) and "services" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_accepts_http_and_https() -> None:
    WebhookNotifier("http://localhost:8080/hook")
    WebhookNotifier("https://hooks.slack.com/services/T000/B000/XXXX")
