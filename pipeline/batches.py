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
only once the agent is done with its batch (``Event.ack``); messages fetched
before a rebalance (an older consumer generation) are dropped, not processed
and not acked (the rebalance's seek reads them again); nothing is taken while
the app's flow is suspended.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator
from typing import Any


class Lane:
    """Messages of one stream topic, from the fetch loop to its agent."""

    def __init__(self, app: Any, max_count: int, max_bytes: int) -> None:
        self.app = app
        self.max_count = max_count
        self.max_bytes = max_bytes
        self._make_event = app.conf.Event
        self._events: list[Any] = []
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
        message.incref()  # the agent acks it with its batch
        if not self._events:
            self._first_at = time.monotonic()
            self._some.set()
        value = message.value
        self._events.append(self._make_event(self.app, message.key, value, message.headers,
                                             message))
        self._size += len(value or b"")
        if len(self._events) >= self.max_count or self._size >= self.max_bytes:
            self._full.set()
            self._room.clear()
        return True

    async def room(self) -> None:
        """Until the next batch can take a message again."""
        await self._room.wait()

    def __len__(self) -> int:
        return len(self._events)

    async def batches(self, within: float) -> AsyncGenerator[list[Any], None]:
        """The agent's batches: what the next batch holds once it is full or
        its first message arrived ``within`` seconds ago. The events of a batch
        are acked when the agent asks for the next one (not when it fails: a
        failed batch is never resumed)."""
        flow = self.app.flow_control
        while True:
            await self._some.wait()
            remaining = self._first_at + within - time.monotonic()
            if remaining > 0 and not self._full.is_set():
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), remaining)
            await flow.acquire()  # not while a rebalance has the flow suspended
            if not self._events:  # defensive: only a take empties the batch
                self._some.clear()
                continue
            taken, self._events, self._size = self._events, [], 0
            self._some.clear()
            self._full.clear()
            self._room.set()
            generation = self.app.consumer_generation_id
            batch = [event for event in taken if event.message.generation_id == generation]
            if not batch:
                continue
            yield batch
            for event in batch:
                event.ack()
