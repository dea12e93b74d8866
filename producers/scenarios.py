"""Named, story-driven scenarios: a registry plus a stream of events.

Where :mod:`producers.simulator` draws random propensities, a scenario tells
one story on purpose, so that a demo (and the tests) can show each figure of
``docs/metrics.md`` doing its job. The same seed always gives the same bytes.

``seed`` -- a university faculty (``sci``, the Faculty of Science) engages its
parent (``uni``) and the central communications office (``comms``, its own org
under ``uni``) a lot; they return that engagement rarely, in occasional
catch-up sessions that come days late, and they often post about the
faculty's researchers without mentioning any faculty account (omissions),
while crediting the Medical School (``med``) when they feature its people.
External partners (``cityhosp``, ``natlab``, ``techco``, ``museum``) and the
faculty engage each other both ways and return promptly. ``techco`` engages
the faculty steadily until the last week, then almost stops (a daily
engagement drop of the pair ``techco -> sci``). Background engagement among
the other orgs and a daily and weekly rhythm (quieter at night UTC and on
weekends) complete the picture.

Use :func:`write_scenario` to get ``events.jsonl`` (contract v1, one event per
line, in time order) and ``registry.yaml`` for the pipeline.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final, Protocol

from schemas.event import Event, encode_event
from schemas.registry import Org, Registry, dump_registry

_DAY_MS: Final = 86_400_000
_HOUR_MS: Final = 3_600_000
_MINUTE_MS: Final = 60_000

#: Relative activity per UTC hour (European institutions: quiet at night).
_HOUR_WEIGHTS: Final = (1, 1, 1, 1, 1, 2, 4, 7, 10, 12, 12, 11,
                        10, 11, 12, 11, 10, 8, 7, 6, 5, 4, 2, 1)
#: Saturday and Sunday activity relative to a weekday. Well above 5/12 on
#: purpose: an ordinary weekend must not look like a >50% daily engagement drop.
_WEEKEND_FACTOR: Final = 0.7

_ORGS: Final = (
    Org("uni", "Example University", None, "internal"),
    Org("sci", "Faculty of Science", "uni", "internal"),
    Org("comms", "Central Communications", "uni", "internal"),
    Org("med", "Medical School", "uni", "internal"),
    Org("cityhosp", "City Hospital", None, "external"),
    Org("natlab", "National Laboratory", None, "external"),
    Org("techco", "TechCo Industries", None, "external"),
    Org("museum", "Science Museum", None, "external"),
)
_ACCOUNTS: Final[dict[str, tuple[str, ...]]] = {
    "uni": ("uni_main", "uni_news", "uni_president"),
    "sci": ("sci_news", "sci_dean", "sci_research", "sci_outreach"),
    "comms": ("comms_press", "comms_social", "comms_media"),
    "med": ("med_news", "med_dean", "med_research"),
    "cityhosp": ("cityhosp_main", "cityhosp_research"),
    "natlab": ("natlab_main", "natlab_science"),
    "techco": ("techco_main", "techco_labs"),
    "museum": ("museum_main", "museum_events"),
}
_ENTITIES: Final[dict[str, tuple[str, ...]]] = {
    "uni": ("uni_rector_berg", "uni_proj_campus2030"),
    "sci": ("sci_dr_okafor", "sci_dr_lindqvist", "sci_prof_tanaka", "sci_dr_moreau",
            "sci_proj_coralwatch", "sci_proj_qubits"),
    "comms": ("comms_campaign_openday",),
    "med": ("med_dr_hassan", "med_prof_kowalski", "med_proj_vaccine"),
    "cityhosp": ("cityhosp_dr_reyes", "cityhosp_proj_stroke"),
    "natlab": ("natlab_dr_chen", "natlab_proj_beamline"),
    "techco": ("techco_dr_ivanova", "techco_proj_sensors"),
    "museum": ("museum_expo_oceans",),
}
_PARTNERS: Final = ("cityhosp", "natlab", "techco", "museum")

# Kind mixes. "post" in an engagement stream is a post by src featuring
# people of src and/or dst and mentioning a dst account (a mention engagement).
_SCI_UPWARD: Final = (("like", 30), ("share", 25), ("mention", 15), ("reply", 12),
                      ("thanks", 10), ("post", 8))
_MUTUAL: Final = (("like", 35), ("share", 20), ("reply", 15), ("mention", 10),
                  ("thanks", 10), ("post", 10))
_RESPONSE: Final = (("like", 45), ("share", 20), ("reply", 20), ("thanks", 15))
_CATCH_UP: Final = (("like", 70), ("share", 20), ("thanks", 10))


@dataclass(frozen=True, slots=True)
class _Stream:
    """Engagements src -> dst started by src (not answers to dst)."""

    src: str
    dst: str
    per_day: float  # mean on a weekday
    kinds: tuple[tuple[str, int], ...] = _MUTUAL
    last_week: float = 1.0  # rate multiplier in the scenario's last 7 days


@dataclass(frozen=True, slots=True)
class _Return:
    """How ``responder`` answers engagement it receives from ``initiator``."""

    probability: float
    median_delay_s: float
    last_week: float = 1.0  # probability multiplier in the last 7 days


@dataclass(slots=True)
class _Raw:
    ts_ms: int
    kind: str
    actor: str
    target: str | None = None
    mentions: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    subject: str | None = None


# --- the seed scenario's parameters -----------------------------------------

_SEED_STREAMS: Final = (
    # the faculty courts its parent and the central communications office
    _Stream("sci", "uni", 18.0, _SCI_UPWARD),
    _Stream("sci", "comms", 14.0, _SCI_UPWARD),
    # the faculty and its external partners, both ways (techco -> sci is
    # generated separately, see _techco_to_sci)
    _Stream("sci", "cityhosp", 4.0), _Stream("cityhosp", "sci", 4.0),
    _Stream("sci", "natlab", 3.5), _Stream("natlab", "sci", 3.5),
    _Stream("sci", "museum", 2.5), _Stream("museum", "sci", 2.5),
    # sci keeps reaching out to techco when techco goes quiet
    _Stream("sci", "techco", 3.0, last_week=2.5),
    # background among the other orgs
    _Stream("uni", "comms", 6.0), _Stream("comms", "uni", 6.0),
    _Stream("med", "uni", 5.0), _Stream("uni", "med", 3.0),
    _Stream("med", "comms", 3.0), _Stream("comms", "med", 3.0),
    _Stream("sci", "med", 2.0), _Stream("med", "sci", 2.0),
    _Stream("med", "cityhosp", 4.0), _Stream("cityhosp", "med", 4.0),
    _Stream("natlab", "techco", 3.0), _Stream("techco", "natlab", 3.0),
    _Stream("museum", "uni", 2.0), _Stream("uni", "museum", 2.0),
    _Stream("cityhosp", "natlab", 1.5), _Stream("natlab", "cityhosp", 1.5),
    _Stream("museum", "natlab", 1.0), _Stream("natlab", "museum", 1.0),
)
#: (responder, initiator) -> how the responder answers. uni and comms never
#: answer sci here: they only catch up now and then (see _catch_up_sessions).
_SEED_RETURNS: Final[dict[tuple[str, str], _Return]] = {
    ("cityhosp", "sci"): _Return(0.8, 40 * 60),
    ("natlab", "sci"): _Return(0.75, 60 * 60),
    ("museum", "sci"): _Return(0.7, 90 * 60),
    ("techco", "sci"): _Return(0.8, 30 * 60, last_week=0.0),
    ("sci", "cityhosp"): _Return(0.8, 30 * 60),
    ("sci", "natlab"): _Return(0.8, 45 * 60),
    ("sci", "museum"): _Return(0.75, 60 * 60),
    ("sci", "techco"): _Return(0.8, 30 * 60),
    ("sci", "med"): _Return(0.5, 3 * 3600),
    ("med", "sci"): _Return(0.5, 3 * 3600),
    ("uni", "comms"): _Return(0.5, 2 * 3600),
    ("comms", "uni"): _Return(0.5, 2 * 3600),
    ("uni", "med"): _Return(0.3, 6 * 3600),
    ("med", "uni"): _Return(0.4, 4 * 3600),
    ("comms", "med"): _Return(0.3, 6 * 3600),
    ("med", "comms"): _Return(0.4, 4 * 3600),
    ("cityhosp", "med"): _Return(0.6, 2 * 3600),
    ("med", "cityhosp"): _Return(0.6, 2 * 3600),
    ("techco", "natlab"): _Return(0.5, 3 * 3600),
    ("natlab", "techco"): _Return(0.5, 3 * 3600),
    ("uni", "museum"): _Return(0.4, 6 * 3600),
    ("museum", "uni"): _Return(0.5, 3 * 3600),
    ("natlab", "cityhosp"): _Return(0.5, 4 * 3600),
    ("cityhosp", "natlab"): _Return(0.5, 4 * 3600),
    ("natlab", "museum"): _Return(0.5, 4 * 3600),
    ("museum", "natlab"): _Return(0.5, 4 * 3600),
}
#: Share of sci's engagement that uni / comms return in a catch-up session.
_CATCH_UP_SHARE: Final = 0.10
#: techco -> sci engagements per day: weekday, weekend, last week.
_TECHCO_DAILY: Final = (11, 7, 1)


class _Generator:
    """Raw events of one scenario run (times in integer milliseconds)."""

    def __init__(self, seed: int, start_ts: float, days: int) -> None:
        if days < 1:
            raise ValueError("a scenario lasts at least one day")
        self.rng = random.Random(seed)  # noqa: S311 - a deterministic simulation
        self.start_ms = math.ceil(start_ts * 1000)
        self.days = days
        self.end_ms = math.ceil((start_ts + days * 86400) * 1000)  # exclusive
        # the last week (the whole run when it is shorter than two weeks)
        self.last_week_day = days - 7 if days >= 14 else days
        self.raws: list[_Raw] = []
        self._subjects = 0

    # -- time ------------------------------------------------------------

    def day_start(self, day: int) -> int:
        return self.start_ms + day * _DAY_MS

    def weekday(self, day: int) -> int:
        """Monday 0 ... Sunday 6 of the UTC day at ``start + day`` days."""
        return datetime.fromtimestamp(self.day_start(day) / 1000, tz=UTC).weekday()

    def weekday_factor(self, day: int) -> float:
        return _WEEKEND_FACTOR if self.weekday(day) >= 5 else 1.0

    def is_weekend(self, day: int) -> bool:
        return self.weekday_factor(day) < 1.0

    def count(self, expected: float) -> int:
        """A daily count close to ``expected`` (randomized rounding, little noise)."""
        return math.floor(expected + self.rng.random())

    def time_in_day(self, day: int) -> int:
        """A time in the day's 24 hours, following the UTC daily rhythm."""
        first = (self.start_ms % _DAY_MS) // _HOUR_MS  # UTC hour the run starts at
        weights = [_HOUR_WEIGHTS[(first + h) % 24] for h in range(24)]
        hour = self.rng.choices(range(24), weights)[0]
        return self.day_start(day) + hour * _HOUR_MS + self.rng.randrange(_HOUR_MS)

    def later(self, ts_ms: int, median_s: float) -> int:
        """A reply time after ``ts_ms``: lognormal delay, deferred out of the night."""
        delay_s = min(max(self.rng.lognormvariate(math.log(median_s), 1.0), 60.0), 36 * 3600.0)
        when = ts_ms + round(delay_s * 1000)
        into_day = when % _DAY_MS  # UTC time of day
        if into_day < 6 * _HOUR_MS and self.rng.random() < 0.7:
            when += 7 * _HOUR_MS - into_day + self.rng.randrange(3 * _HOUR_MS)
        return when

    # -- events ----------------------------------------------------------

    def subject(self, account: str) -> str:
        self._subjects += 1
        return f"{account}/post/{self._subjects:05d}"

    def engage(self, ts_ms: int, kind: str, src: str, dst: str,
               actor: str | None = None, target: str | None = None) -> _Raw:
        """One engagement event src -> dst (a ``post`` mentions the target)."""
        actor = actor or self.rng.choice(_ACCOUNTS[src])
        target = target or self.rng.choice(_ACCOUNTS[dst])
        if kind == "post":
            pool = _ENTITIES[dst] if self.rng.random() < 0.6 else _ENTITIES[src]
            raw = _Raw(ts_ms, "post", actor, None, (target,), (self.rng.choice(pool),),
                       self.subject(actor))
        elif kind in ("like", "share", "reply"):
            raw = _Raw(ts_ms, kind, actor, target, subject=self.subject(target))
        else:
            raw = _Raw(ts_ms, kind, actor, target)
        self.raws.append(raw)
        return raw

    def pick(self, kinds: tuple[tuple[str, int], ...]) -> str:
        return self.rng.choices([k for k, _ in kinds], [w for _, w in kinds])[0]

    def stream(self, s: _Stream) -> list[tuple[str, str, _Raw]]:
        made = []
        for day in range(self.days):
            factor = self.weekday_factor(day) * (s.last_week if day >= self.last_week_day else 1)
            for _ in range(self.count(s.per_day * factor)):
                raw = self.engage(self.time_in_day(day), self.pick(s.kinds), s.src, s.dst)
                made.append((s.src, s.dst, raw))
        return made

    def answer(self, engagements: list[tuple[str, str, _Raw]],
               returns: dict[tuple[str, str], _Return]) -> list[_Raw]:
        """Prompt answers of the engaged orgs, per ``returns``."""
        made = []
        # Systematic sampling: each pair answers its share of engagements with
        # little noise (Bernoulli draws would make ordinary days look like drops).
        credit: dict[tuple[str, str], float] = {}
        for src, dst, raw in sorted(engagements, key=lambda e: e[2].ts_ms):
            rule = returns.get((dst, src))
            if rule is None:
                continue
            in_last_week = raw.ts_ms >= self.day_start(self.last_week_day)
            have = credit.get((dst, src), self.rng.random())
            have += rule.probability * (rule.last_week if in_last_week else 1)
            credit[(dst, src)] = have % 1.0
            if have < 1.0:
                continue
            engaged = raw.mentions[0] if raw.kind == "post" else raw.target
            made.append(self.engage(self.later(raw.ts_ms, rule.median_delay_s),
                                    self.pick(_RESPONSE), dst, src, engaged, raw.actor))
        return made

    def posts(self, org: str, per_day: float, make: _PostMaker) -> None:
        for day in range(self.days):
            for _ in range(self.count(per_day * self.weekday_factor(day))):
                actor = self.rng.choice(_ACCOUNTS[org])
                mentions, features = make(self.rng)
                self.raws.append(_Raw(self.time_in_day(day), "post", actor, None,
                                      mentions, features, self.subject(actor)))


