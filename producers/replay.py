"""File replay: contract-v1 JSONL or CSV files into Kafka, fast or at the original pace.

JSONL lines go to Kafka as they are (a malformed line is produced untouched:
the pipeline dead-letters it with its original bytes and a reason). CSV rows
are converted to contract-v1 JSON first; the columns (docs/producers.md) are

    id, ts, kind, actor, target, mentions, features, subject, platform

with ``mentions`` and ``features`` as space-separated account or entity ids
and empty cells meaning "absent". A row that cannot be converted (wrong number
of cells) goes to the source dead-letter path with reason ``invalid_csv``.

Pacing: ``speed=None`` sends as fast as the producer takes it; ``speed=S``
keeps the original spacing of the events' ``ts`` divided by ``S`` (``1`` is
real time, ``60`` a minute per second). A line without a readable ``ts`` is
sent without waiting.
"""

from __future__ import annotations

import csv
import io
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TextIO

import orjson

from producers.file_source import jsonl_lines
from schemas.event import parse_ts

log = logging.getLogger(__name__)

CSV_COLUMNS: Final = ("id", "ts", "kind", "actor", "target", "mentions", "features", "subject",
                      "platform")
FORMATS: Final = ("jsonl", "csv")


@dataclass(frozen=True, slots=True)
class Line:
    """One record to produce: the value, or why it cannot be produced."""

    value: bytes
    reason: str | None = None  # set: dead-letter ``value`` with this reason
    detail: str = ""


def csv_row_to_json(row: list[str]) -> bytes:
    """A CSV row as a contract-v1 JSON value. Raises ``ValueError`` on a wrong
    number of cells; everything else is left to the pipeline's validation."""
    if len(row) != len(CSV_COLUMNS):
        raise ValueError(f"expected {len(CSV_COLUMNS)} cells ({', '.join(CSV_COLUMNS)}), "
                         f"got {len(row)}")
    cells = dict(zip(CSV_COLUMNS, (c.strip() for c in row), strict=True))
    doc: dict[str, Any] = {}
    for name in ("id", "kind", "actor", "target", "subject", "platform"):
        if cells[name]:
            doc[name] = cells[name]
    ts = cells["ts"]
    if ts:
        try:
            doc["ts"] = float(ts) if ts.replace(".", "", 1).isdigit() else ts
        except ValueError:
            doc["ts"] = ts
    for name in ("mentions", "features"):
        if cells[name]:
            doc[name] = cells[name].split()
    return orjson.dumps(doc)


def csv_lines(path: str | Path) -> Iterator[Line]:
    """The rows of a CSV file (with or without the header row) as values."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        for number, row in enumerate(reader, start=1):
            if not row or not any(c.strip() for c in row):
                continue
            if number == 1 and [c.strip() for c in row] == list(CSV_COLUMNS):
                continue  # header
            try:
                yield Line(csv_row_to_json(row))
            except ValueError as exc:
                raw = io.StringIO()
                csv.writer(raw).writerow(row)
                yield Line(raw.getvalue().rstrip("\r\n").encode(), "invalid_csv",
                           f"line {number}: {exc}")


def file_lines(path: str | Path, fmt: str) -> Iterator[Line]:
    if fmt == "jsonl":
        return (Line(value) for value in jsonl_lines(path))
    if fmt == "csv":
        return csv_lines(path)
    raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


def count_records(path: str | Path, fmt: str) -> int:
    """How many records a file holds (for the progress bar's ETA)."""
    return sum(1 for _ in file_lines(path, fmt))


def event_time(value: bytes) -> float | None:
    """The ``ts`` of a contract-v1 value, or None when it has none readable."""
    try:
        doc = orjson.loads(value)
        return parse_ts(doc["ts"]) if isinstance(doc, dict) and "ts" in doc else None
    except (orjson.JSONDecodeError, ValueError, TypeError):
        return None


@dataclass
class ReplayCounts:
    sent: int = 0
    dead_lettered: int = 0


class Progress:
    """A progress bar with rate and ETA on a terminal; a plain log line every
    ``every_s`` seconds otherwise."""

    def __init__(self, total: int | None, out: TextIO = sys.stderr, every_s: float = 10.0,
                 tty: bool | None = None) -> None:
        self.total = total
        self.out = out
        self.every_s = every_s
        self.tty = out.isatty() if tty is None else tty
        self.started = time.monotonic()
        self._last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < (0.2 if self.tty else self.every_s):
            return
        self._last = now
        elapsed = max(now - self.started, 1e-9)
        rate = done / elapsed
        if self.total:
            left = max(self.total - done, 0)
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            share = done / self.total
            if self.tty:
                bar = "#" * int(share * 30)
                self.out.write(f"\r[{bar:<30}] {done}/{self.total} {rate:,.0f}/s ETA {eta} ")
            else:
                self.out.write(f"replay: {done}/{self.total} records ({share:.0%}), "
                               f"{rate:,.0f}/s, ETA {eta}\n")
        elif self.tty:
            self.out.write(f"\rreplay: {done} records, {rate:,.0f}/s ")
        else:
            self.out.write(f"replay: {done} records, {rate:,.0f}/s\n")
        self.out.flush()

    def close(self, done: int) -> None:
        self.update(done, force=True)
        if self.tty:
            self.out.write("\n")


def replay(
    lines: Iterator[Line],
    send: Callable[[bytes], None],
    dead_letter: Callable[[Line], None],
    speed: float | None = None,
    stop: threading.Event | None = None,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> ReplayCounts:
    """Send every line, paced by its event time over ``speed`` when given.
    Returns early (without error) when ``stop`` is set."""
    counts = ReplayCounts()
    first_ts: float | None = None
    started = clock()
    for line in lines:
        if stop is not None and stop.is_set():
            break
        if line.reason is not None:
            dead_letter(line)
            counts.dead_lettered += 1
            continue
        if speed:
            ts = event_time(line.value)
            if ts is not None:
                if first_ts is None:
                    first_ts = ts
                ahead = started + (ts - first_ts) / speed - clock()
                if ahead > 0:
                    # wake up for stop requests at least every half second
                    while ahead > 0 and not (stop is not None and stop.is_set()):
                        sleep(min(ahead, 0.5))
                        ahead = started + (ts - first_ts) / speed - clock()
        send(line.value)
        counts.sent += 1
        if progress is not None:
            progress.update(counts.sent + counts.dead_lettered)
    if progress is not None:
        progress.close(counts.sent + counts.dead_lettered)
    return counts
