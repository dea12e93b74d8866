"""Read a store back in the reference's shapes (tests/reference_analytics.py).

Deliberately plain SQL (argMax per key) rather than the report module, so a
bug in the reports cannot hide a bug in the pipeline or the other way round;
the e2e tests check the reports separately.
"""

from __future__ import annotations

import math
from typing import Any

from pipeline.sinks import Backend
from tests.reference_analytics import KINDS, Result, fmt

_KIND_COLUMNS = ("follows", "likes", "shares", "replies", "mentions", "thanks")


def store_pairs(backend: Backend) -> dict[tuple[str, str, str, str], dict[str, Any]]:
    cols = (*_KIND_COLUMNS, "value", "reciprocated", "snubbed", "median_reciprocate_s")
    inner = ", ".join(f"argMax({c}, version)" for c in cols)
    rows = backend.query(
        f"SELECT window, toUInt32(window_start), src, dst, {inner} "
        f"FROM {backend.database}.pair_windows GROUP BY window, window_start, src, dst, "
        "stream, partition"
    )
    out: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for window, start, src, dst, *figures in rows:
        key = (window, fmt(int(start)), src, dst)
        assert key not in out, f"pair window {key} in two partitions or streams"
        counts = [int(c) for c in figures[:6]]
        median = figures[9]
        out[key] = {
            **dict(zip(KINDS, counts, strict=True)), "engagements": sum(counts),
            "value": float(figures[6]), "reciprocated": int(figures[7]),
            "snubbed": int(figures[8]),
            "median_reciprocate_s": None if median is None else float(median),
        }
    return out


def store_snubs(backend: Backend) -> set[tuple[str, ...]]:
    return {
        (i, s, d, k, fmt(float(t)), fmt(float(st)))
        for i, s, d, k, t, st in backend.query(
            f"SELECT id, src, dst, kind, ts, snub_ts FROM {backend.database}.snubs"
        )
    }


def store_omissions(backend: Backend) -> set[tuple[Any, ...]]:
    return {
        (p, lo, b, tuple(e), fmt(float(t)))
        for p, lo, b, e, t in backend.query(
            f"SELECT post_id, left_out, by_org, entities, ts FROM {backend.database}.omissions"
        )
    }


def store_alerts(backend: Backend) -> set[tuple[str, ...]]:
    return {
        (i, k, o, other, fmt(float(t)))
        for i, k, o, other, t in backend.query(
            f"SELECT id, kind, org, other, ts FROM {backend.database}.alerts"
        )
    }


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)


def assert_pairs_equal(got: dict[Any, dict[str, Any]], want: dict[Any, dict[str, Any]]) -> None:
    assert set(got) == set(want), (
        f"pair windows: {len(set(got) - set(want))} unexpected, "
        f"{len(set(want) - set(got))} missing, e.g. "
        f"{sorted(set(got) ^ set(want))[:3]}"
    )
    for key, figures in want.items():
        mine = got[key]
        for name, value in figures.items():
            if isinstance(value, float) or value is None:
                assert close(mine[name], value), f"{key} {name}: {mine[name]} != {value}"
            else:
                assert mine[name] == value, f"{key} {name}: {mine[name]} != {value}"


def assert_store_matches(backend: Backend, expected: Result) -> None:
    """Every figure in the store equals the reference's."""
    assert_pairs_equal(store_pairs(backend), expected.pairs)
    assert store_snubs(backend) == expected.snubs
    assert store_omissions(backend) == expected.omissions
    assert store_alerts(backend) == expected.alerts


def assert_rollups_match(backend: Backend, expected: Result) -> None:
    """``report orgs`` per window size equals the reference's rollups."""
    from pipeline.report import org_rows

    for label in sorted({key[0] for key in expected.rollups}):
        got = {(label, r["org"], r["community"]): r for r in org_rows(backend, label)}
        want = {k: v for k, v in expected.rollups.items() if k[0] == label}
        assert set(got) == set(want), sorted(set(got) ^ set(want))[:5]
        for key, figures in want.items():
            for name, value in figures.items():
                mine = got[key][name]
                assert close(float(mine), float(value)), f"{key} {name}: {mine} != {value}"
