"""The pipeline itself under the bench: end to end on a produced topic, and
event-to-queryable latency at an offered rate.

End to end (:func:`run_pipeline`): the real worker (``pipeline.runner.run_worker``
around ``pipeline.app.Pipeline``, chdb store, embedded group timings) on a topic
the orchestrator produced beforehand, stopped by the runner's until-drained
check (``pipeline.runner.drained``: the input processed through the produced
offsets, every partition declared idle, the pair and inbound stages caught
up), then one store query through the worker's sink thread (:func:`stored_rows`:
it runs after every write of the drained batches, so the last window row is
queryable once it returns). Timed from the start of the first stage-1 batch to
the return of that query, so the worker's startup (Faust start, group join,
schema) is excluded and reported apart (``startup_s``). Peak RSS is read when
the worker has stopped, before the results are read back and compared with the
reference (``exact``): the bench's own reading of the whole store (an
aggregation over every window row, about 150 MiB in chdb at 1M events) is not
the worker's.

Latency (:func:`run_latency_worker` with :func:`run_live_producer` in another
process): a producer sends single-event messages at the offered rate with
``ts`` = wall clock at sending; the running worker reports, through
``Pipeline.on_written`` (called after each successful stage-2 store write with
the engagement times of that batch), and the bench records ``now - ts`` for
each. Without that hook the phase reports null.
"""

from __future__ import annotations

import math
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from itertools import islice
from pathlib import Path
from typing import Any, cast

import orjson

from pipeline.bench.data import Dataset, Sender, load_reference, read_lines
from pipeline.bench.phase import PhaseResult, PhaseSpec, emit, peak_rss_bytes, run_async
from pipeline.bench.reference import compare
from pipeline.settings import Settings
from schemas.registry import load_registry

#: the store's kind columns, in the reference's order
_KIND_COLUMNS = "follows, likes, shares, replies, mentions, thanks"
#: event templates the live producer cycles through (fresh id and ts each)
_LIVE_POOL = 50_000
#: the live producer's linger, as the project's producers send
#: (``producers.kafka_writer``). The Tansu broker's fetches cost more with
#: every record batch a partition holds (each fetch lists them all): at 5 ms
#: (about 800 batches a second at 10k events/s) its CPU grew from 0.2 to a
#: whole core within 30 s of one consumer reading, at 20 ms to half a core
#: within the phase; at 50 ms it stays under a fifth (docs/benchmarks.md).
LIVE_LINGER_MS = 50
#: seconds per entry of the latency phase's ``latency_max_by_10s``
TIMELINE_S = 10.0


def bench_settings(spec: PhaseSpec, dataset: Dataset) -> Settings:
    """The pipeline's settings for a phase: the environment's (``RECIPROCITY_*``,
    e.g. batch sizes), except what the bench must own: broker, topics, app id,
    store, registry, partitions, group timings; no web server, no webhook."""
    from pipeline.runner import EMBEDDED_TIMINGS

    store = (Path(spec.workdir) / "store").resolve()
    overrides: dict[str, Any] = {
        "broker": f"kafka://{spec.bootstrap}", "topic": spec.topic,
        "dlq_topic": f"{spec.topic}.dlq", "alerts_topic": f"{spec.group}-alerts",
        "app_id": spec.group, "stream_id": "bench", "clickhouse_url": f"chdb://{store}",
        "registry": str(dataset.registry_path), "partitions": spec.partitions,
        "web_enabled": False, "webhook_url": None, **EMBEDDED_TIMINGS,
    }
    return Settings(**overrides)


#: a worker that finished no batch for this long after its first one is stuck
STALL_S = 300.0


class _Health:
    """Notices a worker that can no longer finish, which ``run_worker`` would
    wait for forever: a crashed Faust producer buffer (a record too large for
    the broker crashes it without failing the batch), or no batch finished for
    ``STALL_S`` seconds after the first."""

    def __init__(self) -> None:
        self.batches = 0
        self.since = time.monotonic()
        self.failure: str | None = None

    def failed(self, pipeline: Any) -> bool:
        buffer = getattr(pipeline.app.producer, "buffer", None)
        if buffer is not None and getattr(buffer, "crashed", False):
            self.failure = f"Faust's producer buffer crashed: {buffer.crash_reason!r}"
            return True
        now = time.monotonic()
        batches = pipeline.stats.batches
        if batches != self.batches:
            self.batches, self.since = batches, now
        elif batches and now - self.since > STALL_S:
            self.failure = f"stalled: no batch finished for {STALL_S:.0f} s"
        return self.failure is not None


