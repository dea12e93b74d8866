"""From events to directed org-pair engagements (pure functions).

Definitions (docs/metrics.md says the same):

- Engagement kinds: follow, like, share, reply, mention, thanks. ``unfollow``
  and ``post`` are not engagements.
- Every account in a post's or reply's ``mentions`` is one ``mention``
  engagement from the actor (an account listed twice counts once). A
  ``mentions`` array on other kinds is accepted and ignored.
- The pair is (src = actor's org, dst = target's org). Engagements between two
  accounts of the same org are not pair engagements (counted as ``same_org``).
- An engagement whose actor or target account is not in the registry is
  counted as ``unmapped`` and produces no pair row.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import IntEnum
from typing import Final

from schemas.event import ENGAGEMENT_KINDS, MENTIONING_KINDS, Event
from schemas.registry import Registry

#: Index of each engagement kind in count vectors (order of ENGAGEMENT_KINDS).
KIND_INDEX: Final = {kind: i for i, kind in enumerate(ENGAGEMENT_KINDS)}
MENTION: Final = KIND_INDEX["mention"]


class Resolution(IntEnum):
    PAIR = 0
    SAME_ORG = 1
    UNMAPPED = 2


def raw_engagements(event: Event) -> Iterator[tuple[str, int]]:
    """(target account, kind index) of every engagement an event carries."""
    kind_index = KIND_INDEX.get(event.kind)
    if kind_index is not None and event.target is not None:
        yield event.target, kind_index
    if event.mentions and event.kind in MENTIONING_KINDS:
        for account in dict.fromkeys(event.mentions):
            yield account, MENTION


def resolve(
    registry: Registry, actor: str, target: str
) -> tuple[Resolution, str, str]:
    """Map an (actor, target) account pair to (resolution, src org, dst org)."""
    orgs = registry.org_of_account
    src = orgs.get(actor)
    dst = orgs.get(target)
    if src is None or dst is None:
        return Resolution.UNMAPPED, "", ""
    if src == dst:
        return Resolution.SAME_ORG, src, dst
    return Resolution.PAIR, src, dst
