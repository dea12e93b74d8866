"""Stage 3, per receiving org: the daily inbound series and its drop alerts (pure).

Engagements arrive keyed by their ``dst`` org on the internal inbound topic
(``pipeline.routing``), so an org's whole inbound total is in one partition.
Same exactness rules as the pair stage (``pipeline.pairs``): per source
partition applied offsets skip redeliveries; the watermark decides when a day
is closed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from pipeline.alerts import DROP_INBOUND, Alert, drop_alert
from pipeline.days import DAY, DaySeries
from pipeline.ingest import Message
from pipeline.memory import dumps
from pipeline.reciprocity import Params
from pipeline.routing import INBOUND_FIELDS, decode_columns
from pipeline.watermark import StagePartition, WatermarkTracker


@dataclass(slots=True)
class InboundState:
    applied: dict[int, int] = field(default_factory=dict)
    series: DaySeries | None = None

    def to_json(self) -> tuple[Any, ...]:
        """For orjson with ``OPT_NON_STR_KEYS`` (see :meth:`to_bytes`)."""
        return (self.applied, None if self.series is None else self.series.to_json())

    def to_bytes(self) -> bytes:
        return dumps(self.to_json(), option=orjson.OPT_NON_STR_KEYS)

    @classmethod
    def from_json(cls, doc: Sequence[Any]) -> InboundState:
        """From :meth:`to_bytes` output, decoded (int dict keys come back as str)."""
        applied, series = doc
        return cls({int(p): int(o) for p, o in applied.items()},
                   None if series is None else DaySeries.from_json(series))


@dataclass(slots=True)
class InboundCounts:
    messages: int = 0
    records: int = 0
    applied: int = 0
    replayed: int = 0
    late: int = 0
    drops: int = 0


@dataclass(slots=True)
class InboundOutcome:
    states: dict[str, bytes] = field(default_factory=dict)
    tracker: dict[str, Any] | None = None
    alerts: list[Alert] = field(default_factory=list)
    counts: InboundCounts = field(default_factory=InboundCounts)
    last_offset: int = -1


class InboundStage:
    def __init__(self, params: Params, sources: int) -> None:
        self.params = params
        self.sources = sources
        self._partitions: dict[int, StagePartition[InboundState]] = {}

    def load(self, partition: int, tracker: dict[str, Any] | None,
             states: Iterable[tuple[str, Sequence[Any]]]) -> None:
        part = StagePartition[InboundState](
            WatermarkTracker(self.sources, self.params.lateness_s) if tracker is None
            else WatermarkTracker.from_json(tracker, self.sources, self.params.lateness_s)
        )
        for org, doc in states:
            part.states[org] = state = InboundState.from_json(doc)
            self._schedule(part, org, state)
        self._partitions[partition] = part

    def forget(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def owns(self, partition: int) -> bool:
        return partition in self._partitions

    def process(self, partition: int, messages: Sequence[Message]) -> InboundOutcome:
        part = self._partitions[partition]
        out = InboundOutcome()
        touched: set[str] = set()
        counts = out.counts
        for message in messages:
            counts.messages += 1
            out.last_offset = message.offset
            routed = decode_columns(message.value, INBOUND_FIELDS)
            closed = part.tracker.closed
            source = routed.source
            counts.records += routed.size
            columns = routed.columns
            if not self._apply_plain(part, source, columns, closed, touched, counts):
                self._apply_each(part, source, columns, closed, touched, counts)
            tracker = part.tracker
            if message.offset > tracker.tag:
                tracker.observe(routed.source, routed.max_ts, routed.idle)
                tracker.tag = message.offset
            tracker.watermark()
        # once per batch, as the pair stage does (pipeline.pairs.PairStage.process)
        if part.tracker.closed is not None:
            self._advance(part, part.tracker.closed, touched, out)
        for org in sorted(touched):
            out.states[org] = part.states[org].to_bytes()
        out.tracker = part.tracker.to_json()
        return out

    def _apply_plain(self, part: StagePartition[InboundState], source: int,
                     columns: dict[str, Any], closed: float | None, touched: set[str],
                     counts: InboundCounts) -> bool:
        """A message's records when none is a redelivery or late and their
        offsets do not go back (as stage 1 writes them): counted per (org, day)
        by C loops, a Python step per org and day rather than per record. False,
        having changed nothing, for any other message (:meth:`_apply_each`)."""
        dst: list[str] = columns["dst"]
        if not dst:
            return True
        times, offsets = columns["ts"], columns["offset"]
        if closed is not None and not (times > closed).all():
            return False
        if len(offsets) > 1 and (offsets[1:] < offsets[:-1]).any():
            return False
        offset_list = offsets.tolist()
        states = part.states
        # each org's first record's offset: its smallest, the offsets not going back
        for org, first in dict(zip(reversed(dst), reversed(offset_list), strict=True)).items():
            state = states.get(org)
            if state is not None and state.applied.get(source, -1) >= first:
                return False  # a redelivery
        days = ((times // DAY).astype(np.int64) * DAY).tolist()
        last_offset = dict(zip(dst, offset_list, strict=True))
        first_day = dict(zip(reversed(dst), reversed(days), strict=True))
        by_org: dict[str, dict[int, int]] = {}
        for (org, day), n in Counter(zip(dst, days, strict=True)).items():
            found = by_org.get(org)
            if found is None:
                by_org[org] = {day: n}
            else:
                found[day] = n
        drop_days = self.params.drop_days
        for org, day_counts in by_org.items():
            state = states.get(org)
            if state is None:
                state = states[org] = InboundState()
            state.applied[source] = last_offset[org]
            touched.add(org)
            first = first_day[org]
            if state.series is None:
                state.series = DaySeries.begin(first, drop_days)
            state.series.add_counts(first, day_counts, drop_days)
            self._schedule(part, org, state)
        counts.applied += len(dst)
        return True

    def _apply_each(self, part: StagePartition[InboundState], source: int,
                    columns: dict[str, Any], closed: float | None, touched: set[str],
                    counts: InboundCounts) -> None:
        """A message's records, record by record (any message)."""
        params = self.params
        times = columns["ts"]
        offsets = columns["offset"].tolist()
        days = ((times // DAY).astype(np.int64) * DAY).tolist()
        in_time = (times > closed).tolist() if closed is not None else None
        # per receiving org, its records' indexes, in order
        by_org: dict[str, list[int]] = {}
        for i, org in enumerate(columns["dst"]):
            found = by_org.get(org)
            if found is None:
                by_org[org] = [i]
            else:
                found.append(i)
        for org, records in by_org.items():
            state = part.states.get(org)
            if state is None:
                state = part.states[org] = InboundState()
            before = state.applied.get(source, -1)
            kept = [i for i in records if offsets[i] > before]
            counts.replayed += len(records) - len(kept)
            if not kept:
                continue
            state.applied[source] = max(before, max(offsets[i] for i in kept))
            touched.add(org)
            applied = kept if in_time is None else [i for i in kept if in_time[i]]
            counts.late += len(kept) - len(applied)  # dead-lettered by the pair stage
            if not applied:
                continue
            counts.applied += len(applied)
            engaged = [days[i] for i in applied]
            if state.series is None:
                state.series = DaySeries.begin(engaged[0], params.drop_days)
            state.series.add_many(engaged, params.drop_days)
            self._schedule(part, org, state)

    def _advance(self, part: StagePartition[InboundState], watermark: float, touched: set[str],
                 out: InboundOutcome) -> None:
        params = self.params
        for org in part.deadlines.pop_due(watermark):
            state = part.states[org]
            if state.series is not None:
                for day, count, baseline in state.series.evaluate(
                    watermark, params.drop_days, params.drop_threshold, params.drop_min_baseline
                ):
                    out.counts.drops += 1
                    if params.watched(org):
                        out.alerts.append(drop_alert(DROP_INBOUND, org, "", day, count, baseline,
                                                     params.drop_threshold, params.drop_days))
            touched.add(org)
            self._schedule(part, org, state)

    def _schedule(self, part: StagePartition[InboundState], org: str, state: InboundState) -> None:
        part.deadlines.set(org, None if state.series is None else state.series.deadline())
