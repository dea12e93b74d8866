"""Reciprocity figures as pure functions (definitions in docs/metrics.md).

No Faust, Kafka or ClickHouse here: the streaming stages (``pipeline.ingest``,
``pipeline.pairs``, ``pipeline.inbound``) and the reports use these, and tests
check them against the definitions directly. :class:`Params` carries every
tunable of the definitions.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from schemas.event import ENGAGEMENT_KINDS, Event
from schemas.registry import Registry

#: Default value weights per engagement kind.
DEFAULT_WEIGHTS: Final[Mapping[str, float]] = {
    "share": 3, "mention": 2, "reply": 2, "thanks": 2, "follow": 1, "like": 1,
}


@dataclass(frozen=True)
class Params:
    """The tunables of docs/metrics.md, defaults as documented."""

    windows: tuple[int, ...] = (3600, 86400)
    horizon_s: float = 72 * 3600
    lateness_s: float = 300
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    drop_threshold: float = 0.5
    drop_days: int = 7
    drop_min_baseline: float = 5.0
    #: orgs whose findings raise alerts; empty means every org
    watched_orgs: frozenset[str] = frozenset()

    @property
    def kind_weights(self) -> tuple[float, ...]:
        """Weights in ``ENGAGEMENT_KINDS`` order."""
        return tuple(float(self.weights.get(kind, 0)) for kind in ENGAGEMENT_KINDS)

    def watched(self, org: str) -> bool:
        return not self.watched_orgs or org in self.watched_orgs


def value(counts: Mapping[str, int], weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> float:
    """Weighted sum of engagement counts (kinds without a weight count 0)."""
    return sum(weights.get(kind, 0) * n for kind, n in counts.items() if kind in ENGAGEMENT_KINDS)


def pair_reciprocity(v_ab: float, v_ba: float) -> float:
    """min/max of the two directions' values; 0 when both are 0. In [0, 1]."""
    high = max(v_ab, v_ba)
    return 0.0 if high == 0 else min(v_ab, v_ba) / high


def balance(v_ab: float, v_ba: float) -> float:
    """(v_ab - v_ba) / (v_ab + v_ba); 0 when both are 0. In [-1, 1]: >0 means A gives more."""
    total = v_ab + v_ba
    return 0.0 if total == 0 else (v_ab - v_ba) / total


@dataclass(frozen=True, slots=True)
class Omission:
    """A post by org ``by`` featuring entities of org ``left_out`` without naming it."""

    post_id: str
    left_out: str
    by: str
    entities: tuple[str, ...]
    ts: float


def omissions(event: Event, registry: Registry) -> list[Omission]:
    """Omission records of one event (only posts by registered accounts have any).

    For each org A (other than the poster's org B) with featured entities in the
    post, the post omits A when none of its mentions is an account of A.
    One record per (post, left-out org), entities sorted, ordered by org id.
    """
    if event.kind != "post" or not event.features:
        return []
    return post_omissions(event.id, event.ts, event.actor, event.mentions, event.features,
                          registry)


def post_omissions(post_id: str, ts: float, actor: str, mentions: Sequence[str] | None,
                   features: Sequence[str] | None, registry: Registry) -> list[Omission]:
    """:func:`omissions` of a post given by its fields (stage 1's columns)."""
    by = registry.org_of_account.get(actor)
    if by is None:
        return []
    featured: dict[str, set[str]] = {}
    for entity in features or ():
        org = registry.org_of_entity.get(entity)
        if org is not None and org != by:
            featured.setdefault(org, set()).add(entity)
    named = {registry.org_of_account.get(account) for account in mentions or ()}
    return [
        Omission(post_id, org, by, tuple(sorted(entities)), ts)
        for org, entities in sorted(featured.items())
        if org not in named
    ]


def is_drop(current: float, baseline: float, threshold: float = 0.5,
            min_baseline: float = 5.0) -> bool:
    """The drop rule for one closed day: the baseline (mean of the previous
    days) is at least ``min_baseline`` and ``current < (1 - threshold) * baseline``.
    Which days have a baseline is :class:`pipeline.days.DaySeries`'s business."""
    return baseline >= min_baseline and current < (1 - threshold) * baseline


def first_return(returns: Sequence[float], ts: float, horizon_s: float) -> float | None:
    """The earliest time in sorted ``returns`` within ``(ts, ts + horizon_s]``:
    the first engagement that reciprocates one at ``ts``, or None."""
    i = bisect.bisect_right(returns, ts)  # first return strictly after ts
    if i < len(returns) and returns[i] <= ts + horizon_s:
        return returns[i]
    return None
