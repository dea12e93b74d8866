"""Reciprocity analytics end to end: the seed scenario through Kafka, Faust and a
real store must give exactly what the independent batch reference computes.

Also checks the reports' contract fields and that late events are
dead-lettered with reason ``late``, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from pipeline.sinks import open_backend
from producers.scenarios import write_scenario
from tests.e2e.test_run_until_drained import cli, summary_of
from tests.reference_analytics import recompute
from tests.support.compare import assert_rollups_match, assert_store_matches

pytestmark = pytest.mark.e2e


def report(kind: str, store_args: list[str], *extra: str) -> list[dict[str, object]]:
    result = cli("report", kind, *store_args, "--format", "jsonl", *extra)
    assert result.returncode == 0, result.stderr
    return [orjson.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.parametrize("backend", ["chdb", "server"])
def test_seed_scenario_equals_the_reference(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    events, registry = write_scenario("seed", tmp_path)
    url = (f"chdb://{tmp_path / 'store'}" if backend == "chdb"
           else request.getfixturevalue("clickhouse_url"))
    store_args = (["--store", str(tmp_path / "store")] if backend == "chdb"
                  else ["--clickhouse", url])
    result = cli("run", "--registry", str(registry), "--input", str(events), *store_args,
                 "--until-drained")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = recompute(events, registry)
    summary = summary_of(result.stdout)
    assert summary["snubs"] == len(expected.snubs) > 50
    assert summary["omissions"] == len(expected.omissions) > 20
    assert summary["late"] == 0

    store = open_backend(url)
    try:
        assert_store_matches(store, expected)
        assert_rollups_match(store, expected)
    finally:
        store.close()

    snubs = report("snubs", store_args)
    assert all(list(row) == ["id", "src", "dst", "kind", "ts", "snub_ts"] for row in snubs)
    assert {tuple(row.values()) for row in snubs} == expected.snubs
    omissions = report("omissions", store_args, "--left-out", "sci")
    assert all(list(row) == ["post_id", "left_out", "by", "entities", "ts"] for row in omissions)
    assert {(r["post_id"], r["left_out"], r["by"], tuple(r["entities"]), r["ts"])  # type: ignore[arg-type]
            for r in omissions} == {o for o in expected.omissions if o[1] == "sci"}
    alerts = report("alerts", store_args, "--kind", "drop_pair")
    assert {(r["org"], r["other"]) for r in alerts} == {("sci", "techco")}

    # the same file again: idempotent
    again = cli("run", "--registry", str(registry), "--input", str(events), *store_args,
                "--until-drained")
    assert again.returncode == 0, again.stderr[-3000:]
    store = open_backend(url)
    try:
        assert_store_matches(store, expected)
    finally:
        store.close()


def test_late_events_are_dead_lettered(tmp_path: Path) -> None:
    events, registry = write_scenario("seed", tmp_path)
    lines = events.read_bytes().splitlines()
    last = orjson.loads(lines[-1])
    late = dict(last, id="late-one", ts="2026-03-02T00:00:00Z")  # weeks behind
    on_time = dict(last, id="on-time")  # the same time as the newest: within the lateness
    lines += [orjson.dumps(late), orjson.dumps(on_time)]
    events.write_bytes(b"\n".join(lines) + b"\n")
    store = tmp_path / "store"
    result = cli("run", "--registry", str(registry), "--input", str(events), "--store",
                 str(store), "--until-drained")
    assert result.returncode == 0, result.stderr[-3000:]
    expected = recompute(events, registry)
    assert expected.late == ["late-one"]
    assert summary_of(result.stdout)["late"] == 1
    backend = open_backend(f"chdb://{store}")
    try:
        rows = backend.query(
            f"SELECT reason, hex(raw) FROM {backend.database}.dead_letters"
        )
        assert [(r[0], orjson.loads(bytes.fromhex(r[1]))["id"]) for r in rows] == [
            ("late", "late-one")]
        assert_store_matches(backend, expected)
    finally:
        backend.close()
