"""A straightforward batch recomputation of pair-window counts from a JSONL file.

Deliberately shares nothing with the streaming path: stdlib json, the
published JSON Schema (jsonschema), yaml.safe_load and plain loops.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import yaml

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "event.v1.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
KINDS = ["follow", "like", "share", "reply", "mention", "thanks"]


def _epoch(ts: object) -> float:
    if isinstance(ts, (int, float)):
        return float(ts)
    text = str(ts).strip().replace("Z", "+00:00").replace("z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def recompute(events_path: Path, registry_path: Path, windows: dict[str, int]) -> dict:
    """Counts of a file: valid, duplicates, invalid_lines and
    pairs {(label, start_iso, src, dst): Counter of kinds}."""
    doc = yaml.safe_load(registry_path.read_text())
    accounts = doc["accounts"]
    org_of = {a: (v["org"] if isinstance(v, dict) else v) for a, v in accounts.items()}
    seen: set[str] = set()
    invalid: list[bytes] = []
    valid = duplicates = 0
    pairs: dict[tuple[str, str, str, str], Counter] = defaultdict(Counter)
    for raw in events_path.read_bytes().split(b"\n"):
        raw = raw.rstrip(b"\r")
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            invalid.append(raw)
            continue
        if not VALIDATOR.is_valid(obj):
            invalid.append(raw)
            continue
        valid += 1
        if obj["id"] in seen:
            duplicates += 1
            continue
        seen.add(obj["id"])
        engaged = []
        if obj["kind"] in KINDS:
            engaged.append((obj["target"], obj["kind"]))
        if obj["kind"] in ("post", "reply"):
            for account in sorted(set(obj.get("mentions") or [])):
                engaged.append((account, "mention"))
        ts = _epoch(obj["ts"])
        for target, kind in engaged:
            src, dst = org_of.get(obj["actor"]), org_of.get(target)
            if src is None or dst is None or src == dst:
                continue
            for label, size in windows.items():
                start = int(ts // size) * size
                start_iso = datetime.fromtimestamp(start, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                pairs[(label, start_iso, src, dst)][kind] += 1
    return {"valid": valid, "duplicates": duplicates, "invalid_lines": invalid, "pairs": pairs}
