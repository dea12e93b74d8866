"""The pure stages alone: what the worker's computation costs without Kafka,
Faust or the store (``python -m pipeline.bench.stages``).

Runs the bench's generated topic (:mod:`pipeline.bench.data`, the same seed
and options as ``reciprocity bench``) through the three stages in one process,
in memory: stage 1 (:class:`pipeline.ingest.Ingest`) on batches of input
messages as the worker takes them (up to ``RECIPROCITY_BATCH_MAX_BYTES`` of
values), the routing encode (:func:`pipeline.routing.encode`), then the pair
and inbound stages on each batch's internal messages, and at the end the idle
markers that close everything, as a drained run does. It times each stage
(``time.perf_counter``; encoding the internal messages counts as routing) and
checks the last pair-window figures against the bench's reference.

Not timed, because not the stages' work: the table changelogs, Kafka and the
store writes. Not done at all: persisting and expiring the dedup records (the
index keeps every id here; the worker forgets ids after
``RECIPROCITY_DEDUP_RETENTION_S`` of event time). The rate is therefore
about the most the worker's single thread could reach on this machine with
these stages, whatever the I/O around them; the end-to-end rows of
``reciprocity bench`` show how close the worker gets.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from pipeline.bench.data import Dataset, generate, load_reference, messages
from pipeline.bulk import default_partition
from pipeline.inbound import InboundStage
from pipeline.ingest import EngagementColumns, Ingest, Message, SeenIndex
from pipeline.memory import tune_gc
from pipeline.pair_columns import ColumnarPairStage
from pipeline.routing import INBOUND_FIELDS, PAIR_FIELDS, Router, encode
from pipeline.settings import Settings
from pipeline.windows import window_label
from schemas.registry import load_registry

STAGES = ("ingest", "route", "pairs", "inbound")


@dataclass
class StagesResult:
    events: int
    seconds: dict[str, float] = field(default_factory=dict)
    engagements: int = 0
    pair_row_versions: int = 0
    exact: bool = False
    mismatches: int = 0

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def as_dict(self) -> dict[str, Any]:
        total = self.total_s
        return {"events": self.events, "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
                "total_s": round(total, 3),
                "eps": round(self.events / total, 1) if total else None,
                "engagements": self.engagements, "pair_row_versions": self.pair_row_versions,
                "exact": self.exact, "mismatches": self.mismatches}


def input_batches(dataset: Dataset, pack: int, partitions: int,
                  batch_bytes: int) -> Iterator[list[Message]]:
    """The generated topic's messages, partitioned as Kafka's default
    partitioner places them (murmur2 of the key), in batches of up to
    ``batch_bytes`` of values."""
    offsets = [0] * partitions
    batch: list[Message] = []
    size = 0
    for value, key, _ms in messages(dataset, pack):
        partition = default_partition(key, partitions)
        batch.append(Message(partition, offsets[partition], value, key))
        offsets[partition] += 1
        size += len(value)
        if size >= batch_bytes:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


class _Internal:
    """The messages of one internal topic, per partition, with their offsets."""

    def __init__(self, partitions: int) -> None:
        self.offsets = [0] * partitions
        self.pending: dict[int, list[Message]] = {}

    def add(self, partition: int, value: bytes) -> None:
        self.pending.setdefault(partition, []).append(
            Message(partition, self.offsets[partition], value))
        self.offsets[partition] += 1

    def take(self) -> dict[int, list[Message]]:
        pending, self.pending = self.pending, {}
        return pending


def run_stages(dataset: Dataset, pack: int = 500, partitions: int = 4,
               settings: Settings | None = None) -> StagesResult:
    settings = settings or _environment_settings()
    params = settings.params()
    registry = load_registry(dataset.registry_path)
    ingest = Ingest(registry, params.lateness_s)
    pairs = ColumnarPairStage(registry, params, partitions)
    inbound = InboundStage(params, partitions)
    for partition in range(partitions):
        pairs.load(partition, None)
        inbound.load(partition, None, [])
    seen, max_ts = SeenIndex(), dict[int, float]()
    router = Router(partitions)
    pair_topic, inbound_topic = _Internal(partitions), _Internal(partitions)
    result = StagesResult(dataset.events, dict.fromkeys(STAGES, 0.0))
    #: newest figures per pair window: (version, six kind counts), keyed by
    #: :func:`_row_key` (strings and tuples of ints: nothing for the cyclic GC
    #: to walk, which a million lists would add to every stage's time)
    latest: dict[str, tuple[int, ...]] = {}
    now = datetime.now(tz=UTC)
    labels = {window_label(size): size for size in params.windows}
    tune_gc()

    def downstream() -> None:
        clock = time.perf_counter
        for stage, topic in (("pairs", pair_topic), ("inbound", inbound_topic)):
            for partition, batch in sorted(topic.take().items()):
                began = clock()
                if stage == "pairs":
                    outcome = pairs.process(partition, batch, "bench", now)
                    result.seconds[stage] += clock() - began
                    for row in outcome.pair_windows:
                        key = _row_key(row.window, int(row.window_start.timestamp()), row.src,
                                       row.dst)
                        held = latest.get(key)
                        if held is None or held[0] <= row.version:
                            latest[key] = (row.version, row.follows, row.likes, row.shares,
                                           row.replies, row.mentions, row.thanks)
                    result.pair_row_versions += len(outcome.pair_windows)
                else:
                    inbound.process(partition, batch)
                    result.seconds[stage] += clock() - began

    for batch in input_batches(dataset, pack, partitions, settings.batch_max_bytes):
        began = time.perf_counter()
        outcome = ingest.process(batch, seen, max_ts)
        seen.add(outcome.first_seen.columns)
        max_ts.update(outcome.max_ts)
        routed = time.perf_counter()
        result.seconds["ingest"] += routed - began
        for source in sorted({m.partition for m in batch}):
            records = outcome.engagements.get(source, EngagementColumns())
            result.engagements += len(records)
            _route(records, source, max_ts.get(source), router, pair_topic, inbound_topic)
        result.seconds["route"] += time.perf_counter() - routed
        downstream()
    for source in range(partitions):  # the input ended: every source goes idle
        for topic, fields in ((pair_topic, PAIR_FIELDS), (inbound_topic, INBOUND_FIELDS)):
            for target in range(partitions):
                topic.add(target, encode(source, max_ts.get(source), True, (), fields))
    downstream()
    reference = load_reference(dataset.reference_path)
    expected = {_row_key(*key): tuple(counts) for key, counts in reference.items()}
    got = {key: held[1:] for key, held in latest.items() if key.partition("|")[0] in labels}
    result.mismatches = len(expected.keys() ^ got.keys()) + sum(
        1 for key in expected.keys() & got.keys() if expected[key] != got[key])
    result.exact = result.mismatches == 0
    return result


def _row_key(window: str, start: int, src: str, dst: str) -> str:
    return f"{window}|{start}|{src}|{dst}"


def _route(records: EngagementColumns, source: int, high: float | None, router: Router,
           pair_topic: _Internal, inbound_topic: _Internal) -> None:
    """One message per target partition of each internal topic, as
    :meth:`pipeline.app.Pipeline._route` sends them."""
    by_pair, by_dst = router.split(records)
    for topic, by_target, fields in ((pair_topic, by_pair, PAIR_FIELDS),
                                     (inbound_topic, by_dst, INBOUND_FIELDS)):
        for target in range(router.partitions):
            topic.add(target, encode(source, high, False,
                                     by_target.get(target, EngagementColumns()), fields))


def _environment_settings() -> Settings:
    """The settings of the environment (``RECIPROCITY_*``), as the worker reads them."""
    overrides: dict[str, Any] = {}
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.bench.stages",
        description="Time the pure stages in memory on the bench's generated topic.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--orgs", type=int, default=1000)
    parser.add_argument("--accounts", type=int, default=10_000)
    parser.add_argument("--days", type=float, default=30.0)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--pack", type=int, default=500,
                        help="events per input message (1: single events)")
    parser.add_argument("--data", help=("keep the generated data here; reused when present "
                                        "(with the options it was generated with)"))
    args = parser.parse_args(argv)
    settings = _environment_settings()
    windows = {window_label(size): size for size in settings.windows}
    with tempfile.TemporaryDirectory(prefix="reciprocity-stages-") as tmp:
        directory = Path(args.data or tmp)
        if (directory / "dataset.json").exists():
            dataset = Dataset.load(directory)
            if dataset.events != args.events:
                parser.error(f"{directory} holds {dataset.events} events, not {args.events}")
        else:
            dataset = generate(directory, args.events, args.orgs, args.accounts, args.days,
                               windows)
        result = run_stages(dataset, args.pack, args.partitions, settings)
    doc = result.as_dict()
    shares = " ".join(f"{stage} {seconds:.2f} s" for stage, seconds in result.seconds.items())
    print(f"stages: {result.events:,} events in {result.total_s:.2f} s ({shares}): "
          f"{doc['eps'] or 0:,.0f} events/s; exact {str(result.exact).lower()}", file=sys.stderr)
    print(orjson.dumps(doc).decode())
    return 0 if result.exact else 1


if __name__ == "__main__":
    sys.exit(main())
