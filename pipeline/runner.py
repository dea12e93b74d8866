"""Running the pipeline: the long-lived worker and the embedded, drain-and-stop run.

``run_worker`` starts a Faust worker in this process around a :class:`Pipeline`
and returns when told to stop (a signal, a predicate on the live stats, or a
fatal sink error). ``run_file`` is ``reciprocity run --input``: it starts what
it needs (an embedded Tansu broker unless one is given), produces the file,
processes it until every message is flushed to the store, and stops everything
it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import faust
from faust.worker import Worker

from pipeline.alerts import Alert
from pipeline.app import Pipeline, PipelineStats
from pipeline.broker import BrokerError, EmbeddedBroker, ensure_topics
from pipeline.ingest import Counts
from pipeline.memory import tune_gc
from pipeline.rollups import lineage_batch
from pipeline.settings import Settings
from pipeline.sinks import AsyncSink, Backend
from pipeline.sinks.base import quote
from pipeline.webhook import WebhookNotifier
from producers.file_source import jsonl_lines
from producers.kafka_writer import KafkaEventWriter, ProduceCounts
from schemas.registry import Registry

log = logging.getLogger(__name__)

#: Polled a few times a second with the running pipeline; True stops the worker.
StopWhen = Callable[[Pipeline], Awaitable[bool]]


class _EmbeddedWorker(Worker):
    """A Faust worker that leaves signal handling to us: its own handlers would
    stop the event loop under ``asyncio.run`` instead of stopping cleanly."""

    def install_signal_handlers(self) -> None:
        return None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: set once the app is fully started (tables recovered, web server up)
        self.ready = asyncio.Event()

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        self.ready.set()


class PipelineFailed(RuntimeError):
    """The worker stopped on an error it could not recover from."""


#: Group timings that suit the Tansu broker (a JoinGroup there completes only
#: after half the session timeout).
EMBEDDED_TIMINGS = {"session_timeout_s": 6.0, "heartbeat_interval_s": 1.0,
                    "rebalance_timeout_s": 20.0}


def tune_threads(switch_interval_s: float) -> None:
    """How long a thread may hold the GIL while another waits for it. The
    worker's event loop is busy most of the time; with Python's 5 ms, the
    sink's thread (each chdb INSERT takes the GIL to start and to return)
    and aiokafka's consumer thread wait up to that long each time: a small
    chdb INSERT took 12 ms on a thread beside a busy one instead of 5 ms
    alone, 7.7 ms at 1 ms (docs/benchmarks.md)."""
    sys.setswitchinterval(switch_interval_s)


async def run_worker(
    settings: Settings,
    registry: Registry,
    backend: Backend,
    stop_when: StopWhen | None = None,
    stop_event: asyncio.Event | None = None,
    on_ready: Callable[[Pipeline], None] | None = None,
    **app_overrides: Any,
) -> PipelineStats:
    """Run a worker until ``await stop_when(pipeline)`` holds, ``stop_event`` is
    set or a fatal error happens (then :class:`PipelineFailed` is raised).
    ``on_ready(pipeline)`` is called once when the worker has fully started
    (its web server, if enabled, is listening).
    ``app_overrides`` go to the Faust app (e.g. ``datadir``)."""
    sink = AsyncSink(backend)
    await sink.ensure_schema(settings.clickhouse_cluster)
    await sink.write(lineage_batch(registry, datetime.now(tz=UTC).replace(microsecond=0)))
    notifier = None
    if settings.webhook_url is not None:
        notifier = WebhookNotifier(settings.webhook_url.get_secret_value())
        notifier.start()
    tune_gc()
    tune_threads(settings.switch_interval_s)
    pipeline = Pipeline(settings, registry, sink,
                        notify=None if notifier is None else _notify(notifier), **app_overrides)
    stats = pipeline.stats
    stop_event = stop_event or asyncio.Event()
    try:  # the worker stops (leaving the block) before its sink closes
        async with embedded_worker(pipeline.app, settings.log_level) as (worker, started):
            await _supervise(pipeline, worker, started, stop_event, stop_when, on_ready)
    finally:
        await sink.close()
        if notifier is not None:
            await notifier.close()
    return stats


async def _supervise(pipeline: Pipeline, worker: _EmbeddedWorker, started: asyncio.Future[Any],
                     stop_event: asyncio.Event, stop_when: StopWhen | None,
                     on_ready: Callable[[Pipeline], None] | None) -> None:
    """Watch a started worker until it should stop; raise when it failed."""
    stats = pipeline.stats
    while not stop_event.is_set():
        if stats.fatal is not None:
            raise PipelineFailed(f"pipeline stopped: {stats.fatal!r}") from stats.fatal
        crashed = pipeline.producer_crash()
        if crashed is not None:
            raise PipelineFailed(f"pipeline stopped: {crashed}") from crashed
        if started.done() and started.exception() is not None:
            raise PipelineFailed(f"worker failed to start: {started.exception()!r}")
        if on_ready is not None and worker.ready.is_set():
            on_ready(pipeline)
            on_ready = None
        if stop_when is not None and await stop_when(pipeline):
            break
        stats.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stats.progress.wait(), 0.2)


@contextlib.asynccontextmanager
async def embedded_worker(app: faust.App, loglevel: str = "WARNING"
                          ) -> AsyncIterator[tuple[_EmbeddedWorker, asyncio.Future[Any]]]:
    """Start a Faust app's worker inside this event loop; stop it on leaving.
    Yields the worker and the future of its start (done early if it failed)."""
    worker = _EmbeddedWorker(app, loop=asyncio.get_running_loop(), loglevel=loglevel,
                             override_logging=False, quiet=True, redirect_stdouts=False)
    worker.spinner = None  # a terminal spinner would mangle our own output
    started = asyncio.ensure_future(worker.start())
    try:
        yield worker, started
    finally:
        with contextlib.suppress(Exception):
            await worker.stop()
        started.cancel()
        with contextlib.suppress(BaseException):
            await started


def _notify(notifier: WebhookNotifier) -> Callable[[Alert], None]:
    def send(alert: Alert) -> None:
        notifier.notify(alert.to_json())

    return send


def ensure_pipeline_topics(settings: Settings) -> None:
    """Create the pipeline's topics if missing and check the partition counts
    the watermark relies on (raises BrokerError)."""
    counts = ensure_topics(
        settings.bootstrap_servers,
        [settings.topic, settings.dlq_topic, settings.pairs_topic, settings.inbound_topic,
         settings.alerts_topic],
        settings.partitions,
        **settings.kafka_client_options(),
    )
    for topic in (settings.topic, settings.pairs_topic, settings.inbound_topic):
        if counts.get(topic, settings.partitions) != settings.partitions:
            raise BrokerError(
                f"topic {topic} has {counts[topic]} partitions but RECIPROCITY_PARTITIONS is "
                f"{settings.partitions}; they must match (the watermark waits for every "
                "input partition)"
            )


def _reached(done: dict[int, int], targets: dict[int, int]) -> bool:
    return all(done.get(p, -1) >= last for p, last in targets.items())


def drained(targets: dict[int, int]) -> StopWhen:
    """Stop once the input is processed through ``targets`` (last produced
    offset per partition) and, the input then being declared ended (every
    partition idle), once the pair and inbound stages have processed
    everything stage 1 sent them."""
    declared = False

    async def check(pipeline: Pipeline) -> bool:
        nonlocal declared
        settings, stats = pipeline.settings, pipeline.stats
        if not declared:
            if not _reached(stats.flushed_offsets(settings.topic), targets):
                return False
            await pipeline.declare_idle()
            declared = True
        for topic in (settings.pairs_topic, settings.inbound_topic):
            sent = {p: o for (t, p), o in pipeline.sent.items() if t == topic}
            if not _reached(stats.flushed_offsets(topic), sent):
                return False
        return True

    return check


@dataclass
class RunSummary:
    lines: int = 0
    produced: ProduceCounts = field(default_factory=ProduceCounts)
    counts: Counts = field(default_factory=Counts)
    pair_rows: int = 0
    snubs: int = 0
    drops: int = 0
    alerts: int = 0
    seconds: float = 0.0
    stream: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "lines": self.lines,
            "produced": self.produced.produced,
            **self.counts.as_dict(),
            "pair_rows": self.pair_rows,
            "snubs": self.snubs,
            "drops": self.drops,
            "alerts": self.alerts,
            "seconds": round(self.seconds, 3),
            "stream": self.stream,
        }


def file_stream_id(path: Path) -> str:
    """Identity of a file's events in the store: re-running the same file
    replaces its rows (idempotent); a different file adds its own."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"file:{digest.hexdigest()[:16]}"


