"""Alerts to a Slack-compatible incoming webhook, without ever holding up the pipeline.

:meth:`WebhookNotifier.notify` only serialises the alert and appends it to a
bounded in-memory queue; one background task POSTs the queue in order and
retries transient failures. A slow or dead receiver costs alerts (counted in
:class:`WebhookStats`), never pipeline throughput: when the queue is full the
OLDEST queued alert goes, since the newest findings matter most.

The webhook URL carries its secret token in the path (Slack:
``/services/T…/B…/<token>``), so nothing here logs or raises it: messages name
the host only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

__all__ = ["WebhookNotifier", "WebhookStats"]

log = logging.getLogger(__name__)

DROP_LOG_INTERVAL_S = 60.0
"""At most one "queue full" warning per this many seconds: a flood of alerts
against a dead receiver must not become a flood of log lines too."""


@dataclass(slots=True)
class WebhookStats:
    """Counters since construction. Once :meth:`WebhookNotifier.close` returns,
    every :meth:`~WebhookNotifier.notify` call is in exactly one of ``sent``,
    ``failed`` and ``dropped``."""

    sent: int = 0
    failed: int = 0
    """Rejected (HTTP 4xx other than 429, or unexpected) or given up after all retries."""
    dropped: int = 0
    """Pushed out of a full queue, notified before start / after close, or
    still undelivered when close's drain timeout ran out."""
    retries: int = 0
    """Attempts repeated after a transient failure (all alerts together)."""


