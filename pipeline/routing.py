"""How stage 1 hands engagements to the pair and inbound stages (pure).

Engagements are repartitioned through two internal topics: by unordered org
pair (``{app_id}-pairs``: both directions of a pair meet in one partition, so
reciprocation is decided in one place) and by receiving org
(``{app_id}-inbound``: an org's whole inbound total in one place). Stage 1
sends, per batch and per target partition, one message::

    {"p": source partition, "max": largest event time of that partition or null,
     "idle": false, "r": [[id, kind, src, dst, ts, source offset], ...]}

A message with no records is a watermark marker: stage 1 sends one to every
partition when its source partition's largest event time moved without
records for it, and with ``"idle": true`` when the source partition went idle
(or the input ended). Partitions are chosen with CRC-32 of the key, so the
choice never depends on a client library's partitioner.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import orjson

from pipeline.ingest import Engagement
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
    in their order (:func:`by_partition` with :func:`record_pair` and
    :func:`record_dst`), the partition of each (src, dst) and of each
    receiving org remembered: a key is encoded and hashed once, not once per
    record. Remembers at most ``limit`` keys of each kind (then starts over)."""

    def __init__(self, partitions: int, limit: int = 1 << 20) -> None:
        self.partitions = partitions
        self.limit = limit
        self._pairs: dict[tuple[str, str], int] = {}
        self._dsts: dict[str, int] = {}

    def split(self, records: Iterable[Engagement]
              ) -> tuple[dict[int, list[Engagement]], dict[int, list[Engagement]]]:
        """(records per pairs-topic partition, records per inbound-topic partition)."""
        n = self.partitions
        pairs, dsts = self._pairs, self._dsts
        if len(pairs) > self.limit:
            pairs.clear()
        if len(dsts) > self.limit:
            dsts.clear()
        by_pair: dict[int, list[Engagement]] = {}
        by_dst: dict[int, list[Engagement]] = {}
        for record in records:
            src, dst = record[2], record[3]
            target = pairs.get((src, dst))
            if target is None:
                target = pairs[(src, dst)] = partition_for(record_pair(record), n)
            group = by_pair.get(target)
            if group is None:
                group = by_pair[target] = []
            group.append(record)
            target = dsts.get(dst)
            if target is None:
                target = dsts[dst] = partition_for(record_dst(record), n)
            group = by_dst.get(target)
            if group is None:
                group = by_dst[target] = []
            group.append(record)
        return by_pair, by_dst


@dataclass(frozen=True, slots=True)
class Routed:
    """One decoded internal message."""

    source: int
    max_ts: float | None
    idle: bool
    records: Sequence[Engagement]


def encode(source: int, max_ts: float | None, idle: bool,
           records: Sequence[Engagement] = ()) -> bytes:
    return dumps({"p": source, "max": max_ts, "idle": idle,
                  "r": [list(r) for r in records]})


def decode(value: bytes) -> Routed:
    """Decode an internal message. These are written by stage 1 only, so a
    malformed one is a bug or a foreign writer: it raises ``ValueError``."""
    try:
        doc = orjson.loads(value)
        records = [Engagement(str(r[0]), int(r[1]), str(r[2]), str(r[3]), float(r[4]),
                              int(r[5])) for r in doc["r"]]
        max_ts = doc["max"]
        return Routed(int(doc["p"]), None if max_ts is None else float(max_ts),
                      bool(doc["idle"]), records)
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed internal message: {exc}") from exc