def produce_lines(
    settings: Settings,
    lines: Iterable[bytes],
    rate: float | None = None,
    cancel: threading.Event | None = None,
) -> tuple[int, ProduceCounts]:
    """Produce raw lines to the input topic; returns (lines sent, delivery counts).

    Blocking (run it in a thread). ``rate`` paces sending to about that many
    lines per second; ``cancel`` stops early, after flushing what was sent.
    Raises :class:`~producers.kafka_writer.DeliveryError` if any line was lost.
    """
    writer = KafkaEventWriter(settings.bootstrap_servers, settings.topic,
                              **settings.kafka_client_options())
    n = 0
    started = time.monotonic()
    try:
        for line in lines:
            if cancel is not None and cancel.is_set():
                break
            writer.send(line)
            n += 1
            if rate and n % 50 == 0:
                ahead = started + n / rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
        return n, writer.flush()
    finally:
        writer.close()


async def run_lines(
    settings: Settings,
    registry: Registry,
    backend: Backend,
    lines: Iterable[bytes],
    until_drained: bool = True,
    stop_event: asyncio.Event | None = None,
    rate: float | None = None,
    on_progress: Callable[[PipelineStats], None] | None = None,
    on_ready: Callable[[Pipeline], None] | None = None,
    on_drained: Callable[[Pipeline, RunSummary], Awaitable[None]] | None = None,
) -> RunSummary:
    """Produce ``lines`` to the configured broker while a worker processes them.

    With ``until_drained`` the worker stops once every produced message is
    processed and flushed; otherwise it runs on until ``stop_event``.
    ``rate`` paces production (lines/s); ``on_progress`` sees the live stats
    a few times a second; ``on_ready`` is :func:`run_worker`'s.
    With ``until_drained`` and ``on_drained`` the worker does not stop once
    drained: ``await on_drained(pipeline, summary)`` runs once with the summary
    so far (it must read the store through ``pipeline.sink.run``: the worker
    still owns the backend), then the worker runs on until ``stop_event``.
    """
    started = time.monotonic()
    summary = RunSummary(stream=settings.effective_stream_id)
    ensure_pipeline_topics(settings)
    loop = asyncio.get_running_loop()
    cancel = threading.Event()
    production = loop.run_in_executor(None, produce_lines, settings, lines, rate, cancel)

    check: StopWhen | None = None
    serving = False  # drained, on_drained done: run on until stop_event

    async def stop_when(pipeline: Pipeline) -> bool:
        nonlocal check, serving
        if on_progress is not None:
            on_progress(pipeline.stats)
        if serving or not until_drained or not production.done():
            return False
        if check is None:
            summary.lines, summary.produced = production.result()
            check = drained(dict(summary.produced.last_offsets))
        if not await check(pipeline):
            return False
        if on_drained is None:
            return True
        serving = True
        pair_rows = await pipeline.sink.run(count_pair_rows, backend,
                                            settings.effective_stream_id)
        _fill_summary(summary, pipeline.stats, cast(int, pair_rows), started)
        await on_drained(pipeline, summary)
        return False

    try:
        # Faust's data directory (nothing durable with the in-memory table store)
        # goes to a temporary directory, not the working directory.
        with tempfile.TemporaryDirectory(prefix="reciprocity-faust-") as datadir:
            stats = await run_worker(settings, registry, backend, stop_when, stop_event,
                                     on_ready, datadir=datadir)
    finally:
        cancel.set()  # stopped early (signal, failure): stop producing too
        with contextlib.suppress(Exception):
            await production
    summary.lines, summary.produced = production.result()
    _fill_summary(summary, stats, count_pair_rows(backend, settings.effective_stream_id),
                  started)
    return summary


