"""Faust's fetch loop, made gap-free and cheap per message.

Faust's ``Consumer._drain_messages`` moves fetched records to the streams. Two
things about it matter here:

- **It can lose messages** (faust-streaming#596). Records fetched before a
  rebalance's seek can be delivered after it, records dropped when the flow is
  suspended are still recorded as read, and a read offset set after the seek
  makes the loop drop the re-fetched records as already read. The stream then
  has a hole: offsets that never reach it.
- **It costs four tasks per message**: every delivery runs as
  ``wait_first(deliver(message), suspend_flow.wait())`` so a rebalance can
  cancel a delivery blocked on a full stream buffer, and then the conductor,
  the channel queue and the stream handle each message on its own. For
  single-event messages that was most of what the worker spent per event.

:func:`install` replaces the loop with one that, for the topics it guards,
delivers a partition's records strictly in offset order from where the
consumer was last positioned: a record behind the next expected offset is
dropped (already delivered), a record past it means records were lost, and the
loop seeks the partition back to the next expected offset and reads them again
instead of delivering past the hole. ``pipeline.sequence`` still checks each
batch and stops the worker if a hole ever reaches one.

A guarded topic's message goes straight into its agent's next batch
(``pipeline.batches.Lane``), not through Faust's conductor, channel queue and
stream: no ``await`` at all unless that batch is full, and then one wait,
under Faust's own ``wait_first`` so a rebalance can cancel it. Messages of
other topics (table changelogs while tables recover; compacted, so with
offset gaps by design) go to Faust's conductor as in Faust, under Faust's
offset rules. Either way a message whose delivery a rebalance cancelled does
not count as read.

It also holds partitions for stage 1's watermark alignment (:meth:`GapFreeFetch.hold`,
``pipeline.watermark.ahead``). A held partition's records are not delivered
from the moment it is held, even those of a fetch already under way (one fetch
can hold days of a partition's event time: Tansu ignores the per-partition
fetch size): they are parked, in order, and it is paused in Faust's consumer
before the next fetch, so no more of it is fetched. When it is released, its
parked records are delivered first and it resumes. Should a parked sequence
ever break (a record past the next expected one), the partition's parked
records are dropped instead and it is sought back to its first record not
delivered on release. Nothing is switched during a rebalance or a table
recovery, which pause and resume partitions of their own (and position them
anew: parked records are then dropped, to be read again); after them the
held partitions are paused again.

These patches use Faust internals (``_drain_messages``, ``_read_offset``,
``perform_seek``, ``seek_wait``); faust-streaming is pinned below 0.16.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Mapping
from typing import Any

from pipeline.batches import Lane

log = logging.getLogger(__name__)

#: consecutive seeks back to one offset before the loop gives up on re-reading
#: it and lets the record through (the stream's sequence check then stops the
#: worker): a log with a real gap (compaction, transaction markers) would
#: otherwise be re-read forever
MAX_SEEKS = 5
#: records delivered between two yields to the event loop (Faust's value)
YIELD_EVERY = 100


class GapFreeFetch:
    """The replacement fetch loop of one Faust consumer (:func:`install`)."""

    def __init__(self, consumer: Any, lanes: Mapping[str, Lane]) -> None:
        self.consumer = consumer
        #: where each guarded topic's messages go (``pipeline.batches``)
        self.lanes = dict(lanes)
        #: next offset to deliver per guarded partition (unknown until positioned)
        self.next: dict[Any, int] = {}
        #: (partition, offset) of the last seek back and how often it repeated
        self._seeks: dict[Any, tuple[int, int]] = {}
        #: bumped by every seek, so a delivery that waited across one is not
        #: counted against the new position
        self.epoch = 0
        self.seeks_back = 0
        self.dropped = 0
        #: partitions to hold (watermark alignment) and those this loop paused
        self.wanted: set[Any] = set()
        self.held: set[Any] = set()
        #: records of held partitions fetched but not delivered yet, in order
        self.parked: dict[Any, list[Any]] = {}
        #: held partitions with records dropped: sought back on release
        self.skipped: set[Any] = set()
        #: times a partition was held; records parked; records dropped (re-read)
        self.holds = 0
        self.parked_records = 0
        self.unread = 0

    # -- alignment --------------------------------------------------------------------

    def hold(self, tps: Collection[Any]) -> None:
        """Deliver no more records of ``tps``; partitions held before and not in
        ``tps`` resume at once (their parked records go first, before the next
        fetch), or before the next fetch when records of them must be read
        again first."""
        self.wanted.clear()  # in place: the fetch loop holds it
        self.wanted.update(tps)
        released = self.held - self.wanted - self.skipped
        if released and self._may_switch():
            self._resume(released)

    def forget(self, tps: Collection[Any]) -> None:
        """Revoked partitions: no longer held (Faust forgets their pause too)."""
        self.wanted.difference_update(tps)
        self.held.difference_update(tps)
        self._unposition(tps)

    def _unposition(self, tps: Collection[Any]) -> None:
        """Parked records and pending re-reads of ``tps`` no longer apply."""
        for tp in tps:
            self.parked.pop(tp, None)
        self.skipped.difference_update(tps)

    def _park(self, tp: Any, message: Any, expected: int) -> bool:
        """Keep a held partition's record for its release; False when it does not
        follow on (the partition's parked records are then dropped, to be read
        again)."""
        queue = self.parked.setdefault(tp, [])
        if message.offset == (queue[-1].offset + 1 if queue else expected):
            queue.append(message)
            self.parked_records += 1
            return True
        self.unread += len(queue) + 1
        del self.parked[tp]
        self.skipped.add(tp)
        return False

    async def _unpark(self, tps: Collection[Any]) -> None:
        """Deliver the parked records of released partitions, in order, until
        one is held again."""
        read_offset = self.consumer._read_offset
        for tp in tps:
            queue = self.parked.pop(tp, [])
            for i, message in enumerate(queue):
                if tp in self.wanted:  # held again meanwhile: the rest stays parked
                    self.parked[tp] = queue[i:]
                    break
                epoch = self.epoch
                if not await self.deliver(message):
                    if self.epoch == epoch:  # not repositioned: read the rest again
                        self.unread += len(queue) - i
                        self.skipped.add(tp)
                    break
                if self.epoch != epoch:
                    break  # a seek moved the partition while we waited
                read_offset[tp] = message.offset
                self.next[tp] = message.offset + 1

    def _may_switch(self) -> bool:
        app = self.consumer.app
        return not (getattr(app, "rebalancing", False) or getattr(app, "in_recovery", False))

    def _resume(self, tps: set[Any]) -> None:
        paused = self.consumer._paused_partitions
        resumed = {tp for tp in tps if tp in paused}
        if resumed:
            self.consumer.resume_partitions(resumed)
        self.held -= tps

    async def _switch(self) -> None:
        """Between two fetches: deliver what released partitions had parked, seek
        back those that had records dropped, resume them; pause what is to be
        held."""
        if not (self.wanted or self.held or self.skipped or self.parked) or \
                not self._may_switch():
            return
        consumer = self.consumer
        await self._unpark([tp for tp in self.parked if tp not in self.wanted])
        reread = {tp: self.next[tp] for tp in self.skipped - self.wanted if tp in self.next}
        self.skipped &= self.wanted
        if reread:
            await consumer.seek_wait(reread)  # tracked: positions ``next`` again
        released = self.held - self.wanted
        if released:
            self._resume(released)
        assigned = consumer.assignment()
        wanted = {tp for tp in self.wanted if tp in assigned}
        pause = {tp for tp in wanted if tp not in consumer._paused_partitions}
        if pause:
            consumer.pause_partitions(pause)
            self.holds += len(pause - self.held)
        self.held = wanted

    # -- positions ------------------------------------------------------------------

    def positioned(self, offsets: dict[Any, int | None]) -> None:
        """The consumer now reads these partitions from these offsets (None:
        no committed offset; the next record fetched sets it)."""
        self.epoch += 1
        self._unposition(offsets)
        for tp, offset in offsets.items():
            if tp.topic not in self.lanes:
                continue
            if offset is None or offset < 0:
                self.next.pop(tp, None)
            else:
                self.next[tp] = offset

    async def starts(self, tps: Collection[Any]) -> dict[Any, int]:
        """Where partitions resume when nothing else says: the committed offset,
        else the log start (and the log start when the commit is older, after
        retention). Partitions with neither are left out."""
        if not tps:
            return {}
        consumer = self.consumer
        earliest = await consumer.earliest_offsets(*tps)
        starts = {}
        for tp in tps:
            known = [int(o) for o in (consumer._committed_offset.get(tp), earliest.get(tp))
                     if o is not None]
            if known:
                starts[tp] = max(known)
        return starts

    async def _seek_back(self, tp: Any, offset: int, found: int) -> bool:
        """Re-read ``tp`` from ``offset`` (a record at ``found`` came first);
        False when this already failed :data:`MAX_SEEKS` times in a row."""
        last, times = self._seeks.get(tp, (-1, 0))
        times = times + 1 if last == offset else 1
        self._seeks[tp] = (offset, times)
        if times > MAX_SEEKS:
            log.error("offsets %d..%d of %s[%d] cannot be fetched after %d seeks; "
                      "delivering past them", offset, found - 1, tp.topic, tp.partition,
                      MAX_SEEKS)
            return False
        log.warning("offsets %d..%d of %s[%d] were fetched but not delivered "
                    "(faust-streaming#596); reading them again", offset, found - 1,
                    tp.topic, tp.partition)
        self.seeks_back += 1
        await self.consumer.seek_wait({tp: offset})  # tracked: sets ``next``
        return True

    # -- delivery -------------------------------------------------------------------

    async def deliver(self, message: Any) -> bool:
        """Hand one message to its lane, or to Faust's conductor; False when a
        rebalance suspended the flow while the delivery waited (the message then
        counts as not read)."""
        consumer = self.consumer
        lane = self.lanes.get(message.topic)
        if lane is None:
            waiting = consumer.callback(message)
        elif lane.offer(message):
            return True  # the usual case: no await at all
        else:
            waiting = lane.room()  # its next batch is full
        results = await consumer.wait_first(waiting, consumer.suspend_flow.wait())
        return waiting in results.done and (lane is None or lane.offer(message))

    async def run(self, fetcher: Any) -> None:
        """The loop (Faust's ``Consumer._drain_messages`` with the changes above)."""
        consumer = self.consumer
        getmany = consumer.getmany
        consumer_should_stop = consumer._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        read_offset = consumer._read_offset
        commit_every = consumer._commit_every
        acks_enabled_for = consumer.app.topics.acks_enabled_for
        guarded = self.lanes
        nxt = self.next
        wanted = self.wanted
        parked = self.parked
        since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await self._switch()
                records = getmany(timeout=1.0)
                await asyncio.sleep(0)  # Faust: getmany may not release the loop
                if consumer.should_stop:
                    continue
                skip: set[Any] = set()  # partitions sought back: rest of this fetch is stale
                async for tp, message in records:
                    since_yield += 1
                    if since_yield > YIELD_EVERY:
                        await asyncio.sleep(0)
                        since_yield = 0
                    offset = message.offset
                    if tp.topic in guarded:
                        if tp in skip:
                            self.unread += tp in self.skipped
                            continue
                        expected = nxt.get(tp)
                        if expected is None:  # unknown start: this record, if nothing says
                            expected = nxt[tp] = (await self.starts([tp])).get(tp, offset)
                        if offset < expected:
                            self.dropped += 1
                            continue
                        if tp in wanted or tp in parked:  # held, or parked records first
                            if not self._park(tp, message, expected):
                                skip.add(tp)
                            continue
                        if offset > expected and await self._seek_back(tp, expected, offset):
                            skip.add(tp)
                            continue
                    else:
                        r_offset = read_offset[tp]
                        if r_offset is not None and offset < r_offset:
                            continue
                        if r_offset and offset - r_offset > 1 and acks_enabled_for(tp.topic):
                            await consumer._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    epoch = self.epoch
                    if not await self.deliver(message):
                        continue  # suspended: re-read after the rebalance's seek
                    if self.epoch != epoch:
                        continue  # a seek moved the partition while we waited
                    read_offset[tp] = offset
                    if tp in nxt:
                        nxt[tp] = offset + 1
        except consumer.consumer_stopped_errors:
            if consumer.transport.app.should_stop:
                log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if consumer.transport.app.should_stop:
                log.info("Consumer shutting down for user cancel.")
                return
            raise


def install(consumer: Any, lanes: Mapping[str, Lane]) -> GapFreeFetch:
    """Replace ``consumer``'s fetch loop (see the module doc): the topics of
    ``lanes`` are delivered to them, strictly in offset order."""
    fetch = GapFreeFetch(consumer, lanes)
    perform_seek = consumer.perform_seek
    seek_wait = consumer.seek_wait

    async def perform_seek_tracked() -> None:
        # Faust seeks only the partitions that have a committed offset; the
        # others stay wherever fetches made before the rebalance left them, past
        # records that were dropped then. Those go back to the log start.
        await perform_seek()
        guarded = {tp: consumer._read_offset.get(tp) for tp in consumer.assignment()
                   if tp.topic in fetch.lanes}
        unset = await fetch.starts([tp for tp, offset in guarded.items() if offset is None])
        if unset:
            await seek_wait(unset)
        fetch.positioned({**guarded, **unset})

    async def seek_wait_tracked(partitions: Any) -> None:
        await seek_wait(partitions)
        fetch.positioned(dict(partitions))

    consumer.perform_seek = perform_seek_tracked
    consumer.seek_wait = seek_wait_tracked
    consumer._drain_messages = fetch.run
    return fetch


def set_fetch_max_wait(consumer: Any, wait_ms: int) -> None:
    """Use ``wait_ms`` as the aiokafka consumer's ``fetch_max_wait_ms`` (Faust
    hard-codes 1500 ms, which on a broker that holds every fetch for its whole
    wait, like Tansu, adds that much to each hop between stages)."""
    thread = consumer._thread  # Faust's consumer thread builds the aiokafka consumer
    create = thread._create_worker_consumer

    def create_worker_consumer(*args: Any, **kwargs: Any) -> Any:
        kafka_consumer = create(*args, **kwargs)
        kafka_consumer._fetch_max_wait_ms = wait_ms  # read by start() for its fetcher
        return kafka_consumer

    thread._create_worker_consumer = create_worker_consumer
