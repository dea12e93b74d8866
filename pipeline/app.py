"""The Faust app: a thin adapter between Kafka, the pure aggregator and the sink.

Per batch (``stream.take_events``) the agent

0. checks that each partition's offsets follow on with no hole
   (``pipeline.sequence``) and drops redeliveries it already applied;
1. hands the raw messages to :class:`pipeline.aggregate.Aggregator`, which
   validates, dedups and pre-aggregates them against read-only table views;
2. writes each touched table key once (pair-window states, new event ids) so
   the changelog gets one record per key per batch, not one per event;
3. sends dead letters to the DLQ topic (original bytes as the value, the reason
   in headers) and waits for their delivery;
4. writes the touched pair windows and dead letters to ClickHouse off the loop;

and only then lets Faust ack the batch, so committed offsets never run ahead
of what the sink holds. Everything written is idempotent (see
``pipeline.aggregate`` and ``pipeline.sinks.schema``), so at-least-once
re-delivery after a crash gives the same results.

Dedup scope: an id is recognised as a duplicate when its copies reach the same
worker's tables, which holds when copies share a Kafka key (our producers key
every message by event id). Copies with different keys landing on partitions
owned by different workers are counted once per partition.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import faust
import orjson
from faust.streams import _current_event

from pipeline.aggregate import (
    OFFSET_SLOT,
    Aggregator,
    BatchOutcome,
    Counts,
    Message,
    PairKey,
    PairState,
)
from pipeline.sequence import OffsetHoleError, SequenceGuard, Verdict
from pipeline.settings import Settings
from pipeline.sinks import AsyncSink, DeadLetterRow, PairWindowRow, SinkBatch
from pipeline.windows import to_utc
from schemas.registry import Registry

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(tz=UTC)


@dataclass
class PipelineStats:
    """Live counters of this worker process (not persisted)."""

    counts: Counts = field(default_factory=Counts)
    batches: int = 0
    #: highest source offset fully processed and flushed, per partition
    flushed_offsets: dict[int, int] = field(default_factory=dict)
    fatal: BaseException | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)


def encode_key(key: PairKey) -> str:
    """Table key for a pair window: JSON text, so it survives the changelog."""
    return orjson.dumps(key).decode()


class _PairTableView(Mapping[PairKey, PairState]):
    """Read-only tuple-keyed view of the pair-window table for the aggregator."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def __getitem__(self, key: PairKey) -> PairState:
        value = self._table.get(encode_key(key))
        if value is None:
            raise KeyError(key)
        return list(value)

    def get(self, key: PairKey, default: Any = None) -> Any:
        value = self._table.get(encode_key(key))
        return default if value is None else value

    def __iter__(self) -> Iterator[PairKey]:
        raise NotImplementedError("the aggregator only reads single keys")

    def __len__(self) -> int:
        return len(self._table)


def sink_batch(outcome: BatchOutcome, stream: str, now: datetime) -> SinkBatch:
    """The rows one batch makes for ClickHouse (absolute states, versioned)."""
    pairs = [
        PairWindowRow(
            window=label, window_start=to_utc(start), src=src, dst=dst, stream=stream,
            partition=partition, counts=tuple(state[:OFFSET_SLOT]),  # type: ignore[arg-type]
            version=state[OFFSET_SLOT] + 1, updated_at=now,
        )
        for (partition, label, start, src, dst), state in outcome.pair_states.items()
    ]
    dead = [
        DeadLetterRow(stream, d.partition, d.offset, d.item, d.reason, d.error, d.raw, now)
        for d in outcome.dead_letters
    ]
    return SinkBatch(pairs, dead)


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
        # Never wait for unacked events on rebalance or stop: a failed batch stays
        # unacked on purpose, and commits only ever cover acked (flushed) events.
        "stream_wait_empty": False,
    }
    options.update(overrides)
    return faust.App(settings.app_id, **options)


