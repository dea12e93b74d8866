"""A deterministic simulated institution: registry plus a stream of events.

What it simulates (every knob is a field of :class:`SimulationConfig`):

- **Institution.** Several root institutions, each with faculties,
  departments and centres (a hierarchy up to ``max_depth`` parent links deep),
  plus external partners; a few accounts and featured entities (researchers,
  projects) per org; every org's ``community`` set (``internal`` for the
  roots and their descendants, ``external`` for partners).
- **Who engages whom.** Each org engages a bounded number of partners
  (``partners_per_org``: its parent, some children and siblings, some other
  orgs), with a propensity weight per directed pair. Propensities are sparse,
  so the institution scales to thousands of orgs.
- **Returns.** Separately, a *reciprocity propensity* per pair: when org A
  engages org B at ``t``, B returns it (an engagement B -> A aimed at A's
  account that engaged) with probability ``reciprocity[(B, A)]``, after a delay
  drawn from a configurable mix (mostly minutes to hours, a share beyond 72 h,
  see :meth:`SimulationConfig.returned_within`). A return may itself be
  returned, up to ``max_return_depth`` links. Parents return their
  descendants' engagement less (``parent_return_factor``).
- **Omissions.** Parents post about their descendants' people and leave the
  descendant out (feature its entities, mention none of its accounts) with
  probability ``omission_probability``; other posts leave the featured org
  out with ``partner_omission_probability``.
- **Rhythm.** A daily cycle (``diurnal_amplitude``, peak at ``peak_hour``
  UTC), quieter weekends (``weekly_amplitude``) and bursts: short windows
  (``burst_duration_s``) at ``burst_multiplier`` times the rate, where most
  events engage one viral post.
- **Volume.** Either exactly ``n_events`` events over ``days``, or a target
  ``rate`` (events per second of event time, a Poisson stream) over ``days``.
  The modulation is normalised over the whole run, so the mean rate over the
  run is the target; the daily and weekly cycles average out over whole weeks.

Events stream lazily in time order with bounded memory (the pending returns
only). The same config always gives the same registry and the same events.

Entry points: :func:`simulate` (registry + events), :func:`write_simulation`
(``events.jsonl`` + ``registry.yaml``), :func:`build` and :func:`generate`
(the institution, and events traced to the engagement they return, for
tests). :func:`build_institution` and :func:`simulate_events` are the older,
smaller interface, kept for the demo and the tests.
"""

from __future__ import annotations

import math
import random
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from heapq import heappop, heappush
from itertools import pairwise
from pathlib import Path
from typing import Final, NamedTuple

from schemas.event import ENGAGEMENT_KINDS, Event, encode_event
from schemas.registry import Org, Registry, dump_registry

_KIND_WEIGHTS: Final = (("like", 40.0), ("share", 15.0), ("reply", 12.0), ("mention", 10.0),
                        ("thanks", 5.0), ("follow", 8.0), ("unfollow", 2.0), ("post", 8.0))
_RETURN_KIND_WEIGHTS: Final = (("like", 50.0), ("share", 15.0), ("reply", 15.0),
                               ("mention", 10.0), ("thanks", 10.0))
_BURST_KIND_WEIGHTS: Final = (("like", 60.0), ("share", 25.0), ("reply", 10.0), ("mention", 5.0))
_LEVEL_PREFIXES: Final = (("fac", "Faculty"), ("dept", "Department"), ("ctr", "Centre"))
_ROOT_NAMES: Final = ("Example University", "University Medical Centre",
                      "Institute of Technology", "Open University", "School of Economics")
_PARTNER_NAMES: Final = ("City Hospital", "National Laboratory", "TechCo", "Science Museum",
                         "Research Foundation", "Regional Council", "BioPharma", "Press Agency")
#: Time resolution of the rhythm (seconds; divides a day).
_GRID_S: Final = 600.0
_DAY_S: Final = 86400.0
_HORIZON_S: Final = 72 * 3600.0
#: 2026-03-02 00:00 UTC, a Monday.
DEFAULT_START_TS: Final = 1772409600.0


