"""The simulator: deterministic, at scale, and realising what it is configured with.

The statistical checks use fixed seeds and tolerances of several standard
deviations, so they are deterministic and not flaky.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from producers.simulator import (
    Institution,
    SimulationConfig,
    Traced,
    build,
    build_institution,
    generate,
    simulate,
    simulate_events,
    write_simulation,
)
from schemas.event import Event, decode_event, encode_event
from schemas.registry import Registry, dump_registry, load_registry, parse_registry

START = 1772409600.0  # Monday 2026-03-02 00:00 UTC
DAY = 86400.0
WEEK = 7 * DAY
H = 72 * 3600.0


def check_stream(events: list[Event], start: float, end: float) -> None:
    """Ids unique, times sorted and in [start, end), every event valid contract v1."""
    assert len({e.id for e in events}) == len(events)
    assert all(a.ts <= b.ts for a, b in pairwise(events))
    assert all(start <= e.ts < end for e in events)
    for e in events[:: max(1, len(events) // 500)]:
        decoded = decode_event(encode_event(e))
        assert isinstance(decoded, Event), decoded
        assert decoded == e


def depth_of(registry: Registry, org: str) -> int:
    return sum(1 for _ in registry.ancestors(org))


# --- the older interface ------------------------------------------------------


def test_legacy_interface_is_deterministic_and_exact() -> None:
    inst = build_institution(seed=11, n_orgs=10)
    assert len(inst.registry.orgs) == 10
    assert build_institution(seed=11, n_orgs=10) == inst
    assert build_institution(seed=12, n_orgs=10) != inst
    events = list(simulate_events(inst, 3000, START, 2, 11))
    assert len(events) == 3000
    check_stream(events, START, START + 2 * DAY)
    assert events == list(simulate_events(inst, 3000, START, 2, 11))
    assert events != list(simulate_events(inst, 3000, START, 2, 12))
    assert sum(e.ts != events[0].ts for e in events) > 0
    with pytest.raises(ValueError, match="at least 3 orgs"):
        build_institution(n_orgs=2)
    # the defaults, and a hand-made institution without reciprocity (no returns)
    assert len(list(simulate_events(build_institution(), 50, START))) == 50
    bare = Institution(inst.registry, dict(inst.propensity))
    assert len(list(simulate_events(bare, 500, START, 1, 3))) == 500


# --- the config -----------------------------------------------------------------


def test_config_defaults_and_validation() -> None:
    config = SimulationConfig()
    assert (config.n_orgs, config.n_roots, config.max_depth, config.days) == (60, 3, 3, 7.0)
    assert config.expected_events == config.n_events == 100_000
    assert sum(config.level_counts()) + config.n_external == config.n_orgs
    assert SimulationConfig(rate=2.0, days=1).expected_events == pytest.approx(172_800)
    # the delay's CDF: mostly within hours, the late share beyond 72 h
    assert config.returned_within(0.5) == 0
    assert config.returned_within(config.return_delay_median_s) == pytest.approx(0.45)
    assert 0.88 < config.returned_within(H) < 0.9
    assert config.returned_within(config.late_return_max_s) == pytest.approx(1.0, abs=1e-3)
    for bad in ({"n_roots": 0}, {"days": 0}, {"rate": -1.0}, {"omission_probability": 1.5},
                {"reciprocity_levels": (0.5, 2.0)}, {"n_orgs": 5, "n_roots": 5},
                {"kind_weights": (("poke", 1.0),)}, {"return_kind_weights": (("post", 1.0),)},
                {"weekly_amplitude": 1.0}, {"late_return_min_s": 10.0, "late_return_max_s": 5.0}):
        with pytest.raises(ValueError, match="invalid simulation config"):
            SimulationConfig(**bad)  # type: ignore[arg-type]


def test_small_and_flat_institutions() -> None:
    for config in (SimulationConfig(n_orgs=3, n_roots=1, external_share=0.34, n_events=200),
                   SimulationConfig(n_orgs=8, max_depth=0, n_events=200),
                   SimulationConfig(n_orgs=8, n_roots=1, max_depth=6, n_events=200)):
        registry, events = simulate(config)
        depths = Counter(depth_of(registry, o) for o in registry.orgs
                         if registry.orgs[o].community == "internal")
        assert [depths[d] for d in range(len(depths))] == [
            c for c in config.level_counts() if c]
        assert len(list(events)) == 200


# --- the institution at scale -------------------------------------------------------


def test_hierarchy_and_counts_at_1000_orgs_and_10000_accounts() -> None:
    config = SimulationConfig(seed=3, n_orgs=1000, accounts_per_org=10, entities_per_org=4)
    started = time.perf_counter()
    inst = build(config)
    assert time.perf_counter() - started < 2.0
    registry = inst.registry
    assert len(registry.orgs) == 1000
    assert len(registry.org_of_account) == 10_000
    assert len(registry.org_of_entity) == 4000
    assert Counter(registry.org_of_account.values()) == {o: 10 for o in registry.orgs}

    internal = [o for o in registry.orgs.values() if o.community == "internal"]
    external = [o for o in registry.orgs.values() if o.community == "external"]
    assert len(internal) + len(external) == 1000  # every community set
    assert len(external) == config.n_external == 200
    assert all(o.parent is None for o in external)
    assert sum(o.parent is None for o in internal) == config.n_roots == 3
    depths = Counter(depth_of(registry, o.id) for o in internal)
    assert max(depths) == config.max_depth == 3
    assert [depths[d] for d in range(4)] == config.level_counts() == [3, 133, 398, 266]
    # roots, faculties and departments each head their part of the hierarchy
    children = Counter(o.parent for o in registry.orgs.values() if o.parent)
    assert all(children[o.id] >= 1 for o in internal if depth_of(registry, o.id) < 2)
    assert sum(children[o.id] >= 1 for o in internal if depth_of(registry, o.id) == 2) == 266
    assert all(registry.orgs[o.parent].community == "internal"
               for o in internal if o.parent is not None)

    # sparse propensities: each org engages a bounded number of partners
    out_degree = Counter(src for src, _ in inst.propensity)
    assert set(out_degree) == set(registry.orgs)
    assert max(out_degree.values()) == config.partners_per_org
    assert all(w > 0 for w in inst.propensity.values())
    assert all(s in registry.orgs and d in registry.orgs and s != d for s, d in inst.propensity)
    parents = sum((o.id, o.parent) in inst.propensity for o in internal if o.parent)
    assert parents == 1000 - 200 - 3  # every child engages its parent
    assert len(inst.reciprocity) < 20 * len(registry.orgs)
    assert all(0 <= p <= 1 for p in inst.reciprocity.values())
    assert all((dst, src) in inst.reciprocity for src, dst in inst.propensity)

    # the registry survives the YAML round trip
    assert parse_registry(yaml.safe_load(dump_registry(registry))) == registry
    assert build(config) == inst


# --- determinism and well-formedness ------------------------------------------------------


def test_simulate_is_deterministic_sorted_unique_and_in_range() -> None:
    config = SimulationConfig(seed=21, n_orgs=40, n_events=20_000, days=5,
                              start_ts=START + 3 * 3600 + 0.25, bursts_per_day=2)
    registry, events = simulate(config)
    first = list(events)
    assert len(first) == 20_000
    check_stream(first, config.start_ts, config.end_ts)
    registry2, events2 = simulate(config)
    assert registry2 == registry
    assert list(events2) == first
    _, other = simulate(SimulationConfig(seed=22, n_orgs=40, n_events=20_000, days=5))
    assert list(other) != first
    # the rate mode too
    rated = SimulationConfig(seed=21, n_orgs=40, rate=0.05, days=5)
    once = list(simulate(rated)[1])
    assert once == list(simulate(rated)[1])
    check_stream(once, rated.start_ts, rated.end_ts)
    # every actor and target is a registered account, except the strangers
    known = registry.org_of_account
    assert all(e.actor in known for e in first)
    strangers = {e.target for e in first if e.target is not None and e.target not in known}
    assert strangers and all(t.startswith("stranger") for t in strangers)


def test_generation_is_lazy() -> None:
    config = SimulationConfig(seed=1, n_orgs=50, n_events=10**9, days=3650)
    started = time.perf_counter()
    stream = generate(build(config), config)
    head = [next(stream) for _ in range(1000)]
    assert time.perf_counter() - started < 5
    assert all(isinstance(t, Traced) for t in head)


# --- the rate --------------------------------------------------------------------------


def test_rate_matches_the_target_over_whole_weeks() -> None:
    config = SimulationConfig(seed=4, n_orgs=60, rate=0.1, days=14, bursts_per_day=0)
    _, stream = simulate(config)
    times = [e.ts for e in stream]
    expected_week = config.rate * WEEK  # type: ignore[operator]
    for week in range(2):
        got = sum(START + week * WEEK <= t < START + (week + 1) * WEEK for t in times)
        assert got == pytest.approx(expected_week, rel=0.02)
    assert len(times) == pytest.approx(config.expected_events, rel=0.015)

    # the daily cycle: each hour's share of a day as configured
    a, peak = config.diurnal_amplitude, config.peak_hour
    omega = 2 * math.pi / 24
    by_hour = Counter(int((t - START) % DAY // 3600) for t in times)
    for hour in range(24):
        mean_cos = (math.sin(omega * (hour + 1 - peak)) - math.sin(omega * (hour - peak))) / omega
        want = (1 + a * mean_cos) / 24
        assert by_hour[hour] / len(times) == pytest.approx(want, rel=0.08), hour
    assert by_hour[13] > 3 * by_hour[1]

    # the weekly cycle: weekends (days 5, 6, 12, 13) quieter by the configured amount
    by_day = Counter(int((t - START) // DAY) for t in times)
    weekend = statistics.mean(by_day[d] for d in (5, 6, 12, 13))
    weekday = statistics.mean(by_day[d] for d in range(14) if d % 7 < 5)
    w = config.weekly_amplitude
    assert weekend / weekday == pytest.approx((1 - w) / (1 + 2 * w / 5), abs=0.03)


def test_bursts_exist_and_the_mean_rate_still_matches() -> None:
    config = SimulationConfig(seed=8, n_orgs=60, rate=0.1, days=14, bursts_per_day=0.5,
                              diurnal_amplitude=0.3)
    _, stream = simulate(config)
    events = list(stream)
    assert len(events) == pytest.approx(config.expected_events, rel=0.03)
    bins: dict[int, list[Event]] = defaultdict(list)
    for e in events:
        bins[int((e.ts - START) // 600)].append(e)
    typical = statistics.median(len(b) for b in bins.values())
    hot = [b for b in bins.values() if len(b) > 4 * typical]
    assert len(hot) >= 6  # several bursts of three 10-minute bins each
    for b in hot:
        # a viral post: most of the burst engages one post of one account
        (subject, n), = Counter(e.subject for e in b).most_common(1)
        assert subject is not None and subject.startswith("viral") and n > len(b) / 2
        assert len({e.target for e in b if e.subject == subject}) == 1
    assert len({e.subject for e in events if (e.subject or "").startswith("viral")}) >= 3


# --- returns and omissions -------------------------------------------------------------


@pytest.fixture(scope="module")
def traced() -> tuple[SimulationConfig, Institution, list[Traced]]:
    config = SimulationConfig(seed=5, n_orgs=120, accounts_per_org=4, days=14,
                              n_events=200_000)
    inst = build(config)
    return config, inst, list(generate(inst, config))


def test_returns_realise_the_reciprocity_propensity(
    traced: tuple[SimulationConfig, Institution, list[Traced]],
) -> None:
    config, inst, records = traced
    ts = {r.event.id: r.event.ts for r in records}
    delays: dict[str, list[float]] = defaultdict(list)
    for r in records:
        if r.returns is not None:
            assert r.event.ts > ts[r.returns]
            delays[r.returns].append(r.event.ts - ts[r.returns])
            assert r.depth >= 1
    assert all(len(d) == 1 for d in delays.values())  # returned at most once

    # per class of pair (its configured reciprocity propensity p): the share of
    # its engagements returned within 72 h is p times the delay's CDF at 72 h
    within = config.returned_within(H)
    classes: dict[float, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        if r.dst is None or r.src is None or r.depth >= config.max_return_depth:
            continue
        if r.event.ts > config.end_ts - H - 3600:
            continue  # its 72 h are not all in the run
        p = inst.reciprocity.get((r.dst, r.src), 0.0)
        counts = classes[p]
        counts[0] += 1
        counts[1] += any(d <= H for d in delays.get(r.event.id, ()))
    assert classes[0.0][0] > 1000 and classes[0.0][1] == 0
    checked = 0
    for p, (n, returned) in sorted(classes.items()):
        if p == 0 or n < 1000:
            continue
        want = p * within
        sd = math.sqrt(want * (1 - want) / n)
        assert returned / n == pytest.approx(want, abs=4 * sd + 0.005), (p, n)
        checked += 1
    assert checked >= 6  # 0.1, 0.3, 0.6, 0.9 and some parents' reduced ones

    # a share of returns comes after the horizon, as configured
    early = {r.event.id for r in records if r.event.ts < config.end_ts - config.late_return_max_s}
    early_delays = [d for i in early for d in delays.get(i, ())]
    late = sum(d > H for d in early_delays) / len(early_delays)
    assert late == pytest.approx(1 - within, abs=0.02)
    assert statistics.median(early_delays) < 3 * 3600

    # returns go back to the account that engaged, from the engaged org
    by_id = {r.event.id: r for r in records}
    for r in records[:20_000]:
        if r.returns is not None:
            original = by_id[r.returns]
            assert r.event.target == original.event.actor
            assert r.src == original.dst and r.dst == original.src


def test_parents_leave_their_descendants_out_as_configured(
    traced: tuple[SimulationConfig, Institution, list[Traced]],
) -> None:
    config, inst, records = traced
    registry = inst.registry
    org = registry.org_of_account
    posts = {True: [0, 0], False: [0, 0]}
    for r in records:
        e = r.event
        if e.kind != "post" or not e.features:
            continue
        featured = registry.org_of_entity[e.features[0]]
        assert all(registry.org_of_entity[f] == featured for f in e.features)
        by_ancestor = org[e.actor] in set(registry.ancestors(featured))
        counts = posts[by_ancestor]
        counts[0] += 1
        counts[1] += not any(org.get(m) == featured for m in e.mentions)
    for by_ancestor, want in ((True, config.omission_probability),
                              (False, config.partner_omission_probability)):
        n, omitted = posts[by_ancestor]
        assert n > 1000
        sd = math.sqrt(want * (1 - want) / n)
        assert omitted / n == pytest.approx(want, abs=4 * sd + 0.005), by_ancestor


# --- speed and files ---------------------------------------------------------------------


def test_generation_rate_at_1000_orgs(capsys: pytest.CaptureFixture[str]) -> None:
    config = SimulationConfig(seed=9, n_orgs=1000, accounts_per_org=10, n_events=200_000,
                              days=14)
    started = time.perf_counter()
    registry, events = simulate(config)
    n = sum(1 for _ in events)
    elapsed = time.perf_counter() - started
    assert n == 200_000 and len(registry.org_of_account) == 10_000
    with capsys.disabled():
        print(f"\nsimulator: built 1000 orgs / 10000 accounts and generated {n} events in "
              f"{elapsed:.2f} s ({n / elapsed:,.0f} events/s)")
    assert elapsed < 20


def test_write_simulation(tmp_path: Path) -> None:
    config = SimulationConfig(seed=2, n_orgs=20, n_events=25_000, days=3)
    events_path, registry_path = write_simulation(config, tmp_path / "out")
    assert (events_path.name, registry_path.name) == ("events.jsonl", "registry.yaml")
    registry, events = simulate(config)
    assert load_registry(registry_path) == registry
    lines = events_path.read_bytes().splitlines()
    assert lines == [encode_event(e) for e in events]
    assert len(lines) == 25_000