class _PostMaker(Protocol):
    def __call__(self, rng: random.Random) -> tuple[tuple[str, ...], tuple[str, ...]]: ...


def _featuring_sci(rng: random.Random) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """uni / comms featuring sci's people, naming no sci account (an omission)."""
    people = tuple(sorted(rng.sample(_ENTITIES["sci"], rng.choice((1, 1, 2)))))
    if rng.random() < 0.3:  # a joint story: med is featured and credited, sci is not
        return (rng.choice(_ACCOUNTS["med"]),), (*people, rng.choice(_ENTITIES["med"]))
    return (), people


def _featuring_med(rng: random.Random) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """uni / comms featuring med's people and crediting a med account."""
    return (rng.choice(_ACCOUNTS["med"]),), (rng.choice(_ENTITIES["med"]),)


def _own(org: str) -> _PostMaker:
    def make(rng: random.Random) -> tuple[tuple[str, ...], tuple[str, ...]]:
        return (), (rng.choice(_ENTITIES[org]),)
    return make


def _catch_up_sessions(gen: _Generator, engagements: list[tuple[str, str, _Raw]]) -> None:
    """uni and comms return ~10% of sci's engagement in one go, days late.

    On Monday mornings (06:00-08:00 UTC, after the start day) uni and comms
    take turns clearing their backlog: the org whose turn it is answers a
    sample of sci's engagements of it since its previous session. So each
    returns engagement once every other week at most, mostly long after the
    reciprocity horizon, and its returns only cover the quiet weekend before.
    """
    received = {org: sorted((r for src, dst, r in engagements if src == "sci" and dst == org),
                            key=lambda r: r.ts_ms)
                for org in ("uni", "comms")}
    since = dict.fromkeys(received, gen.start_ms)
    mondays = [d for d in range(1, gen.days) if gen.weekday(d) == 0]
    for turn, day in enumerate(mondays):
        org = ("uni", "comms")[turn % 2]
        midnight = gen.day_start(day) // _DAY_MS * _DAY_MS
        at = midnight + 6 * _HOUR_MS + gen.rng.randrange(2 * _HOUR_MS)
        pending = [r for r in received[org] if since[org] <= r.ts_ms < at]
        since[org] = at
        if not pending:
            continue
        n = max(1, round(len(pending) * _CATCH_UP_SHARE))
        for raw in sorted(gen.rng.sample(pending, n), key=lambda r: r.ts_ms):
            at += gen.rng.randrange(20_000, 4 * _MINUTE_MS)
            engaged = raw.mentions[0] if raw.kind == "post" else raw.target
            gen.engage(at, gen.pick(_CATCH_UP), org, "sci", engaged, raw.actor)


