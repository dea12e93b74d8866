"""``reciprocity bench`` at a smoke size: every variant runs and reports, the
pipeline's results equal the bench's reference. Never asserts a time."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.e2e

RATES = ("ceiling_eps", "baseline_eps", "peer_eps", "pipeline_eps", "pipeline_single_eps")
LATENCIES = ("latency_p50_s", "latency_p99_s")


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_bench_smoke(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "bench", "--events", "2000",
         "--latency-seconds", "3", "--rate", "500", "--format", "json", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, "--format json prints exactly one line"
    doc = orjson.loads(lines[0])

    assert doc["events"] == 2000
    assert doc["exact"] is True
    assert doc["exact_packed"] is True and doc["exact_single"] is True
    assert doc["ceiling_exact"] is True
    for key in ("ceiling_eps", "baseline_eps", "pipeline_eps", "pipeline_single_eps"):
        assert _number(doc[key]) and doc[key] > 0, key
    try:
        import quixstreams  # noqa: F401
    except ImportError:
        assert doc["peer_eps"] is None
        assert "not installed" in doc["variants"]["peer"]["note"]
    else:
        assert _number(doc["peer_eps"]) and doc["peer_eps"] > 0
    for key in LATENCIES:  # null only when the pipeline lacks the on_written hook
        assert doc[key] is None or (_number(doc[key]) and doc[key] >= 0), key
    assert doc["latency_p50_s"] is None or doc["latency_p50_s"] <= doc["latency_p99_s"]
    assert isinstance(doc["rss_bytes"], int) and doc["rss_bytes"] > 0
    for key in ("pipeline_vs_ceiling", "pipeline_vs_peer", "pipeline_vs_baseline"):
        assert key in doc and (doc[key] is None or _number(doc[key]))

    # every variant ran on the whole topic (2,000 events fit in any time box)
    for name in ("ceiling", "baseline", "pipeline_packed", "pipeline_single"):
        variant = doc["variants"][name]
        assert variant["events"] == 2000, (name, variant["note"])
        assert variant["boxed"] is False
        assert variant["rss_bytes"] > 0
    for name in ("ceiling", "baseline", "pipeline_packed", "pipeline_single", "latency"):
        variant = doc["variants"][name]  # the broker's share of the machine
        for key in ("broker_cpu_s", "broker_cores"):
            assert _number(variant[key]) and variant[key] >= 0, (name, key, variant[key])
    counts = doc["variants"]["pipeline_packed"]["pipeline_counts"]
    assert counts["messages"] == -(-2000 // doc["pack"])  # packed: ceil(2000 / pack) messages
    assert counts["engagements"] == doc["engagements"]
    for name in ("pipeline_packed", "pipeline_single"):
        variant = doc["variants"][name]  # the store holds exactly the reference's windows
        assert variant["pair_rows"] == doc["reference_rows"], name
        assert variant["pair_row_versions"] >= variant["pair_rows"], name
        assert 0 < variant["live_windows_peak"] <= variant["pair_rows"], name
    assert doc["live_window_pair_keys"] == max(
        doc["variants"][name]["live_windows_peak"] for name in ("pipeline_packed",
                                                                "pipeline_single"))
    latency = doc["variants"]["latency"]
    if latency.get("latency_max_s") is not None:  # a stall shows in the timeline
        assert max(latency["latency_max_by_10s"]) == pytest.approx(latency["latency_max_s"],
                                                                   abs=0.001)

    saved = orjson.loads((tmp_path / "bench.json").read_bytes())
    assert saved["exact"] is True and saved["events"] == 2000
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
