"""Batches of a Faust stream bounded by count and by bytes.

Faust's ``Stream.take_events(max_, within)`` bounds a batch by its number of
messages only. Messages range from one ~110-byte event to a packed array of
thousands, and an internal message of stage 1 holds up to ``CHUNK_RECORDS``
engagements: a batch of 10,000 such messages taken while a backlog is read
held most of a 1M-event topic at once (127 MB of input values in one stage-1
batch, 50 MB in one pair-stage batch, peak RSS swinging between 1.5 and
2.3 GiB from run to run). :func:`take_batches` is ``take_events`` with one
more condition: the batch is also full once its message values add up to
``max_bytes`` (a single larger message is a batch of its own).

Everything else is Faust's (faust-streaming 0.15, ``faust/streams.py``): the
buffer fills from a processor while the stream is consumed passively, acks
are disabled while the batch is with the caller and every event of a batch is
acked once the caller asks for the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from faust.streams import notify


def take_batches(stream: Any, max_count: int, max_bytes: int,
                 within: float) -> AsyncGenerator[Sequence[Any], None]:
    """Batches of ``stream``'s events: at most ``max_count`` messages, and no
    more than one message past ``max_bytes`` of values, or what came within
    ``within`` seconds."""
    agen = _take(stream, max_count, max_bytes, within)
    # as Faust's own buffering generators: Stream.on_stop closes leftovers
    stream._active_agens.add(agen)
    return agen


async def _take(stream: Any, max_count: int, max_bytes: int,
                within: float) -> AsyncGenerator[Sequence[Any], None]:
    events: list[Any] = []
    size = 0
    full = asyncio.Event()
    consumed = asyncio.Event()
    consuming: asyncio.Future[Any] | None = None
    enable_acks = stream.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming, size
        try:
            if consuming is not None:  # the caller is reading the batch
                try:
                    await consuming
                finally:
                    consuming = None
            event = stream.current_event
            if event is None:
                raise RuntimeError("take_batches found current_event is None")
            events.append(event)
            size += len(event.value or b"")
            if len(events) >= max_count or size >= max_bytes:
                full.set()
                consumed.clear()  # never more than one message past the bounds
                await stream.wait(consumed)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            stream.log.exception("Error adding to take buffer: %r", exc)
            await stream.crash(exc)
        return value

    stream.enable_acks = False  # acked here, once the caller is done with a batch
    stream.add_processor(add_to_buffer)
    stream._enable_passive(aiter(stream.channel))
    try:
        while not stream.should_stop:
            await stream.wait_for_stopped(full, timeout=within)
            if events:
                consuming = stream.loop.create_future()
                try:
                    yield list(events)
                finally:
                    taken = list(events)
                    events.clear()
                    size = 0
                    for event in taken:
                        await stream.ack(event)
                    notify(consuming)
                    full.clear()
                    consumed.set()
    finally:
        stream.enable_acks = enable_acks
        stream._processors.remove(add_to_buffer)
