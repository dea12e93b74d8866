"""``reciprocity run --until-drained`` end to end, on both sink backends.

A generated file with malformed lines and duplicate ids goes through a real
Tansu broker, the Faust worker and a real store; every pair window the store
reports must equal a straightforward recomputation from the file, every
malformed line must be dead-lettered with its exact bytes, and every valid
event counted once.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import orjson
import pytest

from pipeline.sinks import open_backend
from tests.reference import KINDS, recompute
from tests.support.files import write_case

pytestmark = pytest.mark.e2e
WINDOWS = {"1h": 3600, "1d": 86400}


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def summary_of(stdout: str) -> dict[str, float]:
    out = {}
    for line in stdout.splitlines():
        name, _, value = line.rpartition(" ")
        if name.strip():
            out[name.strip()] = float(value)
    return out


def reported(store_args: list[str], window: str) -> dict[tuple[str, str, str, str], Counter]:
    result = cli("report", "pairs", *store_args, "--window", window, "--format", "jsonl")
    assert result.returncode == 0, result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        row = orjson.loads(line)
        assert list(row) == ["window_start", "window", "src", "dst", "engagements", *KINDS]
        assert row["engagements"] == sum(row[k] for k in KINDS)
        rows[(row["window"], row["window_start"], row["src"], row["dst"])] = Counter(
            {k: row[k] for k in KINDS if row[k]}
        )
    return rows


def check_against_reference(events: Path, registry: Path, store_args: list[str]) -> dict:
    expected = recompute(events, registry, WINDOWS)
    for label in WINDOWS:
        got = reported(store_args, label)
        want = {k: v for k, v in expected["pairs"].items() if k[0] == label}
        assert got == want, f"{label}: {len(got)} rows reported, {len(want)} expected"
    return expected


@pytest.mark.parametrize("backend", ["chdb", "server"])
def test_run_until_drained_matches_reference(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    events, registry, malformed = write_case(tmp_path)
    if backend == "chdb":
        store_args = ["--store", str(tmp_path / "store")]
    else:
        store_args = ["--clickhouse", request.getfixturevalue("clickhouse_url")]

    result = cli("run", "--registry", str(registry), "--input", str(events), *store_args,
                 "--until-drained")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)

    expected = check_against_reference(events, registry, store_args)
    assert summary["dead-lettered"] == len(malformed)
    assert summary["valid"] == expected["valid"]
    assert summary["duplicates"] == expected["duplicates"] > 0
    assert summary["events read"] == expected["valid"] + len(malformed)
    assert summary["pair rows"] == len(expected["pairs"])

    # exactly the malformed lines, byte for byte, are in the dead-letter table
    store = open_backend(store_args[1] if backend == "server" else f"chdb://{store_args[1]}")
    try:
        rows = store.query(f"SELECT hex(raw), reason FROM {store.database}.dead_letters FINAL")
    finally:
        store.close()
    assert sorted(bytes.fromhex(r[0]) for r in rows) == sorted(malformed)
    assert {r[1] for r in rows} == {"invalid_json", "invalid_event"}

    # running the same file again is idempotent
    again = cli("run", "--registry", str(registry), "--input", str(events), *store_args,
                "--until-drained")
    assert again.returncode == 0, again.stderr[-3000:]
    check_against_reference(events, registry, store_args)
