"""The bench's data: the generated topic, its registry and reference, and producing it.

:func:`generate` writes, into one directory, the simulated institution's
``registry.yaml``, its events as contract-v1 JSON lines (``events.jsonl``, in
event-time order), their times in milliseconds (``timestamps.bin``, so
producing needs no second decode) and the reference pair-window counts
(``reference.json``, :mod:`pipeline.bench.reference`), plus a manifest
(``dataset.json``) the phase processes read.

:func:`produce_topic` writes those events to a fresh topic, one event per
message (keyed by event id, as our producers do) or packed (a JSON array of
``pack`` events per message, keyed by its first event's id), with the Kafka
message timestamp set to the event time, so the Faust baseline and the Quix
peer window by event time without a custom extractor. It returns the last
offset of every partition from the delivery reports: the drain target (Tansu's
``end_offsets`` cannot be trusted, see PLATFORM.md).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipeline.bench.reference import count_windows, hourly_totals, totals_digest
from producers.kafka_writer import DeliveryError
from producers.simulator import SimulationConfig, simulate
from schemas.event import encode_event
from schemas.registry import dump_registry, load_registry

#: events per write when generating the file
_CHUNK = 10_000
#: seed of the simulation: the same options always give the same topic
SEED = 7


@dataclass(frozen=True)
class Dataset:
    """What :func:`generate` wrote (paths are absolute)."""

    directory: str
    events: int
    orgs: int
    accounts: int
    days: float
    #: engagements the reference counts (pair engagements only)
    engagements: int
    #: distinct (1h window, directed pair) keys: the pipeline's hourly window rows
    window_pair_keys: int
    #: rows of the reference over every window size
    reference_rows: int
    #: sha256 of the 1h (start, src, dst) -> engagements totals
    hourly_digest: str
    #: event times never go back: no event can be late on any partition
    time_ordered: bool
    windows: dict[str, int] = field(default_factory=dict)

    @property
    def events_path(self) -> Path:
        return Path(self.directory) / "events.jsonl"

    @property
    def registry_path(self) -> Path:
        return Path(self.directory) / "registry.yaml"

    @property
    def reference_path(self) -> Path:
        return Path(self.directory) / "reference.json"

    @property
    def timestamps_path(self) -> Path:
        return Path(self.directory) / "timestamps.bin"

    def save(self) -> None:
        (Path(self.directory) / "dataset.json").write_bytes(orjson.dumps(asdict(self)))

    @classmethod
    def load(cls, directory: str | Path) -> Dataset:
        return cls(**orjson.loads((Path(directory) / "dataset.json").read_bytes()))


def generate(directory: Path, events: int, orgs: int, accounts: int, days: float,
             windows: dict[str, int]) -> Dataset:
    """Simulate ``events`` events of ``orgs`` orgs with ``accounts // orgs``
    accounts each over ``days`` days (``producers.simulator``) and write the
    files above. Raises ``ValueError`` for an impossible simulation."""
    directory.mkdir(parents=True, exist_ok=True)
    config = SimulationConfig(seed=SEED, n_orgs=orgs, accounts_per_org=accounts // orgs,
                              days=days, n_events=events)
    registry, stream = simulate(config)
    (directory / "registry.yaml").write_text(dump_registry(registry), encoding="utf-8")
    stamps = array("q")
    ordered = True
    last = float("-inf")
    written = 0
    with open(directory / "events.jsonl", "wb") as handle:
        chunk: list[bytes] = []
        for event in stream:
            chunk.append(encode_event(event))
            stamps.append(int(event.ts * 1000))
            ordered = ordered and event.ts >= last
            last = event.ts
            if len(chunk) >= _CHUNK:
                handle.write(b"\n".join(chunk) + b"\n")
                written += len(chunk)
                chunk.clear()
        if chunk:
            handle.write(b"\n".join(chunk) + b"\n")
            written += len(chunk)
    with open(directory / "timestamps.bin", "wb") as handle:
        stamps.tofile(handle)
    # the reference reads the file back: it counts what the topic will hold
    org_of = load_registry(directory / "registry.yaml").org_of_account
    counts, engaged = count_windows(read_lines(directory / "events.jsonl"), org_of, windows,
                                    orjson.loads)
    (directory / "reference.json").write_bytes(orjson.dumps(
        [[*key, *figures] for key, figures in counts.items()]))
    hourly = hourly_totals(counts)
    dataset = Dataset(
        directory=str(directory.resolve()), events=written, orgs=len(registry.orgs),
        accounts=len(registry.org_of_account), days=days, engagements=engaged,
        window_pair_keys=len(hourly), reference_rows=len(counts),
        hourly_digest=totals_digest(hourly), time_ordered=ordered, windows=dict(windows),
    )
    dataset.save()
    return dataset


def load_reference(path: Path) -> dict[tuple[str, int, str, str], list[int]]:
    return {(row[0], int(row[1]), row[2], row[3]): [int(c) for c in row[4:]]
            for row in orjson.loads(path.read_bytes())}


def read_lines(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        for line in handle:
            line = line.rstrip(b"\r\n")
            if line:
                yield line


def _timestamps(dataset: Dataset) -> array[int]:
    stamps = array("q")
    with open(dataset.timestamps_path, "rb") as handle:
        stamps.fromfile(handle, dataset.events)
    return stamps


def messages(dataset: Dataset, pack: int = 1) -> Iterator[tuple[bytes, bytes, int]]:
    """(value, key, timestamp ms) of each message: one event per message with
    ``pack`` 1, else JSON arrays of ``pack`` events."""
    stamps = _timestamps(dataset)
    batch: list[bytes] = []
    first_key = b""
    for i, line in enumerate(read_lines(dataset.events_path)):
        key = orjson.loads(line)["id"].encode() if not batch else first_key
        if pack <= 1:
            yield line, key, stamps[i]
            continue
        if not batch:
            first_key = key
        batch.append(line)
        if len(batch) >= pack:
            yield b"[" + b",".join(batch) + b"]", first_key, stamps[i]
            batch.clear()
    if batch:
        yield b"[" + b",".join(batch) + b"]", first_key, stamps[-1]


class Sender:
    """A fast producer for one topic: confluent-kafka (librdkafka) when
    installed (the ``bench`` and ``test`` extras bring it), else kafka-python.
    Tracks the last delivered offset of every partition."""

    def __init__(self, bootstrap: str, topic: str, linger_ms: int = 50,
                 compression: str = "gzip") -> None:
        self.topic = topic
        self.last_offsets: dict[int, int] = {}
        self.delivered = 0
        self.errors: list[str] = []
        self._confluent: Any = None
        self._kafka: Any = None
        try:
            import confluent_kafka
        except ImportError:
            from kafka import KafkaProducer

            self._kafka = KafkaProducer(
                bootstrap_servers=[bootstrap], acks="all", compression_type=compression,
                linger_ms=linger_ms, batch_size=1 << 20, max_request_size=16 << 20,
                client_id="reciprocity-bench")
        else:
            self._confluent = confluent_kafka.Producer({
                "bootstrap.servers": bootstrap, "acks": "all",
                "compression.type": compression, "linger.ms": linger_ms,
                "batch.size": 1_000_000, "queue.buffering.max.messages": 1_000_000,
                "message.max.bytes": 16 << 20, "client.id": "reciprocity-bench",
                "log.connection.close": False,
            })

    def _delivered_confluent(self, err: Any, msg: Any) -> None:
        if err is not None:
            self.errors.append(str(err))
            return
        self._note(msg.partition(), msg.offset())

    def _note(self, partition: int, offset: int) -> None:
        self.delivered += 1
        if offset > self.last_offsets.get(partition, -1):
            self.last_offsets[partition] = offset

    def send(self, value: bytes, key: bytes | None, timestamp_ms: int | None = None) -> None:
        if self._confluent is not None:
            while True:
                try:
                    self._confluent.produce(self.topic, value=value, key=key,
                                            timestamp=timestamp_ms or 0,
                                            on_delivery=self._delivered_confluent)
                    return
                except BufferError:  # local queue full: let deliveries drain it
                    self._confluent.poll(0.05)
        future = self._kafka.send(self.topic, value=value, key=key, timestamp_ms=timestamp_ms)
        future.add_callback(lambda meta: self._note(meta.partition, meta.offset))
        future.add_errback(lambda exc: self.errors.append(repr(exc)))

    def poll(self) -> None:
        """Serve delivery reports (confluent-kafka needs it now and then)."""
        if self._confluent is not None:
            self._confluent.poll(0)

    def flush(self, timeout_s: float = 120) -> dict[int, int]:
        """Wait for every delivery; raises DeliveryError if any failed."""
        if self._confluent is not None:
            left = self._confluent.flush(timeout_s)
            if left:
                self.errors.append(f"{left} message(s) still queued after {timeout_s} s")
        else:
            self._kafka.flush(timeout=timeout_s)
            self._kafka.close(timeout=10)
        if self.errors:
            raise DeliveryError(f"{len(self.errors)} message(s) not delivered to {self.topic}: "
                                + "; ".join(self.errors[:3]))
        return dict(self.last_offsets)


@dataclass(frozen=True)
class Produced:
    topic: str
    messages: int
    #: last offset per partition (the drain target)
    last_offsets: dict[int, int]
    seconds: float


def produce_topic(bootstrap: str, topic: str, partitions: int, dataset: Dataset,
                  pack: int = 1, extra_topics: Sequence[str] = ()) -> Produced:
    """Create ``topic`` (and ``extra_topics``) with ``partitions`` partitions and
    write the dataset to it (see the module docstring)."""
    from pipeline.broker import ensure_topics

    ensure_topics([bootstrap], [topic, *extra_topics], partitions)
    started = time.monotonic()
    sender = Sender(bootstrap, topic)
    n = 0
    for value, key, stamp in messages(dataset, pack):
        sender.send(value, key, stamp)
        n += 1
        if n % 1000 == 0:
            sender.poll()
    last = sender.flush()
    return Produced(topic, n, last, time.monotonic() - started)
