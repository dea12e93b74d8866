"""Alert records (pure): one per snub, omission and drop (docs/metrics.md#alerts).

An alert's ``id`` names the finding, so re-deliveries after a crash carry the
same id: the ``alerts`` table keeps one row per id and consumers of the alerts
topic can drop repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import numpy as np
import orjson

from pipeline.memory import dumps
from pipeline.reciprocity import Omission
from pipeline.sinks.base import ColumnBlock
from schemas.event import ENGAGEMENT_KINDS, format_many, format_ts, utc_seconds

SNUB: Final = "snub"
OMISSION: Final = "omission"
DROP_PAIR: Final = "drop_pair"
DROP_INBOUND: Final = "drop_inbound"
ALERT_KINDS: Final = (SNUB, OMISSION, DROP_PAIR, DROP_INBOUND)


@dataclass(frozen=True, slots=True)
class Alert:
    id: str
    kind: str
    org: str
    other: str
    ts: float
    message: str
    details: dict[str, Any]
    #: ``format_ts(ts)`` when the maker had it at hand (not part of the alert)
    ts_text: str = field(default="", compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        """The alert as published on the alerts topic and to the webhook."""
        return published(self.id, self.kind, self.org, self.other,
                         self.ts_text or format_ts(self.ts), self.message, self.details)


def published(alert_id: str, kind: str, org: str, other: str, ts_text: str, message: str,
              details: dict[str, Any]) -> dict[str, Any]:
    """An alert's JSON document on the alerts topic and to the webhook."""
    return {"id": alert_id, "kind": kind, "org": org, "other": other, "ts": ts_text,
            "message": message, "details": details}


@dataclass(frozen=True, slots=True)
class Snub:
    """An engagement not returned within the horizon (docs/metrics.md#snub)."""

    id: str
    src: str
    dst: str
    kind: int  # index into ENGAGEMENT_KINDS
    ts: float
    snub_ts: float

    @property
    def kind_name(self) -> str:
        return ENGAGEMENT_KINDS[self.kind]


def snub_alert(snub: Snub, horizon_s: float) -> Alert:
    """The alert of one snub (:meth:`SnubColumns.alerts` says what it holds)."""
    return snub_alerts([snub], horizon_s)[0]


def snub_alerts(snubs: Sequence[Snub], horizon_s: float) -> list[Alert]:
    """The alerts of many snubs (:class:`SnubColumns`)."""
    return SnubColumns.of(snubs).alerts(horizon_s).alerts()


@dataclass(frozen=True, slots=True)
class SnubColumns:
    """Many snubs as columns: what the columnar pair stage finds in a batch,
    for the ``snubs`` table and the alerts without an object per snub."""

    id: list[str]
    src: list[str]
    dst: list[str]
    #: index into ENGAGEMENT_KINDS
    kind: list[int]
    ts: np.ndarray
    snub_ts: np.ndarray

    @classmethod
    def of(cls, snubs: Sequence[Snub]) -> SnubColumns:
        return cls([s.id for s in snubs], [s.src for s in snubs], [s.dst for s in snubs],
                   [s.kind for s in snubs], np.array([s.ts for s in snubs], dtype=np.float64),
                   np.array([s.snub_ts for s in snubs], dtype=np.float64))

    def __len__(self) -> int:
        return len(self.id)

    def snubs(self) -> list[Snub]:
        return list(map(Snub, self.id, self.src, self.dst, self.kind, self.ts.tolist(),
                        self.snub_ts.tolist()))

    def where(self, keep: Sequence[bool]) -> SnubColumns:
        """The snubs where ``keep`` is true, in order."""
        mask = np.asarray(keep, dtype=bool)
        if mask.all():
            return self
        where = np.flatnonzero(mask).tolist()
        return SnubColumns([self.id[i] for i in where], [self.src[i] for i in where],
                           [self.dst[i] for i in where], [self.kind[i] for i in where],
                           self.ts[mask], self.snub_ts[mask])

    def block(self, stream: str, now: datetime) -> ColumnBlock:
        """The rows for the ``snubs`` table."""
        n = len(self.id)
        kinds = ENGAGEMENT_KINDS
        return ColumnBlock([self.id, self.src, self.dst, [kinds[k] for k in self.kind],
                            self.ts, self.snub_ts, utc_seconds(self.snub_ts), [stream] * n,
                            np.full(n, int(now.timestamp()), dtype=np.int64)])

    def alerts(self, horizon_s: float) -> SnubAlerts:
        """An alert per snub, in columns: its id names the event, the pair and
        the kind; its time is the snub's (the engagement's plus the horizon)."""
        times = format_many(self.ts)
        due = format_many(self.snub_ts)
        within = f" within {horizon_s / 3600:g} h"
        kinds = list(map(ENGAGEMENT_KINDS.__getitem__, self.kind))
        columns = (self.id, self.src, self.dst, kinds)
        ids = [f"snub:{event_id}:{src}:{dst}:{kind}"
               for event_id, src, dst, kind in zip(*columns, strict=True)]
        messages = [f"{dst} did not return {src}'s {kind} of {ts}{within}"
                    for src, dst, kind, ts in zip(self.src, self.dst, kinds, times, strict=True)]
        details = [{"id": event_id, "src": src, "dst": dst, "kind": kind, "ts": ts,
                    "snub_ts": snub_ts}
                   for event_id, src, dst, kind, ts, snub_ts in zip(*columns, times, due,
                                                                    strict=True)]
        return SnubAlerts(self, ids, messages, details, due)