class _FirstBatch:
    """When stage 1 started on its first batch: the start of the timed part.
    Wraps the pipeline's pure stage-1 call (``pipeline.ingest.process``) on the
    instance, before the worker starts."""

    def __init__(self, pipeline: Any) -> None:
        self.at: float | None = None
        process = pipeline.ingest.process

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self.at is None:
                self.at = time.monotonic()
            return process(*args, **kwargs)

        pipeline.ingest.process = timed


def stored_windows(backend: Any) -> dict[tuple[str, int, str, str], list[int]]:
    """Pair-window counts as the store reports them (newest version per key)."""
    rows = backend.query(
        f"SELECT window, toUnixTimestamp(window_start), src, dst, {_KIND_COLUMNS} "  # noqa: S608
        f"FROM {backend.database}.pair_windows_latest"
    )
    return {(str(r[0]), int(r[1]), str(r[2]), str(r[3])): [int(c) for c in r[4:10]]
            for r in rows}


def stored_rows(backend: Any, stream: str) -> int:
    """Window rows (every version) the store holds for ``stream``: a count
    that reads one column, not the distinct windows (that needs the whole
    table in an aggregation)."""
    from pipeline.sinks.base import quote

    rows = backend.query(
        f"SELECT count() FROM {backend.database}.pair_windows "  # noqa: S608
        f"WHERE stream = {quote(stream)}"
    )
    return int(rows[0][0]) if rows else 0


def run_pipeline(spec: PhaseSpec) -> PhaseResult:
    return run_async(_pipeline(spec))


async def _pipeline(spec: PhaseSpec) -> PhaseResult:
    from pipeline.runner import drained, ensure_pipeline_topics, run_worker
    from pipeline.sinks import open_backend

    began = time.monotonic()
    dataset = Dataset.load(spec.dataset)
    settings = bench_settings(spec, dataset)
    registry = load_registry(dataset.registry_path)
    ensure_pipeline_topics(settings)
    backend = open_backend(settings.clickhouse_url.get_secret_value())
    check = drained(spec.targets)
    timed: list[_FirstBatch] = []
    ended: list[float] = []
    rows: list[int] = []

    health = _Health()

    async def stop_when(pipeline: Any) -> bool:
        if not timed:  # first call: before the worker starts
            timed.append(_FirstBatch(pipeline))
        if health.failed(pipeline):
            return True
        if not await check(pipeline):
            return False
        # the last window row is queryable once this query (on the sink's thread,
        # after every write of the drained batches) has returned
        rows.append(int(cast(int, await pipeline.sink.run(stored_rows, backend,
                                                          settings.effective_stream_id))))
        ended.append(time.monotonic())
        return True

    variant = "pipeline_single" if spec.phase == "pipeline_single" else "pipeline_packed"
    result = PhaseResult(variant)
    try:
        with tempfile.TemporaryDirectory(dir=spec.workdir, prefix="faust-") as datadir:
            stats = await run_worker(settings, registry, backend, stop_when, datadir=datadir)
        result.rss_bytes = peak_rss_bytes()
        first = timed[0].at if timed else None
        counts = stats.counts
        result.events = counts.events
        if health.failure is not None:
            result.note = f"FAILED: {health.failure}"
            result.extra.update({"exact": False, "pipeline_counts": counts.as_dict()})
            return result
        if first is not None and ended:
            result.seconds = ended[0] - first
            result.extra["startup_s"] = round(first - began, 3)
        result.extra["pipeline_counts"] = counts.as_dict()
        result.extra["live_windows_peak"] = stats.live_windows_peak
        result.extra["pair_row_versions"] = rows[0] if rows else None
        stored = stored_windows(backend)
        result.extra["pair_rows"] = len(stored)
        problems = compare(load_reference(dataset.reference_path), stored)
    finally:
        backend.close()
    clean = counts.dead_lettered == 0 and counts.late == 0 and counts.events == spec.events
    result.extra["exact"] = not problems and clean
    result.extra["mismatches"] = len(problems)
    for problem in problems[:10]:
        print(f"mismatch: {problem}", file=sys.stderr)
    form = "single-event messages" if variant == "pipeline_single" else "packed messages"
    result.note = (f"{form}, Kafka -> Faust -> chdb until drained and queryable; excludes "
                   f"{result.extra.get('startup_s', 0):.1f} s startup; "
                   + ("equals the reference" if result.extra["exact"]
                      else f"DIFFERS from the reference ({len(problems)} rows)"))
    return result.finish()


# -- latency ----------------------------------------------------------------------------


