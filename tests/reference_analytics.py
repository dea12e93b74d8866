"""An independent batch recomputation of every figure defined in docs/metrics.md.

Deliberately shares nothing with the streaming path (no import of ``pipeline``,
``producers`` or ``schemas``): stdlib json, the published JSON Schema
(jsonschema), yaml.safe_load and plain loops over the whole file.

The input is one stream (one source partition) read in file order. Everything
that depends on the watermark is decided against the final watermark
``W = (largest accepted event time) - lateness``, which is where
``reciprocity run --until-drained`` leaves it at the end of the input.
"""

from __future__ import annotations

import json
import math
import statistics
from bisect import bisect_right
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMA = json.loads((Path(__file__).parents[1] / "schemas" / "event.v1.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(
    SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
)
KINDS = ("follow", "like", "share", "reply", "mention", "thanks")
DAY = 86400

PairKey = tuple[str, str, str, str]
SnubRecord = tuple[str, str, str, str, str, str]
OmissionRecord = tuple[str, str, str, tuple[str, ...], str]
AlertRecord = tuple[str, str, str, str, str]
RollupKey = tuple[str, str, str]


@dataclass(frozen=True)
class Params:
    horizon_s: float = 72 * 3600
    lateness_s: float = 300
    windows: tuple[tuple[str, int], ...] = (("1h", 3600), ("1d", 86400))
    weights: tuple[tuple[str, float], ...] = (
        ("follow", 1),
        ("like", 1),
        ("share", 3),
        ("reply", 2),
        ("mention", 2),
        ("thanks", 2),
    )
    drop_threshold: float = 0.5
    drop_days: int = 7
    drop_min_baseline: float = 5.0
    watched_orgs: tuple[str, ...] = ()  # empty = all


@dataclass
class Result:
    valid: int
    duplicates: int
    invalid: int
    late: list[str]  # ids of late events, input order
    watermark: float | None  # final watermark, None when no event was accepted
    # (window label, window_start RFC 3339, src, dst) -> figures of the pair window
    pairs: dict[PairKey, dict[str, Any]] = field(default_factory=dict)
    # (id, src, dst, kind, ts, snub_ts)
    snubs: set[SnubRecord] = field(default_factory=set)
    # (post_id, left_out, by, entities, ts)
    omissions: set[OmissionRecord] = field(default_factory=set)
    # (id, kind, org, other, ts)
    alerts: set[AlertRecord] = field(default_factory=set)
    # (window label, org, community of the other side) -> rolled-up figures
    rollups: dict[RollupKey, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Event:
    """The fields of an accepted contract-v1 event that the figures use."""

    id: str
    t: float  # epoch seconds
    kind: str
    actor: str
    target: str | None
    mentions: tuple[str, ...]
    features: tuple[str, ...]


@dataclass(frozen=True)
class Engagement:
    id: str
    src: str
    dst: str
    kind: str
    t: float


@dataclass(frozen=True)
class Registry:
    account_org: dict[str, str]
    entity_org: dict[str, str]
    parent: dict[str, str | None]
    community: dict[str, str | None]


# --------------------------------------------------------------------------- time


def fmt(ts: float) -> str:
    """RFC 3339 UTC text of epoch seconds (microseconds only when there are some)."""
    moment = datetime.fromtimestamp(ts, tz=UTC)
    spec = "microseconds" if moment.microsecond else "seconds"
    return moment.isoformat(timespec=spec).replace("+00:00", "Z")


def epoch(ts: object) -> float:
    """Epoch seconds of a contract ``ts``: a number, or RFC 3339 text with an offset."""
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return float(ts)
    text = str(ts)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    return datetime.fromisoformat(text).timestamp()


# ----------------------------------------------------------------------- registry


def _memberships(section: Any) -> dict[str, str]:
    """``id -> org`` of an ``accounts`` or ``entities`` section, in any of its forms."""
    out: dict[str, str] = {}
    if section is None:
        return out
    if isinstance(section, dict):
        for member, spec in section.items():
            out[str(member)] = str(spec["org"] if isinstance(spec, dict) else spec)
    else:
        for item in section:
            out[str(item["id"])] = str(item["org"])
    return out


def load_registry(path: Path) -> Registry:
    doc = yaml.safe_load(path.read_text()) or {}
    parent: dict[str, str | None] = {}
    community: dict[str, str | None] = {}
    for org in doc.get("orgs") or []:
        parent[str(org["id"])] = org.get("parent")
        community[str(org["id"])] = org.get("community")
    return Registry(
        account_org=_memberships(doc.get("accounts")),
        entity_org=_memberships(doc.get("entities")),
        parent=parent,
        community=community,
    )


def ancestors_or_self(registry: Registry, org: str) -> list[str]:
    """``org`` followed by its parent, grandparent, ... (stops on a cycle)."""
    chain: list[str] = []
    current: str | None = org
    while current is not None and current not in chain:
        chain.append(current)
        current = registry.parent.get(current)
    return chain


def community_of(registry: Registry, org: str) -> str:
    """The org's own community, else its nearest ancestor's, else ``external``."""
    for ancestor in ancestors_or_self(registry, org):
        value = registry.community.get(ancestor)
        if value:
            return value
    return "external"


# -------------------------------------------------------------------------- input


def _reject_constant(name: str) -> Any:
    # NaN, Infinity and -Infinity are not JSON (RFC 8259); Python's json accepts them.
    raise ValueError(f"{name} is not JSON")


def _items(raw: bytes) -> list[Any] | None:
    """The JSON items of one line (several for a packed array), or None if not JSON."""
    try:
        obj = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        # a lone surrogate escape ("\ud800") decodes but is no UTF-8 text
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except (UnicodeError, ValueError, RecursionError):
        return None
    if isinstance(obj, list) and obj:
        return obj
    return [obj]


def _valid_event(obj: Any) -> Event | None:
    if not VALIDATOR.is_valid(obj):
        return None
    try:
        t = epoch(obj["ts"])
    except (ValueError, OverflowError):
        return None
    return Event(
        id=obj["id"],
        t=t,
        kind=obj["kind"],
        actor=obj["actor"],
        target=obj.get("target"),
        mentions=tuple(obj.get("mentions") or ()),
        features=tuple(obj.get("features") or ()),
    )


@dataclass
class Accepted:
    valid: int
    duplicates: int
    invalid: int
    late: list[str]
    events: list[Event]  # accepted events, file order


def read_events(events_path: Path, lateness_s: float) -> Accepted:
    """Validate, deduplicate and drop late events, in file order."""
    out = Accepted(valid=0, duplicates=0, invalid=0, late=[], events=[])
    seen: set[str] = set()
    max_ts: float | None = None
    for line in events_path.read_bytes().split(b"\n"):
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        items = _items(line)
        if items is None:
            out.invalid += 1
            continue
        for item in items:
            event = _valid_event(item)
            if event is None:
                out.invalid += 1
                continue
            out.valid += 1
            if event.id in seen:
                out.duplicates += 1
                continue
            seen.add(event.id)
            if max_ts is not None and event.t <= max_ts - lateness_s:
                out.late.append(event.id)
                continue
            max_ts = event.t if max_ts is None else max(max_ts, event.t)
            out.events.append(event)
    return out


def engagements_of(event: Event, registry: Registry) -> list[Engagement]:
    """The pair engagements an accepted event gives (unmapped and same-org ones dropped)."""
    targets: list[tuple[str, str]] = []
    if event.kind in KINDS and event.target is not None:
        targets.append((event.target, event.kind))
    if event.kind in ("post", "reply"):
        for account in sorted(set(event.mentions)):
            targets.append((account, "mention"))
    src = registry.account_org.get(event.actor)
    out: list[Engagement] = []
    for account, kind in targets:
        dst = registry.account_org.get(account)
        if src is None or dst is None or src == dst:
            continue
        out.append(Engagement(event.id, src, dst, kind, event.t))
    return out


# ------------------------------------------------------------------------ figures


def first_returns(engagements: list[Engagement], horizon_s: float) -> list[float | None]:
    """For each engagement A->B at t: the earliest B->A time in (t, t + H], else None."""
    times: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in engagements:
        times[(e.src, e.dst)].append(e.t)
    for values in times.values():
        values.sort()
    out: list[float | None] = []
    for e in engagements:
        back = times.get((e.dst, e.src), [])
        i = bisect_right(back, e.t)  # first return strictly after t
        out.append(back[i] if i < len(back) and back[i] <= e.t + horizon_s else None)
    return out


def omissions_of(event: Event, registry: Registry) -> set[OmissionRecord]:
    if event.kind != "post":
        return set()
    by = registry.account_org.get(event.actor)
    if by is None:
        return set()
    featured: dict[str, set[str]] = defaultdict(set)
    for entity in event.features:
        org = registry.entity_org.get(entity)
        if org is not None and org != by:
            featured[org].add(entity)
    mentioned = {registry.account_org.get(account) for account in event.mentions}
    return {
        (event.id, left_out, by, tuple(sorted(entities)), fmt(event.t))
        for left_out, entities in featured.items()
        if left_out not in mentioned
    }


def drop_days(counts: dict[int, int], w: float, params: Params) -> list[int]:
    """Starts of the closed days of one daily series that raise a drop alert."""
    n = params.drop_days
    start = min(counts)
    first = start + n * DAY
    last = math.floor((w - DAY) / DAY) * DAY  # latest day D with D + DAY <= W
    # A day whose N previous days are all 0 has baseline 0 and can never alert
    # (a count is never below 0), so only the N days after a non-zero day matter.
    candidates = {day + k * DAY for day in counts for k in range(1, n + 1)}
    alerts = []
    for day in sorted(candidates):
        if day < first or day > last:
            continue
        baseline = sum(counts.get(day - k * DAY, 0) for k in range(1, n + 1)) / n
        if (
            baseline >= params.drop_min_baseline
            and counts.get(day, 0) < (1 - params.drop_threshold) * baseline
        ):
            alerts.append(day)
    return alerts


def rollups_of(
    pairs: dict[PairKey, dict[str, Any]], registry: Registry
) -> dict[RollupKey, dict[str, Any]]:
    given: dict[RollupKey, dict[str, Any]] = {}
    received: dict[RollupKey, dict[str, Any]] = {}
    for (label, _start, src, dst), row in sorted(pairs.items()):
        for org in ancestors_or_self(registry, src):
            g = given.setdefault(
                (label, org, community_of(registry, dst)),
                {"engagements": 0, "value": 0.0, "reciprocated": 0, "snubbed": 0},
            )
            g["engagements"] += row["engagements"]
            g["value"] += row["value"]
            g["reciprocated"] += row["reciprocated"]
            g["snubbed"] += row["snubbed"]
        for org in ancestors_or_self(registry, dst):
            r = received.setdefault(
                (label, org, community_of(registry, src)), {"engagements": 0, "value": 0.0}
            )
            r["engagements"] += row["engagements"]
            r["value"] += row["value"]
    out: dict[RollupKey, dict[str, Any]] = {}
    for key in sorted(set(given) | set(received)):
        g = given.get(key, {"engagements": 0, "value": 0.0, "reciprocated": 0, "snubbed": 0})
        r = received.get(key, {"engagements": 0, "value": 0.0})
        vg, vr = float(g["value"]), float(r["value"])
        both_zero = vg == 0 and vr == 0
        out[key] = {
            "engagements_given": g["engagements"],
            "engagements_received": r["engagements"],
            "value_given": vg,
            "value_received": vr,
            "reciprocity": 0.0 if both_zero else min(vg, vr) / max(vg, vr),
            "balance": 0.0 if both_zero else (vg - vr) / (vg + vr),
            "reciprocated": g["reciprocated"],
            "snubbed": g["snubbed"],
        }
    return out


# --------------------------------------------------------------------------- main


def recompute(events_path: Path, registry_path: Path, params: Params = Params()) -> Result:
    if params.drop_days < 1:
        raise ValueError("drop_days must be at least 1")
    registry = load_registry(registry_path)
    accepted = read_events(events_path, params.lateness_s)
    result = Result(
        valid=accepted.valid,
        duplicates=accepted.duplicates,
        invalid=accepted.invalid,
        late=accepted.late,
        watermark=None,
    )
    if not accepted.events:
        return result
    w = max(event.t for event in accepted.events) - params.lateness_s
    result.watermark = w
    h = params.horizon_s
    weights = dict(params.weights)
    alerts: set[AlertRecord] = set()

    engagements = [e for event in accepted.events for e in engagements_of(event, registry)]
    returns = first_returns(engagements, h)

    # pair windows, snubs
    counted: dict[PairKey, dict[str, int]] = defaultdict(lambda: dict.fromkeys(KINDS, 0))
    reciprocated: dict[PairKey, int] = defaultdict(int)
    snubbed: dict[PairKey, int] = defaultdict(int)
    delays: dict[PairKey, list[float]] = defaultdict(list)
    for e, t1 in zip(engagements, returns, strict=True):
        is_reciprocated = t1 is not None and t1 <= w
        is_snubbed = t1 is None and e.t + h <= w
        if is_snubbed:
            result.snubs.add((e.id, e.src, e.dst, e.kind, fmt(e.t), fmt(e.t + h)))
            alerts.add(
                (f"snub:{e.id}:{e.src}:{e.dst}:{e.kind}", "snub", e.src, e.dst, fmt(e.t + h))
            )
        for label, size in params.windows:
            key = (label, fmt(math.floor(e.t / size) * size), e.src, e.dst)
            counted[key][e.kind] += 1
            if is_reciprocated:
                assert t1 is not None
                reciprocated[key] += 1
                delays[key].append(t1 - e.t)
            if is_snubbed:
                snubbed[key] += 1
    for key, counts in counted.items():
        row: dict[str, Any] = dict(counts)
        row["engagements"] = sum(counts[k] for k in KINDS)
        row["value"] = float(sum(weights.get(k, 0) * counts[k] for k in KINDS))
        row["reciprocated"] = reciprocated[key]
        row["snubbed"] = snubbed[key]
        row["median_reciprocate_s"] = statistics.median(delays[key]) if delays[key] else None
        result.pairs[key] = row

    # omissions
    for event in accepted.events:
        for omission in omissions_of(event, registry):
            result.omissions.add(omission)
            post_id, left_out, by, _entities, ts = omission
            alerts.add((f"omission:{post_id}:{left_out}", "omission", left_out, by, ts))

    # drops: daily engagement counts per directed pair and per receiving org
    pair_days: dict[tuple[str, str], dict[int, int]] = defaultdict(lambda: defaultdict(int))
    inbound_days: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for e in engagements:
        day = math.floor(e.t / DAY) * DAY
        pair_days[(e.src, e.dst)][day] += 1
        inbound_days[e.dst][day] += 1
    for (src, dst), series in pair_days.items():
        for day in drop_days(series, w, params):
            alerts.add((f"drop_pair:{src}:{dst}:{fmt(day)}", "drop_pair", dst, src, fmt(day)))
    for org, series in inbound_days.items():
        for day in drop_days(series, w, params):
            alerts.add((f"drop_inbound:{org}:{fmt(day)}", "drop_inbound", org, "", fmt(day)))

    watched = set(params.watched_orgs)
    result.alerts = {a for a in alerts if not watched or a[2] in watched}
    result.rollups = rollups_of(result.pairs, registry)
    return result
