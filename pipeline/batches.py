"""Batches of a stream topic, bounded by count and by bytes.

Faust hands each message of a topic to its agents one at a time: the
conductor builds an event and puts it on the channel's queue, the stream takes
it off again and runs its processors, ``Stream.take_events`` collects it into
a batch, and every event is acked through the stream on its own. For
single-event messages that was about a quarter of what the worker spent per
event (docs/benchmarks.md).

A :class:`Lane` is one stream topic's batch in the making. The worker's fetch
loop (``pipeline.fetch``) adds fetched records to it directly, a run of one
partition's consecutive offsets at a time, and the topic's agent takes whole
batches from it (:meth:`Lane.batches`). A batch is full at ``max_count``
messages or once its message values add up to ``max_bytes`` (a single larger
message is a batch of its own): messages range from one ~110-byte event to a
packed array of thousands, and an internal message of stage 1 holds up to
``CHUNK_RECORDS`` engagements, so a count alone let one batch hold most of a
1M-event backlog.
While the agent works on a batch the fetch loop fills the next one, and
waits (Faust's ``wait_first``, so a rebalance can cancel the wait) once that
one is full. A batch is taken once it is full or its first message has
waited ``within`` seconds, counted from that message's arrival: messages that
arrived while the agent worked on the previous batch do not wait again.

What Faust's stream does that matters is kept: a message counts for commits
only once the agent is done with its batch (:meth:`Taken.ack`); messages
fetched before a rebalance (an older consumer generation) are dropped, not
processed and not acked (the rebalance's seek reads them again); nothing is
taken while the app's flow is suspended. A batch holds aiokafka's records as fetched (with
``partition``, ``offset``, ``key``, ``value`` and ``headers``), not a Faust
``Message`` and ``Event`` each, and is acked in one step per partition
(:func:`ack`): Faust's ``Event.ack`` per message, through the message's
reference count and the consumer's lock, cost about a tenth of the worker's
event loop with single-event messages.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import itertools
import time
from collections.abc import AsyncGenerator, Iterable, Sequence
from typing import Any

from faust.types import tuples
from mode.utils.futures import notify

#: one partition's records in a batch: (partition, consumer generation when
#: fetched, index of the first in the batch, how many)
Run = tuple[Any, int, int, int]


class Lane:
    """Records of one stream topic, from the fetch loop to its agent."""

    def __init__(self, app: Any, max_count: int, max_bytes: int) -> None:
        self.app = app
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._records: list[Any] = []
        self._runs: list[Run] = []
        self._size = 0
        #: when the first record of the next batch arrived (monotonic seconds)
        self._first_at = 0.0
        self._some = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def offer(self, tp: Any, records: Sequence[Any], generation: int) -> int:
        """Add the first of ``records`` (consecutive offsets of ``tp``, fetched
        in consumer generation ``generation``) that fit in the next batch; how
        many (0 when it is full). The batch is full at ``max_count`` records or
        once their values add up to ``max_bytes`` (the record that gets it
        there included, so a single larger one is a batch of its own)."""
        if not self._room.is_set() or not records:
            return 0
        batch = self._records
        room = self.max_count - len(batch)
        if len(records) > room:
            records = records[:room]
        sizes = list(itertools.accumulate(map(_size, records), initial=self._size))
        n = min(len(records), bisect.bisect_left(sizes, self.max_bytes, 1))
        if n < len(records):
            records = records[:n]
        if not batch:
            self._first_at = time.monotonic()
            self._some.set()
        self._runs.append((tp, generation, len(batch), n))
        batch.extend(records)
        self._size = sizes[n]
        if len(batch) >= self.max_count or self._size >= self.max_bytes:
            self._full.set()
            self._room.clear()
        return n

    async def room(self) -> None:
        """Until the next batch can take a record again."""
        await self._room.wait()

    def __len__(self) -> int:
        return len(self._records)

    async def batches(self, within: float) -> AsyncGenerator[Taken, None]:
        """The agent's batches (records in the order fetched): what the next
        batch holds once it is full or its first record arrived ``within``
        seconds ago. The agent acks each batch once it is done with it
        (:meth:`Taken.ack`; never a failed one), in the order taken: it may
        take the next batch before that (stage 1 works on the next while its
        store write finishes)."""
        flow = self.app.flow_control
        while True:
            await self._some.wait()
            remaining = self._first_at + within - time.monotonic()
            if remaining > 0 and not self._full.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            await flow.acquire()  # not while a rebalance has the flow suspended
            if not self._records:  # defensive: only a take empties the batch
                self._some.clear()
                continue
            batch, runs = self._records, self._runs
            self._records, self._runs, self._size = [], [], 0
            self._some.clear()
            self._full.clear()
            self._room.set()
            generation = self.app.consumer_generation_id
            if any(run[1] != generation for run in runs):  # fetched before a rebalance
                batch, runs = _of_generation(batch, runs, generation)
                if not batch:
                    continue
            yield Taken(self.app, batch, runs)


class Taken:
    """A batch an agent took: its ``records`` (in the order fetched), acked
    once the agent is done with them."""

    __slots__ = ("_app", "_runs", "records")

    def __init__(self, app: Any, records: list[Any], runs: list[Run]) -> None:
        self._app = app
        self._runs = runs
        self.records = records

    def ack(self) -> None:
        """Let the next commit cover these records (:func:`ack`)."""
        records = self.records
        ack(self._app.consumer, ((tp, records[start].offset, records[start + n - 1].offset)
                                 for tp, _, start, n in self._runs))


def _size(record: Any) -> int:
    value = record.value
    return len(value) if value is not None else 0


def _of_generation(batch: list[Any], runs: list[Run],
                   generation: int) -> tuple[list[Any], list[Run]]:
    """The records and runs of ``batch`` fetched in ``generation``."""
    kept: list[Any] = []
    kept_runs: list[Run] = []
    for tp, fetched_in, start, n in runs:
        if fetched_in == generation:
            kept_runs.append((tp, fetched_in, len(kept), n))
            kept.extend(batch[start:start + n])
    return kept, kept_runs


#: Faust's lock around its ack bookkeeping (the consumer thread acks too)
_ACK_LOCK = getattr(tuples, "ack_lock", None) or contextlib.nullcontext()


def ack(consumer: Any, spans: Iterable[tuple[Any, int, int]]) -> None:
    """What Faust's ``Consumer.ack`` does for each record of a batch, in one
    step per partition, from ``(partition, first offset, last offset)`` spans
    of consecutive records: the offsets from a partition's first to its last
    join the consumer's acked offsets (those below the committed offset, or
    already there, excepted), so the next commit covers them. A partition's
    records in a batch are consecutive offsets: the fetch loop delivers them
    gap-free, and a batch with a hole fails its sequence check and is never
    acked."""
    first: dict[Any, int] = {}
    last: dict[Any, int] = {}
    for tp, start, end in spans:
        first[tp] = min(start, first.get(tp, start))
        last[tp] = max(end, last.get(tp, end))
    acks_enabled_for = consumer.app.topics.acks_enabled_for
    with _ACK_LOCK:
        for tp, end in last.items():
            if not acks_enabled_for(tp.topic):
                continue
            start = first[tp]
            committed = consumer._committed_offset[tp]
            if committed is not None:
                start = max(start, committed)
            index = consumer._acked_index[tp]
            fresh = set(range(start, end + 1)) - index
            if fresh:
                index |= fresh
                consumer._acked[tp].extend(sorted(fresh))
                consumer._n_acked += len(fresh)
    notify(consumer._waiting_for_ack)
