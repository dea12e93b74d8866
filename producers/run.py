"""Running a source until its input ends or a signal arrives (``reciprocity produce``).

Every source writes through a :class:`producers.output.KafkaOutput`: events to
the input topic keyed by event id, unmappable records to the source
dead-letter topic. On SIGINT or SIGTERM the source stops taking input,
everything queued is flushed (delivery errors raise, nothing is swallowed),
and the counters are returned for printing. While running, a log line with the
counters is written every ``stats_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from producers.output import KafkaOutput, SourceCounts
from producers.replay import Line, Progress, count_records, file_lines, replay
from schemas.event import encode_event

log = logging.getLogger(__name__)


@dataclass
class ProduceSummary:
    source: str
    counts: SourceCounts
    delivered: int
    failed: int
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, **self.counts.as_dict(), "delivered": self.delivered,
                "failed": self.failed, "seconds": round(self.seconds, 3)}


def _stop_on_signals(stop: threading.Event) -> Callable[[], None]:
    """Set ``stop`` on SIGINT/SIGTERM (main thread only); returns the undo."""
    previous = {}

    def handler(signum: int, frame: Any) -> None:
        log.warning("signal %s: stopping after a flush", signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            previous[sig] = signal.signal(sig, handler)

    def undo() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return undo


def _summary(source: str, output: KafkaOutput, started: float) -> ProduceSummary:
    delivered, failed = output.delivery()
    return ProduceSummary(source, output.counts, delivered, failed, time.monotonic() - started)


def run_lines(output: KafkaOutput, source: str, lines: Iterator[Line],
              speed: float | None, total: int | None,
              progress_out: Any = None) -> ProduceSummary:
    """Replay prepared lines through ``output`` until done or a signal."""
    stop = threading.Event()
    undo = _stop_on_signals(stop)
    started = time.monotonic()
    progress = Progress(total) if progress_out is None else Progress(total, progress_out)
    try:
        replay(
            lines,
            send=output.send_raw,
            dead_letter=lambda line: output.dead_letter(line.value, line.reason or "invalid",
                                                        source, line.detail),
            speed=speed, stop=stop, progress=progress,
        )
    finally:
        try:
            output.flush()
        finally:
            output.close()
            undo()
    return _summary(source, output, started)


def replay_file(output: KafkaOutput, path: Path, fmt: str,
                speed: float | None) -> ProduceSummary:
    """``reciprocity produce replay``."""
    return run_lines(output, f"replay:{path.name}", file_lines(path, fmt), speed,
                     count_records(path, fmt))


def simulated_lines(events: Iterator[Any]) -> Iterator[Line]:
    for event in events:
        yield Line(encode_event(event))


async def run_async_source(output: KafkaOutput, source: str,
                           run: Callable[[asyncio.Event], Awaitable[None]],
                           stats_interval_s: float = 10.0) -> ProduceSummary:
    """Run a live connector (``run(stop)``) until a signal; log the counters
    every ``stats_interval_s``; flush and close at the end."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()

    async def report() -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), stats_interval_s)
            log.warning("%s: %s", source, output.counts.as_dict())

    reporter = asyncio.ensure_future(report())
    try:
        await run(stop)
    finally:
        stop.set()
        reporter.cancel()
        with contextlib.suppress(BaseException):
            await reporter
        try:
            await loop.run_in_executor(None, output.flush)
        finally:
            output.close()
    return _summary(source, output, started)
