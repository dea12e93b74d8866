"""Stage 1, per source partition: decode, dedup, late check, omissions, routing (pure).

The first Faust agent feeds batches of input messages to :class:`Ingest` and
persists what it returns. No Faust, Kafka or ClickHouse import here.

Per valid event, in partition offset order:

1. **Dedup.** The dedup index maps an event id to the position where it was
   first seen, ``(partition, offset, item)``, and whether it was late. A later
   copy at another position is a duplicate. The same position seen again is a
   replay (a redelivery after a crash): it is routed again with the verdict it
   had the first time, and the pair stage drops what it already applied.
2. **Late.** The partition's watermark is its largest event time seen minus the
   allowed lateness; an event at or before it is late (dead-lettered with
   reason ``late``) and used for nothing else.
3. **Omissions** of posts, and **engagements** resolved to directed org pairs,
   as compact records for the pair and inbound stages.

A message value is one contract-v1 JSON object, or a JSON array of them (the
packed form). Invalid input comes back as :class:`DeadLetter` data, never as
an exception.
"""

from __future__ import annotations

import itertools
import math
import operator
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, overload

import numpy as np
import orjson
from isal import isal_zlib

from pipeline.engagements import KIND_INDEX, MENTION, Resolution, raw_engagements, resolve
from pipeline.memory import dumps
from pipeline.reciprocity import Omission, omissions, post_omissions
from pipeline.seen_index import Seen, SeenIndex
from schemas.event import (
    MENTIONING_KINDS,
    REASON_INVALID_EVENT,
    REASON_INVALID_JSON,
    Event,
    EventColumns,
    Invalid,
    event_from_obj,
    events_from_values,
)
from schemas.registry import Registry

REASON_LATE: Final = "late"

#: where stage 1 looks ids up: the worker's index, or any mapping (tests)
SeenLookup = Mapping[str, Sequence[int]] | SeenIndex
#: a dedup record a worker holds for a partition: (largest event time of the
#: batch that wrote it, None without ids; its last input offset; its table key)
SeenRecord = tuple[float | None, int, str]


class Message(NamedTuple):
    """One Kafka message as a stage sees it. The worker hands the stages
    aiokafka's fetched records (``pipeline.batches``), which have the same
    attributes: stages read them by name, never as a tuple."""

    partition: int
    offset: int
    value: bytes
    key: bytes | None = None


class Engagement(NamedTuple):
    """One engagement, as routed to the pair and inbound stages.

    On the wire it is the JSON array ``[id, kind, src, dst, ts, offset]``
    (``kind`` an index into ``ENGAGEMENT_KINDS``); the source partition travels
    once per message."""

    id: str
    kind: int
    src: str
    dst: str
    ts: float
    offset: int


