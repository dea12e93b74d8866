"""How stage 1 hands engagements to the pair and inbound stages (pure).

Engagements are repartitioned through two internal topics: by unordered org
pair (``{app_id}-pairs``: both directions of a pair meet in one partition, so
reciprocation is decided in one place) and by receiving org
(``{app_id}-inbound``: an org's whole inbound total in one place). Stage 1
sends, per batch and per target partition, one message, its records in
columns::

    {"p": source partition, "max": largest event time of that partition or null,
     "idle": false, "c": {"id": [...], "kind": [...], "src": [...], "dst": [...],
                          "ts": [...], "offset": [...]}}

(``offset``: each record's source offset; ``kind``: an index into
``ENGAGEMENT_KINDS``). The inbound topic's messages carry only the columns
its stage reads, ``dst``, ``ts`` and ``offset``. Columns, not a list per
record: a batch's records go out and come in without an object per record
(:func:`decode_columns`). The earlier form, ``"r": [[id, kind, src, dst, ts,
offset], ...]``, is still read, so messages in flight across an upgrade are
not lost.

A message with no records is a watermark marker: stage 1 sends one to every
partition when its source partition's largest event time moved without
records for it, and with ``"idle": true`` when the source partition went idle
(or the input ended). Partitions are chosen with CRC-32 of the key, so the
choice never depends on a client library's partitioner.
"""

from __future__ import annotations

import itertools
import operator
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import orjson

from pipeline.ingest import Engagement, EngagementColumns
from pipeline.memory import dumps


def pair_key(a: str, b: str) -> str:
    """The key of the unordered pair {a, b}: a JSON array, smaller id first."""
    return orjson.dumps([a, b] if a < b else [b, a]).decode()



def partition_for(key: str, partitions: int) -> int:
    return zlib.crc32(key.encode()) % partitions


def record_pair(record: Engagement) -> str:
    """The key a record goes to the pairs topic by: its unordered org pair."""
    return pair_key(record.src, record.dst)


def record_dst(record: Engagement) -> str:
    """The key a record goes to the inbound topic by: its receiving org."""
    return record.dst


def by_partition(records: Iterable[Engagement], key_of: Callable[[Engagement], str],
                 partitions: int) -> dict[int, list[Engagement]]:
    """Records per target partition of their key (:func:`partition_for`), each
    partition's in their order."""
    targets: dict[int, list[Engagement]] = {}
    for record in records:
        targets.setdefault(partition_for(key_of(record), partitions), []).append(record)
    return targets


class Router:
    """Records per target partition of both internal topics, each partition's
    in their order (what :func:`by_partition` with :func:`record_pair` and
    :func:`record_dst` gives, in columns), the partition of each (src, dst)
    and of each receiving org remembered: a key is encoded and hashed once,
    not once per record. Remembers at most ``limit`` keys of each kind (then
    starts over)."""

    def __init__(self, partitions: int, limit: int = 1 << 20) -> None:
        self.partitions = partitions
        self.limit = limit
        #: src -> dst -> partition of the pair (two lookups: no tuple per record)
        self._pairs: dict[str, dict[str, int]] = {}
        self._pair_count = 0
        self._dsts: dict[str, int] = {}

    def split(self, records: EngagementColumns
              ) -> tuple[dict[int, EngagementColumns], dict[int, EngagementColumns]]:
        """(records per pairs-topic partition, records per inbound-topic partition)."""
        if not len(records):
            return {}, {}
        n = self.partitions
        pairs, dsts = self._pairs, self._dsts
        if self._pair_count > self.limit:
            pairs.clear()
            self._pair_count = 0
        if len(dsts) > self.limit:
            dsts.clear()
        srcs, dsts_of = records.src, records.dst
        for src in set(srcs).difference(pairs):
            pairs[src] = {}
        by_pair = list(map(dict.get, map(pairs.__getitem__, srcs), dsts_of))
        missing = _missing(by_pair)
        for i in missing:
            src, dst = srcs[i], dsts_of[i]
            by_pair[i] = pairs[src][dst] = partition_for(pair_key(src, dst), n)
        self._pair_count += len(missing)
        by_dst = list(map(dsts.get, records.dst))
        for i in _missing(by_dst):
            dst = records.dst[i]
            by_dst[i] = dsts[dst] = partition_for(dst, n)
        return _grouped(records, by_pair), _grouped(records, by_dst)


def _missing(targets: list[Any]) -> list[int]:
    """Where ``targets`` holds None (found in C, not one Python step per record)."""
    if None not in targets:
        return []
    return list(itertools.compress(range(len(targets)),
                                   map(operator.is_, targets, itertools.repeat(None))))


