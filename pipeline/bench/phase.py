"""What the bench hands a phase process, and what the process hands back.

Every measured variant runs in its own process (``python -m pipeline.bench
PHASE SPEC_FILE``), so its memory is its own and its peak RSS is read from
``/proc/self/status`` (``VmHWM``). The orchestrator writes a :class:`PhaseSpec`
as JSON; the process prints protocol lines on stdout, each ``@bench `` plus
one JSON object: ``{"type": "ready"}`` (the latency worker has its partitions)
and, last, ``{"type": "result", ...}`` (:class:`PhaseResult` fields plus
extras). Anything else on stdout is ignored; logs go to stderr.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson

PREFIX = "@bench "
T = TypeVar("T")


@dataclass(frozen=True)
class PhaseSpec:
    phase: str
    #: Kafka bootstrap host:port of this phase's fresh broker
    bootstrap: str
    topic: str
    partitions: int
    #: the dataset directory (:class:`pipeline.bench.data.Dataset`)
    dataset: str
    #: events the topic holds (0 for the latency phase: its producer makes them)
    events: int
    #: a fresh consumer group / Faust app id
    group: str
    #: scratch directory of this phase (store, Faust and Quix state)
    workdir: str
    #: last offset per partition of the produced topic (drain targets)
    targets: dict[int, int] = field(default_factory=dict)
    #: time box (seconds from the first record) for the slow variants; 0 = none
    box_s: float = 0.0
    #: latency phase: offered rate and duration
    rate: float = 0.0
    seconds: float = 0.0

    def save(self, path: Path) -> None:
        path.write_bytes(orjson.dumps(asdict(self), option=orjson.OPT_NON_STR_KEYS))

    @classmethod
    def load(cls, path: Path) -> PhaseSpec:
        doc = orjson.loads(path.read_bytes())
        doc["targets"] = {int(p): int(o) for p, o in doc.get("targets", {}).items()}
        return cls(**doc)


@dataclass
class PhaseResult:
    """One variant's measurement. ``seconds`` is the timed part only (what it
    covers is in the variant's docstring and docs/benchmarks.md)."""

    variant: str
    events: int = 0
    seconds: float | None = None
    eps: float | None = None
    rss_bytes: int | None = None
    note: str = ""
    #: stopped by the time box before the whole topic was processed
    boxed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def finish(self) -> PhaseResult:
        if self.seconds and self.seconds > 0 and self.events:
            self.eps = self.events / self.seconds
        return self

    def as_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc.update(doc.pop("extra"))
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> PhaseResult:
        known = {"variant", "events", "seconds", "eps", "rss_bytes", "note", "boxed"}
        result = cls(**{k: v for k, v in doc.items() if k in known})
        result.extra = {k: v for k, v in doc.items() if k not in known and k != "type"}
        return result


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """Run a phase's coroutine to its end and return its value, without
    ``asyncio.run``'s final cancellation of leftover tasks: after a crash, Faust
    leaves tasks that never finish cancelling, which would hang the process
    before it reports. The phase process exits right after reporting."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(main)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``VmHWM``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def emit(kind: str, **fields: Any) -> None:
    """One protocol line on stdout."""
    sys.stdout.write(PREFIX + orjson.dumps({"type": kind, **fields},
                                           option=orjson.OPT_NON_STR_KEYS).decode() + "\n")
    sys.stdout.flush()
