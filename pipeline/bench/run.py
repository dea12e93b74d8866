"""The orchestrator of ``reciprocity bench``: data, one fresh broker and one
process per variant, results.

For each variant, in turn: start a fresh embedded Tansu broker (its memory
grows with everything written, PLATFORM.md), produce the generated events to a
fresh topic (single-event, or packed for ``pipeline_packed``), run the variant
in its own process (``python -m pipeline.bench``) with a fresh consumer group /
app id, read its result line, stop the broker. Producing is never part of a
variant's timed part. The latency phase instead runs the worker first and a
paced producer process next to it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson

from pipeline.bench.data import Dataset, generate, produce_topic
from pipeline.bench.phase import PREFIX, PhaseResult, PhaseSpec

if TYPE_CHECKING:
    from pipeline.broker import EmbeddedBroker

VARIANTS = ("ceiling", "baseline", "peer", "pipeline_packed", "pipeline_single", "latency")
#: variants stopped after the time box (``--variant-timeout``)
BOXED = frozenset({"baseline", "peer"})
#: seconds a phase process may take to start (imports, group join) on top of its work
_START_S = 180.0


@dataclass(frozen=True)
class BenchConfig:
    """What ``reciprocity bench`` runs; see docs/benchmarks.md."""

    events: int = 1_000_000
    orgs: int = 1000
    accounts: int = 10_000
    days: float = 30.0
    partitions: int = 4
    #: events per message of the packed topic
    pack: int = 500
    #: offered rate (events/s) and duration of the latency phase
    rate: float = 10_000.0
    latency_seconds: float = 60.0
    #: time box of the baseline and the peer, from their first record
    variant_timeout_s: float = 60.0
    #: the pipeline's window sizes (label, seconds): what ``exact`` compares
    windows: tuple[tuple[str, int], ...] = (("1h", 3600), ("1d", 86400))
    #: the variants to run (the others report null)
    only: tuple[str, ...] = VARIANTS
    #: where to write bench.json, bench.png and the phase logs (optional)
    out: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.events < 1:
            problems.append("--events must be at least 1")
        if self.orgs < 2:
            problems.append("--orgs must be at least 2")
        if self.accounts < self.orgs:
            problems.append("--accounts must be at least --orgs (accounts per org >= 1)")
        if self.days <= 0:
            problems.append("--days must be positive")
        if self.partitions < 1:
            problems.append("--partitions must be at least 1")
        if self.pack < 1:
            problems.append("--pack must be at least 1")
        if self.rate <= 0 or self.latency_seconds <= 0:
            problems.append("--rate and --latency-seconds must be positive")
        if self.variant_timeout_s <= 0:
            problems.append("--variant-timeout must be positive")
        unknown = set(self.only) - set(VARIANTS)
        if unknown or not self.only:
            problems.append(f"--only takes some of {', '.join(VARIANTS)}")
        if not any(label == "1h" for label, _ in self.windows):
            problems.append("the pipeline's windows (RECIPROCITY_WINDOWS) must include 1h")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass
class _Run:
    config: BenchConfig
    dataset: Dataset
    work: Path
    logs: Path
    log: Callable[[str], None]
    produce_s: dict[str, float] = field(default_factory=dict)


def run_bench(config: BenchConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run every selected variant and return the report document
    (:func:`pipeline.bench.report.summarize`). ``log`` gets progress lines."""
    from pipeline.bench.report import describe, plot, summarize

    say = log or (lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
    out = Path(config.out) if config.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="reciprocity-bench-") as tmp:
        work = Path(tmp)
        started = time.monotonic()
        say(f"generating {config.events:,} events ({config.orgs:,} orgs, "
            f"{config.accounts:,} accounts, {config.days:g} days) and their reference")
        dataset = generate(work / "data", config.events, config.orgs, config.accounts,
                           config.days, dict(config.windows))
        generated_s = time.monotonic() - started
        run = _Run(config, dataset, work, out or work, say)
        results: dict[str, PhaseResult] = {}
        for variant in VARIANTS:
            if variant not in config.only:
                continue
            say(f"{variant}: starting")
            began = time.monotonic()
            result = _measure(run, variant)
            result.extra["wall_s"] = round(time.monotonic() - began, 3)
            results[variant] = result
            say(f"{variant}: {describe(result)}")
        doc = summarize(config, dataset, results)
        doc["generated_s"] = round(generated_s, 3)
        doc["produce_s"] = {k: round(v, 3) for k, v in run.produce_s.items()}
        doc["total_s"] = round(time.monotonic() - started, 3)
    if out is not None:
        (out / "bench.json").write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        if plot(doc, out / "bench.png"):
            say(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
        else:
            say(f"wrote {out / 'bench.json'} (no plot: matplotlib is not installed)")
    return doc


def _measure(run: _Run, variant: str) -> PhaseResult:
    from pipeline.broker import EmbeddedBroker

    config, dataset = run.config, run.dataset
    if variant == "peer" and importlib.util.find_spec("quixstreams") is None:
        from pipeline.bench.variants import PEER_NOT_INSTALLED

        return PhaseResult("peer", note=PEER_NOT_INSTALLED)
    suffix = uuid.uuid4().hex[:8]
    name = f"bench-{variant.replace('_', '-')}-{suffix}"
    workdir = run.work / variant
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker() as broker:
        spec = PhaseSpec(phase=variant, bootstrap=broker.bootstrap, topic=name,
                         partitions=config.partitions, dataset=dataset.directory,
                         events=dataset.events, group=name, workdir=str(workdir))
        if variant == "latency":
            return _with_broker_cpu(broker, lambda: _latency(run, spec))
        pack = config.pack if variant == "pipeline_packed" else 1
        produced = produce_topic(broker.bootstrap, name, config.partitions, dataset, pack)
        run.produce_s[variant] = produced.seconds
        box = config.variant_timeout_s if variant in BOXED else 0.0
        spec = PhaseSpec(**{**spec.__dict__, "targets": produced.last_offsets, "box_s": box})
        if variant in BOXED:
            timeout = _START_S + box + 120
        elif variant == "ceiling":
            timeout = _START_S + dataset.events / 2_000 + 60
        else:
            timeout = _START_S + 120 + dataset.events / 300
        result = _with_broker_cpu(broker, lambda: _child(run, spec, timeout))
        result.extra["messages"] = produced.messages
        if variant == "pipeline_packed":
            result.extra["pack"] = config.pack
        return result


def _with_broker_cpu(broker: EmbeddedBroker, measure: Callable[[], PhaseResult]) -> PhaseResult:
    """``measure()``, with the broker's CPU seconds meanwhile (``broker_cpu_s``)
    and their share of the time it took (``broker_cores``): the broker shares
    the machine (docs/benchmarks.md)."""
    before, started = broker.cpu_seconds(), time.monotonic()
    result = measure()
    after, took = broker.cpu_seconds(), time.monotonic() - started
    used = None if before is None or after is None else after - before
    result.extra["broker_cpu_s"] = None if used is None else round(used, 2)
    result.extra["broker_cores"] = None if used is None else round(used / took, 3)
    return result


def _command(spec: PhaseSpec, workdir: Path) -> list[str]:
    path = workdir / f"{spec.phase}.spec.json"
    spec.save(path)
    return [sys.executable, "-m", "pipeline.bench", spec.phase, str(path)]


def _parse(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith(PREFIX):
            yield orjson.loads(line[len(PREFIX):])


def _failed(variant: str, why: str, log_path: Path) -> PhaseResult:
    tail = ""
    with contextlib.suppress(OSError):
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1][-300:] if lines else ""
    return PhaseResult(variant, note=f"FAILED: {why}" + (f" ({tail})" if tail else "")
                       + f"; log {log_path}")


def _child(run: _Run, spec: PhaseSpec, timeout_s: float) -> PhaseResult:
    """Run one phase process to its end and return its result line."""
    log_path = run.logs / f"bench-{spec.phase}.log"
    with open(log_path, "wb") as log:
        try:
            done = subprocess.run(  # noqa: S603 - our own interpreter and module
                _command(spec, Path(spec.workdir)), stdout=subprocess.PIPE, stderr=log,
                stdin=subprocess.DEVNULL, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            return _failed(spec.phase, f"no result within {timeout_s:.0f} s", log_path)
    results = [d for d in _parse(iter(done.stdout.decode(errors="replace").splitlines()))
               if d.get("type") == "result"]
    if done.returncode != 0 or not results:
        return _failed(spec.phase, f"exit code {done.returncode}", log_path)
    return PhaseResult.from_dict(results[-1])


def _lines(stream: IO[bytes]) -> queue.Queue[dict[str, Any] | None]:
    """Protocol lines of a running process, read on a thread (None at EOF)."""
    lines: queue.Queue[dict[str, Any] | None] = queue.Queue()

    def read() -> None:
        for raw in stream:
            text = raw.decode(errors="replace")
            if text.startswith(PREFIX):
                lines.put(orjson.loads(text[len(PREFIX):]))
        lines.put(None)

    threading.Thread(target=read, name="bench-phase-stdout", daemon=True).start()
    return lines


def _next(lines: queue.Queue[dict[str, Any] | None], timeout_s: float) -> dict[str, Any] | None:
    try:
        return lines.get(timeout=timeout_s)
    except queue.Empty:
        return None


def _latency(run: _Run, spec: PhaseSpec) -> PhaseResult:
    """The worker first; once it holds its partitions, the paced producer; then
    the producer's last offsets to the worker, which drains and reports."""
    config = run.config
    spec = PhaseSpec(**{**spec.__dict__, "events": 0, "rate": config.rate,
                        "seconds": config.latency_seconds})
    log_path = run.logs / "bench-latency.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            _command(spec, Path(spec.workdir)), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log)
    assert worker.stdin is not None and worker.stdout is not None  # noqa: S101 - PIPEs
    lines = _lines(worker.stdout)
    try:
        first = _next(lines, _START_S)
        if first is None:
            return _failed("latency", "the worker never got its partitions", log_path)
        if first.get("type") == "result":  # no on_written hook: nothing to measure
            return PhaseResult.from_dict(first)
        time.sleep(1.0)  # let the fetchers settle after the assignment
        producer = _child(run, PhaseSpec(**{**spec.__dict__, "phase": "live_producer"}),
                          config.latency_seconds + _START_S)
        offsets = producer.extra.get("last_offsets", {})
        worker.stdin.write(orjson.dumps({"last_offsets": offsets}) + b"\n")
        worker.stdin.close()
        drain_s = _START_S + config.rate * config.latency_seconds / 300
        doc = _next(lines, drain_s)
        while doc is not None and doc.get("type") != "result":
            doc = _next(lines, drain_s)
        if doc is None:
            return _failed("latency", f"the worker did not drain within {drain_s:.0f} s",
                           log_path)
        result = PhaseResult.from_dict(doc)
        result.seconds = config.latency_seconds
        result.extra.update({
            "offered_rate": config.rate,
            "sent_rate": producer.eps,
            "produced": producer.events,
        })
        if producer.note.startswith("FAILED"):
            result.note = f"producer {producer.note}"
        return result
    finally:
        with contextlib.suppress(Exception):
            worker.stdin.close()
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