class EngagementColumns(Sequence[Engagement]):
    """Engagements in columns, in order: what stage 1 routes, without an
    object per engagement (:mod:`pipeline.routing` sends the columns as
    they are). A sequence of :class:`Engagement` to whoever iterates it."""

    __slots__ = ("dst", "id", "kind", "offset", "src", "ts")

    def __init__(self, id: Sequence[str] = (), kind: Sequence[int] = (),
                 src: Sequence[str] = (), dst: Sequence[str] = (),
                 ts: Sequence[float] = (), offset: Sequence[int] = ()) -> None:
        self.id, self.kind, self.src, self.dst, self.ts, self.offset = (
            id, kind, src, dst, ts, offset)

    @classmethod
    def of(cls, records: Iterable[Engagement]) -> EngagementColumns:
        records = list(records)
        return cls(*zip(*records, strict=True)) if records else cls()

    def column(self, name: str) -> Sequence[Any]:
        """The column of an :class:`Engagement` field name."""
        column: Sequence[Any] = getattr(self, name)
        return column

    def take(self, index: Sequence[int]) -> EngagementColumns:
        """The engagements at ``index``, in that order."""
        if len(index) == 1:
            i = index[0]
            return EngagementColumns(*((column[i],) for column in self._columns()))
        get = operator.itemgetter(*index)
        return EngagementColumns(*map(get, self._columns()))

    def _columns(self) -> tuple[Sequence[Any], ...]:
        return self.id, self.kind, self.src, self.dst, self.ts, self.offset

    def __len__(self) -> int:
        return len(self.id)

    @overload
    def __getitem__(self, index: int) -> Engagement: ...

    @overload
    def __getitem__(self, index: slice) -> EngagementColumns: ...

    def __getitem__(self, index: int | slice) -> Engagement | EngagementColumns:
        if isinstance(index, slice):
            return EngagementColumns(*(column[index] for column in self._columns()))
        return Engagement(*(column[index] for column in self._columns()))

    def __iter__(self) -> Iterator[Engagement]:
        return map(Engagement, *self._columns())

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EngagementColumns):
            return NotImplemented
        return all(list(a) == list(b) for a, b in zip(self._columns(), other._columns(),
                                                      strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable columns

    def __repr__(self) -> str:
        return f"EngagementColumns({list(self)!r})"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An input that could not be used, with the original bytes and why."""

    partition: int
    offset: int
    item: int
    reason: str
    error: str
    raw: bytes
    key: bytes | None = None


@dataclass(slots=True)
class Counts:
    """What happened to the input. ``messages`` counts Kafka messages, the rest
    count events (a packed message holds several) or engagements."""

    messages: int = 0
    events: int = 0
    valid: int = 0
    duplicates: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    late: int = 0
    engagements: int = 0
    same_org: int = 0
    unmapped: int = 0
    omissions: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


#: a partition's new dedup entries in columns: event ids, offsets, items, late flags
SeenColumns = tuple[list[str], list[int], list[int], list[int]]


class NewIds(Mapping[str, Seen]):
    """A batch's new dedup entries: event id -> :data:`Seen`, held per input
    partition in columns (:data:`SeenColumns`), as the dedup records and the
    index take them (no tuple per id)."""

    __slots__ = ("_dict", "columns")

    def __init__(self, columns: dict[int, SeenColumns] | None = None) -> None:
        self.columns: dict[int, SeenColumns] = columns or {}
        self._dict: dict[str, Seen] | None = None

    @classmethod
    def of(cls, entries: Mapping[str, Sequence[int]]) -> NewIds:
        columns: dict[int, SeenColumns] = {}
        for event_id, (partition, offset, item, late) in entries.items():
            held = columns.get(partition)
            if held is None:
                held = columns[partition] = ([], [], [], [])
            held[0].append(event_id)
            held[1].append(offset)
            held[2].append(item)
            held[3].append(late)
        return cls(columns)

    def _as_dict(self) -> dict[str, Seen]:
        if self._dict is None:
            self._dict = {event_id: (partition, offset, item, late)
                          for partition, (ids, offsets, items, lates) in self.columns.items()
                          for event_id, offset, item, late in zip(ids, offsets, items, lates,
                                                                  strict=True)}
        return self._dict

    def __getitem__(self, event_id: str) -> Seen:
        return self._as_dict()[event_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._as_dict())

    def __len__(self) -> int:
        return sum(len(ids) for ids, _, _, _ in self.columns.values())

    def __repr__(self) -> str:
        return f"NewIds({self._as_dict()!r})"


#: a dedup record whose JSON has at least this many bytes is stored as a zlib
#: stream of it (deflate level :data:`SEEN_ZLIB_LEVEL`, by ISA-L as the pair
#: state's payloads): the worker's table store holds every record in memory
#: (a backlog's records are thousands of ids each), and the ids, offsets and
#: positions of the bench's records shrink about five times, Bluesky-like
#: ids about three (docs/benchmarks.md). Smaller records stay plain JSON.
SEEN_COMPRESS_MIN_BYTES = 4096
SEEN_ZLIB_LEVEL = 1


def encode_seen_record(record: Mapping[str, Any]) -> bytes:
    """A dedup record's table value: its JSON, or a zlib stream of it
    (:data:`SEEN_COMPRESS_MIN_BYTES`). A zlib stream starts with ``x`` (its
    header byte ``0x78``), which no JSON document does."""
    raw = dumps(record)
    if len(raw) < SEEN_COMPRESS_MIN_BYTES:
        return raw
    return isal_zlib.compress(raw, SEEN_ZLIB_LEVEL)


def decode_seen_record(value: bytes) -> dict[str, Any]:
    """A dedup record from its table value, either form
    (:func:`encode_seen_record`), or the plain JSON of earlier releases."""
    if value[:1] == b"x":
        value = isal_zlib.decompress(value)
    record: dict[str, Any] = orjson.loads(value)
    return record


def seen_columns(record: Mapping[str, Any]) -> SeenColumns:
    """A dedup record's entries in columns, from either form it is stored in:
    ``"c": {"id": [...], "offset": [...], "item": [...], "late": [...]}``, or
    the earlier ``"ids": [[id, offset, item, late], ...]``."""
    found = record.get("c")
    if found is not None:
        return found["id"], found["offset"], found["item"], found["late"]
    entries = record["ids"]
    if not entries:
        return [], [], [], []
    ids, offsets, items, lates = zip(*entries, strict=True)
    return list(ids), list(offsets), list(items), list(lates)


@dataclass(slots=True)
class IngestOutcome:
    """What to persist and send after a batch."""

    #: new dedup entries of this batch
    first_seen: NewIds = field(default_factory=NewIds)
    #: largest event time per partition after the batch (only partitions that moved)
    max_ts: dict[int, float] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    omissions: list[Omission] = field(default_factory=list)
    #: engagements per source partition, in offset order
    engagements: dict[int, EngagementColumns] = field(default_factory=dict)
    counts: Counts = field(default_factory=Counts)
    #: the same counts per input partition (for the ``pipeline_batches`` table)
    partition_counts: dict[int, Counts] = field(default_factory=dict)
    first_offsets: dict[int, int] = field(default_factory=dict)
    last_offsets: dict[int, int] = field(default_factory=dict)
    #: largest event time of the valid events of this batch, per partition
    batch_max_ts: dict[int, float] = field(default_factory=dict)


def expired_seen(records: Sequence[SeenRecord], high: float | None, horizon_s: float,
                 committed: int | None) -> int:
    """How many of a partition's dedup records, oldest first, can be forgotten:
    the longest prefix of records such that

    - every id in them has an event time at or before ``high - horizon_s``,
      where ``high`` is the partition's largest event time and ``horizon_s``
      at least the allowed lateness: a later copy is late, dead-lettered as
      such, and never counted twice;
    - they lie before the committed offset, so no redelivery reaches them;
    - they are not the newest record, which carries the partition's largest
      event time.

    A prefix, so each batch looks at the expiring records only; a record kept
    a little longer behind a younger one is only kept longer.
    """
    if high is None or committed is None:
        return 0
    cut = high - horizon_s
    count = 0
    for hi, last, _key in itertools.islice(records, max(0, len(records) - 1)):
        if (hi is not None and hi > cut) or last >= committed:
            break
        count += 1
    return count


#: an item as :func:`split_message` returns it: a single event's original
#: bytes, or a packed element as decoded (:func:`item_bytes` gives its bytes)
RawItem = bytes | dict[str, Any]


def item_bytes(raw: RawItem) -> bytes:
    """The bytes a dead letter carries for an item: a single event's original
    message value, a packed element re-serialized."""
    return raw if isinstance(raw, bytes) else orjson.dumps(raw)


def split_message(value: bytes) -> list[tuple[Event | Invalid, RawItem]] | Invalid:
    """Decode a message value into (event-or-invalid, raw item) pairs.

    A JSON array is the packed form: each element is validated on its own, and
    its raw item is the decoded element, serialized (:func:`item_bytes`) only
    if it is dead-lettered: most are not, and orjson's output costs time and
    a 4 KiB allocation each (:func:`pipeline.memory.dumps`).
    """
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        return Invalid(REASON_INVALID_JSON, str(exc))
    if isinstance(doc, list):
        # Only a non-empty array of objects is the packed form; anything else is
        # one bad message, dead-lettered whole with its original bytes.
        if not doc or not all(isinstance(item, dict) for item in doc):
            return Invalid(REASON_INVALID_EVENT,
                           "expected a JSON object or a non-empty array of event objects")
        return [(event_from_obj(item), item) for item in doc]
    return [(event_from_obj(doc), value)]


#: a :class:`Message`'s (or aiokafka record's) fields, for C loops over a batch
MESSAGE_VALUE = operator.attrgetter("value")
MESSAGE_PARTITION = operator.attrgetter("partition")
MESSAGE_OFFSET = operator.attrgetter("offset")


class Ingest:
    """Stage 1 logic. Holds no state between batches: callers pass read-only
    views of the dedup index and of each partition's largest event time."""

    def __init__(self, registry: Registry, lateness_s: float) -> None:
        self.registry = registry
        self.lateness_s = lateness_s
        #: the registry's orgs by integer code, and each account's org's code
        self._org_names = np.array(list(registry.orgs), dtype=object)
        code = {org: i for i, org in enumerate(registry.orgs)}
        self._org_code = {account: code[org] for account, org in registry.org_of_account.items()}

    def process(
        self,
        messages: Iterable[Message],
        first_seen: SeenLookup,
        max_ts: Mapping[int, float],
    ) -> IngestOutcome:
        """One batch. Messages of a partition must come in offset order.

        A plain batch (every event valid with UTC ``Z`` times, as producers
        send them, new and in time) is worked in columns (:meth:`_columns`);
        any other batch event by event (:meth:`_events`), its messages decoded
        a second time. Both give the same outcome for the same batch."""
        messages = messages if isinstance(messages, Sequence) else list(messages)
        out = self._columns(messages, first_seen, max_ts)
        return out if out is not None else self._events(messages, first_seen, max_ts)

    def _columns(
        self,
        messages: Sequence[Message],
        first_seen: SeenLookup,
        max_ts: Mapping[int, float],
    ) -> IngestOutcome | None:
        """A plain batch in columns: every event valid in the producers' form
        (:func:`schemas.event.events_from_values`), new (its id neither seen
        before nor twice in the batch) and in time. None for any other batch
        (a duplicate, a replay, a late or an invalid event), which
        :meth:`_events` then takes event by event."""
        decoded = events_from_values(list(map(MESSAGE_VALUE, messages)))
        if decoded is None:
            return None
        columns, of_message, items = decoded.columns, decoded.message, decoded.item
        ids, n = columns.id, len(columns.id)
        unique = set(ids)
        if len(unique) != n or (first_seen.contains_any(ids) if isinstance(first_seen, SeenIndex)
                                else any(map(first_seen.__contains__, unique))):
            return None
        message_index = np.asarray(of_message, dtype=np.int64)
        partition_of = np.fromiter(map(MESSAGE_PARTITION, messages), dtype=np.int64,
                                   count=len(messages))
        partition = partition_of[message_index]
        ts = np.array(columns.ts, dtype=np.float64)
        out = IngestOutcome()
        lateness = self.lateness_s
        groups = {p: np.flatnonzero(partition == p) for p in dict.fromkeys(partition.tolist())}
        for p, where in groups.items():
            times = ts[where]
            high = max_ts.get(p)
            before = np.maximum.accumulate(np.r_[-math.inf if high is None else high, times])
            if (times <= before[:-1] - lateness).any():
                return None  # a late event
            top = float(times.max())
            out.batch_max_ts[p] = top
            if high is None or top > high:
                out.max_ts[p] = top
        offsets = list(map(MESSAGE_OFFSET, messages))
        for p in dict.fromkeys(partition_of.tolist()):
            sent = np.flatnonzero(partition_of == p)
            out.partition_counts[p] = Counts(messages=len(sent))
            out.first_offsets[p] = offsets[sent[0]]
            out.last_offsets[p] = offsets[sent[-1]]
        offset = offsets if isinstance(of_message, range) else [offsets[i] for i in of_message]
        parts = partition.tolist()
        id_of, offset_of = np.array(ids, dtype=object), np.array(offset, dtype=np.int64)
        item_of = np.maximum(np.array(items, dtype=np.int64), 0)
        out.first_seen = NewIds({
            p: (id_of[where].tolist(), offset_of[where].tolist(), item_of[where].tolist(),
                [0] * len(where))
            for p, where in groups.items()})
        self._omissions(columns, parts, out)
        self._engagements(columns, partition, id_of, ts, offset_of, out)
        for p, where in groups.items():
            counts = out.partition_counts[p]
            counts.events += len(where)
            counts.valid += len(where)
        for counts in out.partition_counts.values():
            out.counts.add(counts)
        return out

    def _omissions(self, columns: EventColumns, parts: list[int], out: IngestOutcome) -> None:
        registry, kinds, features = self.registry, columns.kind, columns.features
        for i in itertools.compress(range(len(kinds)), features):  # features, not empty
            if kinds[i] == "post":
                found = post_omissions(columns.id[i], columns.ts[i], columns.actor[i],
                                       columns.mentions[i], features[i], registry)
                if found:
                    out.partition_counts[parts[i]].omissions += len(found)
                    out.omissions.extend(found)

    def _engagements(self, columns: EventColumns, partition: np.ndarray, ids: np.ndarray,
                     times: np.ndarray, offsets: np.ndarray, out: IngestOutcome) -> None:
        """Every event's engagements resolved to org pairs, per source
        partition in event order (a target's before its mentions'): the rules
        of :func:`pipeline.engagements.raw_engagements` and ``resolve``, for
        the whole batch at once, kinds and orgs as integer codes
        (``partition``, ``ids``, ``times`` and ``offsets`` per event)."""
        code_of, n, absent = self._org_code.get, len(columns.kind), itertools.repeat(-1)
        kinds, targets = columns.kind, columns.target
        kind_code = np.fromiter(map(KIND_INDEX.get, kinds, absent), dtype=np.int64, count=n)
        targeted = np.fromiter(map(operator.is_not, targets, itertools.repeat(None)),
                               dtype=bool, count=n)
        #: per engagement: its event, the engaged account, its kind index
        event = np.flatnonzero((kind_code >= 0) & targeted)
        account: list[Any] = list(map(targets.__getitem__, event.tolist()))
        kind = kind_code[event]
        mentions = columns.mentions
        mentioned = [i for i in itertools.compress(range(n), mentions)
                     if kinds[i] in MENTIONING_KINDS]
        if mentioned:  # each account once per event, in the order named
            m_event, m_account = zip(*((i, account) for i in mentioned
                                       for account in dict.fromkeys(mentions[i] or ())),
                                     strict=True)
            event = np.concatenate([event, np.array(m_event, dtype=np.int64)])
            order = np.argsort(event, kind="stable")  # stable: a target before the mentions
            event = event[order]
            account = list(map([*account, *m_account].__getitem__, order.tolist()))
            kind = np.concatenate([kind, np.full(len(m_event), MENTION, dtype=np.int64)])[order]
        if not len(event):
            return
        src = np.fromiter(map(code_of, columns.actor, absent), dtype=np.int64, count=n)[event]
        dst = np.fromiter(map(code_of, account, absent), dtype=np.int64, count=len(account))
        unmapped = (src < 0) | (dst < 0)
        same = ~unmapped & (src == dst)
        engaged = ~(unmapped | same)
        part = partition[event]
        names = self._org_names
        counts = out.partition_counts
        for p in dict.fromkeys(part.tolist()):
            of_p = part == p
            counts[p].unmapped += int(np.count_nonzero(unmapped & of_p))
            counts[p].same_org += int(np.count_nonzero(same & of_p))
            chosen = np.flatnonzero(engaged & of_p)
            if not len(chosen):
                continue
            counts[p].engagements += len(chosen)
            at = event[chosen]
            out.engagements[p] = EngagementColumns(
                ids[at].tolist(), kind[chosen].tolist(), names[src[chosen]].tolist(),
                names[dst[chosen]].tolist(), times[at].tolist(), offsets[at].tolist())

    def _events(
        self,
        messages: Iterable[Message],
        first_seen: SeenLookup,
        max_ts: Mapping[int, float],
    ) -> IngestOutcome:
        """One batch, event by event (any input: invalid events become dead letters).
        The worker's index is asked for the batch's ids at once
        (:meth:`SeenIndex.get_many`): one id at a time costs it about 20 us."""
        out = IngestOutcome()
        routed: dict[int, list[Engagement]] = {}
        new_ids: dict[str, Seen] = {}
        messages = messages if isinstance(messages, Sequence) else list(messages)
        split = [split_message(message.value) for message in messages]
        if isinstance(first_seen, SeenIndex):
            first_seen = first_seen.get_many([
                event.id for items in split if not isinstance(items, Invalid)
                for event, _ in items if not isinstance(event, Invalid)])
        for message, items in zip(messages, split, strict=True):
            partition, offset = message.partition, message.offset
            counts = out.partition_counts.get(partition)
            if counts is None:
                counts = out.partition_counts[partition] = Counts()
                out.first_offsets[partition] = offset
            counts.messages += 1
            out.last_offsets[partition] = offset
            if isinstance(items, Invalid):
                counts.events += 1
                counts.dead_lettered += 1
                out.dead_letters.append(DeadLetter(partition, offset, 0, items.reason,
                                                   items.error, message.value, message.key))
                continue
            for item_index, (event, raw) in enumerate(items):
                counts.events += 1
                if isinstance(event, Invalid):
                    counts.dead_lettered += 1
                    out.dead_letters.append(DeadLetter(partition, offset, item_index,
                                                       event.reason, event.error,
                                                       item_bytes(raw), message.key))
                    continue
                counts.valid += 1
                if event.ts > out.batch_max_ts.get(partition, float("-inf")):
                    out.batch_max_ts[partition] = event.ts
                late = self._verdict(event, partition, offset, item_index, first_seen,
                                     max_ts, out, counts, new_ids)
                if late is None:
                    counts.duplicates += 1
                    continue
                if late:
                    counts.late += 1
                    counts.dead_lettered += 1
                    out.dead_letters.append(DeadLetter(
                        partition, offset, item_index, REASON_LATE,
                        f"event time {event.ts} is at or before the watermark of partition "
                        f"{partition} (largest event time seen minus {self.lateness_s:g} s)",
                        item_bytes(raw), message.key))
                    continue
                self._use(event, partition, offset, out, counts, routed)
        for partition_counts in out.partition_counts.values():
            out.counts.add(partition_counts)
        out.engagements = {p: EngagementColumns.of(r) for p, r in routed.items()}
        out.first_seen = NewIds.of(new_ids)
        return out

    def _verdict(
        self,
        event: Event,
        partition: int,
        offset: int,
        item: int,
        first_seen: SeenLookup,
        max_ts: Mapping[int, float],
        out: IngestOutcome,
        counts: Counts,
        new_ids: dict[str, Seen],
    ) -> bool | None:
        """Late (True), to use (False) or a duplicate (None); records new ids and
        moves the partition's largest event time."""
        seen = new_ids.get(event.id)
        if seen is None:
            stored = first_seen.get(event.id)
            if stored is not None:
                seen = (stored[0], stored[1], stored[2], stored[3])
        if seen is not None:
            if seen[:3] != (partition, offset, item):
                return None
            counts.replayed += 1
            late = bool(seen[3])  # a replay keeps its first verdict
        else:
            high = out.max_ts.get(partition, max_ts.get(partition))
            late = high is not None and event.ts <= high - self.lateness_s
            new_ids[event.id] = (partition, offset, item, int(late))
        if not late:
            high = out.max_ts.get(partition, max_ts.get(partition))
            if high is None or event.ts > high:
                out.max_ts[partition] = event.ts
        return late

    def _use(self, event: Event, partition: int, offset: int, out: IngestOutcome,
             counts: Counts, engagements: dict[int, list[Engagement]]) -> None:
        registry = self.registry
        found = omissions(event, registry)
        if found:
            counts.omissions += len(found)
            out.omissions.extend(found)
        routed = None
        for target, kind_index in raw_engagements(event):
            resolution, src, dst = resolve(registry, event.actor, target)
            if resolution is Resolution.UNMAPPED:
                counts.unmapped += 1
            elif resolution is Resolution.SAME_ORG:
                counts.same_org += 1
            else:
                counts.engagements += 1
                if routed is None:
                    routed = engagements.setdefault(partition, [])
                routed.append(Engagement(event.id, kind_index, src, dst, event.ts, offset))