def _fill_summary(summary: RunSummary, stats: PipelineStats, pair_rows: int,
                  started: float) -> None:
    summary.counts = stats.counts
    summary.snubs = stats.pairs.snubs
    summary.drops = stats.pairs.drops + stats.inbound.drops
    summary.alerts = stats.alerts
    summary.pair_rows = pair_rows
    summary.seconds = time.monotonic() - started


def count_pair_rows(backend: Backend, stream: str) -> int:
    """Distinct (window, start, src, dst) rows the store holds for a stream."""
    # stream is quoted, the database a validated identifier
    rows = backend.query(
        "SELECT count() FROM (SELECT window, window_start, src, dst "  # noqa: S608
        f"FROM {backend.database}.pair_windows WHERE stream = {quote(stream)} "
        "GROUP BY window, window_start, src, dst)"
    )
    return int(rows[0][0]) if rows else 0


async def run_file(
    settings: Settings,
    registry: Registry,
    backend: Backend,
    input_path: Path,
    until_drained: bool = True,
    external_broker: bool = False,
    **run_options: Any,
) -> RunSummary:
    """``reciprocity run --input``: embedded broker unless ``external_broker``.
    ``run_options`` go to :func:`run_lines` (``rate``, ``on_progress``,
    ``on_ready``, ``on_drained``)."""
    stop_event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop_event.set)
    lines = jsonl_lines(input_path)
    if external_broker:
        return await run_lines(settings, registry, backend, lines, until_drained, stop_event,
                               **run_options)
    with EmbeddedBroker() as broker:
        embedded = settings.model_copy(update={"broker": broker.url, **EMBEDDED_TIMINGS})
        return await run_lines(embedded, registry, backend, lines, until_drained, stop_event,
                               **run_options)
