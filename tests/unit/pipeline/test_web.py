"""The web endpoints' pure parts: the token check and the metrics text."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest

from pipeline.app import PipelineStats
from pipeline.settings import Settings
from pipeline.web import PipelineCollector, authorized


def test_token_check() -> None:
    assert authorized("", None)  # no token configured: open
    assert authorized("s3", "Bearer s3")
    assert not authorized("s3", None)
    assert not authorized("s3", "Bearer s4")
    assert not authorized("s3", "s3")


class _Stage:
    def watermark(self, partition: int) -> float | None:
        return 1772445600.0 if partition == 0 else None

    def live_windows(self) -> int:
        return 1234


def test_metrics_from_live_counters() -> None:
    stats = PipelineStats()
    stats.counts.valid, stats.counts.late, stats.alerts = 10, 2, 3
    stats.flushed[("t", 0)] = 41

    class Consumer:
        def highwater(self, tp: Any) -> int:
            return 50

    pipeline: Any = SimpleNamespace(
        stats=stats, settings=Settings(partitions=2), pair_stage=_Stage(),
        sink=SimpleNamespace(batches=4, failures=1, write_seconds=0.5),
        app=SimpleNamespace(consumer=Consumer()),
    )
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline))
    text = generate_latest(registry).decode()
    assert 'reciprocity_events_total{outcome="valid"} 10.0' in text
    assert 'reciprocity_events_total{outcome="late"} 2.0' in text
    assert "reciprocity_alerts_total 3.0" in text
    assert "reciprocity_sink_failures_total 1.0" in text
    assert 'reciprocity_consumer_lag{partition="0",topic="t"} 8.0' in text
    assert 'reciprocity_watermark_seconds{partition="0"} 1.7724456e+09' in text
    assert "reciprocity_live_windows 1234.0" in text
    assert "reciprocity_up 1.0" in text
    stats.fatal = RuntimeError("x")
    assert "reciprocity_up 0.0" in generate_latest(registry).decode()
