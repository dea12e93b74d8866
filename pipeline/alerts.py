"""Alert records (pure): one per snub, omission and drop (docs/metrics.md#alerts).

An alert's ``id`` names the finding, so re-deliveries after a crash carry the
same id: the ``alerts`` table keeps one row per id and consumers of the alerts
topic can drop repeats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pipeline.reciprocity import Omission
from schemas.event import ENGAGEMENT_KINDS, format_many, format_ts

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
        return {"id": self.id, "kind": self.kind, "org": self.org, "other": self.other,
                "ts": self.ts_text or format_ts(self.ts), "message": self.message,
                "details": self.details}


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
    kind = snub.kind_name
    ts = format_ts(snub.ts)
    return Alert(
        f"snub:{snub.id}:{snub.src}:{snub.dst}:{kind}", SNUB, snub.src, snub.dst, snub.snub_ts,
        f"{snub.dst} did not return {snub.src}'s {kind} of {ts} "
        f"within {horizon_s / 3600:g} h",
        {"id": snub.id, "src": snub.src, "dst": snub.dst, "kind": kind,
         "ts": ts, "snub_ts": format_ts(snub.snub_ts)},
    )


def snub_alerts(snubs: Sequence[Snub], horizon_s: float) -> list[Alert]:
    """:func:`snub_alert` of many snubs (their times formatted at once)."""
    times = format_many([s.ts for s in snubs])
    due = format_many([s.snub_ts for s in snubs])
    hours = f"{horizon_s / 3600:g}"
    kinds = ENGAGEMENT_KINDS
    return [
        Alert(f"snub:{s.id}:{s.src}:{s.dst}:{kinds[s.kind]}", SNUB, s.src, s.dst, s.snub_ts,
              f"{s.dst} did not return {s.src}'s {kinds[s.kind]} of {ts} within {hours} h",
              {"id": s.id, "src": s.src, "dst": s.dst, "kind": kinds[s.kind], "ts": ts,
               "snub_ts": snub_ts}, snub_ts)
        for s, ts, snub_ts in zip(snubs, times, due, strict=True)
    ]


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
