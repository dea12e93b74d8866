"""Writing contract-v1 messages to Kafka with kafka-python.

Every message is keyed by its event id, so copies of one event always land on
the same partition (that is what lets the pipeline recognise duplicates).
Values are passed through untouched: a malformed line is produced as is and
the pipeline dead-letters it with a reason. Delivery errors are collected and
raised from :meth:`KafkaEventWriter.flush`, never swallowed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import orjson

log = logging.getLogger(__name__)


class DeliveryError(RuntimeError):
    """Some records could not be delivered to Kafka."""


def event_key(value: bytes) -> bytes | None:
    """The Kafka key of a message value: its event id, or None when it has none."""
    try:
        doc = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if isinstance(doc, dict) and isinstance(doc.get("id"), str):
        return doc["id"].encode()
    return None


@dataclass
class ProduceCounts:
    produced: int = 0
    failed: int = 0
    skipped: int = 0
    #: highest delivered offset per partition
    last_offsets: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class KafkaEventWriter:
    """A batching, compressing producer for one topic. Thread-safe counters."""

    def __init__(self, bootstrap: list[str], topic: str, **producer_options: Any) -> None:
        from kafka import KafkaProducer

        options: dict[str, Any] = {
            "acks": "all",
            "compression_type": "gzip",
            "linger_ms": 50,
            "batch_size": 512 * 1024,
            "max_request_size": 8 * 1024 * 1024,
            "retries": 5,
        }
        options.update(producer_options)
        self.topic = topic
        self.counts = ProduceCounts()
        self._lock = threading.Lock()
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap, client_id="reciprocity-producer", **options
        )

    def send(self, value: bytes, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None) -> None:
        """Queue one message; ``key`` defaults to the event id found in ``value``."""
        if key is None:
            key = event_key(value)
        future = self._producer.send(self.topic, value=value, key=key, headers=headers)
        future.add_callback(self._delivered)
        future.add_errback(self._failed)

    def _delivered(self, metadata: Any) -> None:
        with self._lock:
            self.counts.produced += 1
            last = self.counts.last_offsets
            if metadata.offset > last.get(metadata.partition, -1):
                last[metadata.partition] = metadata.offset

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.counts.failed += 1
            if len(self.counts.errors) < 10:
                self.counts.errors.append(repr(exc))
        log.error("delivery to %s failed: %r", self.topic, exc)

    def flush(self, timeout_s: float | None = 60) -> ProduceCounts:
        """Wait for every queued message; raise :class:`DeliveryError` if any failed."""
        self._producer.flush(timeout=timeout_s)
        if self.counts.failed:
            raise DeliveryError(
                f"{self.counts.failed} record(s) not delivered to {self.topic}: "
                + "; ".join(self.counts.errors)
            )
        return self.counts

    def close(self, timeout_s: float = 10) -> None:
        self._producer.close(timeout=timeout_s)