class Pipeline:
    """Builds the Faust app, its topics, tables and agent around a sink."""

    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        sink: AsyncSink,
        clock: Clock = utc_now,
        **app_overrides: Any,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.clock = clock
        self.stats = PipelineStats()
        self.aggregator = Aggregator(registry, settings.windows)
        self.app = faust_app(settings, **app_overrides)
        self.topic = self.app.topic(settings.topic, partitions=settings.partitions,
                                    key_serializer="raw", value_serializer="raw")
        self.dlq = self.app.topic(settings.dlq_topic, partitions=settings.partitions,
                                  key_serializer="raw", value_serializer="raw")
        # str keys and list values must round-trip through the changelog unchanged
        state: faust.Schema = faust.Schema(key_serializer="json", value_serializer="json")
        self.pair_table = self.app.Table(
            "pair-windows", partitions=settings.partitions, schema=state
        )
        # New event ids are stored one record per partition per batch (key
        # "partition:first offset"), not one per event: a per-event table write
        # caps Faust near 2-3k events/s. Lookups go through an in-memory index
        # rebuilt from the table for each partition this worker is assigned.
        self.seen_table = self.app.Table(
            "event-id-batches", partitions=settings.partitions, schema=state
        )
        self._seen_index: dict[str, tuple[int, int, int]] = {}
        self._indexed: set[int] = set()
        self._pair_view = _PairTableView(self.pair_table)
        self.guard = SequenceGuard()
        # mode types receivers as a union of callables that mypy cannot match to a method
        self.app.on_partitions_revoked.connect(self._on_partitions_revoked)  # type: ignore[arg-type]
        # Faust's send buffer stalls the stream and warns past 100 queued records;
        # one batch legitimately queues a changelog record per touched key.
        self.app.producer.buffer.max_messages = max(1000, settings.batch_max)
        self.app.agent(self.topic, name="reciprocity.pairs")(self._agent)
        self.app.timer(interval=settings.stats_interval_s, name="reciprocity.stats")(
            self._log_stats
        )

    async def _log_stats(self) -> None:
        """Periodic progress line: what an operator tails to see the worker is alive."""
        stats = self.stats
        log.info("batches=%d %s flushed_offsets=%s sink_failures=%d", stats.batches,
                 " ".join(f"{k}={v}" for k, v in stats.counts.as_dict().items()),
                 dict(sorted(stats.flushed_offsets.items())), self.sink.failures)

    async def _agent(self, stream: faust.StreamT[bytes]) -> None:
        settings = self.settings
        batches = stream.take_events(  # type: ignore[attr-defined]  # missing from StreamT
            settings.batch_max, within=settings.batch_within_s
        )
        async for events in batches:
            try:
                await self.process(events)
            except Exception as exc:
                # Keep the failed batch unacked for good (take_events acks what it
                # yielded once we move on), so no commit ever passes it; then park
                # until the runner stops the worker. A restart resumes from the
                # last commit and, all writes being idempotent, loses nothing.
                for event in events:
                    event.message.incref()
                log.exception("batch failed; stopping the worker")
                self.stats.fatal = exc
                self.stats.progress.set()
                await asyncio.Event().wait()

    async def process(self, events: Sequence[Any]) -> None:
        """Process one batch of Faust events end to end (see module docstring)."""
        applied = self._in_sequence(events)
        messages = [
            Message(e.message.partition, e.message.offset, e.value, e.message.key)
            for e in applied
        ]
        self._index_partitions({m.partition for m in messages})
        outcome = self.aggregator.process(messages, self._pair_view, self._seen_index)
        last_event = {e.message.partition: e for e in applied}
        self._persist_tables(outcome, last_event)
        await self._send_dead_letters(outcome)
        await self.sink.write(sink_batch(outcome, self.settings.effective_stream_id, self.clock()))
        stats = self.stats
        stats.counts.add(outcome.counts)
        stats.batches += 1
        stats.flushed_offsets.update(outcome.last_offsets)
        stats.progress.set()

    def _in_sequence(self, events: Sequence[Any]) -> list[Any]:
        """The events to apply: in offset order, redeliveries dropped.

        Raises :class:`OffsetHoleError` before anything is applied when the
        stream skipped offsets; the worker then stops, and a restart resumes
        from the last commit, which is never past the hole.
        """
        applied: list[Any] = []
        guard = self.guard
        for event in events:
            partition, offset = event.message.partition, event.message.offset
            verdict = guard.check(partition, offset)
            if verdict is Verdict.APPLY:
                applied.append(event)
            elif verdict is Verdict.HOLE:
                raise OffsetHoleError(
                    f"offsets {guard.expected[partition]}..{offset - 1} of "
                    f"{self.settings.topic}[{partition}] never reached the stream "
                    "(faust-streaming#596); stopping so a restart re-reads them"
                )
        return applied

    async def _on_partitions_revoked(
        self, sender: Any, *args: Any, signal: Any = None, **kwargs: Any
    ) -> None:
        """Revoked partitions: whoever gets them next starts their sequence anew."""
        revoked = args[0] if args else kwargs.get("revoked", ())
        for tp in revoked:
            if tp.topic == self.settings.topic:
                self.guard.forget(tp.partition)
                self._indexed.discard(tp.partition)  # rebuild if it comes back

    def _persist_tables(self, outcome: BatchOutcome, last_event: Mapping[int, Any]) -> None:
        # Faust routes a changelog record to the partition of the "current event";
        # with batches we set it per source partition so each key's changelog
        # stays in the partition its updates come from.
        current = -1
        for key, state in sorted(outcome.pair_states.items(), key=lambda kv: kv[0][0]):
            if key[0] != current:
                current = key[0]
                _current_event.set(weakref.ref(last_event[current]))
            self.pair_table[encode_key(key)] = state
        new_ids: dict[int, list[list[Any]]] = {}
        for event_id, (partition, offset, item) in outcome.first_seen.items():
            new_ids.setdefault(partition, []).append([event_id, offset, item])
        for partition, entries in new_ids.items():
            _current_event.set(weakref.ref(last_event[partition]))
            first_offset = min(offset for _, offset, _ in entries)
            self.seen_table[f"{partition}:{first_offset}"] = entries
        self._seen_index.update(outcome.first_seen)

    def _index_partitions(self, partitions: set[int]) -> None:
        """Load the event ids of newly assigned partitions into the index (once
        per assignment; the table was recovered from its changelog by then)."""
        missing = partitions - self._indexed
        if not missing:
            return
        prefixes = tuple(f"{p}:" for p in missing)
        index = self._seen_index
        for key, entries in self.seen_table.items():
            if key.startswith(prefixes):
                partition = int(key.split(":", 1)[0])
                for event_id, offset, item in entries:
                    position = (partition, offset, item)
                    # the earliest position wins if a replayed batch stored it twice
                    if event_id not in index or position < index[event_id]:
                        index[event_id] = position
        self._indexed |= missing

    async def _send_dead_letters(self, outcome: BatchOutcome) -> None:
        if not outcome.dead_letters:
            return
        pending = []
        for d in outcome.dead_letters:
            headers = [
                ("dlq.reason", d.reason.encode()),
                ("dlq.error", d.error.encode()),
                ("dlq.topic", self.settings.topic.encode()),
                ("dlq.partition", str(d.partition).encode()),
                ("dlq.offset", str(d.offset).encode()),
                ("dlq.item", str(d.item).encode()),
            ]
            pending.append(await self.dlq.send(key=d.key, value=d.raw, headers=headers))
        # delivery confirmed before the batch is acked: nothing lost
        await asyncio.gather(*pending)
