"""The comparison variants: the Python ceiling, the naive Faust baseline, the
Quix Streams peer. Each runs in its own process (:mod:`pipeline.bench.phase`)
on the single-event topic and counts engagements per (1 h window, src org,
dst org) with the bench's rules (:mod:`pipeline.bench.reference`).

Timing, the same for all three: from the moment the first record reaches the
variant's code (group join, Faust start, topic and state setup excluded) to
the moment the last one is counted, or the time box (``box_s``) ends; the rate
is the events processed over that time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from pipeline.bench.data import Dataset
from pipeline.bench.phase import PhaseResult, PhaseSpec, peak_rss_bytes, run_async
from pipeline.bench.reference import KIND_COLUMN, engagements, totals_digest
from schemas.registry import load_registry

HOUR = 3600
#: Quix Streams closes a window once its partition's newest timestamp passes the
#: window's end plus the grace, and drops later records for it. The repartitioned
#: stream interleaves the input partitions, which the consumer reads at very
#: different paces (it may read most of one partition before the next: weeks of
#: event time apart), so even a 72 h grace dropped 40% of the engagements as late.
#: The grace therefore covers the topic's whole span (plus a day): the peer
#: counts everything, as the others do.
DAY_MS = 86_400_000
PEER_NOT_INSTALLED = "not installed (pip install 'reciprocity[bench]')"
#: seconds to wait for the first record before giving up (group join, startup)
START_TIMEOUT_S = 120.0


def _hard_deadline(spec: PhaseSpec) -> float:
    """Never run longer than this (monotonic): a stuck variant must not hang the bench."""
    if spec.box_s:
        return time.monotonic() + START_TIMEOUT_S + spec.box_s + 60
    return time.monotonic() + START_TIMEOUT_S + spec.events / 2_000


# -- ceiling ----------------------------------------------------------------------------


def run_ceiling(spec: PhaseSpec) -> PhaseResult:
    return run_async(_ceiling(spec))


async def _ceiling(spec: PhaseSpec) -> PhaseResult:
    """aiokafka ``getmany`` (no consumer group: all partitions assigned), orjson,
    and a plain dict of hourly pair counts, until every event is counted.

    The rules are :func:`pipeline.bench.reference.engagements` inlined (a
    generator per event costs a quarter of the rate here); the digest of the
    counts, compared with the reference's, shows they count the same thing."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    dataset = Dataset.load(spec.dataset)
    org_of = load_registry(dataset.registry_path).org_of_account
    result = PhaseResult("ceiling")
    consumer = AIOKafkaConsumer(
        bootstrap_servers=spec.bootstrap, group_id=None, enable_auto_commit=False,
        auto_offset_reset="earliest", fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20, client_id="reciprocity-bench-ceiling")
    await consumer.start()
    counts: dict[tuple[int, str, str], int] = {}
    loads, parse, kinds = orjson.loads, datetime.fromisoformat, KIND_COLUMN
    n = 0
    first: float | None = None
    deadline = _hard_deadline(spec)
    try:
        consumer.assign([TopicPartition(spec.topic, p) for p in range(spec.partitions)])
        await consumer.seek_to_beginning()
        while n < spec.events and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=100_000)
            if not batches:
                continue
            if first is None:
                first = time.monotonic()
            for records in batches.values():
                for record in records:
                    event = loads(record.value)
                    n += 1
                    src = org_of.get(event["actor"])
                    if src is None:
                        continue
                    kind = event["kind"]
                    found = []
                    target = event.get("target")
                    if target is not None and kind in kinds:
                        dst = org_of.get(target)
                        if dst is not None and dst != src:
                            found.append(dst)
                    mentions = event.get("mentions")
                    if mentions and (kind == "post" or kind == "reply"):
                        for account in dict.fromkeys(mentions):
                            dst = org_of.get(account)
                            if dst is not None and dst != src:
                                found.append(dst)
                    if not found:
                        continue
                    ts = event["ts"]
                    ts = parse(ts).timestamp() if isinstance(ts, str) else float(ts)
                    start = int(ts // HOUR) * HOUR
                    for dst in found:
                        key = (start, src, dst)
                        counts[key] = counts.get(key, 0) + 1
        end = time.monotonic()
    finally:
        await consumer.stop()
    result.rss_bytes = peak_rss_bytes()
    result.events = n
    if first is not None:
        result.seconds = end - first
    digest = totals_digest(counts)
    exact = digest == dataset.hourly_digest
    result.extra["ceiling_exact"] = exact and n == spec.events
    result.note = ("aiokafka getmany + orjson + dict; hourly pair counts "
                   + ("equal the reference" if result.extra["ceiling_exact"]
                      else "DIFFER from the reference"))
    if n < spec.events:
        result.note += f"; stopped after {n} of {spec.events} events (timeout)"
    return result.finish()


# -- baseline: a naive Faust agent ---------------------------------------------------------


class _Progress:
    """Counters a variant's processing code updates and its driver reads.
    With ``wait_done`` the variant is finished only when ``done`` is set (not
    as soon as every event is consumed)."""

    def __init__(self, wait_done: bool = False) -> None:
        self.wait_done = wait_done
        self.events = 0
        self.first: float | None = None
        self.last: float | None = None
        self.counted = 0
        self.late = 0
        self.done = threading.Event()

    def arrived(self) -> None:
        """A record reached the variant's code: the timed part starts at the first."""
        if self.first is None:
            self.first = time.monotonic()

    def seen(self) -> None:
        """A record is processed (its arrival counted as well, if not marked)."""
        now = time.monotonic()
        if self.first is None:
            self.first = now
        self.events += 1
        self.last = now


def run_baseline(spec: PhaseSpec) -> PhaseResult:
    return run_async(_baseline(spec))


async def _baseline(spec: PhaseSpec) -> PhaseResult:
    """The tutorial shape: one agent, ``async for event in stream``, a tumbling
    1 h windowed table keyed by org pair, ``table[pair] += 1`` per engagement.
    Windows follow the Kafka message timestamp, which the bench sets to the
    event time. Faust defaults otherwise (a changelog record per update)."""
    import faust

    from pipeline.runner import EMBEDDED_TIMINGS, embedded_worker

    dataset = Dataset.load(spec.dataset)
    org_of = load_registry(dataset.registry_path).org_of_account
    app = faust.App(
        spec.group, broker=f"kafka://{spec.bootstrap}", store="memory://",
        datadir=str(Path(spec.workdir) / "faust"), topic_partitions=spec.partitions,
        web_enabled=False, consumer_auto_offset_reset="earliest", stream_wait_empty=False,
        broker_session_timeout=EMBEDDED_TIMINGS["session_timeout_s"],
        broker_heartbeat_interval=EMBEDDED_TIMINGS["heartbeat_interval_s"],
        broker_rebalance_timeout=EMBEDDED_TIMINGS["rebalance_timeout_s"],
    )
    topic = app.topic(spec.topic, key_serializer="raw", value_serializer="raw",
                      partitions=spec.partitions)
    table = app.Table("pair-counts", default=int, partitions=spec.partitions).tumbling(
        HOUR, expires=timedelta(hours=72))
    progress = _Progress()

    async def count(stream: Any) -> None:
        async for value in stream:
            progress.arrived()
            for _, src, dst in engagements(orjson.loads(value), org_of):
                table[f"{src}>{dst}"] += 1
            progress.seen()

    app.agent(topic, name="bench.baseline")(count)
    deadline = _hard_deadline(spec)
    async with embedded_worker(app) as (_worker, started):
        end = await _watch(progress, spec, deadline, lambda: started.done()
                           and started.exception() is not None)
    result = PhaseResult("baseline", rss_bytes=peak_rss_bytes())
    return _boxed(result, progress, spec, end,
                  "Faust agent per event + tumbling(3600) table keyed by pair")


async def _watch(progress: _Progress, spec: PhaseSpec, deadline: float,
                 failed: Callable[[], bool]) -> float:
    """Wait until every event is processed (and, when ``progress.done`` is used,
    counted), the time box since the first record ends, or the deadline;
    returns the end time of the timed part."""
    while time.monotonic() < deadline and not failed():
        now = time.monotonic()
        if progress.done.is_set() or (progress.events >= spec.events
                                      and not progress.wait_done):
            return progress.last or now
        if progress.first is not None and spec.box_s and now - progress.first >= spec.box_s:
            return now
        await asyncio.sleep(0.05)
    return time.monotonic()


def _boxed(result: PhaseResult, progress: _Progress, spec: PhaseSpec, end: float,
           what: str) -> PhaseResult:
    result.events = progress.events
    if progress.first is not None:
        result.seconds = max(end - progress.first, 1e-9)
    result.boxed = progress.events < spec.events
    note = what
    if result.boxed:
        note += (f"; time-boxed at {spec.box_s:g} s: rate over {progress.events:,} of "
                 f"{spec.events:,} events")
    result.note = note
    return result.finish()


# -- peer: Quix Streams ---------------------------------------------------------------


def quix_version() -> str | None:
    try:
        import quixstreams
    except ImportError:
        return None
    return str(getattr(quixstreams, "__version__", "?"))


def _tolerate_missing_retention() -> None:
    """Tansu's DescribeConfigs returns ``{}``, and Quix Streams 3.28 derives its
    changelog and repartition topics' config from the input topic's
    ``retention.ms`` / ``retention.bytes`` (KeyError). Default them to -1
    (unlimited, what an in-memory broker has anyway). PLATFORM.md, Tansu quirks."""
    from quixstreams.models.topics.manager import TopicManager

    original = TopicManager.derive_topic_config.__func__  # type: ignore[attr-defined]
    if getattr(original, "bench_patched", False):
        return

    def derive(cls: Any, topics: Any) -> Any:
        topics = list(topics)
        for topic in topics:
            extra = topic.broker_config.extra_config
            extra.setdefault("retention.ms", "-1")
            extra.setdefault("retention.bytes", "-1")
        return original(cls, topics)

    derive.bench_patched = True  # type: ignore[attr-defined]
    TopicManager.derive_topic_config = classmethod(derive)  # type: ignore[method-assign,assignment]


def run_peer(spec: PhaseSpec) -> PhaseResult:
    """Quix Streams: JSON values, the engagements of each event expanded to pair
    strings, ``group_by`` pair (a repartition topic: Quix keeps window state per
    message key), ``tumbling_window(1 h).count().current()`` with a grace as
    long as the topic (``DAY_MS``). Windows follow the message timestamp (the
    event time). Done when every event is consumed and every engagement counted
    (or dropped as late); the time box cuts it short."""
    version = quix_version()
    if version is None:
        return PhaseResult("peer", note=PEER_NOT_INSTALLED)
    from quixstreams import Application

    _tolerate_missing_retention()
    dataset = Dataset.load(spec.dataset)
    org_of = load_registry(dataset.registry_path).org_of_account
    app = Application(
        broker_address=spec.bootstrap, consumer_group=spec.group,
        auto_offset_reset="earliest", state_dir=str(Path(spec.workdir) / "quix"),
        loglevel="WARNING",
        # Tansu completes a join after half the session timeout (PLATFORM.md)
        consumer_extra_config={"session.timeout.ms": 6000, "heartbeat.interval.ms": 1000},
    )
    progress = _Progress(wait_done=True)
    expected = dataset.engagements

    def check_done() -> None:
        if progress.events >= spec.events and progress.counted + progress.late >= expected:
            progress.last = time.monotonic()
            progress.done.set()
            app.stop()

    def pairs(event: dict[str, Any]) -> list[str]:
        progress.seen()
        found = [f"{src}>{dst}" for _, src, dst in engagements(event, org_of)]
        if not found:
            check_done()
        return found

    windows: dict[tuple[int, str, str], int] = {}

    def counted(value: dict[str, Any], key: Any, timestamp: int, headers: Any) -> None:
        pair = key.decode() if isinstance(key, bytes) else str(key)
        src, _, dst = pair.partition(">")
        windows[(int(value["start"]) // 1000, src, dst)] = int(value["value"])
        progress.counted += 1
        check_done()

    def late(value: Any, key: Any, timestamp_ms: int, late_by_ms: int, start: int, end: int,
             store_name: str, topic: str, partition: int, offset: int) -> bool:
        progress.late += 1
        check_done()
        return False  # do not log every late record

    sdf = app.dataframe(app.topic(spec.topic, value_deserializer="json"))
    sdf = sdf.apply(pairs, expand=True)
    sdf = sdf.group_by(lambda pair: pair, name="pair")
    grace_ms = int((dataset.days + 1) * DAY_MS)
    sdf = sdf.tumbling_window(HOUR * 1000, grace_ms=grace_ms, on_late=late).count().current()
    sdf = sdf.update(counted, metadata=True)
    deadline = _hard_deadline(spec)
    stop_at: list[float] = []

    def watchdog() -> None:
        while not progress.done.wait(0.05):
            now = time.monotonic()
            boxed = (progress.first is not None and spec.box_s
                     and now - progress.first >= spec.box_s)
            if boxed or now >= deadline:
                stop_at.append(now)
                app.stop()
                return

    guard = threading.Thread(target=watchdog, name="bench-peer-watchdog", daemon=True)
    guard.start()
    app.run()
    complete = progress.done.is_set() and not stop_at
    progress.done.set()
    guard.join(5)
    result = PhaseResult("peer", rss_bytes=peak_rss_bytes())
    result.extra.update({"peer_version": version, "peer_consumed": progress.events,
                         "peer_counted": progress.counted, "peer_late": progress.late})
    what = (f"Quix Streams {version}: group_by pair + tumbling_window(1h).count(), "
            f"{progress.counted:,} of {expected:,} engagements counted"
            + (f" ({progress.late:,} dropped as late)" if progress.late else ""))
    if progress.first is None:
        result.note = what + "; no event arrived"
        return result
    if complete:
        result.events = progress.events
        result.seconds = max((progress.last or stop_at[0]) - progress.first, 1e-9)
        result.extra["peer_exact"] = totals_digest(windows) == dataset.hourly_digest
        what += ("; hourly pair counts " + ("equal" if result.extra["peer_exact"]
                                            else "DIFFER from") + " the reference")
    else:
        # The window stage runs behind the input (the repartition topic in between):
        # rate over the events whose engagements it has counted, estimated from
        # the topic's engagements per event, not over the events merely consumed.
        done = progress.counted + progress.late
        result.events = min(progress.events, round(done * spec.events / max(expected, 1)))
        result.seconds = max(stop_at[0] - progress.first, 1e-9)
        result.boxed = True
        what += (f"; time-boxed at {spec.box_s:g} s: rate over the ~{result.events:,} events "
                 f"whose engagements the window stage counted ({progress.events:,} of "
                 f"{spec.events:,} consumed)")
    result.note = what
    return result.finish()
