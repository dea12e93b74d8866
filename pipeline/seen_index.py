"""The dedup index: event id -> the position where it was first seen (pure).

Stage 1 looks up every event id of a batch in it, so it holds about
``RECIPROCITY_DEDUP_RETENTION_S`` of event time of ids: a million ids or more
in a busy worker. A dict of the id strings cost about 160 bytes an id of 27
characters (the string, the dict's slot and the packed position, an int of
80 bits); this holds each id as a 128-bit key and its position in numpy
arrays, 32 bytes an id (docs/benchmarks.md, memory).

**The key** is two 64-bit SipHash values of the id, Python's own string hash
of the id and of the id with :data:`_SALT` appended. The hash function is keyed
per process (``PYTHONHASHSEED``, random unless set), and the index is built
again from the dedup records whenever a worker starts, so the keys never leave
the process. Two different ids share a key with probability 2**-128: a
million ids held and a billion events a day would take about 10**21 years to
make one new event look like a duplicate.

**Layout:** the entries in two runs, each five arrays sorted by the key's
first half: ``main`` and a small ``young`` run that each batch's new ids are
merged into (a copy of ``young`` only), merged into ``main`` once ``young``
holds an eighth of it. A forgotten entry is marked (its partition -1) and
dropped at the next merge into ``main``.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

#: (partition, offset, item index within a packed message, late: 0 or 1)
Seen = tuple[int, int, int, int]

#: offsets and items a position may hold (as the dict of packed ints before it)
OFFSETS: Final = 1 << 48
ITEMS: Final = 1 << 24
#: what the second half of a key hashes after the id
_SALT: Final = "\x1f"
#: ``young`` is merged into ``main`` once it holds this many entries or an
#: eighth of ``main``, whichever is more
_YOUNG_MIN: Final = 1 << 16
_FORGOTTEN: Final = -1
_I64 = np.int64
_I32 = np.int32


def _first_halves(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(hash, ids), dtype=_I64, count=len(ids))


def _second_halves(ids: Sequence[str]) -> np.ndarray:
    return np.fromiter(map(hash, map(operator.add, ids, itertools.repeat(_SALT))),
                       dtype=_I64, count=len(ids))


class _Run:
    """Entries sorted by ``k1``: the key's halves, the partition (-1 once
    forgotten), the offset, and the item and late flag as ``item << 1 | late``."""

    __slots__ = ("k1", "k2", "offset", "part", "slot")

    def __init__(self, k1: np.ndarray, k2: np.ndarray, part: np.ndarray, offset: np.ndarray,
                 slot: np.ndarray) -> None:
        self.k1, self.k2, self.part, self.offset, self.slot = k1, k2, part, offset, slot

    @classmethod
    def empty(cls) -> _Run:
        return cls(np.empty(0, _I64), np.empty(0, _I64), np.empty(0, _I32), np.empty(0, _I64),
                   np.empty(0, _I32))

    def __len__(self) -> int:
        return len(self.k1)

    def take(self, which: np.ndarray) -> _Run:
        return _Run(self.k1[which], self.k2[which], self.part[which], self.offset[which],
                    self.slot[which])

    def merged(self, more: _Run) -> _Run:
        """This run and ``more`` (sorted) in one sorted run."""
        if not len(more):
            return self
        at = np.searchsorted(self.k1, more.k1)
        return _Run(np.insert(self.k1, at, more.k1), np.insert(self.k2, at, more.k2),
                    np.insert(self.part, at, more.part), np.insert(self.offset, at, more.offset),
                    np.insert(self.slot, at, more.slot))

    def find(self, k1: np.ndarray, k2: np.ndarray) -> np.ndarray:
        """Per key, the index of its live entry in this run, or -1."""
        n = len(self.k1)
        found = np.full(len(k1), -1, dtype=_I64)
        if not n or not len(k1):
            return found
        at = np.searchsorted(self.k1, k1)
        near = np.minimum(at, n - 1)
        candidates = np.flatnonzero((at < n) & (self.k1[near] == k1))
        if not len(candidates):
            return found
        first = at[candidates]
        exact = (self.k2[first] == k2[candidates]) & (self.part[first] != _FORGOTTEN)
        found[candidates[exact]] = first[exact]
        # a first half shared by two entries (a forgotten copy of the same id,
        # or two ids): look along the run
        for i in candidates[~exact].tolist():
            j = int(at[i])
            while j < n and self.k1[j] == k1[i]:
                if self.k2[j] == k2[i] and self.part[j] != _FORGOTTEN:
                    found[i] = j
                    break
                j += 1
        return found

    def any_first_half(self, k1: np.ndarray) -> np.ndarray:
        """Which keys' first half is in this run (a superset of the ids held)."""
        n = len(self.k1)
        if not n:
            return np.zeros(len(k1), dtype=bool)
        at = np.minimum(np.searchsorted(self.k1, k1), n - 1)
        return self.k1[at] == k1


