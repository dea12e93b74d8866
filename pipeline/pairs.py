"""Stage 2 on objects, per unordered org pair: windows, reciprocation, snubs, pair drops (pure).

The worker runs the same rules in columns (:mod:`pipeline.pair_columns`);
this module states them one pair and one engagement at a time, and is the
reference the columns are tested against batch by batch. Releases before
the columns ran it, and a worker takes their state (the ``pair-states``
table) over with :meth:`pipeline.pair_columns.ColumnarPairStage.adopt`.

Both directions of a pair arrive in one partition of the internal pairs topic
(see ``pipeline.routing``), so everything about a pair is decided in one place
against the watermark (``pipeline.watermark``). No Faust, Kafka or ClickHouse
import here.

State per pair (:class:`PairState`), all JSON-able for the Faust changelog:

- ``applied``: per source partition, the highest source offset applied. A
  record at or below it is a redelivery (stage 1 re-sends after a crash) and
  is skipped, so replays never double-count.
- ``pending``: per direction, the engagements not decided yet, sorted by time.
  Decided ones (reciprocated once the watermark reaches their first return,
  snubbed once it reaches ``t + H``) always form a prefix, so deciding is a
  walk from the front.
- ``times``: per direction, the times of engagements that may still return
  a pending one of the other direction (later than ``watermark - H``).
- ``windows``: figures of the pair's windows that can still change.
- ``days``: the daily series of each direction, for drop alerts.
- ``tag``: the internal-topic offset of the last message that changed the
  pair; rows carry ``tag + 1`` as their version, so the newest state wins.

State is written as a snapshot plus deltas (the changelog keys of
:func:`delta_key`): a batch that changes a pair writes what it did to it (the
engagements it applied, the watermark it decided at) instead of the whole
state, until the deltas would pass half the snapshot's bytes or
:data:`MAX_DELTAS`, or the pair has shrunk to half its snapshot; then the
whole state again (:meth:`PairStage._write`). Replaying a snapshot's deltas
through the same code gives back exactly the state, so a busy pair waiting
out a 72 h horizon costs a batch the bytes of its new engagements, not of
everything it holds.

Each pair has a deadline, the watermark at which it next changes on its own
(``pipeline.watermark.Deadlines``), so a watermark step touches only the pairs
that are due.
"""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from pipeline.alerts import DROP_PAIR, Alert, Snub, drop_alert, snub_alert
from pipeline.days import DaySeries, day_of
from pipeline.ingest import REASON_LATE, DeadLetter, Message
from pipeline.memory import dumps
from pipeline.reciprocity import Params, first_return
from pipeline.routing import Routed, decode, pair_key
from pipeline.sinks.base import PairWindowRow
from pipeline.watermark import StagePartition, WatermarkTracker
from pipeline.windows import to_utc, window_label
from schemas.registry import Registry

N_KINDS = 6
#: window figures: 6 kind counts, reciprocated, snubbed, then the decided delays
RECIPROCATED = N_KINDS
SNUBBED = N_KINDS + 1
DELAYS = N_KINDS + 2

#: (window size, window start, direction)
WindowKey = tuple[int, int, int]
#: pending engagement: (ts, event id, kind index)
Pending = tuple[float, str, int]
#: an engagement as a delta holds it: (direction, kind index, event id, ts)
Added = tuple[int, int, str, float]

#: deltas a pair may have on top of its snapshot before the next snapshot
#: (besides the size rules of :meth:`PairStage._write`)
MAX_DELTAS = 16


def delta_key(pair: str, n: int) -> str:
    """The table key of a pair's ``n``-th delta (from 1) since its snapshot."""
    return f"{pair}#{n}"


def pair_of(key: str) -> str:
    """The pair key of a table key, snapshot or delta (a pair key is a JSON
    array, so it ends with ``]``; a delta key adds ``#n``)."""
    return key if key.endswith("]") else key.rpartition("#")[0]


