"""The bench's JSON document and table: required keys, nulls, ratios."""

from __future__ import annotations

import pytest

from pipeline.bench.data import Dataset
from pipeline.bench.phase import PhaseResult
from pipeline.bench.report import summarize, table
from pipeline.bench.run import BenchConfig

REQUIRED = ("events", "ceiling_eps", "baseline_eps", "peer_eps", "pipeline_eps",
            "pipeline_single_eps", "latency_p50_s", "latency_p99_s", "rss_bytes", "exact")
DATASET = Dataset(directory="/nowhere", events=1000, orgs=10, accounts=100, days=1.0,
                  engagements=900, window_pair_keys=500, reference_rows=700,
                  hourly_digest="x", time_ordered=True)


def result(variant: str, events: int, seconds: float, **extra: object) -> PhaseResult:
    out = PhaseResult(variant, events=events, seconds=seconds, rss_bytes=2**20, note="n")
    out.extra.update(extra)
    return out.finish()


def test_summary_has_the_contract_keys_and_ratios() -> None:
    results = {
        "ceiling": result("ceiling", 1000, 0.01, ceiling_exact=True),
        "baseline": result("baseline", 1000, 1.0),
        "peer": PhaseResult("peer", note="not installed"),
        "pipeline_packed": result("pipeline_packed", 1000, 0.1, exact=True,
                                  live_windows_peak=600),
        "pipeline_single": result("pipeline_single", 1000, 0.5, exact=True,
                                  live_windows_peak=640),
        "latency": result("latency", 0, 0.0, latency_p50_s=0.2, latency_p99_s=0.9),
    }
    doc = summarize(BenchConfig(), DATASET, results)
    for key in REQUIRED:
        assert key in doc
    assert doc["ceiling_eps"] == 100_000 and doc["pipeline_eps"] == 10_000
    assert doc["peer_eps"] is None and doc["pipeline_vs_peer"] is None
    assert doc["pipeline_vs_ceiling"] == pytest.approx(0.1)
    assert doc["pipeline_vs_baseline"] == pytest.approx(10)
    assert doc["exact"] is True and doc["rss_bytes"] == 2**20
    assert (doc["latency_p50_s"], doc["latency_p99_s"]) == (0.2, 0.9)
    assert doc["live_window_pair_keys"] == 640  # the larger run's peak
    text = table(doc)
    assert "not installed" in text and "pipeline/ceiling" in text and "p99 0.900 s" in text
    assert "at most 640 live (window, pair) keys held" in text


def test_a_differing_or_failed_pipeline_is_not_exact() -> None:
    results = {
        "pipeline_packed": result("pipeline_packed", 1000, 0.1, exact=True),
        "pipeline_single": PhaseResult("pipeline_single", note="FAILED: exit code 1"),
    }
    doc = summarize(BenchConfig(), DATASET, results)
    assert doc["exact"] is False and doc["pipeline_single_eps"] is None
    assert doc["ceiling_eps"] is None and doc["latency_p99_s"] is None
    assert "not run" in table(doc)


def test_nothing_of_the_pipeline_run_means_exact_is_null() -> None:
    doc = summarize(BenchConfig(only=("ceiling",)), DATASET,
                    {"ceiling": result("ceiling", 1000, 0.01)})
    assert doc["exact"] is None and doc["rss_bytes"] is None
    assert doc["live_window_pair_keys"] is None


@pytest.mark.parametrize("options", [
    {"events": 0}, {"orgs": 1}, {"accounts": 5, "orgs": 10}, {"pack": 0},
    {"only": ("nope",)}, {"windows": (("1d", 86400),)}, {"rate": 0},
])
def test_bad_options_are_refused(options: dict) -> None:
    with pytest.raises(ValueError):
        BenchConfig(**options)
