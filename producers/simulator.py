"""A deterministic simulated institution: registry plus a stream of events.

Small on purpose for now (the demo and the tests use it): a root institution
with faculties and departments, a hospital, external partners; a few accounts
and featured entities per org; per-pair propensities to engage and to return
engagement; parents that feature their children's people without naming them.
The same seed always gives the same registry and events.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass

from schemas.event import Event
from schemas.registry import Org, Registry

_KIND_WEIGHTS = (("like", 40), ("share", 15), ("reply", 12), ("mention", 10),
                 ("thanks", 5), ("follow", 8), ("unfollow", 2), ("post", 8))


@dataclass(frozen=True)
class Institution:
    registry: Registry
    #: (src org, dst org) -> probability weight of src engaging dst
    propensity: dict[tuple[str, str], float]


def build_institution(seed: int = 7, n_orgs: int = 12, accounts_per_org: int = 2,
                      entities_per_org: int = 2) -> Institution:
    """An institution of ``n_orgs`` orgs (at least 3), deterministic for ``seed``."""
    if n_orgs < 3:
        raise ValueError("an institution needs at least 3 orgs")
    rng = random.Random(seed)
    orgs: dict[str, Org] = {"uni": Org("uni", "Example University", None, "internal")}
    n_internal = max(2, (n_orgs * 2) // 3)
    for i in range(1, n_internal):
        parent = "uni" if i <= 3 else f"fac{rng.randint(1, 3):02d}"
        org_id = f"fac{i:02d}" if i <= 3 else f"dept{i:02d}"
        orgs[org_id] = Org(org_id, f"Unit {i}", parent, "internal")
    for i in range(n_orgs - n_internal):
        org_id = f"ext{i:02d}"
        orgs[org_id] = Org(org_id, f"Partner {i}", None, "external")
    accounts = {f"{o}_acct{j}": o for o in orgs for j in range(accounts_per_org)}
    entities = {f"{o}_person{j}": o for o in orgs for j in range(entities_per_org)}
    propensity = {}
    for a in orgs:
        for b in orgs:
            if a != b:
                propensity[(a, b)] = rng.choice((0.0, 0.2, 1.0, 3.0))
    return Institution(Registry(orgs, accounts, entities), propensity)


def simulate_events(inst: Institution, n_events: int, start_ts: float, days: float = 3.0,
                    seed: int = 7, unknown_share: float = 0.02) -> Iterator[Event]:
    """``n_events`` events spread over ``days`` from ``start_ts``, in time order."""
    rng = random.Random(seed)
    registry = inst.registry
    by_org: dict[str, list[str]] = {}
    for account, org in registry.org_of_account.items():
        by_org.setdefault(org, []).append(account)
    ents_by_org: dict[str, list[str]] = {}
    for entity, org in registry.org_of_entity.items():
        ents_by_org.setdefault(org, []).append(entity)
    pairs = [p for p, w in inst.propensity.items() if w > 0]
    weights = [inst.propensity[p] for p in pairs]
    kinds = [k for k, _ in _KIND_WEIGHTS]
    kind_w = [w for _, w in _KIND_WEIGHTS]
    span = days * 86400
    times = sorted(start_ts + rng.random() * span for _ in range(n_events))
    for i, ts in enumerate(times):
        src, dst = rng.choices(pairs, weights)[0]
        actor = rng.choice(by_org[src])
        target = rng.choice(by_org[dst])
        if rng.random() < unknown_share:
            target = f"stranger{rng.randint(0, 99)}"
        kind = rng.choices(kinds, kind_w)[0]
        ts = round(ts, 3)
        if kind == "post":
            # a post featuring dst's people names dst only half of the time
            features = (rng.choice(ents_by_org[dst]),)
            mentions = (target,) if rng.random() < 0.5 else ()
            yield Event(f"ev{i:08d}", ts, "post", actor, None, mentions, features)
        elif kind == "reply" and rng.random() < 0.3:
            other = rng.choice(by_org[rng.choice(list(by_org))])
            yield Event(f"ev{i:08d}", ts, "reply", actor, target, (other,))
        else:
            yield Event(f"ev{i:08d}", ts, kind, actor, target, subject=f"post{rng.randint(0, 999)}")
