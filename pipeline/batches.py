"""Batches of a stream topic, bounded by count and by bytes.

Faust hands each message of a topic to its agents one at a time: the
conductor builds an event and puts it on the channel's queue, the stream takes
it off again and runs its processors, ``Stream.take_events`` collects it into
a batch, and every event is acked through the stream on its own. For
single-event messages that was about a quarter of what the worker spent per
event (docs/benchmarks.md).

A :class:`Lane` is one stream topic's batch in the making. The worker's fetch
loop (``pipeline.fetch``) adds each fetched message to it directly, in offset
order per partition, and the topic's agent takes whole batches from it
(:meth:`Lane.batches`). A batch is full at ``max_count`` messages or once its
message values add up to ``max_bytes`` (a single larger message is a batch of
its own): messages range from one ~110-byte event to a packed array of
thousands, and an internal message of stage 1 holds up to ``CHUNK_RECORDS``
engagements, so a count alone let one batch hold most of a 1M-event backlog.
While the agent works on a batch the fetch loop fills the next one, and
waits (Faust's ``wait_first``, so a rebalance can cancel the wait) once that
one is full. A batch is taken once it is full or its first message has
waited ``within`` seconds, counted from that message's arrival: messages that
arrived while the agent worked on the previous batch do not wait again.

What Faust's stream does that matters is kept: a message counts for commits
only once the agent is done with its batch; messages fetched before a
rebalance (an older consumer generation) are dropped, not processed and not
acked (the rebalance's seek reads them again); nothing is taken while the
app's flow is suspended. A batch holds Faust's messages themselves, not an
``Event`` each, and is acked in one step per partition (:func:`ack`): Faust's
``Event.ack`` per message, through the message's reference count and the
consumer's lock, cost about a tenth of the worker's event loop with
single-event messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from faust.types import tuples
from mode.utils.futures import notify


class Lane:
    """Messages of one stream topic, from the fetch loop to its agent."""

    def __init__(self, app: Any, max_count: int, max_bytes: int) -> None:
        self.app = app
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._messages: list[Any] = []
        self._size = 0
        #: when the first message of the next batch arrived (monotonic seconds)
        self._first_at = 0.0
        self._some = asyncio.Event()
        self._full = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()

    def offer(self, message: Any) -> bool:
        """Add a fetched message to the next batch; False (nothing added) when
        that batch is full."""
        if not self._room.is_set():
            return False
        messages = self._messages
        if not messages:
            self._first_at = time.monotonic()
            self._some.set()
        messages.append(message)
        self._size += len(message.value or b"")
        if len(messages) >= self.max_count or self._size >= self.max_bytes:
            self._full.set()
            self._room.clear()
        return True

    async def room(self) -> None:
        """Until the next batch can take a message again."""
        await self._room.wait()

    def __len__(self) -> int:
        return len(self._messages)

    async def batches(self, within: float) -> AsyncGenerator[list[Any], None]:
        """The agent's batches (Faust's messages, in the order fetched): what the
        next batch holds once it is full or its first message arrived
        ``within`` seconds ago. A batch is acked when the agent asks for the
        next one (not when it fails: a failed batch is never resumed)."""
        flow = self.app.flow_control
        while True:
            await self._some.wait()
            remaining = self._first_at + within - time.monotonic()
            if remaining > 0 and not self._full.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            await flow.acquire()  # not while a rebalance has the flow suspended
            if not self._messages:  # defensive: only a take empties the batch
                self._some.clear()
                continue
            batch, self._messages, self._size = self._messages, [], 0
            self._some.clear()
            self._full.clear()
            self._room.set()
            generation = self.app.consumer_generation_id
            # generations only grow, in the order messages were fetched
            if batch[0].generation_id != generation:
                batch = [m for m in batch if m.generation_id == generation]
                if not batch:
                    continue
            yield batch
            ack(self.app.consumer, batch)


#: Faust's lock around its ack bookkeeping (the consumer thread acks too)
_ACK_LOCK = getattr(tuples, "ack_lock", None) or contextlib.nullcontext()


def ack(consumer: Any, messages: Sequence[Any]) -> None:
    """What Faust's ``Consumer.ack`` does for each message, in one step per
    partition: the offsets from a partition's first message to its last join
    the consumer's acked offsets (those below the committed offset, or already
    there, excepted), so the next commit covers them. A partition's messages
    in a batch are consecutive offsets: the fetch loop delivers them gap-free,
    and a batch with a hole fails its sequence check and is never acked."""
    first: dict[Any, int] = {m.tp: m.offset for m in reversed(messages)}
    last: dict[Any, int] = {m.tp: m.offset for m in messages}
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