def _run_of(ids: Sequence[str], part: np.ndarray, offset: np.ndarray,
            slot: np.ndarray) -> _Run:
    k1 = _first_halves(ids)
    order = np.argsort(k1, kind="stable")
    return _Run(k1[order], _second_halves(ids)[order], part[order], offset[order], slot[order])


def _positions(partition: int, offsets: Sequence[int], items: Sequence[int],
               lates: Sequence[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions as the index's columns; ValueError if one is out of range."""
    offset = np.asarray(offsets, dtype=_I64) if len(offsets) else np.empty(0, _I64)
    item = np.asarray(items, dtype=_I64) if len(items) else np.empty(0, _I64)
    part = np.broadcast_to(np.asarray(partition, dtype=_I64), offset.shape)
    if len(offset) and not (part.min() >= 0 and part.max() <= np.iinfo(_I32).max
                            and offset.min() >= 0 and offset.max() < OFFSETS
                            and item.min() >= 0 and item.max() < ITEMS):
        bad = np.flatnonzero((part < 0) | (offset < 0) | (offset >= OFFSETS)
                             | (item < 0) | (item >= ITEMS))[0]
        raise ValueError(f"position {(int(part[bad]), int(offset[bad]), int(item[bad]))} "
                         "out of range")
    late = np.asarray(lates, dtype=bool) if len(lates) else np.empty(0, bool)
    return part.astype(_I32), offset, (item << 1 | late).astype(_I32)


class SeenIndex:
    """The dedup index (module docstring): event id -> :data:`Seen`.

    ``get``, ``in``, ``[]`` and ``[] =`` as a dict's for one id; :meth:`add`
    for a batch's new ids, :meth:`contains_any` to check a batch, :meth:`load`
    to build it from dedup records, :meth:`forget_through` and :meth:`drop_partition`
    to let ids go. It cannot list its ids: it does not hold them."""

    __slots__ = ("_forgotten", "_main", "_young")

    def __init__(self) -> None:
        self._main = _Run.empty()
        self._young = _Run.empty()
        self._forgotten = 0

    def __len__(self) -> int:
        return len(self._main) + len(self._young) - self._forgotten

    # -- one id -------------------------------------------------------------------

    def _where(self, event_id: str) -> tuple[_Run, int] | None:
        k1, k2 = _first_halves([event_id]), _second_halves([event_id])
        for run in (self._young, self._main):
            at = int(run.find(k1, k2)[0])
            if at >= 0:
                return run, at
        return None

    def get(self, event_id: str, default: Seen | None = None) -> Seen | None:
        return self.get_many([event_id]).get(event_id, default)

    def __getitem__(self, event_id: str) -> Seen:
        seen = self.get(event_id)
        if seen is None:
            raise KeyError(event_id)
        return seen

    def __contains__(self, event_id: object) -> bool:
        return isinstance(event_id, str) and self._where(event_id) is not None

    def __setitem__(self, event_id: str, seen: Sequence[int]) -> None:
        partition, offset, item, late = seen
        part, offsets, slot = _positions(partition, [offset], [item], [late])
        where = self._where(event_id)
        if where is not None:
            run, at = where
            run.part[at], run.offset[at], run.slot[at] = part[0], offsets[0], slot[0]
            return
        self._add_run(_run_of([event_id], part, offsets, slot))

    def __delitem__(self, event_id: str) -> None:
        where = self._where(event_id)
        if where is None:
            raise KeyError(event_id)
        run, at = where
        run.part[at] = _FORGOTTEN
        self._forgotten += 1

    # -- batches ------------------------------------------------------------------

    def add(self, columns: dict[int, tuple[list[str], list[int], list[int], list[int]]]) -> None:
        """A batch's new ids (``NewIds.columns``: per partition ids, offsets,
        items, late flags), none of them in the index already (stage 1 adds
        only ids it did not find). ValueError, and nothing added, if a
        position is out of range."""
        runs = [(ids, _positions(p, offsets, items, lates))
                for p, (ids, offsets, items, lates) in columns.items() if ids]
        if not runs:
            return
        ids = [event_id for event_ids, _ in runs for event_id in event_ids]
        part, offset, slot = (np.concatenate([columns[i] for _, columns in runs])
                              for i in range(3))
        self._add_run(_run_of(ids, part, offset, slot))

    def _add_run(self, run: _Run) -> None:
        self._young = self._young.merged(run)
        if len(self._young) >= max(_YOUNG_MIN, len(self._main) // 8):
            self._compact()

    def _compact(self) -> None:
        """``young`` into ``main``, forgotten entries dropped."""
        main = self._main.merged(self._young)
        if self._forgotten:
            main = main.take(main.part != _FORGOTTEN)
        self._main, self._young, self._forgotten = main, _Run.empty(), 0

    def get_many(self, ids: Sequence[str]) -> dict[str, Seen]:
        """The positions of those of ``ids`` the index holds, in one search
        per run (:meth:`get` for each would cost about 20 us an id)."""
        if not ids or not len(self):
            return {}
        k1, k2 = _first_halves(ids), _second_halves(ids)
        held: dict[str, Seen] = {}
        for run in (self._young, self._main):
            found = run.find(k1, k2)
            which = np.flatnonzero(found >= 0)
            at = found[which]
            slot = run.slot[at]
            held.update(zip(map(ids.__getitem__, which.tolist()),
                            zip(run.part[at].tolist(), run.offset[at].tolist(),
                                (slot >> 1).tolist(), (slot & 1).tolist(), strict=True),
                            strict=True))
        return held

    def contains_any(self, ids: Sequence[str]) -> bool:
        """Whether any of ``ids`` is in the index: one search per run for the
        batch, the second halves worked out only for first-half matches."""
        if not ids or not len(self):
            return False
        k1 = _first_halves(ids)
        maybe = self._young.any_first_half(k1) | self._main.any_first_half(k1)
        if not maybe.any():
            return False
        which = np.flatnonzero(maybe)
        wanted = [ids[i] for i in which.tolist()]
        k1, k2 = k1[which], _second_halves(wanted)
        return bool((self._young.find(k1, k2) >= 0).any() or (self._main.find(k1, k2) >= 0).any())

    def load(self, partition: int, ids: Sequence[str], offsets: Sequence[int],
             items: Sequence[int], lates: Sequence[int]) -> None:
        """A partition's dedup record entries, read back when the partition is
        assigned. An id stored more than once (a replayed batch, or a copy in
        another partition) keeps its earliest position, whatever the order
        records and partitions are loaded in."""
        if not ids:
            return
        part, offset, slot = _positions(partition, offsets, items, lates)
        k1, k2 = _first_halves(ids), _second_halves(ids)
        # earliest position first within each key, then the first of each key
        order = np.lexsort((slot >> 1, offset, part, k2, k1))
        k1, k2, part, offset, slot = k1[order], k2[order], part[order], offset[order], slot[order]
        first = np.ones(len(k1), dtype=bool)
        first[1:] = (k1[1:] != k1[:-1]) | (k2[1:] != k2[:-1])
        k1, k2, part, offset, slot = k1[first], k2[first], part[first], offset[first], slot[first]
        new = np.ones(len(k1), dtype=bool)
        for run in (self._young, self._main):
            found = run.find(k1, k2)
            for i in np.flatnonzero(found >= 0).tolist():  # held from another partition
                new[i] = False
                at = int(found[i])
                if (int(part[i]), int(offset[i]), int(slot[i]) >> 1) < (
                        int(run.part[at]), int(run.offset[at]), int(run.slot[at]) >> 1):
                    run.part[at], run.offset[at], run.slot[at] = part[i], offset[i], slot[i]
        self._add_run(_Run(k1[new], k2[new], part[new], offset[new], slot[new]))

    def forget_through(self, bounds: Mapping[int, int]) -> None:
        """Forget the ids first seen in partition ``p`` at an offset up to
        ``bounds[p]``: the span of a partition's expired dedup records, which
        expire oldest first (``pipeline.ingest.expired_seen``). A scan of the
        positions, no lookup of the ids: the records' ids need not be read."""
        for run in (self._young, self._main):
            if not len(run):
                continue
            mine = np.zeros(len(run), dtype=bool)
            for partition, offset in bounds.items():
                mine |= (run.part == partition) & (run.offset <= offset)
            run.part[mine] = _FORGOTTEN
            self._forgotten += int(np.count_nonzero(mine))

    def drop_partition(self, partition: int) -> None:
        """Forget the ids first seen in ``partition`` (it was revoked)."""
        self._compact()
        self._main = self._main.take(self._main.part != partition)