@dataclass(slots=True)
class PairState:
    lo: str
    hi: str
    applied: dict[int, int] = field(default_factory=dict)
    pending: tuple[list[Pending], list[Pending]] = field(default_factory=lambda: ([], []))
    times: tuple[list[float], list[float]] = field(default_factory=lambda: ([], []))
    windows: dict[WindowKey, list[Any]] = field(default_factory=dict)
    days: list[DaySeries | None] = field(default_factory=lambda: [None, None])
    tag: int = -1
    #: earliest end of a window in ``windows`` (derived, not stored): the
    #: windows are only scanned for retiring once the watermark passes it
    window_end: float = math.inf
    #: how the state is in the table (not stored in the state): the tag of its
    #: snapshot (None: none yet), the deltas on top of it and their bytes, the
    #: snapshot's bytes, and the highest delta number the table may hold
    base: int | None = None
    deltas: int = 0
    delta_bytes: int = 0
    snapshot_bytes: int = 0
    slots: int = 0

    def __post_init__(self) -> None:
        self.reset_window_end()

    def reset_window_end(self) -> None:
        self.window_end = min((start + size for size, start, _ in self.windows),
                              default=math.inf)

    def orgs(self, direction: int) -> tuple[str, str]:
        """(src, dst) of a direction: 0 is lo -> hi, 1 is hi -> lo."""
        return (self.lo, self.hi) if direction == 0 else (self.hi, self.lo)

    def to_json(self) -> tuple[Any, ...]:
        """The state as orjson serializes it with ``OPT_NON_STR_KEYS`` (built
        without copying: a busy pair's state is written every batch)."""
        return (self.lo, self.hi, self.applied, self.pending, self.times,
                list(self.windows.items()),
                [None if d is None else d.to_json() for d in self.days], self.tag)

    def to_bytes(self) -> bytes:
        return dumps(self.to_json(), option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_json(cls, doc: Sequence[Any]) -> PairState:
        """From :meth:`to_bytes` output, decoded (int dict keys come back as str)."""
        lo, hi, applied, pending, times, windows, days, tag = doc
        return cls(
            lo, hi, {int(p): int(o) for p, o in applied.items()},
            ([(float(t), str(i), int(k)) for t, i, k in pending[0]],
             [(float(t), str(i), int(k)) for t, i, k in pending[1]]),
            ([float(t) for t in times[0]], [float(t) for t in times[1]]),
            {(int(k[0]), int(k[1]), int(k[2])): [*(int(c) for c in f[:DELAYS]),
                                                 [float(d) for d in f[DELAYS]]]
             for k, f in windows},
            [None if d is None else DaySeries.from_json(d) for d in days],
            int(tag),
        )


@dataclass(slots=True)
class PairCounts:
    messages: int = 0
    records: int = 0
    applied: int = 0
    replayed: int = 0
    late: int = 0
    reciprocated: int = 0
    snubs: int = 0
    drops: int = 0


@dataclass(slots=True)
class PairOutcome:
    """What one batch of one internal partition changed."""

    #: table key -> value: a pair's snapshot (its key), a delta
    #: (:func:`delta_key`) or None, a delta to delete; write them in this
    #: order, then the tracker
    states: dict[str, bytes | None] = field(default_factory=dict)
    tracker: dict[str, Any] | None = None
    pair_windows: list[PairWindowRow] = field(default_factory=list)
    snubs: list[Snub] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: PairCounts = field(default_factory=PairCounts)
    last_offset: int = -1
    #: event times of the engagements applied (only when the stage keeps them)
    applied_ts: list[float] = field(default_factory=list)


def _size(state: PairState) -> int:
    """About the bytes of a pair's snapshot, without building it (a pending
    engagement is about 50 bytes of JSON, a time 20, a window 60 before its
    delays, a day of a series 15)."""
    pending, times = state.pending, state.times
    days = sum(len(d.counts) for d in state.days if d is not None)
    return (100 + 50 * (len(pending[0]) + len(pending[1])) + 20 * (len(times[0]) + len(times[1]))
            + 60 * len(state.windows) + 15 * days)


class PairStage:
    """Stage 2 logic for the internal partitions this worker owns."""

    def __init__(self, registry: Registry, params: Params, sources: int) -> None:
        self.registry = registry
        self.params = params
        self.sources = sources
        self.weights = params.kind_weights
        self.windows = [(size, window_label(size)) for size in params.windows]
        self._labels = dict(self.windows)
        #: window start -> its UTC datetime (a batch touches few distinct starts)
        self._starts: dict[int, datetime] = {}
        self._partitions: dict[int, StagePartition[PairState]] = {}
        #: fill ``PairOutcome.applied_ts`` (for latency measurements)
        self.keep_applied_ts = False

    # -- assignment -----------------------------------------------------------

    def load(self, partition: int, tracker: dict[str, Any] | None,
             states: Iterable[tuple[str, Sequence[Any]]]) -> None:
        """(Re)build a partition's state from what the table holds."""
        part = StagePartition[PairState](
            WatermarkTracker(self.sources, self.params.lateness_s) if tracker is None
            else WatermarkTracker.from_json(tracker, self.sources, self.params.lateness_s)
        )
        snapshots: list[tuple[str, Sequence[Any]]] = []
        deltas: dict[str, dict[int, Sequence[Any]]] = {}
        for key, doc in states:
            pair = pair_of(key)
            if pair == key:
                snapshots.append((key, doc))
            else:
                deltas.setdefault(pair, {})[int(key[len(pair) + 1:])] = doc
        for key, doc in snapshots:
            state = PairState.from_json(doc)
            state.base = state.tag
            state.snapshot_bytes = len(state.to_bytes())
            log = deltas.pop(key, {})
            state.slots = max(log, default=0)
            # the deltas written on top of this snapshot, in order; others are
            # leftovers of an earlier snapshot whose deletion was cut short
            while (delta := log.get(state.deltas + 1)) is not None and delta[0] == state.base:
                self._replay(state, delta)
                state.deltas += 1
                state.delta_bytes += len(orjson.dumps(delta))
            part.states[key] = state
            self._schedule(part, key, state)
        self._partitions[partition] = part

    def _replay(self, state: PairState, delta: Sequence[Any]) -> None:
        """Redo one batch's changes to a pair from its delta (see :meth:`_write`)."""
        _base, tag, applied, added, decided = delta
        for direction, kind, event_id, ts in added:
            self._add(state, state.orgs(int(direction))[0], int(kind), str(event_id),
                      float(ts), set())
        if decided is not None:
            self._decide(state, float(decided), set(), {}, PairOutcome())
        state.applied = {int(p): int(o) for p, o in applied.items()}
        state.tag = int(tag)

    def forget(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def states_of(self, partition: int) -> list[PairState]:
        """The pair states a partition holds."""
        return list(self._partitions[partition].states.values())

    def owns(self, partition: int) -> bool:
        return partition in self._partitions

    def watermark(self, partition: int) -> float | None:
        part = self._partitions.get(partition)
        return None if part is None else part.tracker.closed

    # -- processing -----------------------------------------------------------

    def process(self, partition: int, messages: Sequence[Message], stream: str,
                now: datetime) -> PairOutcome:
        """Apply one batch of one internal partition, in offset order."""
        part = self._partitions[partition]
        out = PairOutcome()
        dirty: dict[str, set[WindowKey]] = {}
        #: what the batch did to each pair that changed: engagements applied, in
        #: order, and the watermark it was decided at
        added: dict[str, list[Added]] = {}
        decided: dict[str, float] = {}
        #: figures of windows retired during the batch whose last change is unwritten
        retired: dict[str, dict[WindowKey, list[Any]]] = {}
        tracker = part.tracker
        for message in messages:
            out.counts.messages += 1
            out.last_offset = message.offset
            routed = decode(message.value)
            self._apply_records(part, partition, message, routed, dirty, added, out)
            if message.offset > tracker.tag:
                tracker.observe(routed.source, routed.max_ts, routed.idle)
                tracker.tag = message.offset
            tracker.watermark()  # what is closed from here on (late records)
        # Deciding once per batch, at its last watermark, decides exactly what
        # deciding after every message would: a record applied after the
        # watermark reached W has a time after W (else it is late), so it
        # cannot return, snub or fall into anything W decided or closed.
        if tracker.closed is not None and messages:
            self._advance(part, tracker.closed, out.last_offset, dirty, retired, decided, out)
        for key, windows in dirty.items():
            state = part.states[key]
            if key in added or key in decided:
                self._write(key, state, added.get(key, []), decided.get(key), out)
            self._rows(state, windows, retired.get(key, {}), partition, stream, now, out)
        out.tracker = part.tracker.to_json()
        return out

    def _write(self, key: str, state: PairState, added: list[Added], decided: float | None,
               out: PairOutcome) -> None:
        """What goes to the table for a pair the batch changed: a delta (the
        batch's changes, redone by :meth:`_replay`), else a new snapshot and the
        old deltas deleted. A pair's deltas stay under half its snapshot's
        bytes, and a pair that shrank to under half its snapshot (decided
        engagements, retired windows) gets a new one: the table holds at most
        about 1.5 times a pair's state, and a batch writes about three times
        what it changed."""
        if state.base is not None and state.deltas < MAX_DELTAS and (
                decided is None or 2 * _size(state) >= state.snapshot_bytes):
            delta = dumps((state.base, state.tag, state.applied, added, decided),
                                 option=orjson.OPT_NON_STR_KEYS)
            if 2 * (state.delta_bytes + len(delta)) <= state.snapshot_bytes:
                state.deltas += 1
                state.delta_bytes += len(delta)
                state.slots = max(state.slots, state.deltas)
                out.states[delta_key(key, state.deltas)] = delta
                return
        snapshot = state.to_bytes()
        out.states[key] = snapshot  # first: deltas deleted before it would be lost
        for n in range(1, state.slots + 1):
            out.states[delta_key(key, n)] = None
        state.base, state.snapshot_bytes = state.tag, len(snapshot)
        state.deltas = state.delta_bytes = state.slots = 0

    def _apply_records(self, part: StagePartition[PairState], partition: int, message: Message,
                       routed: Routed, dirty: dict[str, set[WindowKey]],
                       added: dict[str, list[Added]], out: PairOutcome) -> None:
        source = routed.source
        closed = part.tracker.closed
        applied_before: dict[str, int] = {}
        touched: dict[str, PairState] = {}
        for record in routed.records:
            out.counts.records += 1
            key = pair_key(record.src, record.dst)
            state = part.states.get(key)
            if state is None:
                lo, hi = sorted((record.src, record.dst))
                state = part.states[key] = PairState(lo, hi)
            before = applied_before.get(key)
            if before is None:
                before = applied_before[key] = state.applied.get(source, -1)
            if record.offset <= before:
                out.counts.replayed += 1
                continue
            state.applied[source] = max(state.applied.get(source, -1), record.offset)
            state.tag = message.offset
            windows = dirty.setdefault(key, set())
            log = added.setdefault(key, [])
            if closed is not None and record.ts <= closed:
                # only after an idle source partition woke up behind the watermark
                out.counts.late += 1
                out.dead_letters.append(DeadLetter(
                    source, record.offset, 0, REASON_LATE,
                    f"engagement time {record.ts} is at or before the watermark {closed} "
                    f"(source partition {source} was idle)",
                    message.value, None))
                continue
            out.counts.applied += 1
            direction = self._add(state, record.src, record.kind, record.id, record.ts, windows)
            log.append((direction, record.kind, record.id, record.ts))
            touched[key] = state
            if self.keep_applied_ts:
                out.applied_ts.append(record.ts)
        for key, state in touched.items():  # once per pair, not per record
            self._schedule(part, key, state)

    def _add(self, state: PairState, src: str, kind: int, event_id: str, ts: float,
             windows: set[WindowKey]) -> int:
        """Apply one engagement; returns its direction."""
        direction = 0 if src == state.lo else 1
        pending, times = state.pending[direction], state.times[direction]
        entry = (ts, event_id, kind)
        if not pending or pending[-1] <= entry:  # live input comes in time order
            pending.append(entry)
        else:
            bisect.insort(pending, entry)
        if not times or times[-1] <= ts:
            times.append(ts)
        else:
            bisect.insort(times, ts)
        for size, _label in self.windows:
            wkey = (size, int(ts // size) * size, direction)
            figures = state.windows.get(wkey)
            if figures is None:
                figures = state.windows[wkey] = [0] * DELAYS + [[]]
                if wkey[1] + size < state.window_end:
                    state.window_end = wkey[1] + size
            figures[kind] += 1
            windows.add(wkey)
        params = self.params
        day = day_of(ts)
        series = state.days[direction]
        if series is None:
            series = state.days[direction] = DaySeries.begin(day, params.drop_days)
        series.add(day, params.drop_days)
        return direction

    def _advance(self, part: StagePartition[PairState], watermark: float, offset: int,
                 dirty: dict[str, set[WindowKey]],
                 retired: dict[str, dict[WindowKey, list[Any]]], decided: dict[str, float],
                 out: PairOutcome) -> None:
        for key in part.deadlines.pop_due(watermark):
            state = part.states[key]
            windows = dirty.setdefault(key, set())
            if self._decide(state, watermark, windows, retired.setdefault(key, {}), out):
                state.tag = offset
                decided[key] = watermark
            self._schedule(part, key, state)

    def _decide(self, state: PairState, watermark: float, windows: set[WindowKey],
                retired: dict[WindowKey, list[Any]], out: PairOutcome) -> bool:
        """Decide what the watermark closes for a pair; True when anything changed.
        Windows dropped here whose last change is not written yet go to ``retired``."""
        params = self.params
        horizon = params.horizon_s
        changed = False
        for direction in (0, 1):
            pending = state.pending[direction]
            returns = state.times[1 - direction]
            src, dst = state.orgs(direction)
            decided = 0
            previous: Pending | None = None
            for entry in pending:
                ts, event_id, kind = entry
                first = first_return(returns, ts, horizon)
                if first is not None and first <= watermark:
                    slot: int = RECIPROCATED
                    out.counts.reciprocated += 1
                elif first is None and ts + horizon <= watermark:
                    slot = SNUBBED
                    # engagements of one event with one src, dst and kind (a post
                    # mentioning two accounts of one org) are one snub record
                    if entry != previous:
                        snub = Snub(event_id, src, dst, kind, ts, ts + horizon)
                        out.snubs.append(snub)
                        out.counts.snubs += 1
                        if params.watched(src):
                            out.alerts.append(snub_alert(snub, horizon))
                else:
                    break  # decided engagements are a prefix of the pending ones
                decided += 1
                previous = entry
                for size, _label in self.windows:
                    wkey = (size, int(ts // size) * size, direction)
                    figures = state.windows[wkey]
                    figures[slot] += 1
                    if first is not None:
                        figures[DELAYS].append(first - ts)
                    windows.add(wkey)
            if decided:
                del pending[:decided]
                changed = True
            series = state.days[direction]
            if series is not None:
                before = (series.next, len(series.counts))
                for day, count, baseline in series.evaluate(
                    watermark, params.drop_days, params.drop_threshold, params.drop_min_baseline
                ):
                    out.counts.drops += 1
                    if params.watched(dst):
                        out.alerts.append(drop_alert(DROP_PAIR, dst, src, day, count, baseline,
                                                     params.drop_threshold, params.drop_days))
                changed = changed or before != (series.next, len(series.counts))
        # times that can no longer return a pending engagement
        for direction in (0, 1):
            times = state.times[direction]
            cut = bisect.bisect_right(times, watermark - horizon)
            if cut:
                del times[:cut]
                changed = True
        # windows that can no longer change: dropped, their last row still written
        if state.window_end + horizon <= watermark:
            for wkey in [w for w in state.windows if w[1] + w[0] + horizon <= watermark]:
                figures = state.windows.pop(wkey)
                if wkey in windows:
                    retired[wkey] = figures
                changed = True
            state.reset_window_end()
        return changed

    def _schedule(self, part: StagePartition[PairState], key: str, state: PairState) -> None:
        part.deadlines.set(key, self._deadline(state))

    def _deadline(self, state: PairState) -> float | None:
        horizon = self.params.horizon_s
        candidates = []
        for direction in (0, 1):
            pending = state.pending[direction]
            if pending:
                ts = pending[0][0]
                first = first_return(state.times[1 - direction], ts, horizon)
                candidates.append(first if first is not None else ts + horizon)
            series = state.days[direction]
            if series is not None and (due := series.deadline()) is not None:
                candidates.append(due)
        if state.windows:
            candidates.append(state.window_end + horizon)
        return min(candidates) if candidates else None

    # -- rows -------------------------------------------------------------------

    def _rows(self, state: PairState, windows: set[WindowKey],
              retired: dict[WindowKey, list[Any]], partition: int, stream: str,
              now: datetime, out: PairOutcome) -> None:
        version = state.tag + 1
        labels = self._labels
        starts = self._starts
        for wkey in sorted(windows):
            figures = state.windows.get(wkey) or retired.get(wkey)
            if figures is None:
                continue
            size, start, direction = wkey
            src, dst = state.orgs(direction)
            follows, likes, shares, replies, mentions, thanks = figures[:N_KINDS]
            w_follow, w_like, w_share, w_reply, w_mention, w_thanks = self.weights
            value = float(w_follow * follows + w_like * likes + w_share * shares
                          + w_reply * replies + w_mention * mentions + w_thanks * thanks)
            delays = figures[DELAYS]
            median = statistics.median(delays) if delays else None
            label = labels[size]
            when = starts.get(start)
            if when is None:
                when = starts[start] = to_utc(start)
            out.pair_windows.append(PairWindowRow(
                label, when, src, dst, stream, partition, follows, likes, shares, replies,
                mentions, thanks, value, figures[RECIPROCATED], figures[SNUBBED], median,
                version, now))
