"""Scenarios: deterministic, well-formed, and telling the story they claim.

The story checks recompute the figures of docs/metrics.md (H = 72 h) from the
raw events in a few lines of plain Python, sharing no code with the pipeline.
"""

from __future__ import annotations

import bisect
import math
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from producers.scenarios import SCENARIOS, seed_scenario, write_scenario
from schemas.event import Event, decode_event
from schemas.registry import Registry, load_registry

START = 1772409600.0  # Monday 2026-03-02 00:00 UTC, the default
DAYS = 21
H = 72 * 3600.0
WEIGHTS = {"share": 3, "mention": 2, "reply": 2, "thanks": 2, "follow": 1, "like": 1}
PARTNERS = ("cityhosp", "natlab", "techco", "museum")

Engagement = tuple[float, str, str, str]  # ts, src org, dst org, kind


@pytest.fixture(scope="module")
def scenario() -> tuple[Registry, list[Event]]:
    return seed_scenario()


def engagements(registry: Registry, events: list[Event]) -> list[Engagement]:
    """docs/metrics.md "Engagement": kinds with a target, plus post/reply mentions."""
    org = registry.org_of_account
    out: list[Engagement] = []
    for e in events:
        src = org.get(e.actor)
        if e.kind in WEIGHTS and e.target is not None:
            dst = org.get(e.target)
            if src and dst and src != dst:
                out.append((e.ts, src, dst, e.kind))
        if e.kind in ("post", "reply"):
            for account in dict.fromkeys(e.mentions):
                dst = org.get(account)
                if src and dst and src != dst:
                    out.append((e.ts, src, dst, "mention"))
    return out


def times_by_pair(engs: list[Engagement]) -> dict[tuple[str, str], list[float]]:
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for ts, src, dst, _ in engs:
        out[(src, dst)].append(ts)
    for times in out.values():
        times.sort()
    return out


def reciprocated_share(times: dict[tuple[str, str], list[float]], a: str, b: str,
                       end: float) -> float:
    """Reciprocated a -> b engagements among the decided ones.

    Reciprocated: some b -> a engagement in (t, t + H]. Decided: reciprocated,
    or t + H is within the data (a snub); the rest are still open.
    """
    back = times[(b, a)]
    reciprocated = decided = 0
    for t in times[(a, b)]:
        i = bisect.bisect_right(back, t)
        hit = i < len(back) and back[i] <= t + H
        if hit or t + H <= end:
            decided += 1
            reciprocated += hit
    assert decided > 0
    return reciprocated / decided


def reciprocity(values: Counter[tuple[str, str]], a: str, b: str) -> float:
    high = max(values[(a, b)], values[(b, a)])
    return min(values[(a, b)], values[(b, a)]) / high if high else 0.0


# --- well-formed and deterministic -------------------------------------------


def test_seed_is_registered() -> None:
    assert SCENARIOS["seed"] is seed_scenario


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = write_scenario("seed", tmp_path / "a", seed=3)
    second = write_scenario("seed", tmp_path / "b", seed=3)
    other = write_scenario("seed", tmp_path / "c", seed=4)
    assert [p.name for p in first] == ["events.jsonl", "registry.yaml"]
    for one, two in zip(first, second, strict=True):
        assert one.read_bytes() == two.read_bytes()
    assert first[0].read_bytes() != other[0].read_bytes()


def test_events_sorted_unique_millisecond_and_in_range(
        scenario: tuple[Registry, list[Event]]) -> None:
    _, events = scenario
    assert 1000 < len(events) < 6000
    times = [e.ts for e in events]
    assert times == sorted(times)
    assert len({e.id for e in events}) == len(events)
    assert all(round(t, 3) == t for t in times)
    assert times[0] >= START and times[-1] < START + DAYS * 86400


def test_other_window_stays_in_range() -> None:
    start = START + 18.5 * 3600 + 0.0004  # not midnight, not a whole millisecond
    _, events = seed_scenario(seed=2, start_ts=start, days=3)
    assert events
    assert all(start <= e.ts < start + 3 * 86400 for e in events)
    assert all(round(e.ts, 3) == e.ts for e in events)


def test_written_files_are_valid(tmp_path: Path, scenario: tuple[Registry, list[Event]]) -> None:
    registry, events = scenario
    events_path, registry_path = write_scenario("seed", tmp_path / "out")
    loaded = load_registry(registry_path)
    assert dict(loaded.orgs) == dict(registry.orgs)
    assert dict(loaded.org_of_account) == dict(registry.org_of_account)
    assert dict(loaded.org_of_entity) == dict(registry.org_of_entity)
    lines = events_path.read_bytes().splitlines()
    assert [decode_event(line) for line in lines] == events