def _techco_to_sci(gen: _Generator, answers: list[_Raw]) -> list[tuple[str, str, _Raw]]:
    """Top techco -> sci up to a steady daily count, then almost nothing.

    ``answers`` are techco's prompt answers to sci, already made; the daily
    count includes them so that the series is steady (no false drop alerts).
    """
    per_day = [0] * gen.days
    for raw in answers:
        day = (raw.ts_ms - gen.start_ms) // _DAY_MS
        if 0 <= day < gen.days:
            per_day[day] += 1
    weekday, weekend, last_week = _TECHCO_DAILY
    made = []
    for day in range(gen.days):
        if day >= gen.last_week_day:
            target = gen.rng.choice((0, last_week, last_week, 2 * last_week))
        else:
            target = (weekend if gen.is_weekend(day) else weekday) + gen.rng.randint(-1, 1)
        for _ in range(target - per_day[day]):
            raw = gen.engage(gen.time_in_day(day), gen.pick(_MUTUAL), "techco", "sci")
            made.append(("techco", "sci", raw))
    return made


def _registry() -> Registry:
    orgs = {o.id: o for o in _ORGS}
    accounts = {a: org for org, accs in _ACCOUNTS.items() for a in accs}
    entities = {e: org for org, ents in _ENTITIES.items() for e in ents}
    return Registry(orgs, accounts, entities)