@dataclass(frozen=True)
class SimulationConfig:
    """Every knob of the simulation; the defaults make a mid-sized week.

    Institution:

    - ``n_orgs`` (60): all orgs, roots and external partners included.
    - ``n_roots`` (3): root institutions (``internal``, no parent).
    - ``external_share`` (0.2): share of ``n_orgs`` that are external
      partners (``external``, no parent), rounded.
    - ``max_depth`` (3): parent links from the deepest org to its root
      (root -> faculty -> department -> centre).
    - ``level_weights`` ((1, 3, 2)): how the non-root internal orgs split over
      depths 1, 2, 3, ... (the last weight repeats for deeper levels); every
      level up to ``max_depth`` gets at least one org when there are enough.
    - ``accounts_per_org`` (3), ``entities_per_org`` (4; every fourth a
      project, the others researchers).
    - ``partners_per_org`` (8): at most this many orgs each org engages.
    - ``propensity_levels`` ((0.2, 1, 3)): engagement weight of a pair, drawn
      uniformly; ``parent_engagement_boost`` (2) multiplies a child's weight
      towards its parent.
    - ``reciprocity_levels`` ((0, 0.1, 0.3, 0.6, 0.9)): probability that the
      engaged org returns an engagement, drawn uniformly per directed pair;
      ``parent_return_factor`` (0.3) multiplies it when the returning org is
      an ancestor of the engaging one.

    Volume and time:

    - ``start_ts`` (2026-03-02 00:00 UTC, a Monday), ``days`` (7).
    - ``n_events`` (100,000): exactly this many events, unless ``rate`` is
      set (None): then a Poisson stream of that many events per second of
      event time on average over ``days`` (``n_events`` is ignored).
    - ``diurnal_amplitude`` (0.6): the rate is ``1 + a cos(...)`` times its
      mean over a day, highest at ``peak_hour`` (13, UTC).
    - ``weekly_amplitude`` (0.3): Saturdays and Sundays run at ``1 - a``,
      weekdays at ``1 + 2a/5``, times the weekly mean.
    - ``bursts_per_day`` (0.3): mean number of bursts started per day; each
      lasts ``burst_duration_s`` (1800) at ``burst_multiplier`` (8) times the
      rate, and ``1 - 1/multiplier`` of its events engage the burst's viral
      post (``subject`` ``viral<N>``) of one account.

    Returns:

    - the delay of a return is, with probability ``late_return_share`` (0.1),
      uniform in ``(late_return_min_s, late_return_max_s]`` (72 h, 10 days),
      else log-normal with median ``return_delay_median_s`` (1.5 h) and
      ``return_delay_sigma`` (1.5), at least one second;
    - ``max_return_depth`` (2): a spontaneous engagement may be returned and
      that return returned once more, no further.

    Content:

    - ``kind_weights``: kinds of spontaneous events (like 40, share 15,
      reply 12, mention 10, thanks 5, follow 8, unfollow 2, post 8);
      ``return_kind_weights`` for returns (like 50, share 15, reply 15,
      mention 10, thanks 10);
    - ``parent_feature_share`` (0.5): share of the posts of an org with
      descendants that feature one descendant's entities;
    - ``omission_probability`` (0.4): a post featuring a descendant's entities
      mentions none of its accounts; ``partner_omission_probability`` (0.1)
      the same for any other featured org;
    - ``reply_mention_share`` (0.3): replies that also mention a third account;
    - ``unknown_share`` (0.02): non-post events aimed at an unregistered
      account (``stranger<N>``).
    """

    seed: int = 7
    # institution
    n_orgs: int = 60
    n_roots: int = 3
    external_share: float = 0.2
    max_depth: int = 3
    level_weights: tuple[float, ...] = (1.0, 3.0, 2.0)
    accounts_per_org: int = 3
    entities_per_org: int = 4
    partners_per_org: int = 8
    propensity_levels: tuple[float, ...] = (0.2, 1.0, 3.0)
    parent_engagement_boost: float = 2.0
    reciprocity_levels: tuple[float, ...] = (0.0, 0.1, 0.3, 0.6, 0.9)
    parent_return_factor: float = 0.3
    # volume and time
    start_ts: float = DEFAULT_START_TS
    days: float = 7.0
    n_events: int = 100_000
    rate: float | None = None
    diurnal_amplitude: float = 0.6
    peak_hour: float = 13.0
    weekly_amplitude: float = 0.3
    bursts_per_day: float = 0.3
    burst_duration_s: float = 1800.0
    burst_multiplier: float = 8.0
    # returns
    return_delay_median_s: float = 5400.0
    return_delay_sigma: float = 1.5
    late_return_share: float = 0.1
    late_return_min_s: float = _HORIZON_S
    late_return_max_s: float = 10 * _DAY_S
    max_return_depth: int = 2
    # content
    kind_weights: tuple[tuple[str, float], ...] = _KIND_WEIGHTS
    return_kind_weights: tuple[tuple[str, float], ...] = _RETURN_KIND_WEIGHTS
    parent_feature_share: float = 0.5
    omission_probability: float = 0.4
    partner_omission_probability: float = 0.1
    reply_mention_share: float = 0.3
    unknown_share: float = 0.02

    def __post_init__(self) -> None:
        problems = []
        if self.n_roots < 1:
            problems.append("n_roots must be at least 1")
        if not 0 <= self.external_share < 1:
            problems.append("external_share must be in [0, 1)")
        elif self.n_orgs - self.n_external < self.n_roots:
            problems.append("n_orgs leaves fewer internal orgs than n_roots")
        if self.n_orgs < 2:
            problems.append("an institution needs at least 2 orgs")
        if self.max_depth < 0:
            problems.append("max_depth must be >= 0")
        if not self.level_weights or any(w <= 0 for w in self.level_weights):
            problems.append("level_weights must be positive")
        if self.accounts_per_org < 1 or self.entities_per_org < 0:
            problems.append("accounts_per_org must be >= 1 and entities_per_org >= 0")
        if self.partners_per_org < 1:
            problems.append("partners_per_org must be >= 1")
        if not self.propensity_levels or any(w <= 0 for w in self.propensity_levels):
            problems.append("propensity_levels must be positive")
        if not self.reciprocity_levels or any(
            not 0 <= p <= 1 for p in self.reciprocity_levels
        ):
            problems.append("reciprocity_levels must be probabilities")
        for name in ("parent_return_factor", "late_return_share", "parent_feature_share",
                     "omission_probability", "partner_omission_probability",
                     "reply_mention_share", "unknown_share", "diurnal_amplitude"):
            if not 0 <= getattr(self, name) <= 1:
                problems.append(f"{name} must be in [0, 1]")
        if not 0 <= self.weekly_amplitude < 1:
            problems.append("weekly_amplitude must be in [0, 1)")
        if not self.days > 0:
            problems.append("days must be > 0")
        if self.n_events < 0:
            problems.append("n_events must be >= 0")
        if self.rate is not None and not self.rate > 0:
            problems.append("rate must be > 0 events per second")
        if self.bursts_per_day < 0 or self.burst_duration_s <= 0 or self.burst_multiplier < 1:
            problems.append("bursts need bursts_per_day >= 0, a positive duration and a "
                            "multiplier >= 1")
        if self.return_delay_median_s <= 0 or self.return_delay_sigma < 0:
            problems.append("return delays need a positive median and sigma >= 0")
        if not 0 <= self.late_return_min_s < self.late_return_max_s:
            problems.append("late returns need 0 <= late_return_min_s < late_return_max_s")
        if self.max_return_depth < 0:
            problems.append("max_return_depth must be >= 0")
        for name in ("kind_weights", "return_kind_weights"):
            weights = getattr(self, name)
            if not weights or sum(w for _, w in weights) <= 0 or any(w < 0 for _, w in weights):
                problems.append(f"{name} needs non-negative weights with a positive sum")
        if any(k not in ENGAGEMENT_KINDS for k, _ in self.return_kind_weights):
            problems.append("return_kind_weights may only name engagement kinds")
        if any(k not in (*ENGAGEMENT_KINDS, "unfollow", "post") for k, _ in self.kind_weights):
            problems.append("kind_weights names an unknown kind")
        if problems:
            raise ValueError("invalid simulation config: " + "; ".join(problems))

    @property
    def n_external(self) -> int:
        """External partners among ``n_orgs``."""
        return round(self.n_orgs * self.external_share)

    @property
    def span_s(self) -> float:
        """Length of the run in seconds of event time."""
        return self.days * _DAY_S

    @property
    def end_ts(self) -> float:
        """End of the run (exclusive)."""
        return self.start_ts + self.span_s

    @property
    def expected_events(self) -> float:
        """``n_events``, or ``rate`` times the run's length when a rate is set."""
        return self.n_events if self.rate is None else self.rate * self.span_s

    def level_counts(self) -> list[int]:
        """How many internal orgs sit at depth 0 (the roots), 1, 2, ... ``max_depth``.

        With ``max_depth`` 0 every internal org is a root.
        """
        rest = self.n_orgs - self.n_external - self.n_roots
        depth = self.max_depth
        weights = [self.level_weights[min(i, len(self.level_weights) - 1)] for i in range(depth)]
        if depth == 0:
            return [self.n_roots + rest]
        if rest < depth:  # too few orgs for every level: one per level, top down
            return [self.n_roots, *([1] * rest), *([0] * (depth - rest))]
        total = sum(weights)
        raw = [rest * w / total for w in weights]
        counts = [math.floor(r) for r in raw]
        by_fraction = sorted(range(depth), key=lambda i: (counts[i] - raw[i], i))
        for i in by_fraction[: rest - sum(counts)]:
            counts[i] += 1
        for i in range(depth):  # no empty level: take one from the largest
            if counts[i] == 0:
                largest = max(range(depth), key=lambda j: (counts[j], -j))
                counts[largest] -= 1
                counts[i] += 1
        return [self.n_roots, *counts]

    def returned_within(self, seconds: float) -> float:
        """Share of return delays at most ``seconds`` (the delay's CDF).

        So an engagement of a pair with reciprocity propensity ``p`` is
        returned within the 72 h horizon with probability
        ``p * returned_within(72 * 3600)``.
        """
        if seconds < 1.0:
            return 0.0
        late = self.late_return_share
        z = (math.log(seconds) - math.log(self.return_delay_median_s))
        fast = (0.5 * (1 + math.erf(z / (self.return_delay_sigma * math.sqrt(2))))
                if self.return_delay_sigma > 0 else float(z >= 0))
        lo, hi = self.late_return_min_s, self.late_return_max_s
        slow = min(1.0, max(0.0, (seconds - lo) / (hi - lo)))
        return (1 - late) * fast + late * slow