def test_unknown_scenario(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown scenario 'nope'"):
        write_scenario("nope", tmp_path)


def test_cast(scenario: tuple[Registry, list[Event]]) -> None:
    registry, events = scenario
    orgs = registry.orgs
    assert {"uni", "sci", "comms", "med", *PARTNERS} <= set(orgs)
    for child in ("sci", "comms", "med"):
        assert orgs[child].parent == "uni" and orgs[child].community == "internal"
    assert orgs["uni"].community == "internal"
    assert all(orgs[p].community == "external" for p in PARTNERS)
    accounts = Counter(registry.org_of_account.values())
    assert all(accounts[o] >= 2 for o in orgs)
    assert "sci_dr_okafor" in registry.org_of_entity
    # every account the events name is registered
    named = {e.actor for e in events} | {e.target for e in events if e.target}
    assert named <= set(registry.org_of_account)


# --- the story ----------------------------------------------------------------


def test_parent_and_comms_rarely_return_partners_do(
        scenario: tuple[Registry, list[Event]]) -> None:
    registry, events = scenario
    times = times_by_pair(engagements(registry, events))
    end = events[-1].ts
    assert len(times[("sci", "uni")]) > 150 and len(times[("sci", "comms")]) > 150
    for overlooking in ("uni", "comms"):
        assert reciprocated_share(times, "sci", overlooking, end) < 0.3
    for partner in PARTNERS:
        assert reciprocated_share(times, "sci", partner, end) > 0.7


def test_value_reciprocity_is_lower_with_parent(scenario: tuple[Registry, list[Event]]) -> None:
    registry, events = scenario
    values: Counter[tuple[str, str]] = Counter()
    for _, src, dst, kind in engagements(registry, events):
        values[(src, dst)] += WEIGHTS[kind]
    with_uni = reciprocity(values, "sci", "uni")
    with_comms = reciprocity(values, "sci", "comms")
    assert with_uni < 0.2 and with_comms < 0.2
    for partner in PARTNERS:
        assert reciprocity(values, "sci", partner) > max(with_uni, with_comms)
        assert reciprocity(values, "sci", partner) > 0.6


def test_sci_left_out_by_uni_and_comms_only(scenario: tuple[Registry, list[Event]]) -> None:
    registry, events = scenario
    omissions: Counter[tuple[str, str]] = Counter()  # (left_out, by)
    for e in events:
        if e.kind != "post":
            continue
        by = registry.org_of_account[e.actor]
        mentioned = {registry.org_of_account.get(m) for m in e.mentions}
        for left_out in {registry.org_of_entity[f] for f in e.features}:
            if left_out != by and left_out not in mentioned:
                omissions[(left_out, by)] += 1
    of_sci = {by: n for (left_out, by), n in omissions.items() if left_out == "sci"}
    assert set(of_sci) == {"uni", "comms"}
    assert sum(of_sci.values()) >= 20
    # med is featured by uni and comms too, and credited
    assert not [k for k in omissions if k[0] == "med"]
    assert any(
        registry.org_of_account[e.actor] in ("uni", "comms")
        and {registry.org_of_entity[f] for f in e.features} >= {"sci", "med"}
        for e in events if e.kind == "post"
    )


def test_techco_goes_quiet_in_the_last_week(scenario: tuple[Registry, list[Event]]) -> None:
    registry, events = scenario
    first_day = math.floor(START / 86400)
    daily = Counter(
        math.floor(ts / 86400) - first_day
        for ts, src, dst, _ in engagements(registry, events)
        if (src, dst) == ("techco", "sci")
    )
    series = [daily[d] for d in range(DAYS)]
    last_week = DAYS - 7
    baseline = sum(series[last_week - 7:last_week]) / 7
    assert baseline >= 5
    assert series[last_week] < 0.5 * baseline  # the drop alert fires that day
    assert sum(series[last_week:]) / 7 < 0.5 * baseline
    # and not before: the first two weeks are steady, weekends included
    alerts = [
        d for d in range(7, DAYS)
        if (mean := sum(series[d - 7:d]) / 7) >= 5 and series[d] < 0.5 * mean
    ]
    assert alerts[0] == last_week