def _platform(account: str) -> str:
    """A stable platform per account (not Python's salted ``hash``)."""
    return ("bluesky", "mastodon")[sum(account.encode()) % 2]


def seed_scenario(seed: int = 1, start_ts: float = 1772409600.0,
                  days: int = 21) -> tuple[Registry, list[Event]]:
    """The faculty that its parent and central communications overlook.

    Returns the registry and the events, sorted by time, ids unique
    (``seed-000000``, ...), times rounded to milliseconds and within
    ``[start_ts, start_ts + days * 86400)``. Deterministic for ``seed``.
    The default 21 days give a few thousand events.
    """
    gen = _Generator(seed, start_ts, days)
    initiated: list[tuple[str, str, _Raw]] = []
    for stream in _SEED_STREAMS:
        initiated.extend(gen.stream(stream))
    techco_answers = gen.answer([e for e in initiated if e[1] == "techco"],
                                {("techco", "sci"): _SEED_RETURNS[("techco", "sci")]})
    initiated.extend(_techco_to_sci(gen, techco_answers))
    other_returns = {k: v for k, v in _SEED_RETURNS.items() if k != ("techco", "sci")}
    gen.answer(initiated, other_returns)
    _catch_up_sessions(gen, initiated)

    # uni and comms feature sci's people without naming sci, med's with credit
    gen.posts("uni", 1.5, _featuring_sci)
    gen.posts("comms", 2.0, _featuring_sci)
    gen.posts("uni", 1.0, _featuring_med)
    gen.posts("comms", 1.0, _featuring_med)
    for org in _ENTITIES:
        gen.posts(org, 1.0, _own(org))
    # the odd first-day follow and a late unfollow (not engagements)
    for src, dst in (("sci", "cityhosp"), ("natlab", "sci"), ("museum", "sci"), ("med", "uni")):
        gen.engage(gen.time_in_day(0), "follow", src, dst)
    if days > 2:
        gen.raws.append(_Raw(gen.time_in_day(days - 2), "unfollow", "techco_labs", "sci_news"))

    raws = sorted((r for r in gen.raws if gen.start_ms <= r.ts_ms < gen.end_ms),
                  key=lambda r: r.ts_ms)
    events = [
        Event(f"seed-{i:06d}", r.ts_ms / 1000, r.kind, r.actor, r.target, r.mentions,
              r.features, r.subject, _platform(r.actor))
        for i, r in enumerate(raws)
    ]
    return _registry(), events


class ScenarioBuilder(Protocol):
    def __call__(self, seed: int = ...) -> tuple[Registry, list[Event]]: ...


#: Scenario name -> builder (``builder(seed=...)`` returns registry and events).
SCENARIOS: Final[dict[str, ScenarioBuilder]] = {"seed": seed_scenario}
#: Scenario name -> the org whose story it tells (what ``reciprocity demo`` reports on).
FOCUS: Final[dict[str, str]] = {"seed": "sci"}


def write_scenario(name: str, out_dir: Path, seed: int = 1) -> tuple[Path, Path]:
    """Write scenario ``name`` as ``events.jsonl`` and ``registry.yaml`` in ``out_dir``.

    Returns (events path, registry path). ``out_dir`` is created if needed.
    """
    try:
        builder = SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r} (known: {', '.join(sorted(SCENARIOS))})"
                         ) from None
    registry, events = builder(seed=seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    events_path = out_dir / "events.jsonl"
    registry_path = out_dir / "registry.yaml"
    events_path.write_bytes(b"".join(encode_event(e) + b"\n" for e in events))
    registry_path.write_text(dump_registry(registry), encoding="utf-8")
    return events_path, registry_path