class _Transient(Exception):
    """One attempt failed in a way worth retrying; ``retry_after`` is the
    receiver's own hint in seconds, when it gave a usable one."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _Permanent(Exception):
    """The receiver refused this alert; sending it again would not help."""


class WebhookNotifier:
    """Sends alerts to a webhook from one background task, in order.

    Call :meth:`start` on the running loop, :meth:`notify` from anywhere
    (it never blocks and never raises), and ``await`` :meth:`close` at shutdown.
    Connection errors, timeouts, HTTP 5xx and 429 are retried after each of
    ``retry_delays`` seconds in turn (a 429's ``Retry-After`` replaces the
    delay, capped at the largest one); other non-2xx answers fail at once.
    Redirects are not followed: they would carry the alert somewhere the
    operator did not configure.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_max: int = 1000,
        timeout_s: float = 5.0,
        retry_delays: tuple[float, ...] = (1, 2, 5, 10, 30),
        session_factory: Callable[[], aiohttp.ClientSession] | None = None,
    ) -> None:
        self._host = _checked_host(url)
        if queue_max < 1:
            raise ValueError("queue_max must be at least 1")
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        if any(not delay >= 0 for delay in retry_delays):
            raise ValueError("retry_delays must be non-negative")
        self._url = url
        self._queue_max = queue_max
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._retry_delays = retry_delays
        self._max_delay = max(retry_delays, default=0.0)
        self._session_factory = session_factory or (
            lambda: aiohttp.ClientSession(timeout=self._timeout)
        )
        self.stats = WebhookStats()
        self._queue: deque[bytes] = deque()
        self._inflight: bytes | None = None
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._closing = False
        self._last_drop_log: float | None = None

    def __repr__(self) -> str:
        # the URL's path is a secret: never let a repr in a log line show it
        return f"WebhookNotifier(host={self._host!r}, stats={self.stats})"

    def start(self) -> None:
        """Start the sender on the running loop (a second call does nothing)."""
        if self._closing:
            raise RuntimeError("WebhookNotifier is closed")
        if self._task is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._task = self._loop.create_task(self._run(), name="webhook-sender")

    def notify(self, alert: Mapping[str, Any]) -> None:
        """Queue one alert. Never blocks, never raises: the pipeline calling
        this must not slow down or fail because alerting does.

        The alert is serialised now, so later changes to the mapping do not
        leak into what is sent. Values JSON cannot hold are sent as ``str()``.
        """
        try:
            if self._loop is None or self._closing:
                self.stats.dropped += 1
                return
            body = _payload(alert)
            if threading.get_ident() == self._loop_thread:
                self._enqueue(body)
            else:  # asyncio objects are not thread-safe: hand over to the loop
                self._loop.call_soon_threadsafe(self._enqueue, body)
        except Exception as exc:  # a broken alert or a closed loop: lose the alert, not the caller
            self.stats.dropped += 1
            log.warning("webhook %s: alert not queued (%s)", self._host, type(exc).__name__)

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``drain_timeout_s``, then stop and
        count whatever is left as dropped. Safe to call more than once."""
        if self._closing:
            await self._stopped.wait()  # a concurrent close may still be draining
            return
        self._closing = True
        task = self._task
        if task is None:
            self._stopped.set()
            return
        self._wakeup.set()  # an idle sender sees the queue empty and returns
        try:
            await asyncio.wait({task}, timeout=max(drain_timeout_s, 0.0))
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
            if not task.cancelled() and task.exception() is not None:
                log.warning("webhook %s: sender stopped with %s",
                            self._host, type(task.exception()).__name__)
            abandoned = len(self._queue) + (self._inflight is not None)
            self._queue.clear()
            self._inflight = None
            if abandoned:
                self.stats.dropped += abandoned
                log.warning("webhook %s: %d alert(s) undelivered at close",
                            self._host, abandoned)
            self._stopped.set()

    def _enqueue(self, body: bytes) -> None:
        if self._closing:
            self.stats.dropped += 1
            return
        if len(self._queue) >= self._queue_max:
            self._queue.popleft()
            self.stats.dropped += 1
            now = time.monotonic()
            if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
                self._last_drop_log = now
                log.warning("webhook %s: queue full (%d), dropping oldest alerts; "
                            "%d dropped so far", self._host, self._queue_max, self.stats.dropped)
        self._queue.append(body)
        self._wakeup.set()

    async def _run(self) -> None:
        try:
            session = self._session_factory()
        except Exception as exc:
            # alerts then wait in the queue (oldest dropped when full) until close
            log.error("webhook %s: cannot create HTTP session (%s); nothing will be sent",
                      self._host, type(exc).__name__)
            return
        try:
            while True:
                while not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                self._inflight = self._queue.popleft()
                await self._deliver(session, self._inflight)
                self._inflight = None
        finally:
            await session.close()

    async def _deliver(self, session: aiohttp.ClientSession, body: bytes) -> None:
        """Send one alert, retrying transient failures; counts the outcome."""
        for attempt, delay in enumerate((*self._retry_delays, None), start=1):
            try:
                await self._post(session, body)
            except _Transient as exc:
                if delay is None:
                    self.stats.failed += 1
                    log.warning("webhook %s: alert failed after %d attempts (%s)",
                                self._host, attempt, exc.reason)
                    return
                wait = delay if exc.retry_after is None else min(exc.retry_after, self._max_delay)
                self.stats.retries += 1
                log.info("webhook %s: attempt %d failed (%s), retrying in %gs",
                         self._host, attempt, exc.reason, wait)
                await asyncio.sleep(wait)
            except _Permanent as exc:
                self.stats.failed += 1
                log.warning("webhook %s: alert rejected (%s)", self._host, exc)
                return
            except Exception as exc:  # a bug must cost one alert, not the sender task
                self.stats.failed += 1
                log.warning("webhook %s: alert failed unexpectedly (%s)",
                            self._host, type(exc).__name__)
                return
            else:
                self.stats.sent += 1
                return

    async def _post(self, session: aiohttp.ClientSession, body: bytes) -> None:
        try:
            async with session.post(
                self._url, data=body, headers={"Content-Type": "application/json"},
                timeout=self._timeout, allow_redirects=False,
            ) as resp:
                await resp.read()  # so the connection can be reused
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except TimeoutError:
            raise _Transient("timeout") from None
        except (aiohttp.ClientError, OSError) as exc:
            # the type only: aiohttp's messages may quote the URL
            raise _Transient(type(exc).__name__) from None
        if 200 <= status < 300:
            return
        if status == 429:
            raise _Transient("HTTP 429", _seconds(retry_after))
        if status >= 500:
            raise _Transient(f"HTTP {status}")
        raise _Permanent(f"HTTP {status}")


def _checked_host(url: str) -> str:
    """The URL's host (with port) for log lines; ``ValueError`` unless it is an
    http(s) URL with a host. The message quotes no part of the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except (ValueError, TypeError):
        host = None
    else:
        if parts.scheme in ("http", "https") and host:
            return f"{host}:{port}" if port is not None else host
    raise ValueError("webhook URL must be an http:// or https:// URL with a host") from None


def _payload(alert: Mapping[str, Any]) -> bytes:
    """Slack reads ``text``; other receivers can route on the ``alert`` object."""
    doc = dict(alert)
    message = doc.get("message")
    if message is None:  # Slack rejects an empty text: show the alert itself
        message = orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
    return orjson.dumps({"text": str(message), "alert": doc},
                        default=str, option=orjson.OPT_NON_STR_KEYS)


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` given in seconds; None for absent, HTTP-date or nonsense."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
