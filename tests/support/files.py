"""Generated input files for end-to-end tests: simulated events plus bad lines."""

from __future__ import annotations

import random
from pathlib import Path

from producers.simulator import build_institution, simulate_events
from schemas.event import encode_event
from schemas.registry import dump_registry

MALFORMED = [
    b"{not json",
    b'{"id": "bad-kind", "ts": "2026-03-02T10:00:00Z", "kind": "poke", "actor": "a", '
    b'"target": "b"}',
    b'{"id": "no-offset", "ts": "2026-03-02T10:00:00", "kind": "like", "actor": "a", '
    b'"target": "b"}',
    b'{"ts": 1772445600, "kind": "like", "actor": "a", "target": "b"}',
    b'{"id": "no-target", "ts": 1772445600, "kind": "share", "actor": "a"}',
    b"\xff\xfe not utf-8",
    b"[1, 2, 3]",
    b'"just a string"',
]


def write_case(
    directory: Path, n_events: int = 3000, seed: int = 11
) -> tuple[Path, Path, list[bytes]]:
    """Write events.jsonl (with malformed lines and duplicate ids) and registry.yaml.

    Returns (events path, registry path, the malformed lines as written).
    """
    inst = build_institution(seed=seed, n_orgs=10)
    registry_path = directory / "registry.yaml"
    registry_path.write_text(dump_registry(inst.registry))
    rng = random.Random(seed)
    lines = [encode_event(e) for e in simulate_events(inst, n_events, 1772409600.0, 2, seed)]
    # exact re-deliveries and same-id-different-content copies: both counted once.
    # Copies land right before or after their original, so whichever comes first
    # is never behind the newest event by the lateness (none of them is late).
    def near(line: bytes) -> int:
        return lines.index(line) + rng.randint(0, 1)

    for line in rng.sample(lines, 60):
        lines.insert(near(line), line)
    for i, line in enumerate(rng.sample(lines, 20)):
        copy = line.replace(b'"subject":"', b'"subject":"dup' + str(i).encode(), 1)
        lines.insert(near(line), copy)
    for bad in MALFORMED:
        lines.insert(rng.randrange(len(lines)), bad)
    events_path = directory / "events.jsonl"
    events_path.write_bytes(b"\n".join(lines) + b"\n\n")
    return events_path, registry_path, list(MALFORMED)
