"""The Faust app: thin adapters between Kafka, the pure stages and the sink.

Three agents, each reading batches that the worker's fetch loop fills
(:mod:`pipeline.fetch`, :class:`pipeline.batches.Lane`):

1. ``reciprocity.ingest`` on the input topic, per source partition
   (:mod:`pipeline.ingest`): dedup, late check, omissions; routes engagements
   to the internal ``-pairs`` and ``-inbound`` topics with the partition's
   largest event time (:mod:`pipeline.routing`).
2. ``reciprocity.pairs`` per unordered org pair (:mod:`pipeline.pair_columns`):
   pair windows, reciprocation, snubs, pair drops, org rollups.
3. ``reciprocity.inbound`` per receiving org (:mod:`pipeline.inbound`):
   inbound drops.

For every batch an agent first checks that each partition's offsets follow
on with no hole (``pipeline.sequence``), runs the pure stage, writes each
touched table key once (one changelog record per key per batch), sends what
goes to Kafka (routed engagements, dead letters, alerts) and writes its rows
to ClickHouse off the loop at the same time, waits for both, and only then
lets Faust ack the batch: committed offsets never run ahead of what is
delivered and stored. Stage 1 takes its next batch while its store write
finishes (:meth:`Pipeline.ingest_batch`); its batches are still acked in
order, each once its write is done. The pair and inbound states go to their
changelogs only after their batch's results are delivered and stored. Everything
written is idempotent, so at-least-once re-delivery after a crash gives the
same results (docs/pipeline.md).

Dedup scope: an id is recognised as a duplicate when its copies reach the same
partition, which holds when copies share a Kafka key (our producers key every
message by event id).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

import faust
import numpy as np
import orjson
from faust.types import TP

from pipeline import fetch
from pipeline.alerts import Alert, SnubAlerts, omission_alert
from pipeline.batches import Lane, Taken
from pipeline.bulk import BulkProducer
from pipeline.inbound import InboundCounts, InboundStage
from pipeline.ingest import (
    MESSAGE_OFFSET,
    MESSAGE_PARTITION,
    Counts,
    DeadLetter,
    EngagementColumns,
    Ingest,
    IngestOutcome,
    SeenColumns,
    SeenIndex,
    SeenRecord,
    decode_seen_record,
    encode_seen_record,
    expired_seen,
    seen_columns,
)
from pipeline.memory import dumps, free_heap
from pipeline.pair_columns import ColumnarPairStage, partition_prefix
from pipeline.pairs import PairCounts, PairStage, pair_of
from pipeline.routing import INBOUND_FIELDS, PAIR_FIELDS, Router, encode, partition_for
from pipeline.sequence import OffsetHoleError, SequenceGuard, Verdict
from pipeline.settings import Settings
from pipeline.sinks import (
    AlertRow,
    AsyncSink,
    DeadLetterRow,
    OmissionRow,
    PipelineBatchRow,
    SinkBatch,
)
from pipeline.watermark import ahead
from pipeline.windows import to_utc
from schemas.registry import Registry

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
#: what is left of a batch once its agent may take the next (:meth:`Pipeline.ingest_batch`)
Tail = Coroutine[Any, Any, None]
#: key prefix of a partition's watermark record in a stage table
_TRACKER = "wm:"
#: Seconds a partition may stay behind what the fetcher read, with no batch in
#: flight, before the worker calls it a hole at the tail of the stream.
TAIL_HOLE_S = 20.0
#: longest a revocation waits for the batches in flight, as a share of the
#: session timeout (the rebalance must finish well within it)
REVOKE_WAIT_SHARE = 0.5
#: longest wait for the broker to acknowledge a batch's messages before the
#: worker gives up (stops, to be restarted) instead of hanging
DELIVERY_TIMEOUT_S = 120.0
#: most records per internal message and per dedup-table record: keeps each
#: well under Kafka's default 1 MB request size (about 80 bytes a record)
CHUNK_RECORDS = 5000
#: a source partition's engagements when a batch has none for it
_NO_ENGAGEMENTS: Final = EngagementColumns()


class DeliveryError(RuntimeError):
    """Messages of a batch were not delivered to Kafka: the batch fails."""


def utc_now() -> datetime:
    return datetime.now(tz=UTC)


@dataclass
class PipelineStats:
    """Live counters of this worker process (not persisted)."""

    counts: Counts = field(default_factory=Counts)
    pairs: PairCounts = field(default_factory=PairCounts)
    inbound: InboundCounts = field(default_factory=InboundCounts)
    alerts: int = 0
    batches: int = 0
    #: the most (window, pair) keys the pair stage held after any of its batches
    live_windows_peak: int = 0
    #: highest offset fully processed and flushed, per (topic, partition)
    flushed: dict[tuple[str, int], int] = field(default_factory=dict)
    fatal: BaseException | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def flushed_offsets(self, topic: str) -> dict[int, int]:
        return {p: o for (t, p), o in self.flushed.items() if t == topic}


def alert_rows(alerts: Iterable[Alert], stream: str, now: datetime) -> list[AlertRow]:
    return [
        AlertRow(a.id, a.kind, a.org, a.other, a.ts, to_utc(a.ts), a.message,
                 orjson.dumps(a.details).decode(), stream, now)
        for a in alerts
    ]


def dead_letter_rows(dead: Iterable[DeadLetter], stream: str,
                     now: datetime) -> list[DeadLetterRow]:
    return [DeadLetterRow(stream, d.partition, d.offset, d.item, d.reason, d.error, d.raw, now)
            for d in dead]


def chunk_by_offset(records: EngagementColumns, size: int) -> list[EngagementColumns]:
    """``records`` (in offset order) in chunks of about ``size``, never splitting
    one source offset: the later stages skip a record whose source offset a
    key already applied from an earlier message. Always at least one chunk."""
    offsets = records.offset
    chunks: list[EngagementColumns] = []
    start = 0
    while len(records) - start > size:
        end = start + size
        while end < len(records) and offsets[end] == offsets[end - 1]:
            end += 1
        chunks.append(records[start:end])
        start = end
    if start < len(records) or not chunks:
        chunks.append(records[start:])
    return chunks


def batch_rows(outcome: IngestOutcome, stream: str, now: datetime) -> list[PipelineBatchRow]:
    """Rate and lag figures of a stage-1 batch, one row per input partition."""
    processed = now.timestamp()
    return [
        PipelineBatchRow(stream, partition, outcome.first_offsets[partition],
                         outcome.last_offsets[partition], c.messages, c.events, c.late,
                         c.duplicates, c.dead_lettered, outcome.batch_max_ts.get(partition),
                         processed, now)
        for partition, c in sorted(outcome.partition_counts.items())
    ]


def faust_app(settings: Settings, **overrides: Any) -> faust.App:
    """A Faust app configured from settings (in-memory table store; state is
    rebuilt from changelog topics)."""
    options: dict[str, Any] = {
        "broker": settings.broker,
        "store": "memory://",
        "topic_partitions": settings.partitions,
        "web_enabled": settings.web_enabled,
        "web_bind": settings.web_host,
        "web_port": settings.web_port,
        "broker_session_timeout": settings.session_timeout_s,
        "broker_heartbeat_interval": settings.heartbeat_interval_s,
        "broker_rebalance_timeout": settings.rebalance_timeout_s,
        "consumer_auto_offset_reset": "earliest",
        "producer_acks": -1,
        "broker_commit_interval": settings.commit_interval_s,
        "producer_max_batch_size": settings.producer_max_batch_bytes,
        # Never wait for unacked events on rebalance or stop: a failed batch stays
        # unacked on purpose, and commits only ever cover acked (flushed) events.
        "stream_wait_empty": False,
    }
    credentials = settings.faust_credentials()
    if credentials is not None:
        options["broker_credentials"] = credentials
    options.update(overrides)
    return faust.App(settings.app_id, **options)


class Pipeline:
    """Builds the Faust app, its topics, tables and agents around a sink."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        sink: AsyncSink,
        clock: Clock = utc_now,
        notify: Callable[[Alert], None] | None = None,
        **app_overrides: Any,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.notify = notify
        self.stats = PipelineStats()
        self.params = params = settings.params()
        self.ingest = Ingest(registry, params.lateness_s)
        self.pair_stage = ColumnarPairStage(registry, params, settings.partitions)
        #: called after each pair-stage sink write with the event times of the
        #: engagements it made queryable (``reciprocity bench`` measures latency)
        self._on_written: Callable[[list[float]], None] | None = None
        self.inbound_stage = InboundStage(params, settings.partitions)
        self.router = Router(settings.partitions)
        self.app = faust_app(settings, **app_overrides)
        self.bulk = BulkProducer(self.app)
        fetch.set_fetch_max_wait(self.app.consumer, settings.fetch_max_wait_ms)
        #: the fetch loop (``pipeline.fetch``) fills each stream topic's batches
        #: (``pipeline.batches``) and reads a hole's records again
        self.fetch = fetch.install(self.app.consumer, {
            settings.topic: Lane(self.app, settings.batch_max, settings.ingest_batch_max_bytes),
            **{topic: Lane(self.app, settings.batch_max, settings.batch_max_bytes)
               for topic in (settings.pairs_topic, settings.inbound_topic)}})
        n = settings.partitions

        def raw_topic(name: str) -> Any:
            return self.app.topic(name, partitions=n, key_serializer="raw",
                                  value_serializer="raw")

        self.topic = raw_topic(settings.topic)
        self.pairs_topic = raw_topic(settings.pairs_topic)
        self.inbound_topic = raw_topic(settings.inbound_topic)
        # str keys (JSON); values are JSON we encode ourselves (orjson, raw bytes):
        # the tables hold compact bytes, not a second copy of each state as objects
        # New event ids are stored one record per partition per batch (key
        # "partition:first offset"), with the partition's largest event time, not
        # one per event: a per-event table write caps Faust near 2-3k events/s.
        # Lookups go through an in-memory index rebuilt from the table for each
        # partition this worker is assigned.
        self.seen_table = self.app.Table("event-id-batches", partitions=n, key_type=str,
                                         value_type=bytes)
        # the pair stage's state per internal partition: a snapshot of its
        # arrays plus deltas (pipeline.pair_columns)
        self.pair_table = self.app.Table("pair-columns", partitions=n, key_type=str,
                                         value_type=bytes)
        #: the pair states of releases before the columns (one key per pair):
        #: read once to take a partition over, then deleted (_load_pairs)
        self.legacy_pair_table = self.app.Table("pair-states", partitions=n, key_type=str,
                                                value_type=bytes)
        self._legacy_keys: dict[int, list[str]] = {}
        self.inbound_table = self.app.Table("inbound-states", partitions=n, key_type=str,
                                         value_type=bytes)
        self._seen_index = SeenIndex()
        #: per input partition, the dedup records behind the index, oldest first
        self._seen_records: dict[int, collections.deque[SeenRecord]] = {}
        #: ids are kept while their event time is within this of the largest one
        self._dedup_horizon_s = params.lateness_s + settings.dedup_retention_s
        self._max_ts: dict[int, float] = {}
        self._indexed: set[int] = set()
        self.guards = {t: SequenceGuard() for t in (settings.topic, settings.pairs_topic,
                                                    settings.inbound_topic)}
        # Idle detection of input partitions (docs/metrics.md#watermark...)
        self._last_input: dict[int, float] = {}
        self._idle: set[int] = set()
        self._route_lock = asyncio.Lock()
        self._busy = 0  # batches in flight, all agents (a failed one is not)
        self._no_batch = asyncio.Event()  # set while none is in flight
        self._no_batch.set()
        self._behind_since: dict[tuple[str, int, int], float] = {}
        #: highest offset sent to each internal (topic, partition)
        self.sent: dict[tuple[str, int], int] = {}
        # mode types receivers as a union of callables that mypy cannot match to a method
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]
        self.app.on_partitions_assigned.connect(self._on_partitions_assigned)  # type: ignore[arg-type]
        # Faust's send buffer stalls the stream and warns past 100 queued records;
        # one batch legitimately queues a changelog record per touched key.
        self.app.producer.buffer.max_messages = max(1000, settings.batch_max)
        self.app.agent(self.topic, name="reciprocity.ingest")(self._ingest_agent)
        self.app.agent(self.pairs_topic, name="reciprocity.pairs")(self._pairs_agent)
        self.app.agent(self.inbound_topic, name="reciprocity.inbound")(self._inbound_agent)
        self.app.timer(interval=settings.stats_interval_s, name="reciprocity.stats")(
            self._log_stats
        )
        self.app.timer(interval=max(0.1, settings.idle_timeout_s / 3),
                       name="reciprocity.idle")(self._check_idle)
        self.app.timer(interval=TAIL_HOLE_S / 4, name="reciprocity.holes")(
            self._check_tail_holes
        )
        if settings.malloc_trim_s > 0:
            self.app.timer(interval=settings.malloc_trim_s, name="reciprocity.free_heap")(
                self._free_heap
            )
        if settings.web_enabled:
            from pipeline import web

            web.install(self)

    # -- plumbing shared by the agents ------------------------------------------------

    async def _log_stats(self) -> None:
        """Periodic progress line: what an operator tails to see the worker is alive."""
        stats = self.stats
        log.info("batches=%d %s snubs=%d drops=%d alerts=%d sink_failures=%d busy=%d "
                 "held=%d holds=%d parked=%d unread=%d", stats.batches,
                 " ".join(f"{k}={v}" for k, v in stats.counts.as_dict().items()),
                 stats.pairs.snubs, stats.pairs.drops + stats.inbound.drops, stats.alerts,
                 self.sink.failures, self._busy, len(self.fetch.held), self.fetch.holds,
                 self.fetch.parked_records, self.fetch.unread)
        read = getattr(getattr(self.app, "_consumer", None), "_read_offset", None) or {}
        log.debug("read offsets %s; next expected %s",
                  {f"{tp.topic}[{tp.partition}]": o for tp, o in read.items()},
                  {t: dict(g.expected) for t, g in self.guards.items()})

    async def _free_heap(self) -> None:
        """Return freed C heap to the system (:mod:`pipeline.memory`), off the
        loop, and the store's free memory if it runs in this process (on the
        sink's thread, between writes: ``Backend.release_memory``)."""
        await asyncio.get_running_loop().run_in_executor(None, free_heap)
        await self.sink.run(self.sink.backend.release_memory)

    async def _run_batches(self, stream: faust.StreamT[bytes], topic: str,
                           handle: Callable[[Sequence[Any]], Awaitable[Tail | None]],
                           within: float | None = None) -> None:
        """Feed ``topic``'s batches to ``handle``. A handle that returns a tail
        (what is left of its batch: stage 1's store write) gets its next batch
        while the tail finishes; the next handle's own tail then waits for it,
        so batches are done and acked in order, and at most one tail is left
        behind a running batch."""
        # Iterating the agent's channel subscribes the worker to the topic (Faust
        # adds it to the conductor); its messages come through the lane.
        aiter(stream.channel)
        batches = self.fetch.lanes[topic].batches(
            self.settings.batch_within_s if within is None else within)
        finishing: asyncio.Future[bool] | None = None  # the batch before, its tail
        try:
            async for taken in batches:
                self._busy += 1
                self._no_batch.clear()
                try:
                    tail = await handle(taken.records)
                except Exception as exc:
                    await self._fail(exc)
                if finishing is not None and not await finishing:
                    if tail is not None:
                        tail.close()  # the batch before failed: never finish this one
                    await self._fail(None)
                if tail is None:
                    finishing = None
                    taken.ack()
                    self._landed()
                else:
                    finishing = asyncio.ensure_future(self._finish(tail, taken))
        except Exception as exc:
            # the lane failed (taking or acking a batch), not a batch: a
            # restarted agent would take batches past the ones in flight, so
            # stop the worker as a failed batch does, once the batch before is done
            if finishing is not None:
                await finishing
            self._report(exc)
            await self._park()

    async def _finish(self, tail: Tail, taken: Taken) -> bool:
        """Finish a batch's tail and ack the batch; False if the tail failed
        (it then stays unacked, and the worker stops)."""
        try:
            await tail
        except Exception as exc:
            self._report(exc)
            return False
        else:
            taken.ack()
            return True
        finally:
            self._landed()

    async def _fail(self, exc: Exception | None) -> NoReturn:
        """A batch failed (``exc``, or its tail, already reported): it stays
        unacked for good (no commit ever passes it) and the agent parks until
        the runner stops the worker. A restart resumes from the last commit and,
        all writes being idempotent, loses nothing."""
        if exc is not None:
            self._report(exc)
        self._landed()  # never resumed: no longer in flight
        await self._park()

    @staticmethod
    async def _park() -> NoReturn:
        """Wait until the runner stops the worker (it cancels the agent)."""
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    def _report(self, exc: Exception) -> None:
        """A batch failed: the runner stops the worker."""
        log.error("batch failed; stopping the worker", exc_info=exc)
        self.stats.fatal = exc
        self.stats.progress.set()

    def _landed(self) -> None:
        """A batch is no longer in flight."""
        self._busy -= 1
        if not self._busy:
            self._no_batch.set()

    async def _settle(self) -> None:
        """Wait for the batches in flight to finish, at most ``REVOKE_WAIT_SHARE``
        of the session timeout. Faust has suspended the flow by the time it
        revokes partitions, so no batch starts meanwhile; one in flight finishes
        with the partitions it began with, so no stage state of a revoked
        partition is loaded again or written after it is forgotten (the pair
        and inbound stages give the event loop back between partitions)."""
        if self._busy:
            timeout = self.settings.session_timeout_s * REVOKE_WAIT_SHARE
            try:
                await asyncio.wait_for(self._no_batch.wait(), timeout)
            except TimeoutError:
                log.warning("partitions revoked while %d batch(es) still in flight "
                            "after %.1f s", self._busy, timeout)

    async def _check_tail_holes(self) -> None:
        """Timer: catch a hole at the end of a partition, which no later message
        reveals to the sequence check. Faust's fetcher drops messages it reads
        while the flow is suspended for table recovery yet records them as read
        (faust-streaming#596); when they were the last ones, the stream just
        waits. A partition whose read offset stays at or past the next offset we
        expect, while no batch is in flight, for ``TAIL_HOLE_S`` seconds lost
        messages: stop so a restart re-reads them (a false alarm only costs a
        restart: every write is idempotent)."""
        read = getattr(self.app.consumer, "_read_offset", None)  # Faust internals
        if not read:
            return
        now = time.monotonic()
        behind = self._behind_since
        seen = set()
        for tp, offset in list(read.items()):
            guard = self.guards.get(tp.topic)
            expected = None if guard is None else guard.expected.get(tp.partition)
            if offset is None or expected is None or offset < expected:
                continue
            key = (tp.topic, tp.partition, expected)
            seen.add(key)
            since = behind.setdefault(key, now)
            if self._busy:
                behind[key] = now  # a batch in flight may still deliver them
            elif now - since >= TAIL_HOLE_S and self.stats.fatal is None:
                self.stats.fatal = OffsetHoleError(
                    f"offsets {expected}..{offset} of {tp.topic}[{tp.partition}] were read "
                    "but never reached the stream (faust-streaming#596); stopping so a "
                    "restart re-reads them"
                )
                log.error("%s", self.stats.fatal)
                self.stats.progress.set()
        for key in set(behind) - seen:
            del behind[key]

    async def _expect_start(self, topic: str, messages: Sequence[Any]) -> None:
        """For partitions new to this worker, expect the offset consumption resumes
        from: the committed one, else the earliest. Faust's recovery can drop the
        first messages it fetched (faust-streaming#596), and without this the
        sequence check would take the first message it sees as the start."""
        guard = self.guards[topic]
        fresh = {TP(topic, m.partition) for m in messages if m.partition not in guard.expected}
        if not fresh:
            return
        for tp, start in (await self.fetch.starts(fresh)).items():
            guard.start(tp.partition, start)

    async def _in_sequence(self, topic: str, messages: Sequence[Any]) -> list[Any]:
        """The messages to apply: in offset order, redeliveries dropped.

        Raises :class:`OffsetHoleError` before anything is applied when the
        stream skipped offsets; the worker then stops, and a restart resumes
        from the last commit, which is never past the hole.
        """
        await self._expect_start(topic, messages)
        guard = self.guards[topic]
        if _in_order(guard.expected, messages):
            return list(messages)
        applied: list[Any] = []
        for message in messages:
            partition, offset = message.partition, message.offset
            verdict = guard.check(partition, offset)
            if verdict is Verdict.APPLY:
                applied.append(message)
            elif verdict is Verdict.HOLE:
                raise OffsetHoleError(
                    f"offsets {guard.expected[partition]}..{offset - 1} of "
                    f"{topic}[{partition}] never reached the stream "
                    "(faust-streaming#596); stopping so a restart re-reads them"
                )
        return applied

    def _done(self, topic: str, messages: Sequence[Any]) -> None:
        stats = self.stats
        # each partition's messages in offset order: its last one wins
        partitions = map(MESSAGE_PARTITION, messages)
        stats.flushed.update(zip(zip(itertools.repeat(topic), partitions),
                                 map(MESSAGE_OFFSET, messages), strict=True))
        stats.batches += 1
        stats.progress.set()

    async def _on_partitions_revoked(
        self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        """Revoked partitions: whoever gets them next starts their sequence anew."""
        revoked = args[0] if args else kwargs.get("revoked", ())
        settings = self.settings
        await self._settle()
        self.fetch.forget(revoked)
        for tp in revoked:
            guard = self.guards.get(tp.topic)
            if guard is not None:
                guard.forget(tp.partition)
            if tp.topic == settings.topic:
                self._indexed.discard(tp.partition)  # rebuild if it comes back
                if self._seen_records.pop(tp.partition, None) is not None:
                    self._seen_index.drop_partition(tp.partition)
                self._max_ts.pop(tp.partition, None)
                self._last_input.pop(tp.partition, None)
                self._idle.discard(tp.partition)
            elif tp.topic == settings.pairs_topic:
                self.pair_stage.forget(tp.partition)
                self._legacy_keys.pop(tp.partition, None)  # the next owner takes it over
            elif tp.topic == settings.inbound_topic:
                self.inbound_stage.forget(tp.partition)

    async def _on_partitions_assigned(
        self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        assigned = args[0] if args else kwargs.get("assigned", ())
        now = time.monotonic()
        for tp in assigned:
            if tp.topic == self.settings.topic:
                self._last_input.setdefault(tp.partition, now)

    def producer_crash(self) -> DeliveryError | None:
        """An error when Faust's producer buffer (which sends table changelog
        records) crashed: nothing it holds will ever be sent, and whatever
        waits on it (a flush, a commit) waits forever."""
        producer = getattr(self.app, "_producer", None)  # never create it here
        buffer = getattr(producer, "buffer", None)
        if buffer is None or not buffer.crashed:
            return None
        error = DeliveryError(f"Faust's producer crashed: {buffer.crash_reason!r}")
        error.__cause__ = buffer.crash_reason
        return error

    async def _delivered(self, pending: Sequence[Any]) -> list[Any]:
        """Wait for messages handed to Faust's producer. Faust sends them from a
        background buffer; when that crashes (an oversized message, a broker
        refusing writes) their futures never resolve: raise instead of hanging."""
        if not pending:
            return []
        gathered = asyncio.gather(*pending)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_S
        while True:
            done, _ = await asyncio.wait({gathered}, timeout=1.0)
            if done:
                return list(gathered.result())
            crashed = self.producer_crash()
            if crashed is not None:
                gathered.cancel()
                raise crashed
            if time.monotonic() > deadline:
                gathered.cancel()
                raise DeliveryError(
                    f"{len(pending)} messages not acknowledged within {DELIVERY_TIMEOUT_S:g} s")

    async def _publish_alerts(self, alerts: Sequence[Alert],
                              snub_alerts: Sequence[SnubAlerts] = ()) -> None:
        """Alerts to the alerts topic (delivery awaited) and the webhook (never
        waits): ``alerts``, then the snubs' alerts given in columns."""
        count = len(alerts) + sum(map(len, snub_alerts))
        if not count:
            return
        # In record batches (pipeline.bulk): Faust's per-message path cost more
        # than the alerts themselves when every org is watched.
        topic = self.settings.alerts_topic
        keys = [a.id.encode() for a in alerts]
        values = [dumps(a.to_json()) for a in alerts]
        for found in snub_alerts:
            keys += found.keys()
            values += found.values()
        await self._delivered(await self.bulk.send_spread(
            topic, self.bulk.partitions_of(topic, keys), zip(keys, values, strict=True)))
        self.stats.alerts += count
        if self.notify is not None:
            for alert in itertools.chain(alerts, *(found.alerts() for found in snub_alerts)):
                self.notify(alert)

    async def _send_dead_letters(self, topic: str, dead: Sequence[DeadLetter]) -> None:
        if not dead:
            return
        # In record batches (pipeline.bulk), as alerts are: through Faust's
        # per-message path a burst of bad input took about ten times as long
        # as valid events. A keyed record goes where the producer's partitioner
        # puts its key; one without a key to its input partition's number, modulo.
        dlq = self.settings.dlq_topic
        spread = await self.bulk.partitions_for(dlq)
        by_key = iter(self.bulk.partitions_of(dlq, [d.key for d in dead if d.key is not None]))
        partitions = [next(by_key) if d.key is not None else spread[d.partition % len(spread)]
                      for d in dead]
        source = topic.encode()
        headers = [[
            ("dlq.reason", d.reason.encode()),
            ("dlq.error", d.error.encode()),
            ("dlq.topic", source),
            ("dlq.partition", str(d.partition).encode()),
            ("dlq.offset", str(d.offset).encode()),
            ("dlq.item", str(d.item).encode()),
        ] for d in dead]
        # delivery confirmed before the batch is acked: nothing lost
        await self._delivered(await self.bulk.send_spread(
            dlq, partitions, [(d.key, d.raw) for d in dead], headers))

    # -- stage 1: ingest ---------------------------------------------------------------

    async def _ingest_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self._run_batches(stream, self.settings.topic, self.ingest_batch)

    async def ingest_batch(self, messages: Sequence[Any]) -> Tail:
        """Process one batch of input messages (aiokafka's records as fetched,
        or anything with their ``partition``, ``offset``, ``key`` and
        ``value``) up to its store write (see module docstring): returns the
        tail that waits for the write and then counts the batch as done.
        Stage 1's agent takes its next batch meanwhile: its rows (omissions,
        alerts, batch records) are a few INSERTs that queue behind the pair
        windows' on the sink's thread, and nothing downstream waits for them."""
        settings = self.settings
        applied = await self._in_sequence(settings.topic, messages)
        last = {m.partition: m for m in applied}
        self._index_partitions(set(last))
        outcome = self.ingest.process(applied, self._seen_index, self._max_ts)
        seen = await self._persist_seen(outcome, last)
        now_mono = time.monotonic()
        for partition in last:
            self._last_input[partition] = now_mono
        stream, now = settings.effective_stream_id, self.clock()
        alerts = [omission_alert(o) for o in outcome.omissions
                  if self.params.watched(o.left_out)]
        batch = SinkBatch(
            omissions=[OmissionRow(o.post_id, o.left_out, o.by, list(o.entities), o.ts,
                                   to_utc(o.ts), stream, now) for o in outcome.omissions],
            alerts=alert_rows(alerts, stream, now),
            dead_letters=dead_letter_rows(outcome.dead_letters, stream, now),
            pipeline_batches=batch_rows(outcome, stream, now),
        )

        async def route() -> None:
            async with self._route_lock:
                await self._route(outcome, set(last))

        # the store write (on the sink's thread) while Kafka delivers, every
        # send at once (they share the producer's requests); the batch is
        # acked only once all are done
        written = asyncio.ensure_future(self.sink.write(batch))
        # its error is the tail's; a tail never awaited (this batch or the one
        # before failed) must not leave it logged as lost
        written.add_done_callback(_retrieve)
        await asyncio.gather(route(), self._send_dead_letters(settings.topic,
                                                              outcome.dead_letters),
                             self._publish_alerts(alerts), self._delivered(seen))
        await self._expire_seen(last)
        self._align()
        self.stats.counts.add(outcome.counts)

        async def tail() -> None:
            await written
            self._done(settings.topic, applied)

        return tail()

    async def _persist_seen(self, outcome: IngestOutcome,
                            last: Mapping[int, Any]) -> list[Any]:
        """Per partition per batch: its new ids (with their late verdicts) and
        its largest event time. Ids go in records of at most ``CHUNK_RECORDS``
        (a changelog message must stay under the producer's request size); the
        new largest time rides on the last one, so a replay after a crash in
        between never sees the time moved without every id behind it. Returns
        the changelog deliveries to await."""
        new_ids = outcome.first_seen.columns
        no_ids: SeenColumns = ([], [], [], [])
        pending = []
        for partition in set(new_ids) | set(outcome.max_ts):
            ids, offsets, items, lates = new_ids.get(partition, no_ids)
            before = self._max_ts.get(partition)
            after = outcome.max_ts.get(partition, before)
            starts = list(range(0, len(ids), CHUNK_RECORDS)) or [0]
            records = []
            held = self._seen_records.setdefault(partition, collections.deque())
            hi = outcome.batch_max_ts.get(partition)
            for i, start in enumerate(starts):
                end = start + CHUNK_RECORDS
                chunk_offsets = offsets[start:end]
                chunk = {"id": ids[start:end], "offset": chunk_offsets,
                         "item": items[start:end], "late": lates[start:end]}
                if i == 0:
                    first = min(chunk_offsets, default=last[partition].offset)
                    key = f"{partition}:{first}"
                else:
                    key = f"{partition}:{offsets[start]}:{items[start]}"
                chunk_hi = hi if ids else None  # a record without ids has no ids to expire
                records.append((key, encode_seen_record(
                    {"c": chunk, "max": after if i == len(starts) - 1 else before,
                     "hi": chunk_hi})))
                held.append((chunk_hi, _last_offset(key, chunk_offsets), key))
            pending += await self.bulk.write_table(self.seen_table, last[partition], records)
        self._seen_index.add(outcome.first_seen.columns)
        self._max_ts.update(outcome.max_ts)
        return pending

    async def _expire_seen(self, last: Mapping[int, Any]) -> None:
        """Drop the dedup records and index entries older than the dedup
        retention (:func:`pipeline.ingest.expired_seen`), so the index holds the
        ids of about the last ``RECIPROCITY_DEDUP_RETENTION_S`` of event time,
        not every id ever seen. A copy of a forgotten id is late anyway."""
        committed = getattr(self.app.consumer, "_committed_offset", {})  # Faust internals
        topic = self.settings.topic
        pending = []
        through: dict[int, int] = {}
        for partition, message in last.items():
            held = self._seen_records.get(partition, collections.deque())
            expired = expired_seen(held, self._max_ts.get(partition), self._dedup_horizon_s,
                                   committed.get(TP(topic, partition)))
            if not expired:
                continue
            records = [held.popleft() for _ in range(expired)]
            # oldest first: every id of the partition first seen up to the last
            # expired record's last offset is in an expired record
            through[partition] = max(last_offset for _hi, last_offset, _key in records)
            pending += await self.bulk.delete_table(
                self.seen_table, message, [key for _hi, _last, key in records])
        if through:
            self._seen_index.forget_through(through)
        await self._delivered(pending)

    def _index_partitions(self, partitions: set[int]) -> None:
        """Load the event ids and largest event time of newly assigned partitions
        (once per assignment; the table was recovered from its changelog by then)."""
        missing = partitions - self._indexed
        if not missing:
            return
        prefixes = tuple(f"{p}:" for p in missing)
        index = self._seen_index
        held: dict[int, list[SeenRecord]] = {partition: [] for partition in missing}
        for key, value in self.seen_table.items():
            if key.startswith(prefixes):
                record = decode_seen_record(value)
                partition = int(key.split(":", 1)[0])
                high = record.get("max")
                if high is not None and high > self._max_ts.get(partition, float("-inf")):
                    self._max_ts[partition] = high
                ids, offsets, items, lates = seen_columns(record)
                # the earliest position wins if a replayed batch stored it twice
                index.load(partition, ids, offsets, items, lates)
                held[partition].append((record.get("hi"), _last_offset(key, offsets), key))
        for partition, records in held.items():
            self._seen_records[partition] = collections.deque(
                sorted(records, key=lambda record: record[1]))
        self._indexed |= missing

    async def _route(self, outcome: IngestOutcome, partitions: set[int]) -> None:
        """Send engagements and watermark news to the pair and inbound stages,
        one message per source partition and target partition, and wait for
        their delivery."""
        n = self.settings.partitions
        pending = []
        for source in sorted(partitions):
            records = outcome.engagements.get(source, _NO_ENGAGEMENTS)
            woke = source in self._idle
            self._idle.discard(source)
            moved = source in outcome.max_ts
            if not records and not moved and not woke:
                continue
            high = self._max_ts.get(source)
            by_pair, by_dst = self.router.split(records)
            for topic, by_target, fields in ((self.settings.pairs_topic, by_pair, PAIR_FIELDS),
                                             (self.settings.inbound_topic, by_dst,
                                              INBOUND_FIELDS)):
                for target in range(n):
                    routed = by_target.get(target, _NO_ENGAGEMENTS)
                    if not (routed or moved or woke):
                        continue
                    # records in chunks under the request size; the partition's
                    # new largest time only with the last, after every record
                    chunks = chunk_by_offset(routed, CHUNK_RECORDS)
                    values = [encode(source, None, False, chunk, fields)
                              for chunk in chunks[:-1]]
                    values.append(encode(source, high, False, chunks[-1], fields))
                    pending += await self.bulk.send_each(topic, target, values)
        self._note_sent(await self._delivered(pending))

    def _align(self) -> None:
        """Watermark alignment (docs/pipeline.md): hold the input partitions that
        run more than ``align_drift_s`` of event time ahead of the slowest one
        still catching up. The watermark follows the slowest partition, so what
        the others read past it would only wait in the pair stage's memory.
        A partition counts while it is not idle and not at the end of its log
        (the fetch's high watermark): at the live tail nothing is held, and a
        partition whose backlog ran out does not hold the others back. One that
        has a backlog but no event time yet holds every other (at the start of
        a catch-up, one partition's first fetch can come days of event time
        after another's)."""
        drift = self.settings.align_drift_s
        if drift <= 0:
            return
        topic = self.settings.topic
        consumer = self.app.consumer
        expected = self.guards[topic].expected
        held = self.fetch.held | self.fetch.wanted
        catching_up = {}
        for partition in self._last_input:  # the assigned input partitions
            if partition in self._idle:
                continue
            tp = TP(topic, partition)
            ts = self._max_ts.get(partition)
            position = self.fetch.next.get(tp, -1) if ts is None else \
                expected.get(partition, -1)
            if tp not in held and position >= _highwater(consumer, tp):
                continue  # read to the end of its log
            catching_up[partition] = float("-inf") if ts is None else ts
        self.fetch.hold({TP(topic, p) for p in ahead(catching_up, drift)})
        now = time.monotonic()
        for tp in self.fetch.wanted:  # held, not idle
            self._last_input[tp.partition] = now

    def _note_sent(self, delivered: Iterable[Any]) -> None:
        sent = self.sent
        for meta in delivered:
            key = (meta.topic, meta.partition)
            if meta.offset > sent.get(key, -1):
                sent[key] = meta.offset

    async def _check_idle(self) -> None:
        """Timer: input partitions silent for the idle timeout stop holding the
        watermark back (docs/metrics.md)."""
        self._align()  # a partition may have reached the end of its log meanwhile
        limit = time.monotonic() - self.settings.idle_timeout_s
        if any(last <= limit for last in self._last_input.values()):
            await self.declare_idle(quiet_since=limit)

    async def declare_idle(self, quiet_since: float | None = None) -> None:
        """Tell the downstream stages that the assigned input partitions are idle
        (only those without input since ``quiet_since``, a monotonic time, when
        given), and wait for delivery. After it, :attr:`sent` holds the offsets a
        drained run waits for."""
        async with self._route_lock:
            # decided under the lock: a batch routed meanwhile keeps its partition active
            chosen = sorted(p for p, last in self._last_input.items()
                            if quiet_since is None or last <= quiet_since)
            fresh = [p for p in chosen if p not in self._idle]
            if not fresh:
                return
            pending = []
            for topic, fields in ((self.settings.pairs_topic, PAIR_FIELDS),
                                  (self.settings.inbound_topic, INBOUND_FIELDS)):
                for source in fresh:
                    for target in range(self.settings.partitions):
                        pending += await self.bulk.send_each(topic, target, [
                            encode(source, self._max_ts.get(source), True, (), fields)])
            self._note_sent(await self._delivered(pending))
            self._idle.update(fresh)
            self._align()  # an idle partition holds no other back

    # -- stage 2: pairs ----------------------------------------------------------------

    async def _pairs_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self._run_batches(stream, self.settings.pairs_topic, self.process_pairs)

    def _load_stage(self, stage: InboundStage, table: Any, partition: int,
                    decode: Callable[[str], str], owner: Callable[[str], str]) -> None:
        """Give a stage a partition new to it, from what its table holds (the table
        was recovered from its changelog by the time the partition's events come;
        ``owner`` maps a decoded key to the key its partition follows)."""
        if stage.owns(partition):
            return
        n = self.settings.partitions
        tracker = None
        states = []
        for key, value in table.items():
            if key.startswith(_TRACKER):
                if int(key[len(_TRACKER):]) == partition:
                    tracker = orjson.loads(value)
            elif partition_for(owner(decode(key)), n) == partition:
                states.append((decode(key), orjson.loads(value)))
        stage.load(partition, tracker, states)

    def _load_pairs(self, partition: int) -> None:
        """Give the pair stage a partition new to it: its tracker, snapshot and
        deltas (keys under ``partition_prefix``) from the recovered table."""
        stage = self.pair_stage
        if stage.owns(partition):
            return
        tracker_key, prefix = f"{_TRACKER}{partition}", partition_prefix(partition)
        tracker = None
        items = []
        for key, value in self.pair_table.items():
            if key == tracker_key:
                tracker = orjson.loads(value)
            elif key.startswith(prefix):
                items.append((key, value))
        if tracker is None and not items and self._adopt_legacy(partition):
            return
        stage.load(partition, tracker, items)

    def _adopt_legacy(self, partition: int) -> bool:
        """Take a partition over from the ``pair-states`` table of an older
        release (a pair state per key, pipeline.pairs), if it holds any; its
        keys are deleted once the partition's first snapshot is written."""
        n = self.settings.partitions
        tracker_key = f"{_TRACKER}{partition}"
        tracker = None
        docs, keys = [], []
        for key, value in self.legacy_pair_table.items():
            if key == tracker_key:
                tracker = orjson.loads(value)
                keys.append(key)
            elif not key.startswith(_TRACKER) and partition_for(pair_of(key), n) == partition:
                docs.append((key, orjson.loads(value)))
                keys.append(key)
        if not keys:
            return False
        legacy = PairStage(self.ingest.registry, self.params, n)
        legacy.load(partition, tracker, docs)
        self.pair_stage.adopt(partition, tracker, legacy.states_of(partition))
        self._legacy_keys[partition] = keys
        log.info("pairs partition %d: took over %d keys of the pair-states table", partition,
                 len(keys))
        return True

    async def _persist_stage(self, stage: ColumnarPairStage | InboundStage, table: Any,
                             outcomes: Sequence[tuple[Any, Any]],
                             encode: Callable[[str], str]) -> None:
        """Write each touched key's state, then each partition's tracker, and wait
        for their delivery: after a crash the tracker is never ahead of the
        states (one changelog partition, in order). Called after the results
        are out (a crash in between replays the batch against the old state and
        writes the same results again; the other way round the replay would find
        the batch applied and write nothing)."""
        pending = []
        for last, outcome in outcomes:
            partition = last.partition
            if not stage.owns(partition):
                continue  # revoked meanwhile: its new owner replays from the last commit
            items = [(encode(key), doc) for key, doc in outcome.states.items()]
            items.append((f"{_TRACKER}{partition}", dumps(outcome.tracker)))
            pending += await self.bulk.write_table(table, last, items)
        await self._delivered(pending)

    async def process_pairs(self, messages: Sequence[Any]) -> None:
        settings = self.settings
        topic = settings.pairs_topic
        applied = await self._in_sequence(topic, messages)
        stage = self.pair_stage
        stream, now = settings.effective_stream_id, self.clock()
        batch = SinkBatch()
        alerts: list[Alert] = []
        snub_alerts: list[SnubAlerts] = []
        dead: list[DeadLetter] = []
        outcomes = []
        for partition, group in _by_partition(applied).items():
            await asyncio.sleep(0)  # the loop's other work between partitions
            self._load_pairs(partition)
            outcome = stage.process(partition, group, stream, now)
            outcomes.append((group[-1], outcome))
            if outcome.windows is not None:
                batch.add_block("pair_windows", outcome.windows.block())
            if outcome.snub_columns is not None:
                batch.add_block("snubs", outcome.snub_columns.block(stream, now))
            if outcome.snub_alerts is not None:
                snub_alerts.append(outcome.snub_alerts)
                batch.add_block("alerts", outcome.snub_alerts.block(stream, now))
            alerts.extend(outcome.drop_alerts)
            dead.extend(outcome.dead_letters)
            _add_counts(self.stats.pairs, outcome.counts)
        self.stats.live_windows_peak = max(self.stats.live_windows_peak, stage.live_windows())
        batch.alerts.extend(alert_rows(alerts, stream, now))
        batch.dead_letters.extend(dead_letter_rows(dead, stream, now))

        async def write() -> None:
            await self.sink.write(batch)
            if self.on_written is not None:
                self.on_written([ts for _, outcome in outcomes for ts in outcome.applied_ts])

        async def send() -> None:
            await self._send_dead_letters(topic, dead)
            await self._publish_alerts(alerts, snub_alerts)

        await asyncio.gather(write(), send())  # the results, together
        await self._persist_stage(stage, self.pair_table, outcomes, _same)  # then the state
        if self._legacy_keys:
            pending = []
            for last, _outcome in outcomes:
                partition = last.partition
                if partition in self._legacy_keys and stage.owns(partition) and (
                        stage.snapshotted(partition)):
                    pending += await self.bulk.delete_table(
                        self.legacy_pair_table, last, self._legacy_keys.pop(partition))
            await self._delivered(pending)
        self._done(topic, applied)

    @property
    def on_written(self) -> Callable[[list[float]], None] | None:
        return self._on_written

    @on_written.setter
    def on_written(self, callback: Callable[[list[float]], None] | None) -> None:
        self._on_written = callback
        self.pair_stage.keep_applied_ts = callback is not None

    # -- stage 3: inbound --------------------------------------------------------------

    async def _inbound_agent(self, stream: faust.StreamT[bytes]) -> None:
        await self._run_batches(stream, self.settings.inbound_topic, self.process_inbound,
                                self.settings.inbound_batch_within_s)

    async def process_inbound(self, messages: Sequence[Any]) -> None:
        settings = self.settings
        topic = settings.inbound_topic
        applied = await self._in_sequence(topic, messages)
        stage = self.inbound_stage
        stream, now = settings.effective_stream_id, self.clock()
        alerts: list[Alert] = []
        outcomes = []
        for partition, group in _by_partition(applied).items():
            await asyncio.sleep(0)  # the loop's other work between partitions
            self._load_stage(stage, self.inbound_table, partition, _org_of_key, _same)
            outcome = stage.process(partition, group)
            outcomes.append((group[-1], outcome))
            alerts.extend(outcome.alerts)
            _add_counts(self.stats.inbound, outcome.counts)
        await asyncio.gather(self.sink.write(SinkBatch(alerts=alert_rows(alerts, stream, now))),
                             self._publish_alerts(alerts))
        await self._persist_stage(stage, self.inbound_table, outcomes, _key_of_org)
        self._done(topic, applied)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Take a future's outcome so an error nobody awaits is not logged as lost."""
    if not future.cancelled():
        future.exception()


def _highwater(consumer: Any, tp: TP) -> int | float:
    """The end of ``tp``'s log as its last fetch saw it (infinite when unknown,
    or when a rebalance took the partition away meanwhile)."""
    try:
        high = consumer.highwater(tp)
    except AssertionError:  # aiokafka: not assigned (any more)
        return float("inf")
    return float("inf") if high is None else int(high)


def _last_offset(key: str, offsets: Sequence[int]) -> int:
    """The last input offset a dedup record covers (its key's for no ids)."""
    return int(max(offsets, default=int(key.split(":")[1])))


def _same(key: str) -> str:
    return key


def _org_of_key(key: str) -> str:
    """Inbound table keys are JSON strings: no org id can look like a tracker key."""
    org: str = orjson.loads(key)
    return org


def _key_of_org(org: str) -> str:
    return orjson.dumps(org).decode()


def _in_order(expected: dict[int, int], messages: Sequence[Any]) -> bool:
    """Whether every partition's messages in a batch are the next offsets
    expected, one after another (or its first ones since it was assigned),
    and if so expect the offsets after them: the usual batch, checked in
    columns (else :meth:`Pipeline._in_sequence` classifies message by
    message, the expectations untouched)."""
    if not messages:
        return True
    n = len(messages)
    partition = np.fromiter(map(MESSAGE_PARTITION, messages), dtype=np.int64, count=n)
    offset = np.fromiter(map(MESSAGE_OFFSET, messages), dtype=np.int64, count=n)
    ends = {}
    for p in dict.fromkeys(partition.tolist()):
        mine = offset[partition == p]
        first = expected.get(p)
        if (first is not None and mine[0] != first) or (np.diff(mine) != 1).any():
            return False
        ends[p] = int(mine[-1]) + 1
    expected.update(ends)
    return True


def _by_partition(messages: Sequence[Any]) -> dict[int, list[Any]]:
    groups: dict[int, list[Any]] = {}
    for message in messages:
        groups.setdefault(message.partition, []).append(message)
    return groups


def _add_counts(total: Any, more: Any) -> None:
    for name in total.__slots__:
        setattr(total, name, getattr(total, name) + getattr(more, name))