@dataclass(frozen=True, slots=True)
class SnubAlerts:
    """The alerts of :class:`SnubColumns`, in columns: for the alerts topic
    (:meth:`keys`, :meth:`values`), the ``alerts`` table (:meth:`block`) and,
    only when wanted, as :class:`Alert` objects (:meth:`alerts`)."""

    snubs: SnubColumns
    id: list[str]
    message: list[str]
    details: list[dict[str, Any]]
    #: the alerts' times (the snub times), formatted
    ts_text: list[str]

    def __len__(self) -> int:
        return len(self.id)

    def alerts(self) -> list[Alert]:
        s = self.snubs
        return list(map(Alert, self.id, [SNUB] * len(self.id), s.src, s.dst,
                        s.snub_ts.tolist(), self.message, self.details, self.ts_text))

    def keys(self) -> list[bytes]:
        return [alert_id.encode() for alert_id in self.id]

    def values(self) -> list[bytes]:
        """Each alert as published (``Alert.to_json``, serialized)."""
        kinds = [SNUB] * len(self.id)
        return [dumps(published(*alert)) for alert in zip(
            self.id, kinds, self.snubs.src, self.snubs.dst, self.ts_text, self.message,
            self.details, strict=True)]

    def block(self, stream: str, now: datetime) -> ColumnBlock:
        """The rows for the ``alerts`` table."""
        n, s = len(self.id), self.snubs
        return ColumnBlock([self.id, [SNUB] * n, s.src, s.dst, s.snub_ts,
                            utc_seconds(s.snub_ts), self.message,
                            [orjson.dumps(d).decode() for d in self.details], [stream] * n,
                            np.full(n, int(now.timestamp()), dtype=np.int64)])


def omission_alert(omission: Omission) -> Alert:
    names = ", ".join(omission.entities)
    return Alert(
        f"omission:{omission.post_id}:{omission.left_out}", OMISSION, omission.left_out,
        omission.by, omission.ts,
        f"{omission.by} featured {names} of {omission.left_out} without naming "
        f"{omission.left_out} (post {omission.post_id})",
        {"post_id": omission.post_id, "left_out": omission.left_out, "by": omission.by,
         "entities": list(omission.entities), "ts": format_ts(omission.ts)},
    )


def drop_alert(kind: str, org: str, other: str, day: int, count: int, baseline: float,
               threshold: float, days: int) -> Alert:
    """A daily drop: ``org`` is the receiving org, ``other`` the engaging one
    (empty for an org's whole inbound total)."""
    day_text = format_ts(day)
    if kind == DROP_PAIR:
        ident = f"{DROP_PAIR}:{other}:{org}:{day_text}"
        what = f"{other} engaged {org} {count} times"
    else:
        ident = f"{DROP_INBOUND}:{org}:{day_text}"
        what = f"{org} received {count} engagements"
    return Alert(
        ident, kind, org, other, float(day),
        f"{what} on {day_text[:10]}, below {1 - threshold:g} x the mean of the previous "
        f"{days} days ({baseline:.1f})",
        {"day": day_text, "count": count, "baseline": baseline},
    )
