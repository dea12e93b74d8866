"""Where sources put what they produce: the small contract every source uses.

A source maps its records to contract-v1 events and hands them to an
:class:`EventOutput`; a record it cannot map goes to :meth:`dead_letter` with
the original bytes and a reason, never silently away. Counters of produced,
skipped and failed records are kept here, printed at the end and logged while
running.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Protocol

from schemas.event import Event, encode_event

log = logging.getLogger(__name__)


@dataclass
class SourceCounts:
    """What a source did. ``produced`` events, ``skipped`` records on purpose
    (not for us: filtered out, duplicates, ignored kinds), ``dead_lettered``
    records that could not be mapped."""

    produced: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"produced": self.produced, "skipped": self.skipped,
                "dead_lettered": self.dead_lettered, "reasons": dict(self.reasons)}


class EventOutput(Protocol):
    counts: SourceCounts

    def send(self, event: Event) -> None:
        """Queue one event (non-blocking; delivery errors surface at flush)."""

    def skip(self, reason: str) -> None:
        """Count a record deliberately not produced."""

    def dead_letter(self, raw: bytes, reason: str, source: str, detail: str = "") -> None:
        """Keep a record that could not be mapped, with why (``reason`` a short
        code, ``detail`` the specifics) and where from."""

    def flush(self) -> None:
        """Wait for delivery of everything queued; raise if anything was lost."""


class ListOutput:
    """An in-memory output for tests and dry runs (thread-safe)."""

    def __init__(self) -> None:
        self.counts = SourceCounts()
        self.events: list[Event] = []
        self.dead: list[tuple[bytes, str, str]] = []
        self._lock = threading.Lock()

    def send(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)
            self.counts.produced += 1

    def skip(self, reason: str) -> None:
        with self._lock:
            self.counts.skipped += 1
            self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def dead_letter(self, raw: bytes, reason: str, source: str, detail: str = "") -> None:
        with self._lock:
            self.dead.append((raw, reason, source))
            self.counts.dead_lettered += 1
            self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def flush(self) -> None:
        return None


class KafkaOutput:
    """Events to the input topic (keyed by event id), unmappable records to a
    dead-letter topic with ``source.reason`` / ``source.name`` headers."""

    def __init__(self, bootstrap: list[str], topic: str, dlq_topic: str,
                 **client_options: object) -> None:
        """``client_options`` are kafka-python security options (SASL/SSL)."""
        from producers.kafka_writer import KafkaEventWriter

        self.counts = SourceCounts()
        self._events = KafkaEventWriter(bootstrap, topic, **client_options)
        self._dead = KafkaEventWriter(bootstrap, dlq_topic, **client_options)
        self._lock = threading.Lock()

    def send(self, event: Event) -> None:
        self.send_raw(encode_event(event), event.id.encode())

    def send_raw(self, value: bytes, key: bytes | None = None) -> None:
        """A message value as is (file replay: the pipeline validates it);
        ``key`` defaults to the event id found in the value."""
        self._events.send(value, key=key)
        with self._lock:
            self.counts.produced += 1

    def skip(self, reason: str) -> None:
        with self._lock:
            self.counts.skipped += 1
            self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def dead_letter(self, raw: bytes, reason: str, source: str, detail: str = "") -> None:
        self._dead.send(raw, key=None, headers=[("source.reason", reason.encode()),
                                                ("source.name", source.encode()),
                                                ("source.error", detail.encode())])
        with self._lock:
            self.counts.dead_lettered += 1
            self.counts.reasons[reason] = self.counts.reasons.get(reason, 0) + 1

    def flush(self) -> None:
        """Raises :class:`producers.kafka_writer.DeliveryError` if anything was lost."""
        self._events.flush()
        self._dead.flush()

    def delivery(self) -> tuple[int, int]:
        """(delivered, failed) records so far, events and dead letters together."""
        events, dead = self._events.counts, self._dead.counts
        return events.produced + dead.produced, events.failed + dead.failed

    def close(self) -> None:
        self._events.close()
        self._dead.close()
