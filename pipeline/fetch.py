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

The loop takes each fetch from Faust's consumer thread as it comes, a list of
records per partition (``Consumer._wait_next_records``), and works a
guarded partition's records a slice at a time (at most :data:`SLICE`, the
partitions of a fetch in turn, as Faust's scheduler takes them): the checks
above are made per run of consecutive offsets, and a slice goes straight into
its agent's next batch (``pipeline.batches.Lane``) as aiokafka's records, not
through Faust's ``getmany`` (a ``Message`` per record, the partition's end
offset looked up per record), conductor, channel queue and stream: no
``await`` unless that batch is full, and then one wait, under Faust's own
``wait_first`` so a rebalance can cancel it. Records of other topics (table
changelogs while tables recover; compacted, so with offset gaps by design)
become Faust's messages and go to Faust's conductor as in Faust, under
Faust's offset rules. Either way a record whose delivery a rebalance cancelled
does not count as read.

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

These patches use Faust internals (``_drain_messages``, ``_wait_next_records``,
``_to_message``, ``_read_offset``, ``perform_seek``, ``seek_wait``);
faust-streaming is pinned below 0.16.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

from pipeline.batches import Lane

log = logging.getLogger(__name__)

#: consecutive seeks back to one offset before the loop gives up on re-reading
#: it and lets the record through (the stream's sequence check then stops the
#: worker): a log with a real gap (compaction, transaction markers) would
#: otherwise be re-read forever
MAX_SEEKS = 5
#: most records of a partition worked at once, and between two yields to the
#: event loop (Faust's value for the latter)
SLICE = 100


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

    def _park(self, tp: Any, run: Sequence[Any], expected: int) -> bool:
        """Keep a held partition's records (consecutive offsets) for its release;
        False when they do not follow on (the partition's parked records are
        then dropped, to be read again)."""
        queue = self.parked.setdefault(tp, [])
        if run[0].offset == (queue[-1].offset + 1 if queue else expected):
            queue.extend(run)
            self.parked_records += len(run)
            return True
        self.unread += len(queue) + len(run)
        del self.parked[tp]
        self.skipped.add(tp)
        return False

    async def _unpark(self, tps: Collection[Any]) -> None:
        """Deliver the parked records of released partitions, in order, until
        one is held again (the rest stays parked)."""
        generation = self.consumer.app.consumer_generation_id
        for tp in tps:
            queue = self.parked.pop(tp, [])
            if not queue:
                continue
            epoch = self.epoch
            if not await self._deliver(tp, queue, generation) and self.epoch == epoch \
                    and tp not in self.skipped:
                # cancelled by a rebalance, not repositioned: read the rest again
                self.unread += queue[-1].offset + 1 - self.next[tp]
                self.skipped.add(tp)

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

    async def _fetch(self) -> dict[Any, list[Any]]:
        """One fetch: the records of each partition to deliver (Faust's
        ``Consumer.getmany`` without a ``Message`` per record)."""
        consumer = self.consumer
        records, active = await consumer._wait_next_records(1.0)
        if records is None or consumer.should_stop:
            return {}
        if not consumer.flow_active:  # Faust: seek back to the committed offsets
            try:
                await consumer.perform_seek()
            except Exception as exc:
                log.warning("exception performing seek when flow not active %s", exc)
            return {}
        buffered = consumer._buffered_partitions
        track_end = consumer.app.monitor.track_tp_end_offset
        fetched = {}
        for tp, batch in records.items():
            if batch and (active is None or tp in active or tp in buffered):
                track_end(tp, consumer.highwater(tp))
                fetched[tp] = batch
        return fetched

    async def _take(self, tp: Any, records: Sequence[Any], generation: int) -> bool:
        """A guarded partition's fetched records (in offset order) to its lane,
        run of consecutive offsets by run; False when the rest of this fetch
        of ``tp`` is stale (sought back, parked records dropped, the delivery
        cancelled)."""
        nxt = self.next
        while records:
            n = _consecutive(records)
            run, records = (records, ()) if n == len(records) else (records[:n], records[n:])
            expected = nxt.get(tp)
            if expected is None:  # unknown start: this record, if nothing says
                expected = nxt[tp] = (await self.starts([tp])).get(tp, run[0].offset)
            behind = min(expected - run[0].offset, len(run))
            if behind > 0:  # delivered already
                self.dropped += behind
                run = run[behind:]
                if not run:
                    continue
            if tp in self.wanted or tp in self.parked:  # held, or parked records first
                if not self._park(tp, run, expected):
                    return False
                continue
            if run[0].offset > expected and await self._seek_back(tp, expected, run[0].offset):
                return False
            if not await self._deliver(tp, run, generation):
                return False
        return True

    async def _deliver(self, tp: Any, run: Sequence[Any], generation: int) -> bool:
        """Hand consecutive records of ``tp`` to its lane, waiting for room as
        often as it takes; what is left when ``tp`` is held meanwhile is parked.
        False when a rebalance suspended the flow while it waited, or a seek
        moved ``tp`` (the rest then counts as not read), or parking broke."""
        consumer = self.consumer
        lane = self.lanes[tp.topic]
        read_offset = consumer._read_offset
        while True:
            taken = lane.offer(tp, run, generation)
            if taken:
                last = run[taken - 1].offset
                read_offset[tp] = last
                self.next[tp] = last + 1
                if taken == len(run):
                    return True
                run = run[taken:]
            epoch = self.epoch
            waiting = lane.room()  # its next batch is full
            results = await consumer.wait_first(waiting, consumer.suspend_flow.wait())
            if waiting not in results.done or self.epoch != epoch:
                return False
            if tp in self.wanted:  # held while we waited
                return self._park(tp, run, self.next[tp])

    async def _conduct(self, tp: Any, records: Sequence[Any]) -> None:
        """Records of a topic that is not guarded to Faust's conductor, as Faust's
        own loop does (its offset rules, a ``Message`` each)."""
        consumer = self.consumer
        read_offset = consumer._read_offset
        acks_enabled = consumer.app.topics.acks_enabled_for(tp.topic)
        for record in records:
            offset = record.offset
            r_offset = read_offset[tp]
            if r_offset is not None and offset < r_offset:
                continue
            if r_offset and offset - r_offset > 1 and acks_enabled:
                await consumer._add_gap(tp, r_offset + 1, offset)
            epoch = self.epoch
            waiting = consumer.callback(consumer._to_message(tp, record))
            results = await consumer.wait_first(waiting, consumer.suspend_flow.wait())
            if waiting not in results.done or self.epoch != epoch:
                continue  # suspended or sought: read again from the new position
            read_offset[tp] = offset

    async def run(self, fetcher: Any) -> None:
        """The loop (Faust's ``Consumer._drain_messages`` with the changes above)."""
        consumer = self.consumer
        app = consumer.app
        consumer_should_stop = consumer._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        commit_every = consumer._commit_every
        guarded = self.lanes
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                await self._switch()
                fetched = await self._fetch()
                await asyncio.sleep(0)  # Faust: getmany may not release the loop
                if consumer.should_stop or not fetched:
                    continue
                generation = app.consumer_generation_id
                skip: set[Any] = set()  # partitions sought back: rest of this fetch is stale
                for tp, records in _in_turn(fetched):
                    if not consumer.flow_active or app.consumer_generation_id != generation:
                        break  # Faust's getmany stops there too
                    if commit_every is not None and consumer._n_acked >= commit_every:
                        consumer._n_acked = 0
                        await consumer.commit()
                    if tp.topic not in guarded:
                        await self._conduct(tp, records)
                    elif tp in skip:
                        if tp in self.skipped:
                            self.unread += len(records)
                    elif not await self._take(tp, records, generation):
                        skip.add(tp)
                    await asyncio.sleep(0)
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


def _in_turn(fetched: Mapping[Any, Sequence[Any]]) -> Iterator[tuple[Any, Sequence[Any]]]:
    """The records of a fetch in slices of at most :data:`SLICE`, the partitions
    in turn (as Faust's scheduler goes round them, so one partition's backlog
    does not keep the others waiting)."""
    starts = dict.fromkeys(fetched, 0)
    while starts:
        for tp in list(starts):
            records, start = fetched[tp], starts[tp]
            end = start + SLICE
            yield tp, records[start:end] if start or end < len(records) else records
            if end < len(records):
                starts[tp] = end
            else:
                del starts[tp]


def _consecutive(records: Sequence[Any]) -> int:
    """How many of ``records`` (increasing offsets) lead with consecutive offsets."""
    first, n = records[0].offset, len(records)
    if records[-1].offset - first == n - 1:
        return n
    lo, hi = 1, n - 1  # records[lo - 1] is consecutive, records[hi] is not
    while lo < hi:
        mid = (lo + hi) // 2
        if records[mid].offset - first == mid:
            lo = mid + 1
        else:
            hi = mid
    return lo


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
