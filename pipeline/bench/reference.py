"""The bench's own engagement rules and its reference pair-window counts (pure).

Written from docs/metrics.md ("Engagement", "Pair windows"), deliberately
without importing the pipeline's ``engagements``/``ingest``/``pairs`` code, so
that ``exact`` in the bench result compares two independent computations.
The comparison variants (ceiling, baseline, peer) use the same rules, so all
of them count the same thing:

- ``follow``, ``like``, ``share``, ``reply``, ``mention``, ``thanks`` with a
  ``target`` are one engagement of that kind from the actor to the target;
- every distinct account in the ``mentions`` of a ``post`` or ``reply`` is one
  more ``mention`` engagement (``mentions`` on other kinds are ignored);
- ``unfollow`` and ``post`` themselves are not engagements;
- an engagement counts for the directed org pair (actor's org, target's org)
  only when both accounts are registered and belong to different orgs.

Windows are tumbling and aligned to the UTC epoch: ``start = ts // size * size``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any, Final

#: kind -> index of its count column (the store's order: follows, likes, ...)
KIND_COLUMN: Final = {"follow": 0, "like": 1, "share": 2, "reply": 3, "mention": 4,
                      "thanks": 5}
MENTION: Final = KIND_COLUMN["mention"]
_MENTIONING: Final = frozenset({"post", "reply"})
N_KINDS: Final = 6

#: (window label, window start epoch s, src org, dst org) -> 6 kind counts
WindowCounts = dict[tuple[str, int, str, str], list[int]]


def event_time(value: Any) -> float:
    """Epoch seconds of a contract ``ts``: RFC 3339 text (Python 3.11 parses a
    trailing ``Z``) or a number."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).timestamp()
    return float(value)


def engagements(event: Mapping[str, Any], org_of: Mapping[str, str]
                ) -> Iterator[tuple[int, str, str]]:
    """(kind column, src org, dst org) of every counted engagement of a decoded
    event (a JSON object of the contract)."""
    kind = event.get("kind")
    if not isinstance(kind, str):
        return
    actor = event.get("actor")
    src = org_of.get(actor) if isinstance(actor, str) else None
    if src is None:
        return
    column = KIND_COLUMN.get(kind)
    target = event.get("target")
    if column is not None and isinstance(target, str):
        dst = org_of.get(target)
        if dst is not None and dst != src:
            yield column, src, dst
    mentions = event.get("mentions")
    if kind in _MENTIONING and mentions:
        for account in dict.fromkeys(mentions):
            dst = org_of.get(account)
            if dst is not None and dst != src:
                yield MENTION, src, dst


def count_windows(lines: Iterable[bytes], org_of: Mapping[str, str],
                  windows: Mapping[str, int], loads: Any) -> tuple[WindowCounts, int]:
    """Pair-window counts of contract-v1 JSON lines (one event each, all valid
    and distinct), and the number of engagements. ``windows`` maps a label
    (``1h``) to its size in seconds; ``loads`` decodes one line."""
    counts: WindowCounts = {}
    total = 0
    sizes = list(windows.items())
    for line in lines:
        event = loads(line)
        found = list(engagements(event, org_of))
        if not found:
            continue
        ts = event_time(event["ts"])
        for column, src, dst in found:
            total += 1
            for label, size in sizes:
                key = (label, int(ts // size) * size, src, dst)
                figures = counts.get(key)
                if figures is None:
                    figures = counts[key] = [0] * N_KINDS
                figures[column] += 1
    return counts, total


def totals_digest(totals: Mapping[tuple[int, str, str], int]) -> str:
    """A digest of (window start, src, dst) -> engagements, independent of the
    order the counts were made in: how the ceiling shows it counted right."""
    digest = hashlib.sha256()
    for (start, src, dst), count in sorted(totals.items()):
        if count:
            digest.update(f"{start} {src} {dst} {count}\n".encode())
    return digest.hexdigest()


def hourly_totals(counts: WindowCounts, label: str = "1h") -> dict[tuple[int, str, str], int]:
    """Engagements per (window start, src, dst) of one window size."""
    return {(start, src, dst): sum(figures)
            for (lab, start, src, dst), figures in counts.items() if lab == label}


def compare(expected: WindowCounts, got: WindowCounts) -> list[str]:
    """Differences between two sets of pair-window counts (all-zero rows are
    ignored on both sides); empty when they are equal."""
    want = {k: v for k, v in expected.items() if any(v)}
    have = {k: v for k, v in got.items() if any(v)}
    problems = []
    for key in sorted(set(want) | set(have)):
        if want.get(key) != have.get(key):
            problems.append(f"{key}: expected {want.get(key)}, stored {have.get(key)}")
    return problems