def quantile(sorted_values: Sequence[float], q: float) -> float | None:
    """Nearest-rank quantile of sorted values (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


class _Targets:
    """The drain targets the orchestrator writes on stdin once the producer is done."""

    def __init__(self) -> None:
        self.value: dict[int, int] | None = None
        self.ready = threading.Event()
        threading.Thread(target=self._read, name="bench-stdin", daemon=True).start()

    def _read(self) -> None:
        line = sys.stdin.readline()
        doc = orjson.loads(line) if line.strip() else {}
        self.value = {int(p): int(o) for p, o in doc.get("last_offsets", {}).items()}
        self.ready.set()


def run_latency_worker(spec: PhaseSpec) -> PhaseResult:
    return run_async(_latency_worker(spec))


async def _latency_worker(spec: PhaseSpec) -> PhaseResult:
    from pipeline.runner import drained, ensure_pipeline_topics, run_worker
    from pipeline.sinks import open_backend

    dataset = Dataset.load(spec.dataset)
    settings = bench_settings(spec, dataset)
    registry = load_registry(dataset.registry_path)
    ensure_pipeline_topics(settings)
    backend = open_backend(settings.clickhouse_url.get_secret_value())
    latencies: list[float] = []
    #: the oldest engagement of any batch written in each TIMELINE_S of the phase
    timeline: list[float] = []
    assigned: set[int] = set()
    state: dict[str, Any] = {"hooked": None, "ready": False, "check": None}
    targets = _Targets()

    def written(timestamps: list[float]) -> None:
        now = time.time()
        latencies.extend(now - ts for ts in timestamps)
        if timestamps:
            began = state.setdefault("began", now)
            slot = int((now - began) // TIMELINE_S)
            oldest = now - min(timestamps)
            timeline.extend([0.0] * (slot + 1 - len(timeline)))
            timeline[slot] = max(timeline[slot], oldest)

    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        for tp in (args[0] if args else kwargs.get("assigned", ())):
            if tp.topic == settings.topic:
                assigned.add(tp.partition)

    health = _Health()

    async def stop_when(pipeline: Any) -> bool:
        if health.failed(pipeline):
            return True
        if state["hooked"] is None:  # first call: before the worker starts
            state["hooked"] = hasattr(pipeline, "on_written")
            if not state["hooked"]:
                return True
            pipeline.on_written = written
            pipeline.app.on_partitions_assigned.connect(on_assigned)
        if not state["ready"] and len(assigned) == settings.partitions:
            state["ready"] = True
            emit("ready")
        if state["check"] is None:
            if not targets.ready.is_set():
                return False
            state["check"] = drained(targets.value or {})
        return bool(await state["check"](pipeline))

    result = PhaseResult("latency")
    try:
        with tempfile.TemporaryDirectory(dir=spec.workdir, prefix="faust-") as datadir:
            stats = await run_worker(settings, registry, backend, stop_when, datadir=datadir)
    finally:
        backend.close()
    result.rss_bytes = peak_rss_bytes()
    if not state["hooked"]:
        result.note = ("skipped: this pipeline has no Pipeline.on_written hook "
                       "(engagement times of each written stage-2 batch)")
        return result
    if health.failure is not None:
        result.note = f"FAILED: {health.failure}"
        return result
    latencies.sort()
    result.events = stats.counts.events
    result.extra.update({
        "latency_p50_s": quantile(latencies, 0.50),
        "latency_p99_s": quantile(latencies, 0.99),
        "latency_max_s": latencies[-1] if latencies else None,
        "latency_samples": len(latencies),
        "latency_max_by_10s": [round(age, 3) for age in timeline],
        "live_windows_peak": stats.live_windows_peak,
        "pipeline_counts": stats.counts.as_dict(),
    })
    return result


def run_live_producer(spec: PhaseSpec) -> PhaseResult:
    """Send ``rate * seconds`` single-event messages at ``rate`` per second,
    each a dataset event with a fresh id and ``ts`` = the wall clock when sent."""
    dataset = Dataset.load(spec.dataset)
    pool = [orjson.loads(line) for line in islice(read_lines(dataset.events_path), _LIVE_POOL)]
    total = max(1, int(spec.rate * spec.seconds))
    sender = Sender(spec.bootstrap, spec.topic, linger_ms=LIVE_LINGER_MS)
    started = time.monotonic()
    n = 0
    while n < total:
        due = min(total, int((time.monotonic() - started) * spec.rate) + 1)
        while n < due:
            now = time.time()
            event_id = f"live-{n}"
            doc = {**pool[n % len(pool)], "id": event_id, "ts": now}
            sender.send(orjson.dumps(doc), event_id.encode(), int(now * 1000))
            n += 1
        sender.poll()
        time.sleep(0.002)
    sent_s = time.monotonic() - started
    last = sender.flush()
    result = PhaseResult("live_producer", events=n, seconds=sent_s).finish()
    result.extra["last_offsets"] = last
    return result
