"""Batch pre-aggregation of social events into pair-window counts (pure).

This is the whole per-event computation of the live pipeline; the Faust agent
only feeds it batches and persists what it returns. No Faust, Kafka or
ClickHouse import here.

Exactness under at-least-once delivery rests on two rules:

1. **Offset-tagged state.** Every pair-window state is keyed by the source
   partition and carries the highest source offset already applied to it.
   A message re-delivered after a crash (offset <= the tag) is skipped for that
   key, so replay never double-counts, whatever survived of the changelog.
2. **First occurrence wins.** The dedup index maps an event id to the
   (partition, offset, item) where it was first seen. A later copy at another
   position is a duplicate; the same position seen again is a replay and is
   handled by rule 1.

A message value is one contract-v1 JSON object, or a JSON array of them (the
packed form producers use to amortize per-message cost). Invalid input comes
back as :class:`DeadLetter` data, never as an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import orjson

from pipeline.engagements import Resolution, raw_engagements, resolve
from pipeline.windows import window_label, window_start
from schemas.event import (
    ENGAGEMENT_KINDS,
    REASON_INVALID_EVENT,
    REASON_INVALID_JSON,
    Event,
    Invalid,
    event_from_obj,
)
from schemas.registry import Registry

N_KINDS = len(ENGAGEMENT_KINDS)
#: Position of the applied-offset tag in a pair state vector.
OFFSET_SLOT = N_KINDS

#: (source partition, window label, window start epoch s, src org, dst org)
PairKey = tuple[int, str, int, str, str]
#: counts per engagement kind (ENGAGEMENT_KINDS order) followed by the offset tag
PairState = list[int]
#: (partition, offset, item index within a packed message)
Position = tuple[int, int, int]


class Message(NamedTuple):
    """One Kafka message as the aggregator sees it."""

    partition: int
    offset: int
    value: bytes
    key: bytes | None = None


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
    """What happened to a batch's input. ``messages`` counts Kafka messages,
    the rest count events (a packed message holds several)."""

    messages: int = 0
    events: int = 0
    valid: int = 0
    duplicates: int = 0
    replayed: int = 0
    dead_lettered: int = 0
    engagements: int = 0
    same_org: int = 0
    unmapped: int = 0

    def add(self, other: Counts) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


@dataclass(slots=True)
class BatchOutcome:
    """What to persist after a batch: new absolute pair states, new dedup
    entries, dead letters, counters and the last offset per partition."""

    pair_states: dict[PairKey, PairState] = field(default_factory=dict)
    first_seen: dict[str, Position] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)
    last_offsets: dict[int, int] = field(default_factory=dict)


def split_message(value: bytes) -> list[tuple[Event | Invalid, bytes]] | Invalid:
    """Decode a message value into (event-or-invalid, raw item bytes) pairs.

    A JSON array is the packed form: each element is validated on its own and
    an invalid element's raw bytes are its re-serialized JSON.
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
        return [(event_from_obj(item), orjson.dumps(item)) for item in doc]
    return [(event_from_obj(doc), value)]


class Aggregator:
    """Turns batches of messages into pair-window state updates.

    ``windows`` are sizes in seconds. The aggregator holds no state of its own
    between batches: callers pass read-only views of the persisted pair states
    and dedup index (Faust tables live, dicts in tests and in the reference).
    """

    def __init__(self, registry: Registry, windows: Sequence[int]) -> None:
        self.registry = registry
        self.windows = [(size, window_label(size)) for size in windows]

    def process(
        self,
        messages: Iterable[Message],
        pair_states: Mapping[PairKey, PairState],
        first_seen: Mapping[str, Sequence[int]],
    ) -> BatchOutcome:
        """Aggregate one batch. Messages of a partition must come in offset order."""
        out = BatchOutcome()
        counts = out.counts
        updated = out.pair_states
        # offset tag of each touched key as it was before this batch
        tag_before: dict[PairKey, int] = {}
        for message in messages:
            counts.messages += 1
            partition, offset = message.partition, message.offset
            out.last_offsets[partition] = offset
            items = split_message(message.value)
            if isinstance(items, Invalid):
                counts.events += 1
                counts.dead_lettered += 1
                out.dead_letters.append(
                    DeadLetter(partition, offset, 0, items.reason, items.error,
                               message.value, message.key)
                )
                continue
            for item_index, (event, raw) in enumerate(items):
                counts.events += 1
                if isinstance(event, Invalid):
                    counts.dead_lettered += 1
                    out.dead_letters.append(
                        DeadLetter(partition, offset, item_index, event.reason, event.error,
                                   raw, message.key)
                    )
                    continue
                counts.valid += 1
                position = (partition, offset, item_index)
                seen = out.first_seen.get(event.id)
                if seen is None:
                    stored = first_seen.get(event.id)
                    seen = tuple(stored) if stored is not None else None  # type: ignore[assignment]
                if seen is None:
                    out.first_seen[event.id] = position
                elif seen != position:
                    counts.duplicates += 1
                    continue
                else:
                    counts.replayed += 1
                self._count(event, partition, offset, pair_states, updated, tag_before, counts)
        return out

    def _count(
        self,
        event: Event,
        partition: int,
        offset: int,
        pair_states: Mapping[PairKey, PairState],
        updated: dict[PairKey, PairState],
        tag_before: dict[PairKey, int],
        counts: Counts,
    ) -> None:
        registry = self.registry
        for target, kind_index in raw_engagements(event):
            resolution, src, dst = resolve(registry, event.actor, target)
            if resolution is Resolution.UNMAPPED:
                counts.unmapped += 1
                continue
            if resolution is Resolution.SAME_ORG:
                counts.same_org += 1
                continue
            counts.engagements += 1
            for size, label in self.windows:
                key: PairKey = (partition, label, window_start(event.ts, size), src, dst)
                state = updated.get(key)
                if state is None:
                    stored = pair_states.get(key)
                    state = list(stored) if stored is not None else [0] * (N_KINDS + 1)
                    tag_before[key] = state[OFFSET_SLOT] if stored is not None else -1
                    updated[key] = state
                if offset <= tag_before[key]:
                    continue  # already applied before a crash: replay, not new
                state[kind_index] += 1
                state[OFFSET_SLOT] = offset
