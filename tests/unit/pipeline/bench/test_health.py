"""The bench's watch on a pipeline worker that can no longer finish."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pipeline.bench import pipeline_run
from pipeline.bench.pipeline_run import _Health, quantile


def fake_pipeline(crashed: bool = False, batches: int = 0) -> SimpleNamespace:
    buffer = SimpleNamespace(crashed=crashed, crash_reason=RuntimeError("too large"))
    return SimpleNamespace(app=SimpleNamespace(producer=SimpleNamespace(buffer=buffer)),
                           stats=SimpleNamespace(batches=batches))


def test_a_crashed_producer_buffer_fails_at_once() -> None:
    health = _Health()
    assert health.failed(fake_pipeline(crashed=True))
    assert health.failure is not None and "too large" in health.failure


def test_no_batch_for_the_stall_time_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(pipeline_run.time, "monotonic", lambda: clock[0])
    health = _Health()
    assert not health.failed(fake_pipeline(batches=0))
    clock[0] += 10 * pipeline_run.STALL_S
    assert not health.failed(fake_pipeline(batches=0)), "waiting for the first batch"
    assert not health.failed(fake_pipeline(batches=3))
    clock[0] += pipeline_run.STALL_S / 2
    assert not health.failed(fake_pipeline(batches=3))
    clock[0] += pipeline_run.STALL_S
    assert health.failed(fake_pipeline(batches=3))
    assert health.failure is not None and "stalled" in health.failure


def test_quantile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert quantile(values, 0.5) == 50.0
    assert quantile(values, 0.99) == 99.0
    assert quantile([3.0], 0.99) == 3.0
    assert quantile([], 0.5) is None
