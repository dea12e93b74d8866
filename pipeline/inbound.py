"""Stage 3, per receiving org: the daily inbound series and its drop alerts (pure).

Engagements arrive keyed by their ``dst`` org on the internal inbound topic
(``pipeline.routing``), so an org's whole inbound total is in one partition.
Same exactness rules as the pair stage (``pipeline.pairs``): per source
partition applied offsets skip redeliveries; the watermark decides when a day
is closed.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress
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
        #: receiving orgs numbered as first seen, to group a message's records by
        self._org_index: dict[str, int] = {}
        self._org_names: list[str] = []

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
            if routed.size:
                self._apply(part, source, routed.columns, closed, touched, counts)
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

    def _apply(self, part: StagePartition[InboundState], source: int, columns: dict[str, Any],
               closed: float | None, touched: set[str], counts: InboundCounts) -> None:
        """One message's records, per receiving org in their order: those at or
        below the offset the org already applied from ``source`` are replays;
        those at or before ``closed`` (the watermark before the message) late."""
        params = self.params
        dsts = columns["dst"]
        index, names = self._org_index, self._org_names
        for name in set(dsts).difference(index):
            index[name] = len(names)
            names.append(name)
        code = np.fromiter(map(index.__getitem__, dsts), dtype=np.int64, count=len(dsts))
        order = np.argsort(code, kind="stable")  # per org, each org's in message order
        code = code[order]
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]])
        ends = [*starts[1:].tolist(), len(code)]
        times = columns["ts"][order]
        offsets = columns["offset"][order].tolist()
        days = ((times // DAY).astype(np.int64) * DAY).tolist()
        in_time = None if closed is None else (times > closed).tolist()
        states = part.states
        for start, end, org_code in zip(starts.tolist(), ends, code[starts].tolist(),
                                        strict=True):
            org = names[org_code]
            state = states.get(org)
            if state is None:
                state = states[org] = InboundState()
            before = state.applied.get(source, -1)
            offs = offsets[start:end]
            kept_days = days[start:end]
            kept_in_time = None if in_time is None else in_time[start:end]
            if min(offs) <= before:  # some applied before: a replay
                keep = [offset > before for offset in offs]
                kept = list(compress(offs, keep))
                counts.replayed += len(offs) - len(kept)
                if not kept:
                    continue
                offs = kept
                kept_days = list(compress(kept_days, keep))
                if kept_in_time is not None:
                    kept_in_time = list(compress(kept_in_time, keep))
            state.applied[source] = max(offs)  # every kept one is above before
            touched.add(org)
            engaged = kept_days if kept_in_time is None else list(compress(kept_days,
                                                                            kept_in_time))
            counts.late += len(kept_days) - len(engaged)  # dead-lettered by the pair stage
            if not engaged:
                continue
            counts.applied += len(engaged)
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
