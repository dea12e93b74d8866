"""The worker's HTTP endpoints on Faust's web server: ``/health``, ``/metrics``
and the live page (``/`` and ``/api/live``, see :mod:`pipeline.live`).

- ``GET /health``: 200 ``{"status": "ok", ...}`` while the worker runs, 503
  once it has stopped on an error (it then exits; a supervisor restarts it).
  Never needs a token: it tells nothing about the data.
- ``GET /metrics``: Prometheus text format, computed from the live counters at
  scrape time. When ``RECIPROCITY_WEB_TOKEN`` is set it requires
  ``Authorization: Bearer <token>``.
- ``GET /``: the live page, an HTML shell without data (never needs a token;
  with one, open it as ``/#token=<token>``).
- ``GET /api/live``: the live page's data (JSON) read from the store; same
  token rule as ``/metrics``.

The web server is off unless ``RECIPROCITY_WEB_ENABLED`` and binds to
``RECIPROCITY_WEB_HOST`` (loopback by default); expose it only with a token.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pipeline import live

if TYPE_CHECKING:
    from pipeline.app import Pipeline

CONTENT_TYPE = "text/plain; version=0.0.4"  # aiohttp refuses a charset here


def authorized(token: str, header: str | None) -> bool:
    """Whether an Authorization header carries the token (constant time)."""
    if not token:
        return True
    expected = f"Bearer {token}".encode()
    return header is not None and hmac.compare_digest(header.encode(), expected)


class PipelineCollector(Collector):
    """Prometheus metrics read from a pipeline's live counters."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline

    def collect(self) -> Iterator[Metric]:
        pipeline = self.pipeline
        stats, counts = pipeline.stats, pipeline.stats.counts
        events = CounterMetricFamily("reciprocity_events", "Input events by outcome",
                                     labels=["outcome"])
        for outcome, value in (("valid", counts.valid), ("duplicate", counts.duplicates),
                               ("dead_lettered", counts.dead_lettered), ("late", counts.late),
                               ("replayed", counts.replayed)):
            events.add_metric([outcome], value)
        yield events
        totals: tuple[tuple[str, str, float], ...] = (
            ("reciprocity_messages", "Input Kafka messages processed", counts.messages),
            ("reciprocity_engagements", "Engagements routed to the pair stage",
             counts.engagements),
            ("reciprocity_omissions", "Omissions found", counts.omissions),
            ("reciprocity_snubs", "Snubs decided", stats.pairs.snubs),
            ("reciprocity_drops", "Engagement drops found",
             stats.pairs.drops + stats.inbound.drops),
            ("reciprocity_alerts", "Alerts published", stats.alerts),
            ("reciprocity_batches", "Batches processed (all stages)", stats.batches),
            ("reciprocity_sink_batches", "Batches written to ClickHouse", pipeline.sink.batches),
            ("reciprocity_sink_failures", "Failed ClickHouse write attempts",
             pipeline.sink.failures),
            ("reciprocity_sink_write_seconds", "Seconds spent writing to ClickHouse",
             pipeline.sink.write_seconds),
        )
        for name, help_text, total in totals:
            yield CounterMetricFamily(name, help_text, value=total)
        yield GaugeMetricFamily("reciprocity_live_windows",
                                "(window, pair) keys the pair stage holds (every window size)",
                                value=pipeline.pair_stage.live_windows())
        yield GaugeMetricFamily("reciprocity_up", "1 while the worker runs, 0 once it failed",
                                value=0 if stats.fatal is not None else 1)
        lag = GaugeMetricFamily("reciprocity_consumer_lag",
                                "Messages behind the partition's high watermark",
                                labels=["topic", "partition"])
        consumer = _consumer(pipeline)
        if consumer is not None:
            for (topic, partition), offset in sorted(stats.flushed.items()):
                high = _highwater(consumer, topic, partition)
                if high is not None:
                    lag.add_metric([topic, str(partition)], max(0, int(high) - offset - 1))
        yield lag
        watermark = GaugeMetricFamily("reciprocity_watermark_seconds",
                                      "Closed event time of each pair-stage partition",
                                      labels=["partition"])
        for partition in range(pipeline.settings.partitions):
            closed = pipeline.pair_stage.watermark(partition)
            if closed is not None:
                watermark.add_metric([str(partition)], closed)
        yield watermark


def _consumer(pipeline: Pipeline) -> Any:
    try:
        return pipeline.app.consumer
    except Exception:  # not started yet: no lag samples
        return None


def _highwater(consumer: Any, topic: str, partition: int) -> int | None:
    from faust.types import TP

    try:
        high = consumer.highwater(TP(topic, partition))
    except Exception:  # a partition no longer assigned: no sample
        return None
    return None if high is None else int(high)


def install(pipeline: Pipeline) -> CollectorRegistry:
    """Register ``/health``, ``/metrics``, ``/`` and ``/api/live`` on the
    pipeline's Faust app."""
    app = pipeline.app
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline))
    token = pipeline.settings.web_token.get_secret_value()

    @app.page("/health")
    async def health(web: Any, request: Any) -> Any:
        fatal = pipeline.stats.fatal
        body = {"status": "ok" if fatal is None else "failed",
                "batches": pipeline.stats.batches,
                "error": None if fatal is None else type(fatal).__name__}
        return web.json(body, status=200 if fatal is None else 503)

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        if not authorized(token, request.headers.get("Authorization")):
            return web.json({"error": "unauthorized"}, status=401,
                            headers={"WWW-Authenticate": "Bearer"})
        return web.bytes(generate_latest(registry), content_type=CONTENT_TYPE)

    page, page_headers = live.render_page()
    live_data = live.LiveData(pipeline.sink, max(pipeline.settings.windows))

    @app.page("/")
    async def live_page(web: Any, request: Any) -> Any:
        return web.html(page, headers=dict(page_headers))

    @app.page("/api/live")
    async def live_api(web: Any, request: Any) -> Any:
        if not authorized(token, request.headers.get("Authorization")):
            return web.json({"error": "unauthorized"}, status=401,
                            headers={"WWW-Authenticate": "Bearer"})
        return web.json(await live_data.get(), headers={"Cache-Control": "no-store"})

    return registry