def _grouped(records: EngagementColumns, targets: list[Any]) -> dict[int, EngagementColumns]:
    """``records`` per target partition (each the partition of its record),
    each partition's in their order."""
    first = targets[0]
    if targets.count(first) == len(targets):
        return {first: records}
    at = np.array(targets, dtype=np.int64)
    return {target: records.take(np.flatnonzero(at == target).tolist())
            for target in dict.fromkeys(targets)}


#: the columns of a pairs-topic message: an :class:`Engagement`'s fields
PAIR_FIELDS: Final = Engagement._fields
#: the columns of an inbound-topic message: what the inbound stage reads
INBOUND_FIELDS: Final = ("dst", "ts", "offset")
#: columns decoded to numpy arrays, and their types (the rest stay lists of str)
_NUMERIC: Final = {"kind": np.int64, "ts": np.float64, "offset": np.int64}


@dataclass(frozen=True, slots=True)
class Routed:
    """One decoded internal message, a record per engagement."""

    source: int
    max_ts: float | None
    idle: bool
    records: Sequence[Engagement]


@dataclass(frozen=True, slots=True)
class RoutedColumns:
    """One decoded internal message, its records in columns: ``kind``, ``ts``
    and ``offset`` numpy arrays (int64, float64, int64), ``id``, ``src`` and
    ``dst`` lists of str, all ``size`` long."""

    source: int
    max_ts: float | None
    idle: bool
    columns: dict[str, Any]
    size: int


def encode(source: int, max_ts: float | None, idle: bool,
           records: Sequence[Engagement] = (), fields: Sequence[str] = PAIR_FIELDS) -> bytes:
    """An internal message of ``records`` (none: a watermark marker), with
    the columns ``fields`` (:data:`PAIR_FIELDS` or :data:`INBOUND_FIELDS`)."""
    if not isinstance(records, EngagementColumns):
        records = EngagementColumns.of(records)
    return dumps({"p": source, "max": max_ts, "idle": idle,
                  "c": {name: records.column(name) for name in fields}})


def decode_columns(value: bytes, fields: Sequence[str] = PAIR_FIELDS) -> RoutedColumns:
    """Decode an internal message's header and the columns ``fields``. These
    messages are written by stage 1 only, so a malformed one is a bug or a
    foreign writer: it raises ``ValueError``."""
    try:
        doc = orjson.loads(value)
        if not isinstance(doc, dict):
            raise TypeError("not a JSON object")
        source, max_ts, idle = int(doc["p"]), doc["max"], bool(doc["idle"])
        if max_ts is not None:
            max_ts = float(max_ts)
        given = doc["c"] if "c" in doc else _rows_to_columns(doc["r"])
        if not isinstance(given, dict):
            raise TypeError("the columns are not an object")
        columns: dict[str, Any] = {}
        for name in fields:
            column = given[name]
            if not isinstance(column, list):
                raise TypeError(f"column {name!r} is not a list")
            kind = _NUMERIC.get(name)
            columns[name] = column if kind is None else np.array(column, dtype=kind)
        sizes = {len(column) for column in columns.values()}
        if len(sizes) > 1:
            raise ValueError("columns of different lengths")
        if "ts" in columns and np.isnan(columns["ts"]).any():
            raise ValueError("a record has no time")
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed internal message: {exc}") from exc
    return RoutedColumns(source, max_ts, idle, columns, sizes.pop() if sizes else 0)


def _rows_to_columns(rows: Any) -> dict[str, list[Any]]:
    """The earlier form's records, ``[[id, kind, src, dst, ts, offset], ...]``,
    as columns."""
    if not isinstance(rows, list):
        raise TypeError("records are not a list")
    if any(not isinstance(row, list) or len(row) != len(PAIR_FIELDS) for row in rows):
        raise ValueError("a record is not [id, kind, src, dst, ts, offset]")
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(PAIR_FIELDS)
    return {name: list(column) for name, column in zip(PAIR_FIELDS, columns, strict=True)}


def decode(value: bytes) -> Routed:
    """Decode a pairs-topic message to records (:func:`decode_columns`)."""
    routed = decode_columns(value)
    c = routed.columns
    records = [Engagement(str(i), k, str(s), str(d), t, o) for i, k, s, d, t, o in zip(
        c["id"], c["kind"].tolist(), c["src"], c["dst"], c["ts"].tolist(),
        c["offset"].tolist(), strict=True)]
    return Routed(routed.source, routed.max_ts, routed.idle, records)