@dataclass(frozen=True)
class Institution:
    registry: Registry
    #: (src org, dst org) -> probability weight of src engaging dst (sparse)
    propensity: dict[tuple[str, str], float]
    #: (returning org, engaging org) -> probability that the returning org
    #: returns an engagement it receives from the engaging org (absent: 0)
    reciprocity: dict[tuple[str, str], float] = field(default_factory=dict)


class Traced(NamedTuple):
    """One simulated event with what it means (for tests and analyses)."""

    event: Event
    #: org of the actor
    src: str | None
    #: org engaged by the event's main engagement (target, or the post's
    #: mention); None when the event engages no registered org
    dst: str | None
    #: id of the engagement this event returns (None: not a return)
    returns: str | None
    #: 0 for a spontaneous event, n for a return of a return of ... (n links)
    depth: int


# --- the institution -------------------------------------------------------


def build(config: SimulationConfig) -> Institution:
    """The institution of ``config`` (deterministic for its seed)."""
    rng = random.Random(f"{config.seed}:institution")
    counts = config.level_counts()
    orgs: dict[str, Org] = {}
    by_level: list[list[str]] = []
    roots = ["uni"] if counts[0] == 1 else [f"uni{i + 1}" for i in range(counts[0])]
    for i, org_id in enumerate(roots):
        name = _ROOT_NAMES[i % len(_ROOT_NAMES)]
        if i >= len(_ROOT_NAMES):
            name += f" {i // len(_ROOT_NAMES) + 1}"
        orgs[org_id] = Org(org_id, name, None, "internal")
    by_level.append(roots)
    for depth, count in enumerate(counts[1:], start=1):
        prefix, label = (_LEVEL_PREFIXES[depth - 1] if depth <= 3
                         else (f"unit{depth}-", f"Level {depth} unit"))
        parents = by_level[-1]
        width = max(2, len(str(count)))
        # every parent of the level above gets a child before any gets two
        order = list(parents)
        rng.shuffle(order)
        level = []
        for j in range(count):
            parent = order[j] if j < len(order) else parents[rng.randrange(len(parents))]
            org_id = f"{prefix}{j + 1:0{width}d}"
            orgs[org_id] = Org(org_id, f"{label} {j + 1}", parent, "internal")
            level.append(org_id)
        if not level:
            break
        by_level.append(level)
    width = max(2, len(str(config.n_external)))
    for j in range(config.n_external):
        org_id = f"ext{j:0{width}d}"
        name = _PARTNER_NAMES[j % len(_PARTNER_NAMES)]
        orgs[org_id] = Org(org_id, f"{name} {j // len(_PARTNER_NAMES) + 1}", None, "external")

    accounts = {f"{o}_acct{j}": o for o in orgs for j in range(config.accounts_per_org)}
    entities = {f"{o}_{'project' if j % 4 == 3 else 'person'}{j}": o
                for o in orgs for j in range(config.entities_per_org)}
    registry = Registry(orgs, accounts, entities)

    org_ids = list(orgs)
    children = _children(registry)
    ancestors = {o: list(registry.ancestors(o)) for o in org_ids}
    propensity: dict[tuple[str, str], float] = {}
    reciprocity: dict[tuple[str, str], float] = {}
    levels, rec_levels = config.propensity_levels, config.reciprocity_levels
    limit = min(config.partners_per_org, len(org_ids) - 1)
    for org in org_ids:
        up = orgs[org].parent
        chosen: list[str] = [up] if up is not None else []
        near = list(children[org])
        siblings = children[up] if up is not None else roots
        near += [s for s in siblings if s != org]
        rng.shuffle(near)
        for other in near[: max(0, limit // 2 - len(chosen))]:
            chosen.append(other)
        taken = set(chosen)
        attempts = 0
        while len(chosen) < limit and attempts < 20 * limit:
            attempts += 1
            other = org_ids[rng.randrange(len(org_ids))]
            if other != org and other not in taken:
                chosen.append(other)
                taken.add(other)
        for other in chosen:
            weight = levels[rng.randrange(len(levels))]
            if other == up:
                weight *= config.parent_engagement_boost
            propensity[(org, other)] = weight
            back = rec_levels[rng.randrange(len(rec_levels))]
            if other in ancestors[org]:
                back *= config.parent_return_factor
            reciprocity[(other, org)] = back
    # descendants answering their ancestors' posts about them
    for org in org_ids:
        for anc in ancestors[org]:
            if (org, anc) not in reciprocity:
                reciprocity[(org, anc)] = rec_levels[rng.randrange(len(rec_levels))]
    return Institution(registry, propensity, reciprocity)


def _children(registry: Registry) -> dict[str, list[str]]:
    children: dict[str, list[str]] = {o: [] for o in registry.orgs}
    for org in registry.orgs.values():
        if org.parent is not None:
            children[org.parent].append(org.id)
    return children


def _descendants(registry: Registry) -> dict[str, list[str]]:
    children = _children(registry)
    out: dict[str, list[str]] = {}
    for org in registry.orgs:
        found: list[str] = []
        stack = list(reversed(children[org]))
        while stack:
            child = stack.pop()
            found.append(child)
            stack.extend(reversed(children[child]))
        out[org] = found
    return out


# --- time ------------------------------------------------------------------


@dataclass(frozen=True)
class _Burst:
    start: float
    end: float
    org: str
    account: str
    post: str


def _bursts(inst: Institution, config: SimulationConfig) -> list[_Burst]:
    """Non-overlapping bursts, started by a Poisson process over the run."""
    if config.bursts_per_day <= 0 or config.burst_multiplier <= 1:
        return []
    rng = random.Random(f"{config.seed}:bursts")
    accounts = list(inst.registry.org_of_account)
    if not accounts:
        return []
    per_s = config.bursts_per_day / _DAY_S
    out: list[_Burst] = []
    t = config.start_ts + rng.expovariate(per_s)
    while t < config.end_ts:
        account = accounts[rng.randrange(len(accounts))]
        end = t + config.burst_duration_s
        out.append(_Burst(t, end, inst.registry.org_of_account[account], account,
                          f"viral{len(out)}"))
        t = end + rng.expovariate(per_s)
    return out


def _timeline(config: SimulationConfig, bursts: list[_Burst]
              ) -> tuple[list[float], list[float], list[float], list[int]]:
    """Piecewise-constant relative intensity of the run.

    Returns segment starts (plus the end), cumulative intensity at each
    start (plus the total), the intensity of each segment and the index of
    the burst each segment is in (-1: none).
    """
    start, end = config.start_ts, config.end_ts
    points = {start, end}
    k = math.floor(start / _GRID_S) + 1
    while k * _GRID_S < end:
        points.add(k * _GRID_S)
        k += 1
    for burst in bursts:
        points.update(t for t in (burst.start, burst.end) if start < t < end)
    bounds = sorted(points)
    a_d, a_w = config.diurnal_amplitude, config.weekly_amplitude
    weekday, weekend = 1 + 2 * a_w / 5, 1 - a_w
    peak = config.peak_hour * 3600.0
    omega = 2 * math.pi / _DAY_S
    cum = [0.0]
    rates: list[float] = []
    burst_of: list[int] = []
    b = 0
    for lo, hi in pairwise(bounds):
        day = math.floor(lo / _DAY_S)
        w = weekend if (day + 3) % 7 >= 5 else weekday  # 1970-01-01 was a Thursday
        # the mean of 1 + a cos(omega (t - peak)) over [lo, hi)
        d = 1 + a_d * (math.sin(omega * (hi - peak)) - math.sin(omega * (lo - peak))) / (
            omega * (hi - lo))
        mid = (lo + hi) / 2
        while b < len(bursts) and bursts[b].end <= mid:
            b += 1
        in_burst = b < len(bursts) and bursts[b].start <= mid < bursts[b].end
        rate = max(0.0, w * d * (config.burst_multiplier if in_burst else 1.0))
        rates.append(rate)
        burst_of.append(b if in_burst else -1)
        cum.append(cum[-1] + rate * (hi - lo))
    return bounds, cum, rates, burst_of


# --- events ----------------------------------------------------------------


def _cumulative(weights: tuple[tuple[str, float], ...]) -> tuple[list[str], list[float]]:
    kinds = [k for k, w in weights if w > 0]
    cum: list[float] = []
    total = 0.0
    for _, w in weights:
        if w > 0:
            total += w
            cum.append(total)
    return kinds, cum


def generate(inst: Institution, config: SimulationConfig) -> Iterator[Traced]:
    """The events of ``config`` for ``inst``, in time order, each traced."""
    rng = random.Random(f"{config.seed}:events")
    rnd = rng.random
    gauss = rng.gauss
    registry = inst.registry
    accts: dict[str, list[str]] = {o: [] for o in registry.orgs}
    for account, org in registry.org_of_account.items():
        accts[org].append(account)
    ents: dict[str, list[str]] = {o: [] for o in registry.orgs}
    for entity, org in registry.org_of_entity.items():
        ents[org].append(entity)
    descendants = _descendants(registry)
    rec = inst.reciprocity
    rec_get = rec.get

    # spontaneous pairs, chosen by propensity weight
    pairs = []
    pair_cum: list[float] = []
    pair_total = 0.0
    for (src, dst), weight in inst.propensity.items():
        if weight > 0 and accts.get(src) and accts.get(dst) and src != dst:
            desc = descendants[src]
            pairs.append((src, dst, accts[src], accts[dst], ents[dst], rec_get((dst, src), 0.0),
                          dst in desc, [d for d in desc if accts[d]]))
            pair_total += weight
            pair_cum.append(pair_total)
    all_accounts = list(registry.org_of_account)
    org_of = registry.org_of_account

    kinds, kind_cum = _cumulative(config.kind_weights)
    kind_total = kind_cum[-1]
    rkinds, rkind_cum = _cumulative(config.return_kind_weights)
    rkind_total = rkind_cum[-1]
    bkinds, bkind_cum = _cumulative(_BURST_KIND_WEIGHTS)
    bkind_total = bkind_cum[-1]
    engaging = frozenset(ENGAGEMENT_KINDS)

    bursts = _bursts(inst, config)
    bounds, cum, rates, burst_of = _timeline(config, bursts)
    total = cum[-1]
    n_segments = len(rates)
    cum.append(math.inf)  # sentinel
    burst_keep = 1.0 / config.burst_multiplier

    unknown = config.unknown_share
    reply_mention = config.reply_mention_share
    parent_feature = config.parent_feature_share
    omit_parent, omit_other = config.omission_probability, config.partner_omission_probability
    max_depth = config.max_return_depth
    late_share = config.late_return_share
    late_lo = config.late_return_min_s
    late_width = config.late_return_max_s - config.late_return_min_s
    log_median, sigma = math.log(config.return_delay_median_s), config.return_delay_sigma

    end = config.end_ts
    last_ts = (math.ceil(end * 1000) - 1) / 1000
    poisson = config.rate is not None
    if config.rate is not None:
        scale = config.rate * config.span_s / total if total > 0 else 0.0
        n = -1
    else:
        scale = 1.0
        n = config.n_events
    if total <= 0 or not pairs or (poisson and scale <= 0):
        return

    # pending returns: (due, seq, returning org, target account, engaging org, cause id, depth)
    pending: list[tuple[float, int, str, str, str, str, int]] = []
    seq = 0
    seg = 0
    c = 0.0
    remaining = 1.0  # 1 - the current uniform order statistic (exact-count mode)
    i = 0
    while True:
        # the next event time: position c on the cumulative intensity
        if poisson:
            c -= math.log(1.0 - rnd()) / scale
            if c >= total:
                return
        else:
            if i >= n:
                return
            remaining *= (1.0 - rnd()) ** (1.0 / (n - i))
            c = (1.0 - remaining) * total
        while c >= cum[seg + 1] and seg < n_segments - 1:
            seg += 1
        t = bounds[seg] + (c - cum[seg]) / rates[seg]
        ts = int(t * 1000) / 1000
        if ts >= end:
            ts = last_ts
        event_id = f"ev{i:08d}"
        i += 1

        if pending and pending[0][0] <= t:
            _, _, src, target, dst, cause, depth = heappop(pending)
            pool = accts[src]
            actor = pool[int(rnd() * len(pool))]
            kind = rkinds[bisect_right(rkind_cum, rnd() * rkind_total)]
            yield Traced(Event(event_id, ts, kind, actor, target,
                               subject=f"post{int(rnd() * 1000)}"), src, dst, cause, depth)
            back = rec_get((dst, src), 0.0) if depth < max_depth else 0.0
            engaged_org = dst
            engaged_target = actor
        else:
            burst = burst_of[seg]
            if burst >= 0 and rnd() >= burst_keep:
                viral = bursts[burst]
                actor = all_accounts[int(rnd() * len(all_accounts))]
                src = org_of[actor]
                if src == viral.org:
                    yield Traced(Event(event_id, ts, "like", actor, viral.account,
                                       subject=viral.post), src, None, None, 0)
                    continue
                kind = bkinds[bisect_right(bkind_cum, rnd() * bkind_total)]
                yield Traced(Event(event_id, ts, kind, actor, viral.account, subject=viral.post),
                             src, viral.org, None, 0)
                back = rec_get((viral.org, src), 0.0) if max_depth > 0 else 0.0
                engaged_org, engaged_target, depth = viral.org, actor, 0
                dst = viral.org
            else:
                src, dst, src_pool, dst_pool, dst_ents, back, dst_is_desc, src_desc = pairs[
                    bisect_right(pair_cum, rnd() * pair_total)]
                actor = src_pool[int(rnd() * len(src_pool))]
                kind = kinds[bisect_right(kind_cum, rnd() * kind_total)]
                depth = 0
                if kind == "post":
                    omit = omit_parent if dst_is_desc else omit_other
                    if src_desc and rnd() < parent_feature:
                        dst = src_desc[int(rnd() * len(src_desc))]
                        dst_pool, dst_ents = accts[dst], ents[dst]
                        back, omit = rec_get((dst, src), 0.0), omit_parent
                    features: tuple[str, ...] = ()
                    if dst_ents:
                        first = int(rnd() * len(dst_ents))
                        features = (dst_ents[first],)
                        if len(dst_ents) > 1 and rnd() < 0.3:
                            features += (dst_ents[(first + 1) % len(dst_ents)],)
                    if rnd() < omit:
                        yield Traced(Event(event_id, ts, "post", actor, None, (), features),
                                     src, None, None, 0)
                        continue
                    target = dst_pool[int(rnd() * len(dst_pool))]
                    yield Traced(Event(event_id, ts, "post", actor, None, (target,), features),
                                 src, dst, None, 0)
                else:
                    target = dst_pool[int(rnd() * len(dst_pool))]
                    if rnd() < unknown:
                        target = f"stranger{int(rnd() * 100)}"
                        yield Traced(Event(event_id, ts, kind, actor, target,
                                           subject=f"post{int(rnd() * 1000)}"),
                                     src, None, None, 0)
                        continue
                    if kind == "reply" and rnd() < reply_mention:
                        other = all_accounts[int(rnd() * len(all_accounts))]
                        yield Traced(Event(event_id, ts, "reply", actor, target, (other,)),
                                     src, dst, None, 0)
                    else:
                        yield Traced(Event(event_id, ts, kind, actor, target,
                                           subject=f"post{int(rnd() * 1000)}"),
                                     src, dst if kind in engaging else None, None, 0)
                        if kind not in engaging:
                            continue
                if max_depth == 0:
                    continue
                engaged_org, engaged_target = dst, actor

        # the engaged org returns this engagement?
        if back > 0 and rnd() < back:
            if rnd() < late_share:
                delay = late_lo + late_width * (1.0 - rnd())
            else:
                delay = max(1.0, math.exp(log_median + sigma * gauss()))
            seq += 1
            heappush(pending, (t + delay, seq, engaged_org, engaged_target, src, event_id,
                               depth + 1))


def simulate(config: SimulationConfig | None = None) -> tuple[Registry, Iterator[Event]]:
    """The registry and the (lazy, time-ordered) events of ``config``."""
    config = config or SimulationConfig()
    inst = build(config)
    return inst.registry, (traced.event for traced in generate(inst, config))


def write_simulation(config: SimulationConfig, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``events.jsonl`` (contract v1, one event a line) and ``registry.yaml``.

    Returns (events path, registry path); ``out_dir`` is created if needed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    registry, events = simulate(config)
    registry_path = out / "registry.yaml"
    registry_path.write_text(dump_registry(registry), encoding="utf-8")
    events_path = out / "events.jsonl"
    with open(events_path, "wb") as handle:
        batch: list[bytes] = []
        for event in events:
            batch.append(encode_event(event))
            if len(batch) >= 10_000:
                handle.write(b"\n".join(batch) + b"\n")
                batch.clear()
        if batch:
            handle.write(b"\n".join(batch) + b"\n")
    return events_path, registry_path


# --- the older, smaller interface --------------------------------------------


def _small_config(seed: int, n_orgs: int, accounts_per_org: int,
                  entities_per_org: int) -> SimulationConfig:
    return SimulationConfig(seed=seed, n_orgs=n_orgs, n_roots=1 if n_orgs < 24 else 3,
                            external_share=1 / 3, accounts_per_org=accounts_per_org,
                            entities_per_org=entities_per_org)


def build_institution(seed: int = 7, n_orgs: int = 12, accounts_per_org: int = 2,
                      entities_per_org: int = 2) -> Institution:
    """An institution of ``n_orgs`` orgs (at least 3), deterministic for ``seed``.

    One root (three from 24 orgs on), a third of the orgs external partners;
    see :func:`build` for everything else.
    """
    if n_orgs < 3:
        raise ValueError("an institution needs at least 3 orgs")
    return build(_small_config(seed, n_orgs, accounts_per_org, entities_per_org))


def simulate_events(inst: Institution, n_events: int, start_ts: float, days: float = 3.0,
                    seed: int = 7, unknown_share: float = 0.02) -> Iterator[Event]:
    """Exactly ``n_events`` events spread over ``days`` from ``start_ts``, in time order.

    The default :class:`SimulationConfig` dynamics (rhythm, bursts, returns).
    """
    config = replace(SimulationConfig(), seed=seed, n_events=n_events, start_ts=start_ts,
                     days=days, unknown_share=unknown_share)
    return (traced.event for traced in generate(inst, config))
