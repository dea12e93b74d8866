"""Stage 2 in columns: the pair stage's rules on numpy arrays (pure).

The same rules as :class:`pipeline.pairs.PairStage` (docs/metrics.md), the
same inputs (internal messages of the pairs topic) and the same findings,
computed per batch on arrays instead of per engagement on objects:

- an internal partition's state is a handful of arrays, not an object per
  pair: pending engagements, return times, window figures, decided delays and
  daily counts, keyed by integers (a pair's dense id in the partition, its
  direction, the window or day);
- a batch's engagements are decoded into columns, checked for replays and
  lateness, and added to the windows and day series with a few sorted merges;
- at the batch's watermark every pending engagement is decided at once: its
  first return is looked up among the return times of the other direction,
  kept sorted (:meth:`ColumnarPairStage._first_returns`); day series are
  evaluated day by day for every series at once;
- rows come out as columns (:class:`PairWindowColumns`).

A row's ``version`` is the batch's last internal offset + 1: a window's rows
come from one partition only, so a later batch's row is always newer, and the
state after a given internal offset does not depend on how the messages were
batched (deciding once at a watermark decides what deciding at every step up
to it would).

Times are compared as floats exactly as the rules state them; integer keys
only order and group (org ids are interned per stage, pairs numbered per
partition).

The state goes to the pair table per partition (keys under
:func:`partition_prefix`): a snapshot of the arrays plus deltas, a delta
being the records a batch kept and the watermark it decided at, replayed
through the same code on load (:meth:`ColumnarPairStage._persist`).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from itertools import chain, repeat
from typing import Any

import numpy as np
import orjson
from isal import isal_zlib

from pipeline.alerts import DROP_PAIR, Alert, Snub, SnubAlerts, SnubColumns, drop_alert
from pipeline.ingest import REASON_LATE, DeadLetter, Message
from pipeline.pairs import DELAYS, N_KINDS, RECIPROCATED, SNUBBED, PairCounts, PairState
from pipeline.reciprocity import Params
from pipeline.routing import decode_columns
from pipeline.sinks.base import ColumnBlock, PairWindowRow
from pipeline.watermark import WatermarkTracker
from pipeline.windows import to_utc, window_label
from schemas.registry import Registry

I64 = np.int64
F64 = np.float64
#: a window's counts (per kind, reciprocated, snubbed): a (window, pair) never
#: nears 2**31 engagements, and half the bytes of the largest per-window
#: arrays (1.16M live keys: 71 -> 36 MiB; snapshots of int64 counts load cast)
COUNT = np.int32
DAY = 86400
#: "no next day": the day series is dormant (or does not exist: see ``s_start``)
NONE = np.iinfo(np.int64).min // 4
#: window key: ((pd * sizes + size index) << _SLOT_BITS) | (window slot + bias)
_SLOT_BITS = 36
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_SLOT_BIAS = 1 << 35
#: day key: (pd << _DAY_BITS) | (day index + bias)
_DAY_BITS = 20
_DAY_MASK = (1 << _DAY_BITS) - 1
_DAY_BIAS = 1 << 19
#: pair code of two interned orgs (lo << _ORG_BITS | hi)
_ORG_BITS = 31


#: deltas a partition may have on top of its snapshot (besides their bytes)
MAX_DELTAS = 256
#: deltas may reach the snapshot's bytes, and at least this many, before the next snapshot
MIN_SNAPSHOT_BYTES = 1 << 20
#: partition p's deltas may reach ``1 + (p % SNAPSHOT_STAGGER) / SNAPSHOT_STAGGER``
#: times that: partitions fed alike would otherwise all write their snapshots
#: in the same batch (four 5 MB snapshots at once held the pair stage about
#: half a second; docs/benchmarks.md)
SNAPSHOT_STAGGER = 4
#: the largest value of one table record: a snapshot or delta is split in parts
PART_BYTES = 256 << 10
#: a snapshot or delta of at least this many bytes is kept compressed, as a
#: zlib stream (deflate at :data:`ZLIB_LEVEL`): the table holds its values in
#: the worker's memory, and a snapshot's arrays and event ids shrink four to
#: six times (a 34 MiB snapshot to 6 MiB, 1.16M live (window, pair) keys;
#: docs/benchmarks.md). Written and read by ISA-L (``isal.isal_zlib``), about
#: four times as fast as the standard library's zlib at its level 1 for
#: about 4 % more bytes; the streams are standard zlib either way, so
#: payloads of releases that used :mod:`zlib` load, and theirs load ours.
COMPRESS_MIN_BYTES = 4096
ZLIB_LEVEL = 1
#: the arrays of a window's counts (:data:`COUNT`)
_COUNT_ARRAYS = ("w_counts", "w_recip", "w_snub")
#: the arrays of a partition's state other than the per-pair ones
_ARRAYS = ("p_pd", "p_ts", "p_kind", "t_pd", "t_ts", "w_key", "w_counts", "w_recip", "w_snub",
           "d_key", "d_val", "day_key", "day_count")


def partition_prefix(partition: int) -> str:
    """What the pair table's keys of an internal partition start with:
    ``cols:{partition}:`` then ``head``, ``s{slot}:{part}`` (snapshot) or
    ``d{slot}:{n}:{part}`` (delta ``n``)."""
    return f"cols:{partition}:"


def _blob_parts(base: str, gen: int,
                pieces: Sequence[bytes | memoryview]) -> list[tuple[str, bytes]]:
    """A payload, given as pieces (a snapshot's header and its arrays' memory),
    as table records of at most :data:`PART_BYTES`: ``{base}:{i}``, the first
    starting with a JSON line of its generation, part count and, if the
    payload is stored compressed (:data:`COMPRESS_MIN_BYTES`), ``"z":
    "zlib"``. Releases before it wrote no ``z``: their payloads load as they
    are. The pieces are compressed one after another, so a snapshot of the
    state is never copied whole (a partition's arrays were 34 MiB at 1.16M
    (window, pair) keys)."""
    header: dict[str, Any] = {"gen": gen}
    if sum(memoryview(piece).nbytes for piece in pieces) >= COMPRESS_MIN_BYTES:
        packer = isal_zlib.compressobj(ZLIB_LEVEL)
        payload = b"".join([*map(packer.compress, pieces), packer.flush()])
        header["z"] = "zlib"
    else:
        payload = b"".join(pieces)
    count = max(1, -(-len(payload) // PART_BYTES))
    header["parts"] = count
    first = orjson.dumps(header) + b"\n"
    return [(f"{base}:{i}", (first if i == 0 else b"") + payload[i * PART_BYTES:
                                                                  (i + 1) * PART_BYTES])
            for i in range(count)]


def _read_blob(values: dict[str, bytes], base: str, gen: int) -> bytes | None:
    """The payload of :func:`_blob_parts` at ``base`` if it is there, whole and
    of generation ``gen``."""
    first = values.get(f"{base}:0")
    if first is None:
        return None
    line, _, rest = first.partition(b"\n")
    header = orjson.loads(line)
    if header["gen"] != gen:
        return None
    parts = [rest]
    for i in range(1, int(header["parts"])):
        more = values.get(f"{base}:{i}")
        if more is None:
            return None
        parts.append(more)
    payload = b"".join(parts)
    packing = header.get("z")
    if packing is None:
        return payload
    if packing != "zlib":
        raise ValueError(f"pair state {base}: unknown compression {packing!r} "
                         "(written by a newer release?)")
    return isal_zlib.decompress(payload)


def _empty(dtype: Any, *shape: int) -> np.ndarray:
    return np.zeros(shape or (0,), dtype=dtype)


def _grow(array: np.ndarray, size: int, fill: Any) -> np.ndarray:
    """``array`` extended to at least ``size`` rows, new rows ``fill``."""
    if len(array) >= size:
        return array
    extra = np.full((max(size, 2 * len(array)) - len(array), *array.shape[1:]), fill,
                    dtype=array.dtype)
    return np.concatenate([array, extra])


#: windows added since the windows were last sorted that make them sort again
#: (at least this many, and at least a quarter of the sorted ones)
MIN_UNSORTED_WINDOWS = 4096
#: a batch touching at least 1/this of the windows sorts them first and after:
#: for a backlog's large batches sorted lookups are cheaper than the dict's
LARGE_BATCH_SHARE = 8


def _append(part: _Partition, name: str, more: np.ndarray) -> None:
    """Set ``part.<name>`` to itself followed by ``more``, in room kept behind
    it: appends to an array that nothing else changed in between cost what
    they add, not what the array holds (its room grows by a quarter when it
    runs out). An array given a new value since its last append (filtered,
    loaded) gets exactly the room it needs: where batches filter it anyway
    (a backlog's decisions and retired windows), spare room would only cost
    memory. Views handed out before keep their values: appends only write
    behind them."""
    current = getattr(part, name)
    n, k = len(current), len(more)
    held = part.room.get(name)
    if held is not None and held[1] is current and len(held[0]) >= n + k:
        room = held[0]
    else:
        size = n + k
        if held is not None and held[1] is current:
            size += max(size // 4, 1024)
        room = np.empty((size, *current.shape[1:]), dtype=current.dtype)
        room[:n] = current
    room[n:n + k] = more
    view = room[:n + k]
    setattr(part, name, view)
    part.room[name] = (room, view)


def _drop_stale_rooms(part: _Partition) -> None:
    """Let go of the room of arrays given a new value since their last append
    (it would hold their old values as long as the partition lives)."""
    for name in [name for name, (_, view) in part.room.items()
                 if getattr(part, name) is not view]:
        del part.room[name]


def _after(keys: np.ndarray, times: np.ndarray, key: np.ndarray,
           ts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For arrays sorted by (``keys``, ``times``): the position of the first
    entry after each (``key``, ``ts``), and the end of ``key``'s run. The
    position is in the run (``< end``) when the run holds a time after
    ``ts``. Costs about the log of the run length in numpy steps over the
    queries, whatever the arrays hold (a bisection within each run)."""
    lo = np.searchsorted(keys, key, side="left")
    end = np.searchsorted(keys, key, side="right")
    hi = end.copy()
    active = np.flatnonzero(lo < hi)
    while len(active):
        low, high = lo[active], hi[active]
        mid = (low + high) >> 1
        later = times[mid] > ts[active]
        lo[active] = np.where(later, low, mid + 1)
        hi[active] = np.where(later, mid, high)
        active = active[lo[active] < hi[active]]
    return lo, end


def _sorted_in(keys: np.ndarray, values: np.ndarray,
               done: int) -> tuple[np.ndarray, np.ndarray]:
    """``keys`` and ``values`` sorted by (key, value), of which the first
    ``done`` already are: the rest merged in (all sorted again when they are
    more than those), so a batch costs a copy plus a sort of what it added,
    not a sort of everything. The same arrays when all are sorted."""
    n = len(keys)
    if done == n:
        return keys, values
    if done < n - done:
        order = np.lexsort((values, keys))
        return keys[order], values[order]
    new_keys, new_values = keys[done:], values[done:]
    order = np.lexsort((new_values, new_keys))
    new_keys, new_values = new_keys[order], new_values[order]
    at, _end = _after(keys[:done], values[:done], new_keys, new_values)
    return np.insert(keys[:done], at, new_keys), np.insert(values[:done], at, new_values)


def _sort_times(part: _Partition) -> None:
    """The return times added since the last decision merged into the sorted
    ones (:func:`_sorted_in`)."""
    part.t_pd, part.t_ts = _sorted_in(part.t_pd, part.t_ts, part.t_sorted)
    part.t_sorted = len(part.t_pd)


def _sort_delays(part: _Partition) -> None:
    """The decided delays added since they were last needed merged into the
    sorted ones (:func:`_sorted_in`)."""
    part.d_key, part.d_val = _sorted_in(part.d_key, part.d_val, part.d_sorted)
    part.d_sorted = len(part.d_key)


def _outside(keys: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """For sorted ``keys``: whether each is none of ``gone`` (unique), found
    by two binary searches per gone key instead of a sort of all keys."""
    starts = np.searchsorted(keys, gone, side="left")
    ends = np.searchsorted(keys, gone, side="right")
    held = ends > starts
    edges = np.zeros(len(keys) + 1, dtype=I64)
    edges[starts[held]] += 1  # the runs are disjoint: no index twice in one step
    edges[ends[held]] -= 1
    return np.cumsum(edges[:-1]) == 0


def _find(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of ``wanted`` in sorted ``keys`` and whether each is there."""
    pos = np.searchsorted(keys, wanted)
    if not len(keys):
        return pos, np.zeros(len(wanted), dtype=bool)
    found = keys[np.minimum(pos, len(keys) - 1)] == wanted
    return pos, found & (pos < len(keys))


@dataclass(slots=True)
class PairWindowColumns:
    """The rows of a batch's changed pair windows, as columns
    (``pipeline.sinks.base.PairWindowRow`` field by field; window starts in
    epoch seconds)."""

    window: list[str]
    window_start: np.ndarray
    src: list[str]
    dst: list[str]
    stream: str
    partition: int
    counts: np.ndarray  # (rows, 6): follows, likes, shares, replies, mentions, thanks
    value: np.ndarray
    reciprocated: np.ndarray
    snubbed: np.ndarray
    median: list[float | None]
    version: int
    updated_at: datetime

    def __len__(self) -> int:
        return len(self.window)

    def block(self) -> ColumnBlock:
        """The rows for the ``pair_windows`` table, as columns."""
        n = len(self.window)
        return ColumnBlock([
            self.window, self.window_start, self.src, self.dst, [self.stream] * n,
            np.full(n, self.partition, dtype=I64), *self.counts.T, self.value,
            self.reciprocated, self.snubbed, self.median, np.full(n, self.version, dtype=I64),
            np.full(n, int(self.updated_at.timestamp()), dtype=I64)])

    def rows(self) -> list[PairWindowRow]:
        n = len(self.window)
        counts = self.counts.T.tolist()
        return list(map(PairWindowRow, self.window, map(to_utc, self.window_start.tolist()),
                        self.src, self.dst, [self.stream] * n, [self.partition] * n, *counts,
                        self.value.tolist(), self.reciprocated.tolist(),
                        self.snubbed.tolist(), self.median, [self.version] * n,
                        [self.updated_at] * n))


@dataclass(slots=True)
class ColumnarOutcome:
    """What one batch of one internal partition changed."""

    windows: PairWindowColumns | None = None
    #: table key -> value (None: delete), to write in this order, then the tracker
    states: dict[str, bytes | None] = field(default_factory=dict)
    tracker: dict[str, Any] | None = None
    #: the snubs the batch found, and the alerts of those whose src is watched
    snub_columns: SnubColumns | None = None
    snub_alerts: SnubAlerts | None = None
    drop_alerts: list[Alert] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: PairCounts = field(default_factory=PairCounts)
    last_offset: int = -1
    applied_ts: list[float] = field(default_factory=list)

    @property
    def pair_windows(self) -> list[PairWindowRow]:
        return [] if self.windows is None else self.windows.rows()

    @property
    def snubs(self) -> list[Snub]:
        return [] if self.snub_columns is None else self.snub_columns.snubs()

    @property
    def alerts(self) -> list[Alert]:
        """Every alert of the batch as objects: the snubs', then the drops'."""
        found = [] if self.snub_alerts is None else self.snub_alerts.alerts()
        return found + self.drop_alerts


class _Partition:
    """One internal partition's state, as arrays. ``pd`` (pair-direction) is
    ``2 * pair id + direction``; direction 0 is lo -> hi (ids in string order)."""

    def __init__(self, tracker: WatermarkTracker, sources: int) -> None:
        self.tracker = tracker
        self.pids: dict[int, int] = {}
        #: per pair id: interned org of lo and hi, highest source offset applied per source
        self.lo = _empty(I64)
        self.hi = _empty(I64)
        self.applied = np.full((0, sources), -1, dtype=I64)
        #: pending engagements (not decided yet), in no particular order
        self.p_pd = _empty(I64)
        self.p_ts = _empty(F64)
        self.p_kind = _empty(I64)
        self.p_id = _empty(object)
        #: engagement times that may still return a pending one: the first
        #: ``t_sorted`` sorted by (pd, ts), then those added since the last
        #: decision (:func:`_sort_times`)
        self.t_pd = _empty(I64)
        self.t_ts = _empty(F64)
        self.t_sorted = 0
        #: derived, not stored: the first return (inf: none within the horizon)
        #: of the pending engagements as of the last decision (None: unknown,
        #: after a load)
        self.p_first: np.ndarray | None = _empty(F64)
        #: windows that can still change: sorted by key, then those added
        #: since (``w_new``: key -> position), sorted again once they are many
        #: (:data:`MIN_UNSORTED_WINDOWS`), before a snapshot and when some retire
        self.w_key = _empty(I64)
        self.w_counts = _empty(COUNT, 0, N_KINDS)
        self.w_recip = _empty(COUNT)
        self.w_snub = _empty(COUNT)
        self.w_new: dict[int, int] = {}
        #: the watermark before which no window retires: at most the earliest
        #: :meth:`ColumnarPairStage._retires_at` (None: unknown, inf: no window)
        self.w_due: float | None = None
        #: decided delays: (window key, first return - ts), the first
        #: ``d_sorted`` sorted by (key, delay), then those decided since
        #: (:func:`_sort_delays`)
        self.d_key = _empty(I64)
        self.d_val = _empty(F64)
        self.d_sorted = 0
        #: daily counts, sorted by day key; per pd: the series' first day, next
        #: day to evaluate (NONE: dormant) and the first day still needed
        self.day_key = _empty(I64)
        self.day_count = _empty(I64)
        self.s_start = _empty(I64)
        self.s_next = _empty(I64)
        #: the watermark before which no series has a day to evaluate: at most
        #: the earliest next day's end (None: unknown, inf: none has one)
        self.s_due: float | None = None
        self.s_floor = _empty(I64)
        #: how the state is in the table: the snapshot's generation and slot
        #: (0 or 1), the deltas on top of it and their bytes, the snapshot's
        #: bytes, and the keys the table holds in each slot
        self.gen = 0
        self.slot = 0
        self.deltas = 0
        self.delta_bytes = 0
        self.snapshot_bytes = 0
        self.keys: tuple[set[str], set[str]] = (set(), set())
        #: the room behind arrays that grow at their end (:func:`_append`)
        self.room: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def pairs(self) -> int:
        return len(self.pids)


class ColumnarPairStage:
    """Stage 2 logic for the internal partitions this worker owns, on arrays."""

    def __init__(self, registry: Registry, params: Params, sources: int) -> None:
        self.registry = registry
        self.params = params
        self.sources = sources
        self.sizes = np.array(params.windows, dtype=I64)
        self._labels = [window_label(size) for size in params.windows]
        self._weights = params.kind_weights
        self._org_index: dict[str, int] = {}
        self._org_names: list[str] = []
        self._names = np.empty(0, dtype=object)
        self._partitions: dict[int, _Partition] = {}
        self.keep_applied_ts = False

    # -- assignment -------------------------------------------------------------

    def load(self, partition: int, tracker: dict[str, Any] | None,
             items: Iterable[tuple[str, bytes]] = ()) -> None:
        """(Re)build a partition's state from what the table holds under
        :func:`partition_prefix`: its snapshot, then its deltas replayed."""
        lateness = self.params.lateness_s
        part = _Partition(
            WatermarkTracker(self.sources, lateness) if tracker is None
            else WatermarkTracker.from_json(tracker, self.sources, lateness), self.sources)
        prefix = partition_prefix(partition)
        values = dict(items)
        head = values.pop(prefix + "head", None)
        if head is not None:
            doc = orjson.loads(head)
            part.gen, part.slot = int(doc["gen"]), int(doc["slot"])
        for key in values:
            part.keys[int(key[len(prefix) + 1])].add(key)
        if part.gen:
            blob = _read_blob(values, f"{prefix}s{part.slot}", part.gen)
            if blob is None:
                raise RuntimeError(f"pair state of partition {partition}: snapshot "
                                   f"{part.gen} is missing or incomplete in the table")
            self._restore(part, blob)
            part.snapshot_bytes = len(blob)
        while (delta := _read_blob(values, f"{prefix}d{part.slot}:{part.deltas + 1}",
                                   part.gen)) is not None:
            self._replay(part, orjson.loads(delta))
            part.deltas += 1
            part.delta_bytes += len(delta)
        self._partitions[partition] = part

    def adopt(self, partition: int, tracker: dict[str, Any] | None,
              states: Iterable[PairState]) -> None:
        """Take over a partition from pair states on objects (the
        ``pair-states`` table of releases before the columns,
        :class:`pipeline.pairs.PairStage`); its next batch writes a snapshot."""
        self.load(partition, tracker)
        part = self._partitions[partition]
        part.deltas = MAX_DELTAS  # the next batch writes a snapshot
        states = sorted(states, key=lambda state: (state.lo, state.hi))
        if not states:
            return
        lo, hi = self._interned([s.lo for s in states]), self._interned([s.hi for s in states])
        part.pids = {code: pid for pid, code in enumerate(((lo << _ORG_BITS) | hi).tolist())}
        part.lo, part.hi = lo, hi
        part.applied = np.full((len(states), self.sources), -1, dtype=I64)
        sizes = {size: i for i, size in enumerate(self.params.windows)}
        pending: list[tuple[int, float, int, str]] = []
        times: list[tuple[int, float]] = []
        windows: list[tuple[int, list[Any]]] = []
        delays: list[tuple[int, float]] = []
        days: list[tuple[int, int]] = []
        starts = np.full(2 * len(states), NONE, dtype=I64)
        nexts = np.full(2 * len(states), NONE, dtype=I64)
        for pid, state in enumerate(states):
            for source, offset in state.applied.items():
                part.applied[pid, source] = offset
            for direction in (0, 1):
                pd = 2 * pid + direction
                pending.extend((pd, ts, kind, event_id)
                               for ts, event_id, kind in state.pending[direction])
                times.extend((pd, ts) for ts in state.times[direction])
                series = state.days[direction]
                if series is not None:
                    starts[pd] = series.start // DAY
                    nexts[pd] = NONE if series.next is None else series.next // DAY
                    days.extend(((pd << _DAY_BITS) | (day // DAY + _DAY_BIAS), count)
                                for day, count in series.counts.items())
            for (size, start, direction), figures in state.windows.items():
                key = (((2 * pid + direction) * len(sizes) + sizes[size]) << _SLOT_BITS) | (
                    start // size + _SLOT_BIAS)
                windows.append((key, figures))
                delays.extend((key, delay) for delay in figures[DELAYS])
        part.p_first = None
        if pending:
            p_pd, p_ts, p_kind, p_id = zip(*pending, strict=True)
            part.p_pd, part.p_ts = np.array(p_pd, dtype=I64), np.array(p_ts, dtype=F64)
            part.p_kind, part.p_id = np.array(p_kind, dtype=I64), np.array(p_id, dtype=object)
        if times:
            t_pd, t_ts = zip(*times, strict=True)
            part.t_pd, part.t_ts = np.array(t_pd, dtype=I64), np.array(t_ts, dtype=F64)
        windows.sort(key=operator.itemgetter(0))
        if windows:
            part.w_key = np.array([key for key, _ in windows], dtype=I64)
            part.w_counts = np.array([f[:N_KINDS] for _, f in windows], dtype=COUNT)
            part.w_recip = np.array([f[RECIPROCATED] for _, f in windows], dtype=COUNT)
            part.w_snub = np.array([f[SNUBBED] for _, f in windows], dtype=COUNT)
        if delays:
            d_key, d_val = zip(*delays, strict=True)
            part.d_key, part.d_val = np.array(d_key, dtype=I64), np.array(d_val, dtype=F64)
        days.sort()
        if days:
            day_key, day_count = zip(*days, strict=True)
            part.day_key = np.array(day_key, dtype=I64)
            part.day_count = np.array(day_count, dtype=I64)
        part.s_start, part.s_next = starts, nexts
        part.s_floor = np.full(2 * len(states), NONE, dtype=I64)

    def snapshotted(self, partition: int) -> bool:
        """Whether the partition's state has a snapshot in the table."""
        return self._partitions[partition].gen > 0

    def forget(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def owns(self, partition: int) -> bool:
        return partition in self._partitions

    def watermark(self, partition: int) -> float | None:
        part = self._partitions.get(partition)
        return None if part is None else part.tracker.closed

    def live_windows(self) -> int:
        """The (window, pair) keys held now, every window size: the windows of
        the partitions this worker owns that can still change (each retires
        once the watermark passes its end plus the horizon)."""
        return sum(len(part.w_key) for part in self._partitions.values())

    # -- processing -------------------------------------------------------------

    def process(self, partition: int, messages: Sequence[Message], stream: str,
                now: datetime) -> ColumnarOutcome:
        """Apply one batch of one internal partition, in offset order."""
        part = self._partitions[partition]
        out = ColumnarOutcome()
        dirty: list[np.ndarray] = []
        kept = self._apply(part, messages, dirty, out)
        closed = part.tracker.closed
        decided_at = closed if closed is not None and messages else None
        if decided_at is not None:
            self._decide(part, decided_at, dirty, out)
            self._evaluate_days(part, decided_at, out)
        if dirty:
            out.windows = self._rows(part, np.unique(np.concatenate(dirty)), partition,
                                     stream, now, out.last_offset + 1)
        if decided_at is not None:
            self._retire(part, decided_at)
        if kept is not None or decided_at is not None:
            self._persist(part, partition, {"r": kept, "at": decided_at}, out)
        out.tracker = part.tracker.to_json()
        _drop_stale_rooms(part)
        return out

    def _interned(self, names: Sequence[str]) -> np.ndarray:
        index = self._org_index
        for name in set(names).difference(index):
            index[name] = len(self._org_names)
            self._org_names.append(name)
        if len(self._names) != len(self._org_names):
            self._names = np.array(self._org_names, dtype=object)
        return np.fromiter(map(index.__getitem__, names), dtype=I64, count=len(names))

    def _apply(self, part: _Partition, messages: Sequence[Message], dirty: list[np.ndarray],
               out: ColumnarOutcome) -> dict[str, Any] | None:
        """Decode a batch, drop replays and dead-letter late records, apply the
        rest. Returns what :meth:`_take` needs to do it again (the delta), or
        None when no record was kept."""
        tracker = part.tracker
        counts = out.counts
        columns: list[dict[str, Any]] = []
        # per message that has records: its index, record count, closed time, source
        m_index: list[int] = []
        m_records: list[int] = []
        m_closed: list[float] = []
        m_source: list[int] = []
        for i, message in enumerate(messages):
            counts.messages += 1
            out.last_offset = message.offset
            routed = decode_columns(message.value)
            if routed.size:
                closed = tracker.closed
                columns.append(routed.columns)
                m_index.append(i)
                m_records.append(routed.size)
                m_closed.append(-np.inf if closed is None else closed)
                m_source.append(routed.source)
            if message.offset > tracker.tag:
                tracker.observe(routed.source, routed.max_ts, routed.idle)
                tracker.tag = message.offset
            tracker.watermark()
        if not columns:
            return None
        srcs, dsts, ids = ([*chain.from_iterable(c[name] for c in columns)]
                           for name in ("src", "dst", "id"))
        kind, ts, offset = (np.concatenate([c[name] for c in columns])
                            for name in ("kind", "ts", "offset"))
        n = len(ts)
        counts.records += n
        per = np.array(m_records, dtype=I64)
        msg = np.repeat(np.array(m_index, dtype=I64), per)
        source = np.repeat(np.array(m_source, dtype=I64), per)
        closed_at = np.repeat(np.array(m_closed, dtype=F64), per)
        pid, backward = self._pairs_of(part, srcs, dsts)
        # replays: at or below the highest offset applied from that source
        kept = self._not_replayed(part, pid, source, msg, offset)
        counts.replayed += int(n - kept.sum())
        if not kept.any():
            return None
        late = kept & (ts <= closed_at)
        if late.any():
            for i in np.flatnonzero(late).tolist():
                message = messages[int(msg[i])]
                closed = float(closed_at[i])
                counts.late += 1
                out.dead_letters.append(DeadLetter(
                    int(source[i]), int(offset[i]), 0, REASON_LATE,
                    f"engagement time {float(ts[i])} is at or before the watermark {closed} "
                    f"(source partition {int(source[i])} was idle)", message.value, None))
        event_ids = np.array(ids, dtype=object)
        if not kept.all():
            pid, backward, ts, kind = pid[kept], backward[kept], ts[kept], kind[kept]
            source, offset, late = source[kept], offset[kept], late[kept]
            event_ids = event_ids[kept]
            srcs = np.array(srcs, dtype=object)[kept].tolist()
            dsts = np.array(dsts, dtype=object)[kept].tolist()
        applied_ts = self._take(part, pid, backward, ts, kind, event_ids, source, offset, late,
                                dirty)
        counts.applied += len(applied_ts)
        if self.keep_applied_ts:
            out.applied_ts.extend(applied_ts.tolist())
        return {"src": srcs, "dst": dsts, "ts": ts, "kind": kind, "id": event_ids.tolist(),
                "source": source, "offset": offset, "late": late}

    def _pairs_of(self, part: _Partition, srcs: Sequence[str],
                  dsts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Each engagement's pair id in the partition and its direction (True:
        hi -> lo, the orgs in string order)."""
        s_org, d_org = self._interned(srcs), self._interned(dsts)
        backward = np.fromiter(map(operator.gt, srcs, dsts), dtype=bool, count=len(srcs))
        lo = np.where(backward, d_org, s_org)
        hi = np.where(backward, s_org, d_org)
        codes, inverse = np.unique((lo << _ORG_BITS) | hi, return_inverse=True)
        return self._pair_ids(part, codes)[inverse], backward

    def _take(self, part: _Partition, pid: np.ndarray, backward: np.ndarray, ts: np.ndarray,
              kind: np.ndarray, event_ids: np.ndarray, source: np.ndarray, offset: np.ndarray,
              late: np.ndarray, dirty: list[np.ndarray]) -> np.ndarray:
        """Apply kept records (not replays): their offsets count as applied, and
        those not late go into the pending engagements, return times, windows
        and day series. Returns the applied ones' times."""
        np.maximum.at(part.applied, (pid, source), offset)
        if late.any():
            applied = ~late
            pid, backward, ts, kind = pid[applied], backward[applied], ts[applied], kind[applied]
            event_ids = event_ids[applied]
        if not len(ts):
            return ts
        pd = 2 * pid + backward
        for name, values in (("p_pd", pd), ("p_ts", ts), ("p_kind", kind), ("p_id", event_ids),
                             ("t_pd", pd), ("t_ts", ts)):
            _append(part, name, values)
        self._count_windows(part, pd, ts, kind, dirty)
        self._count_days(part, pd, ts)
        return ts

    def _pair_ids(self, part: _Partition, codes: np.ndarray) -> np.ndarray:
        """The partition's dense id of each pair code; new pairs are numbered in
        the order of their orgs' names (the same state, the same numbers,
        whatever order this worker interned the orgs in)."""
        pids = part.pids
        listed = codes.tolist()
        new = [code for code in listed if code not in pids]
        if new:
            names = self._org_names
            mask = (1 << _ORG_BITS) - 1
            new.sort(key=lambda code: (names[code >> _ORG_BITS], names[code & mask]))
            first = len(pids)
            for code in new:
                pids[code] = len(pids)
            count = len(pids)
            part.lo = _grow(part.lo, count, 0)
            part.hi = _grow(part.hi, count, 0)
            part.applied = _grow(part.applied, count, -1)
            fresh = np.array(new, dtype=I64)
            part.lo[first:count] = fresh >> _ORG_BITS
            part.hi[first:count] = fresh & mask
            for name in ("s_start", "s_next", "s_floor"):
                setattr(part, name, _grow(getattr(part, name), 2 * count, NONE))
        return np.fromiter(map(pids.__getitem__, listed), dtype=I64, count=len(listed))

    def _not_replayed(self, part: _Partition, pid: np.ndarray, source: np.ndarray,
                      msg: np.ndarray, offset: np.ndarray) -> np.ndarray:
        """Which records are not replays: above the highest offset of their
        (pair, source) applied before their message."""
        kept: np.ndarray = offset > part.applied[pid, source]
        group = pid * self.sources + source
        order = np.argsort(group, kind="stable")
        g, m, o = group[order], msg[order], offset[order]
        same = g[1:] == g[:-1]
        # within a message offsets do not fall; from one message to the next they rise
        falls = np.where(m[1:] == m[:-1], o[1:] < o[:-1], o[1:] <= o[:-1])
        if not (same & falls).any():
            return kept
        # a redelivery inside the batch: decide record by record, message by message
        applied = {int(k): int(v) for k, v in zip(group.tolist(),
                                                   part.applied[pid, source].tolist(),
                                                   strict=True)}
        result = np.zeros(len(offset), dtype=bool)
        start = 0
        msgs, groups, offsets = msg.tolist(), group.tolist(), offset.tolist()
        while start < len(msgs):
            end = start
            while end < len(msgs) and msgs[end] == msgs[start]:
                end += 1
            before = {k: applied[k] for k in set(groups[start:end])}
            for i in range(start, end):
                if offsets[i] > before[groups[i]]:
                    result[i] = True
                    applied[groups[i]] = max(applied[groups[i]], offsets[i])
            start = end
        return result

    def _window_keys(self, pd: np.ndarray, ts: np.ndarray) -> list[np.ndarray]:
        """The key of each engagement's window, per window size."""
        sizes = len(self.sizes)
        keys = []
        for index, size in enumerate(self.params.windows):
            slot = np.floor_divide(ts, size).astype(I64)
            keys.append(((pd * sizes + index) << _SLOT_BITS) | (slot + _SLOT_BIAS))
        return keys

    def _count_windows(self, part: _Partition, pd: np.ndarray, ts: np.ndarray,
                       kind: np.ndarray, dirty: list[np.ndarray]) -> None:
        keys = np.concatenate(self._window_keys(pd, ts))
        unique, inverse = np.unique(keys, return_inverse=True)
        kinds = np.tile(kind, len(self.sizes))
        added = np.bincount(inverse * N_KINDS + kinds,
                            minlength=len(unique) * N_KINDS).reshape(-1, N_KINDS)
        large = len(unique) * LARGE_BATCH_SHARE >= len(part.w_key)
        if large:
            self._sort_windows(part)
        pos, found = self._locate(part, unique)
        if not found.all():
            new = unique[~found]
            first = len(part.w_key)
            _append(part, "w_key", new)
            _append(part, "w_counts", np.zeros((len(new), N_KINDS), dtype=COUNT))
            _append(part, "w_recip", np.zeros(len(new), dtype=COUNT))
            _append(part, "w_snub", np.zeros(len(new), dtype=COUNT))
            pos[~found] = np.arange(first, first + len(new))
            part.w_new.update(zip(new.tolist(), range(first, first + len(new)), strict=True))
            if part.w_due is not None:
                part.w_due = min(part.w_due, float(self._retires_at(new).min()))
        part.w_counts[pos] += added
        dirty.append(unique)
        if large or len(part.w_new) >= max(MIN_UNSORTED_WINDOWS,
                                           (len(part.w_key) - len(part.w_new)) // 4):
            self._sort_windows(part)

    def _retires_at(self, keys: np.ndarray) -> np.ndarray:
        """The watermark from which each window (by key) can no longer change
        and retires: its end plus the horizon."""
        size = self.sizes[(keys >> _SLOT_BITS) % len(self.sizes)]
        return ((keys & _SLOT_MASK) - _SLOT_BIAS + 1) * size + self.params.horizon_s

    @staticmethod
    def _locate(part: _Partition, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each key's window position and whether it has one: among the sorted
        windows, else among those added since."""
        unsorted = len(part.w_new)
        pos, found = _find(part.w_key[:len(part.w_key) - unsorted], keys)
        if unsorted and not found.all():
            missing = np.flatnonzero(~found)
            at = np.fromiter(map(part.w_new.get, keys[missing].tolist(), repeat(-1)),
                             dtype=I64, count=len(missing))
            pos[missing] = at
            found[missing] = at >= 0
        return pos, found

    @staticmethod
    def _sort_windows(part: _Partition) -> None:
        """The windows added since the last sort among the sorted ones (in
        place of each window's figures, the same state)."""
        if not part.w_new:
            return
        m = len(part.w_key) - len(part.w_new)
        order = m + np.argsort(part.w_key[m:], kind="stable")
        at = np.searchsorted(part.w_key[:m], part.w_key[order])
        for name in ("w_key", "w_counts", "w_recip", "w_snub"):
            values = getattr(part, name)
            setattr(part, name, np.insert(values[:m], at, values[order], axis=0))
        part.w_new = {}

    def _count_days(self, part: _Partition, pd: np.ndarray, ts: np.ndarray) -> None:
        n = self.params.drop_days
        day = np.floor_divide(ts, DAY).astype(I64)
        unique, added = np.unique((pd << _DAY_BITS) | (day + _DAY_BIAS), return_counts=True)
        pos, found = _find(part.day_key, unique)
        if not found.all():
            part.day_key = np.insert(part.day_key, pos[~found], unique[~found])
            part.day_count = np.insert(part.day_count, pos[~found], 0)
            pos = np.searchsorted(part.day_key, unique)
        part.day_count[pos] += added
        # the series' start and next day (pipeline.days.DaySeries.add, per batch)
        order = np.argsort(pd, kind="stable")
        sorted_pd = pd[order]
        starts = np.flatnonzero(np.r_[True, sorted_pd[1:] != sorted_pd[:-1]])
        series = sorted_pd[starts]
        first = day[order[starts]]  # the first engagement of each series in the batch
        low = np.minimum.reduceat(day[order], starts)
        s0, n0 = part.s_start[series], part.s_next[series]
        fresh = s0 == NONE
        dormant = ~fresh & (n0 == NONE)
        # dormant: the first engagement wakes it, the earliest may move it back
        start1 = np.where(dormant, np.minimum(s0, first), s0)
        next1 = np.where(dormant, np.maximum(first, start1 + n), n0)
        earlier = ~fresh & (low < start1)
        start = np.where(fresh, low, np.where(earlier, low, start1))
        nxt = np.where(fresh, low + n, np.where(earlier, np.minimum(next1, low + n), next1))
        part.s_start[series] = start
        part.s_next[series] = nxt
        if part.s_due is not None:
            live = nxt[nxt != NONE]
            if len(live):
                part.s_due = min(part.s_due, float((live.min() + 1) * DAY))

    def _decide(self, part: _Partition, watermark: float, dirty: list[np.ndarray],
                out: ColumnarOutcome) -> None:
        if not len(part.p_pd):
            part.p_first = _empty(F64)
            self._prune_times(part, watermark)
            return
        horizon = self.params.horizon_s
        p_pd, p_ts = part.p_pd, part.p_ts
        first = self._first_returns(part)
        reciprocated = first <= watermark
        snubbed = np.isinf(first) & (p_ts + horizon <= watermark)
        decided = reciprocated | snubbed
        if decided.any():
            d_pd, d_ts = p_pd[decided], p_ts[decided]
            d_recip = reciprocated[decided]
            delays = (first[decided] - d_ts)[d_recip]
            for keys in self._window_keys(d_pd, d_ts):
                pos, _found = self._locate(part, keys)
                np.add.at(part.w_recip, pos[d_recip], 1)
                np.add.at(part.w_snub, pos[~d_recip], 1)
                _append(part, "d_key", keys[d_recip])
                _append(part, "d_val", delays)
                dirty.append(keys)
            out.counts.reciprocated += int(d_recip.sum())
            if snubbed.any():
                self._snubs(part, snubbed, out)
            keep = ~decided
            part.p_pd, part.p_ts = p_pd[keep], p_ts[keep]
            part.p_kind, part.p_id = part.p_kind[keep], part.p_id[keep]
            first = first[keep]
        part.p_first = first
        self._prune_times(part, watermark)

    def _first_returns(self, part: _Partition) -> np.ndarray:
        """Each pending engagement's first return: the earliest time of the
        other direction strictly after it and within the horizon (inf: none).
        Times that could return a pending engagement are never pruned, so an
        engagement's first return as of the last decision changes only by the
        times added since: the engagements new since then are looked up in
        every time (kept sorted, :func:`_sort_times`), the others only in the
        new times, and only those whose other direction got a new time after
        it and before its first return. A batch costs what it adds, not what
        the state holds."""
        p_pd, p_ts = part.p_pd, part.p_ts
        known = part.p_first
        # the times added since the last decision: those not sorted in yet
        new_pd, new_ts = part.t_pd[part.t_sorted:], part.t_ts[part.t_sorted:]
        _sort_times(part)
        if known is None:  # loaded: work out all
            return self._returns(part.t_pd, part.t_ts, p_pd, p_ts)
        old = len(known)
        first = np.concatenate([known, self._returns(part.t_pd, part.t_ts, p_pd[old:],
                                                     p_ts[old:])])
        if not len(new_pd) or not old:
            return first
        # per pair-direction, its earliest and latest new time
        size = 2 * len(part.lo) + 2
        low, high = np.full(size, np.inf), np.full(size, -np.inf)
        np.minimum.at(low, new_pd, new_ts)
        np.maximum.at(high, new_pd, new_ts)
        other = p_pd[:old] ^ 1
        which = np.flatnonzero((high[other] > p_ts[:old]) & (low[other] < known))
        if len(which):
            order = np.lexsort((new_ts, new_pd))
            found = self._returns(new_pd[order], new_ts[order], p_pd[which], p_ts[which])
            first[which] = np.minimum(first[which], found)
        return first

    def _returns(self, t_pd: np.ndarray, t_ts: np.ndarray, pd: np.ndarray,
                 ts: np.ndarray) -> np.ndarray:
        """The first return of each engagement (``pd``, ``ts``) among the
        times ``t_pd``, ``t_ts`` (sorted by pd, then time); inf: none."""
        if not len(pd) or not len(t_pd):
            return np.full(len(pd), np.inf)
        at, end = _after(t_pd, t_ts, pd ^ 1, ts)
        returned = t_ts[np.minimum(at, len(t_ts) - 1)]
        has = (at < end) & (returned <= ts + self.params.horizon_s)
        return np.where(has, returned, np.inf)

    def _prune_times(self, part: _Partition, watermark: float) -> None:
        keep = part.t_ts > watermark - self.params.horizon_s
        if not keep.all():
            part.t_sorted = int(np.count_nonzero(keep[:part.t_sorted]))
            part.t_pd, part.t_ts = part.t_pd[keep], part.t_ts[keep]

    def _snubs(self, part: _Partition, snubbed: np.ndarray, out: ColumnarOutcome) -> None:
        params = self.params
        horizon = params.horizon_s
        # engagements of one event with one src, dst and kind (a post mentioning
        # two accounts of one org) are one snub record
        entries = sorted(set(zip(part.p_pd[snubbed].tolist(), part.p_ts[snubbed].tolist(),
                                 part.p_id[snubbed].tolist(), part.p_kind[snubbed].tolist(),
                                 strict=True)))
        names = self._org_names
        lo, hi = part.lo.tolist(), part.hi.tolist()
        srcs, dsts, ids, kinds, times = [], [], [], [], []
        for pd, ts, event_id, kind in entries:
            pid = pd >> 1
            a, b = names[lo[pid]], names[hi[pid]]
            if pd & 1:
                a, b = b, a
            srcs.append(a)
            dsts.append(b)
            ids.append(event_id)
            kinds.append(kind)
            times.append(ts)
        at = np.array(times, dtype=F64)
        snubs = out.snub_columns = SnubColumns(ids, srcs, dsts, kinds, at, at + horizon)
        out.counts.snubs += len(snubs)
        watched = snubs if not params.watched_orgs else snubs.where(
            [src in params.watched_orgs for src in srcs])
        if len(watched):
            out.snub_alerts = watched.alerts(horizon)

    def _evaluate_days(self, part: _Partition, watermark: float, out: ColumnarOutcome) -> None:
        """Every day the watermark closes, for every day series at once
        (``pipeline.days.DaySeries.evaluate``)."""
        if part.s_due is not None and watermark < part.s_due:
            return  # no series has a day to evaluate yet
        params = self.params
        n = params.drop_days
        keys, day_counts = part.day_key, part.day_count
        totals = _empty(I64)
        evaluated = False
        while True:
            nxt = part.s_next
            series = np.flatnonzero((nxt != NONE) & ((nxt + 1) * float(DAY) <= watermark))
            if not len(series):
                break
            if not evaluated:
                totals = np.concatenate([[0], np.cumsum(day_counts)])
            evaluated = True
            day = nxt[series]
            base = series << _DAY_BITS
            lo = np.searchsorted(keys, base | (day - n + _DAY_BIAS))
            hi = np.searchsorted(keys, base | (day + _DAY_BIAS))
            baseline = (totals[hi] - totals[lo]) / n
            at = np.minimum(hi, max(len(keys) - 1, 0))
            count = np.where((hi < len(keys)) & (keys[at] == (base | (day + _DAY_BIAS))),
                             day_counts[at], 0)
            drop = (baseline >= params.drop_min_baseline) & (
                count < (1 - params.drop_threshold) * baseline)
            if drop.any():
                self._drops(part, series[drop], day[drop], count[drop], baseline[drop], out)
            oldest = day + 1 - n
            last = np.searchsorted(keys, (series + 1) << _DAY_BITS) - 1
            last_key = keys[np.maximum(last, 0)]
            remaining = (last >= 0) & ((last_key >> _DAY_BITS) == series) & (
                (last_key & _DAY_MASK) - _DAY_BIAS >= oldest)
            part.s_next[series] = np.where(remaining, day + 1, NONE)
            part.s_floor[series] = oldest
        if evaluated:
            owner = keys >> _DAY_BITS
            keep = (keys & _DAY_MASK) - _DAY_BIAS >= part.s_floor[owner]
            part.day_key, part.day_count = keys[keep], day_counts[keep]
        live = part.s_next[part.s_next != NONE]
        part.s_due = float((live.min() + 1) * DAY) if len(live) else math.inf

    def _drops(self, part: _Partition, series: np.ndarray, day: np.ndarray, count: np.ndarray,
               baseline: np.ndarray, out: ColumnarOutcome) -> None:
        params = self.params
        names = self._org_names
        for pd, d, c, b in zip(series.tolist(), day.tolist(), count.tolist(), baseline.tolist(),
                               strict=True):
            pid = pd >> 1
            a, z = names[part.lo[pid]], names[part.hi[pid]]
            src, dst = (a, z) if pd & 1 == 0 else (z, a)
            out.counts.drops += 1
            if params.watched(dst):
                out.drop_alerts.append(drop_alert(DROP_PAIR, dst, src, d * DAY, c, b,
                                             params.drop_threshold, params.drop_days))

    def _retire(self, part: _Partition, watermark: float) -> None:
        """Drop windows that can no longer change (their last row is written)."""
        if not len(part.w_key) or (part.w_due is not None and watermark < part.w_due):
            return
        due = self._retires_at(part.w_key)
        keep = due > watermark
        part.w_due = float(due[keep].min()) if keep.any() else math.inf
        if keep.all():
            return
        self._sort_windows(part)
        due = self._retires_at(part.w_key)
        keep = due > watermark
        gone = part.w_key[~keep]
        part.w_key, part.w_counts = part.w_key[keep], part.w_counts[keep]
        part.w_recip, part.w_snub = part.w_recip[keep], part.w_snub[keep]
        if len(part.d_key):
            _sort_delays(part)
            live = _outside(part.d_key, gone)
            part.d_key, part.d_val = part.d_key[live], part.d_val[live]
            part.d_sorted = len(part.d_key)

    # -- the state in the table -------------------------------------------------

    def _persist(self, part: _Partition, partition: int, delta: dict[str, Any],
                 out: ColumnarOutcome) -> None:
        """What goes to the table for a batch that changed the partition: a
        delta (its kept records and the watermark it decided at, redone by
        :meth:`_replay`), or, once the deltas would pass the snapshot's bytes
        (at least :data:`MIN_SNAPSHOT_BYTES`; staggered by partition,
        :data:`SNAPSHOT_STAGGER`) or :data:`MAX_DELTAS`, a
        snapshot of the whole state in the other slot, then the head naming
        it, then the old slot deleted. A crash at any point leaves the last
        head's snapshot and deltas whole."""
        prefix = partition_prefix(partition)
        payload = orjson.dumps(delta, option=orjson.OPT_SERIALIZE_NUMPY)
        stagger = 1 + (partition % SNAPSHOT_STAGGER) / SNAPSHOT_STAGGER
        if part.deltas < MAX_DELTAS and part.delta_bytes + len(payload) <= stagger * max(
                part.snapshot_bytes, MIN_SNAPSHOT_BYTES):
            part.deltas += 1
            part.delta_bytes += len(payload)
            for key, value in _blob_parts(f"{prefix}d{part.slot}:{part.deltas}", part.gen,
                                          [payload]):
                out.states[key] = value
                part.keys[part.slot].add(key)
            return
        gen, slot = part.gen + 1, 1 - part.slot
        pieces = self._snapshot(part)
        parts = _blob_parts(f"{prefix}s{slot}", gen, pieces)
        fresh = {key for key, _ in parts}
        for key in sorted(part.keys[slot] - fresh):  # leftovers of an older generation
            out.states[key] = None
        out.states.update(parts)
        out.states[prefix + "head"] = orjson.dumps({"gen": gen, "slot": slot})
        for key in sorted(part.keys[part.slot]):
            out.states[key] = None
        part.keys[part.slot].clear()
        part.keys[slot].clear()
        part.keys[slot].update(fresh)
        part.gen, part.slot, part.deltas, part.delta_bytes = gen, slot, 0, 0
        part.snapshot_bytes = sum(memoryview(piece).nbytes for piece in pieces)

    def _replay(self, part: _Partition, delta: dict[str, Any]) -> None:
        """Redo one batch's changes from its delta (see :meth:`_persist`)."""
        records = delta["r"]
        if records is not None:
            pid, backward = self._pairs_of(part, records["src"], records["dst"])
            self._take(part, pid, backward, np.array(records["ts"], dtype=F64),
                       np.array(records["kind"], dtype=I64),
                       np.array(records["id"], dtype=object),
                       np.array(records["source"], dtype=I64),
                       np.array(records["offset"], dtype=I64),
                       np.array(records["late"], dtype=bool), [])
        at = delta["at"]
        if at is not None:
            self._decide(part, float(at), [], ColumnarOutcome())
            self._evaluate_days(part, float(at), ColumnarOutcome())
            self._retire(part, float(at))

    def _snapshot(self, part: _Partition) -> list[bytes | memoryview]:
        """The partition's state as pieces of bytes: a JSON line (orgs, event
        ids, the arrays' names, types and shapes), then the arrays' memory (not
        copied: :func:`_blob_parts` reads it before the state changes)."""
        self._sort_windows(part)  # the windows sorted by key, as loading expects
        pairs = part.pairs
        # orgs in name order: the same state gives the same bytes whatever the interning
        names = np.array(self._org_names, dtype=object)
        orgs, local = np.unique(names[np.concatenate([part.lo[:pairs], part.hi[:pairs]])]
                                .astype(str), return_inverse=True)
        arrays = {"lo": local[:pairs], "hi": local[pairs:], "applied": part.applied[:pairs],
                  "s_start": part.s_start[:2 * pairs], "s_next": part.s_next[:2 * pairs],
                  "s_floor": part.s_floor[:2 * pairs],
                  **{name: getattr(part, name) for name in _ARRAYS}}
        # the times sorted (the same state, the same bytes), the state's own
        # left as they are: those not sorted in yet are the next decision's new ones
        arrays["t_pd"], arrays["t_ts"] = _sorted_in(part.t_pd, part.t_ts, part.t_sorted)
        header = {"orgs": orgs.tolist(), "pairs": pairs,
                  "ids": part.p_id.tolist(),
                  "arrays": [[name, a.dtype.str, list(a.shape)] for name, a in arrays.items()]}
        return [orjson.dumps(header) + b"\n",
                *(np.ascontiguousarray(a).reshape(-1).view(np.uint8).data
                  for a in arrays.values())]

    def _restore(self, part: _Partition, blob: bytes) -> None:
        line, _, data = blob.partition(b"\n")
        header = orjson.loads(line)
        view = memoryview(data)
        arrays: dict[str, np.ndarray] = {}
        at = 0
        for name, dtype, shape in header["arrays"]:
            kind = np.dtype(dtype)
            size = kind.itemsize * int(np.prod(shape, dtype=I64))
            arrays[name] = np.frombuffer(view[at:at + size], dtype=kind).reshape(shape).copy()
            at += size
        orgs = self._interned(header["orgs"]) if header["orgs"] else _empty(I64)
        pairs = int(header["pairs"])
        part.lo, part.hi = orgs[arrays.pop("lo")], orgs[arrays.pop("hi")]
        part.pids = {code: pid for pid, code in
                     enumerate(((part.lo << _ORG_BITS) | part.hi).tolist())}
        if len(part.pids) != pairs:
            raise RuntimeError(f"pair state snapshot {part.gen}: {pairs} pairs expected, "
                               f"{len(part.pids)} found")
        part.applied = arrays.pop("applied")
        part.p_id = np.array(header["ids"], dtype=object)
        part.p_first = None  # worked out again at the next decision
        for name in _COUNT_ARRAYS:  # int64 in snapshots before :data:`COUNT`
            arrays[name] = arrays[name].astype(COUNT, copy=False)
        for name, array in arrays.items():
            setattr(part, name, array)
        part.t_sorted = 0  # sorted at the first decision (older snapshots: in any order)
        part.d_sorted = 0  # sorted when first needed (likewise)

    # -- rows -------------------------------------------------------------------

    def _rows(self, part: _Partition, keys: np.ndarray, partition: int, stream: str,
              now: datetime, version: int) -> PairWindowColumns:
        pos, _found = self._locate(part, keys)
        counts = part.w_counts[pos].astype(I64)
        weights = self._weights
        value = counts[:, 0] * weights[0]
        for kind in range(1, N_KINDS):
            value = value + counts[:, kind] * weights[kind]
        high = keys >> _SLOT_BITS
        index = high % len(self.sizes)
        pd = high // len(self.sizes)
        start = ((keys & _SLOT_MASK) - _SLOT_BIAS) * self.sizes[index]
        pid = pd >> 1
        backward = (pd & 1).astype(bool)
        lo, hi = part.lo[pid], part.hi[pid]
        names = self._names
        src = names[np.where(backward, hi, lo)].tolist()
        dst = names[np.where(backward, lo, hi)].tolist()
        labels = self._labels
        return PairWindowColumns(
            [labels[i] for i in index.tolist()], start, src, dst, stream, partition, counts,
            value.astype(F64), part.w_recip[pos].astype(I64), part.w_snub[pos].astype(I64),
            self._medians(part, keys), version, now)

    @staticmethod
    def _medians(part: _Partition, keys: np.ndarray) -> list[float | None]:
        """The median decided delay of each window (None without any): the
        delays sorted by (window, delay), each window's run found by two
        binary searches."""
        medians: list[float | None] = [None] * len(keys)
        if not len(part.d_key):
            return medians
        _sort_delays(part)
        d_key, d_val = part.d_key, part.d_val
        starts = np.searchsorted(d_key, keys, side="left")
        sizes = np.searchsorted(d_key, keys, side="right") - starts
        where = np.flatnonzero(sizes)
        if not len(where):
            return medians
        starts, sizes = starts[where], sizes[where]
        mid = starts + sizes // 2
        odd = sizes % 2 == 1
        median = np.where(odd, d_val[mid], (d_val[mid - 1 + odd] + d_val[mid]) / 2)
        for i, m in zip(where.tolist(), median.tolist(), strict=True):
            medians[i] = m
        return medians
