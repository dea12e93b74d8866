"""Stage 2 in columns (pipeline.pair_columns) against stage 2 on objects
(pipeline.pairs): the same internal messages, batch by batch, must give the
same rows (but their version), snubs, alerts, dead letters and counts."""

from __future__ import annotations

import random
import statistics
import zlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pytest

from pipeline import pair_columns
from pipeline.ingest import Engagement, Message
from pipeline.pair_columns import ColumnarOutcome, ColumnarPairStage, partition_prefix
from pipeline.pairs import N_KINDS, PairOutcome, PairStage
from pipeline.reciprocity import Params
from pipeline.routing import encode
from pipeline.watermark import WatermarkTracker
from schemas.registry import Org, Registry

H = 3600
D = 86400
DAY0 = 1772409600  # 2026-03-02T00:00:00Z
NOW = datetime(2026, 3, 20, tzinfo=UTC)
ORGS = ("uni", "med", "lab", "ext", "zoo", "b")
REGISTRY = Registry(orgs={o: Org(o, o) for o in ORGS}, org_of_account={}, org_of_entity={})


def _row(row: Any) -> tuple[Any, ...]:
    return tuple(row)[:16]  # all but version and updated_at


def _same(old: PairOutcome, new: ColumnarOutcome) -> None:
    assert sorted(map(_row, new.pair_windows)) == sorted(map(_row, old.pair_windows))
    assert sorted(new.snubs, key=repr) == sorted(old.snubs, key=repr)
    assert sorted(new.alerts, key=repr) == sorted(old.alerts, key=repr)
    assert sorted(map(repr, new.dead_letters)) == sorted(map(repr, old.dead_letters))
    assert new.counts == old.counts
    assert new.last_offset == old.last_offset


def _scenario(seed: int, sources: int, horizon: float) -> list[list[Message]]:
    """Batches of internal messages of one partition: engagements in rough time
    order per source (within the lateness), bursts and quiet days, two
    engagements of one event, redelivered messages, idle sources waking up
    behind the watermark, watermark markers (some exactly at an engagement's
    time or its time plus the horizon: the rules' ties)."""
    rng = random.Random(seed)
    clock = [DAY0 + rng.randrange(H) for _ in range(sources)]
    offsets = [0] * sources
    high: dict[int, float] = {}
    messages: list[bytes] = []
    times: list[float] = []
    for _ in range(rng.randrange(30, 90)):
        source = rng.randrange(sources)
        roll = rng.random()
        if roll < 0.06 and messages:  # a redelivery of an earlier message
            messages.append(rng.choice(messages[-6:]))
            continue
        if roll < 0.09 and times:  # a marker closing exactly at a time or its snub time
            at = rng.choice(times[-8:]) + rng.choice((0.0, horizon)) + 60.0
            high[source] = max(high.get(source, at), at)
            clock[source] = max(clock[source], int(high[source]))
            messages.append(encode(source, high[source], False))
            continue
        if roll < 0.14:  # idle, or a marker
            idle = rng.random() < 0.5
            clock[source] += rng.randrange(0, 2 * H)
            high[source] = max(high.get(source, clock[source]), clock[source])
            messages.append(encode(source, high[source], idle))
            continue
        if roll < 0.16:  # a quiet stretch of days
            clock[source] += rng.randrange(D, 5 * D)
        records = []
        for _ in range(rng.randrange(1, 12)):
            clock[source] += rng.choice((0, 1, 7, 60, 600, 3000, 2 * H))
            ts = clock[source] - rng.choice((0, 0, 0, 30, 59)) + rng.choice((0, 0.25, 0.5))
            if rng.random() < 0.05 and high:  # at what may be the closed time exactly
                ts = min(high.values()) - 60.0
            src, dst = rng.sample(ORGS[:4] if rng.random() < 0.8 else ORGS, 2)
            kind = rng.randrange(6)
            event = f"e{source}-{offsets[source]}"
            records.append(Engagement(event, kind, src, dst, float(ts), offsets[source]))
            if rng.random() < 0.1:  # one event, two engagements of one pair
                records.append(Engagement(event, kind, src, dst, float(ts), offsets[source]))
            offsets[source] += 1
        times.extend(r.ts for r in records)
        high[source] = max([high.get(source, records[0].ts), *(r.ts for r in records)])
        messages.append(encode(source, high[source], False, records))
    for source in range(sources):
        messages.append(encode(source, high.get(source), True))
    internal = [Message(2, offset, value) for offset, value in enumerate(messages)]
    batches = []
    while internal:
        take = rng.randrange(1, 9)
        batches.append(internal[:take])
        internal = internal[take:]
    return batches


@pytest.mark.parametrize("seed", range(60))
def test_columns_find_what_objects_find(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # new windows sorted in after every batch, after a few, or (4096) only
    # before a snapshot and when some retire
    monkeypatch.setattr(pair_columns, "MIN_UNSORTED_WINDOWS", (1, 3, 8, 4096)[seed % 4])
    monkeypatch.setattr(pair_columns, "LARGE_BATCH_SHARE", (8, 1 << 40)[seed % 3 == 0])
    sources = 1 + seed % 3
    horizon = 3 * H if seed % 2 else 20 * H
    params = Params(windows=(H, D), horizon_s=horizon, lateness_s=60.0,
                    drop_days=3, drop_min_baseline=1.0,
                    watched_orgs=frozenset({"uni", "lab"}) if seed % 5 == 0 else frozenset())
    old, new = PairStage(REGISTRY, params, sources), ColumnarPairStage(REGISTRY, params, sources)
    old.load(2, None, [])
    new.load(2, None)
    findings = 0
    for batch in _scenario(seed, sources, horizon):
        expected = old.process(2, batch, "s", NOW)
        got = new.process(2, batch, "s", NOW)
        _same(expected, got)
        findings += len(expected.pair_windows) + len(expected.snubs) + len(expected.alerts)
        assert new.watermark(2) == old.watermark(2)
    assert findings


@pytest.mark.parametrize("seed", range(6))
def test_applied_times_for_the_latency_hook_are_those_of_the_objects(seed: int) -> None:
    params = Params(windows=(H, D), horizon_s=3 * H, lateness_s=60.0)
    old, new = PairStage(REGISTRY, params, 2), ColumnarPairStage(REGISTRY, params, 2)
    old.load(2, None, [])
    new.load(2, None)
    old.keep_applied_ts = new.keep_applied_ts = True
    applied = 0
    for batch in _scenario(seed, 2, 3 * H):
        expected = old.process(2, batch, "s", NOW)
        got = new.process(2, batch, "s", NOW)
        times = got.applied_ts
        assert sorted(times) == sorted(expected.applied_ts)
        assert len(times) == got.counts.applied
        applied += len(times)
    assert applied
    quiet = ColumnarPairStage(REGISTRY, params, 2)  # off unless a hook asks for them
    quiet.load(2, None)
    assert all(not quiet.process(2, batch, "s", NOW).applied_ts
               for batch in _scenario(seed, 2, 3 * H))


class Table:
    """The pair table as the worker keeps it: each batch's states in order, then
    the tracker."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.tracker: dict[str, Any] | None = None

    def write(self, out: ColumnarOutcome) -> None:
        for key, value in out.states.items():
            if value is None:
                self.values.pop(key, None)
            else:
                self.values[key] = value
        self.tracker = out.tracker


@pytest.mark.parametrize("seed", range(40))
def test_a_stage_rebuilt_from_its_table_goes_on_as_if_never_stopped(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots and deltas (small, to have many of both, in several parts):
    a stage loaded from the table after any batch finds what the stage that
    never stopped finds."""
    monkeypatch.setattr(pair_columns, "PART_BYTES", 200)
    # compressed, as before compression (a table of an older release), or both
    compress = (0, 1 << 40, 600)[seed % 3]
    monkeypatch.setattr(pair_columns, "COMPRESS_MIN_BYTES", compress)
    monkeypatch.setattr(pair_columns, "MIN_SNAPSHOT_BYTES", 1500 if seed % 2 else 0)
    monkeypatch.setattr(pair_columns, "MAX_DELTAS", 1 + seed % 4)
    monkeypatch.setattr(pair_columns, "MIN_UNSORTED_WINDOWS", (2, 4096, 5)[seed % 3])
    monkeypatch.setattr(pair_columns, "LARGE_BATCH_SHARE", (8, 1 << 40)[seed % 2])
    sources = 1 + seed % 3
    params = Params(windows=(H, D), horizon_s=3 * H, lateness_s=60.0, drop_days=3,
                    drop_min_baseline=1.0)
    steady = ColumnarPairStage(REGISTRY, params, sources)
    steady.load(2, None)
    table = Table()
    rng = random.Random(seed)
    restarted = ColumnarPairStage(REGISTRY, params, sources)
    restarted.load(2, None)
    loads = 0
    batches = _scenario(seed, sources, 3 * H)
    for n, batch in enumerate(batches):
        if n == len(batches) // 2 and seed % 3 == 1:  # an upgrade: the rest compressed
            monkeypatch.setattr(pair_columns, "COMPRESS_MIN_BYTES", 0)
        if rng.random() < 0.4:
            restarted = ColumnarPairStage(REGISTRY, params, sources)
            restarted.load(2, table.tracker, [(k, v) for k, v in table.values.items()
                                              if k.startswith(partition_prefix(2))])
            loads += 1
        expected = steady.process(2, batch, "s", NOW)
        got = restarted.process(2, batch, "s", NOW)
        assert sorted(map(tuple, got.pair_windows)) == sorted(map(tuple, expected.pair_windows))
        assert sorted(got.alerts, key=repr) == sorted(expected.alerts, key=repr)
        assert got.counts == expected.counts
        assert got.states == expected.states
        table.write(got)
    heads = [k for k in table.values if k.endswith(":head")]
    assert loads and heads
    if compress == 0:  # every payload compressed: its first part says so
        assert all(b'"z":"zlib"' in v.partition(b"\n")[0]
                   for k, v in table.values.items() if k.endswith(":0") and ":head" not in k)
    # the table holds one generation: the head's snapshot and its deltas
    gen = orjson.loads(table.values[heads[0]])["gen"]
    assert all(orjson.loads(v.partition(b"\n")[0])["gen"] == gen
               for k, v in table.values.items() if k.endswith(":0") and ":s" in k)


@pytest.mark.parametrize("seed", range(6))
def test_a_snapshot_of_int64_counts_loads_as_counts_of_today(seed: int) -> None:
    """Snapshots written before the counts were int32 hold them as int64: a
    stage loaded from one holds int32 counts and goes on as the stage that
    wrote it."""
    params = Params(windows=(H, D), horizon_s=3 * H, lateness_s=60.0, drop_days=3,
                    drop_min_baseline=1.0)
    sources = 1 + seed % 2
    old = ColumnarPairStage(REGISTRY, params, sources)
    old.load(2, None)
    batches = _scenario(seed, sources, 3 * H)
    half = len(batches) // 2
    for batch in batches[:half]:
        old.process(2, batch, "s", NOW)
    part = old._partitions[2]
    for name in pair_columns._COUNT_ARRAYS:  # as an older release held them
        setattr(part, name, getattr(part, name).astype(np.int64))
    blob = old._snapshot(part)
    dtypes = {name: dtype for name, dtype, _ in orjson.loads(blob[0].partition(b"\n")[0])["arrays"]}
    assert {dtypes[name] for name in pair_columns._COUNT_ARRAYS} == {"<i8"}
    prefix = partition_prefix(2)
    items = [*pair_columns._blob_parts(f"{prefix}s0", 1, blob),
             (f"{prefix}head", orjson.dumps({"gen": 1, "slot": 0}))]
    new = ColumnarPairStage(REGISTRY, params, sources)
    new.load(2, part.tracker.to_json(), items)
    assert {getattr(new._partitions[2], name).dtype
            for name in pair_columns._COUNT_ARRAYS} == {np.dtype(pair_columns.COUNT)}
    for batch in batches[half:]:
        expected, got = old.process(2, batch, "s", NOW), new.process(2, batch, "s", NOW)
        assert sorted(map(tuple, got.pair_windows)) == sorted(map(tuple, expected.pair_windows))
        assert got.counts == expected.counts


def test_a_payload_of_unknown_compression_is_refused() -> None:
    parts = dict(pair_columns._blob_parts("cols:0:s0", 3, [b"x" * 3_000, memoryview(b"x" * 7_000)]))
    assert pair_columns._read_blob(parts, "cols:0:s0", 3) == b"x" * 10_000
    small = dict(pair_columns._blob_parts("cols:0:d0:1", 3, [b"ab", memoryview(b"cd")]))
    assert small == {"cols:0:d0:1:0": b'{"gen":3,"parts":1}\nabcd'}  # too small to compress
    assert len(parts["cols:0:s0:0"]) < 200  # stored compressed
    first = parts["cols:0:s0:0"].replace(b'"zlib"', b'"zstd"')
    with pytest.raises(ValueError, match="unknown compression 'zstd'"):
        pair_columns._read_blob({**parts, "cols:0:s0:0": first}, "cols:0:s0", 3)


def test_compressed_payloads_are_standard_zlib_both_ways(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The payloads ISA-L writes are zlib streams the standard library reads
    (a rollback to a release that used :mod:`zlib` loads them), and payloads
    that release wrote load here."""
    monkeypatch.setattr(pair_columns, "PART_BYTES", 1000)  # a payload in many parts
    rng = random.Random(7)
    data = orjson.dumps({"src": [rng.choice(ORGS) for _ in range(5_000)],
                         "ts": [DAY0 + rng.randrange(D) for _ in range(5_000)]})
    ours = dict(pair_columns._blob_parts("cols:1:d0:1", 4, [data]))
    assert len(ours) > 11
    first, _, rest = ours["cols:1:d0:1:0"].partition(b"\n")
    assert orjson.loads(first)["z"] == "zlib"
    parts = [rest, *(ours[f"cols:1:d0:1:{i}"] for i in range(1, len(ours)))]
    assert zlib.decompress(b"".join(parts)) == data
    older = zlib.compress(data, 1)  # as a release before ISA-L stored it
    header = orjson.dumps({"gen": 4, "z": "zlib", "parts": 1}) + b"\n"
    assert pair_columns._read_blob({"cols:1:d0:1:0": header + older}, "cols:1:d0:1", 4) == data


def test_the_scenarios_hold_what_the_comparison_needs() -> None:
    """The scenarios reach every rule: replays, late records, reciprocation,
    snubs (one per event), drops."""
    totals: dict[str, int] = {}
    for seed in range(60):
        params = Params(windows=(H, D), horizon_s=3 * H, lateness_s=60.0, drop_days=3,
                        drop_min_baseline=1.0)
        stage = PairStage(REGISTRY, params, 1 + seed % 3)
        stage.load(2, None, [])
        for batch in _scenario(seed, 1 + seed % 3, 3 * H):
            counts = stage.process(2, batch, "s", NOW).counts
            for name in ("replayed", "late", "reciprocated", "snubs", "drops"):
                totals[name] = totals.get(name, 0) + getattr(counts, name)
    assert all(totals[name] > 0 for name in ("replayed", "late", "reciprocated", "snubs",
                                             "drops")), totals


def test_rows_carry_the_batch_position_as_version() -> None:
    params = Params(windows=(H,), horizon_s=3 * H, lateness_s=60.0)
    stage = ColumnarPairStage(REGISTRY, params, 1)
    stage.load(0, None)
    records: Sequence[Engagement] = [Engagement("e1", 1, "uni", "med", float(DAY0 + 10), 0)]
    batch = [Message(0, 0, encode(0, DAY0 + 10.0, False, records)),
             Message(0, 1, encode(0, DAY0 + 20.0, False))]
    out = stage.process(0, batch, "s", NOW)
    (row,) = out.pair_windows
    assert (row.src, row.dst, row.likes, row.version) == ("uni", "med", 1, 2)


def test_a_malformed_internal_message_is_refused() -> None:
    stage = ColumnarPairStage(REGISTRY, Params(), 1)
    stage.load(0, None)
    for value in (b"nope", b'{"p": 0}', b'{"p": 0, "max": null, "idle": false, "r": [[1, 2]]}'):
        with pytest.raises(ValueError, match="malformed internal message"):
            stage.process(0, [Message(0, 0, value)], "s", NOW)


@pytest.mark.parametrize("seed", range(30))
def test_a_partition_taken_over_from_pair_states_goes_on_as_they_would(seed: int) -> None:
    """An upgrade: the columns adopt what the pair stage on objects holds after
    any batch, then find what it finds, and the next batch writes a snapshot."""
    sources = 1 + seed % 3
    params = Params(windows=(H, D), horizon_s=3 * H, lateness_s=60.0, drop_days=3,
                    drop_min_baseline=1.0)
    batches = _scenario(seed, sources, 3 * H)
    cut = random.Random(seed).randrange(len(batches))
    old = PairStage(REGISTRY, params, sources)
    old.load(2, None, [])
    for batch in batches[:cut]:
        old.process(2, batch, "s", NOW)
    part = old._partitions[2]
    new = ColumnarPairStage(REGISTRY, params, sources)
    new.adopt(2, part.tracker.to_json(), part.states.values())
    assert not new.snapshotted(2)
    for i, batch in enumerate(batches[cut:]):
        expected = old.process(2, batch, "s", NOW)
        got = new.process(2, batch, "s", NOW)
        _same(expected, got)
        if i == 0 and got.states:
            assert new.snapshotted(2)
            assert any(key.endswith(":head") for key in got.states)


@pytest.mark.parametrize("seed", range(30))
def test_first_returns_kept_between_batches_equal_those_worked_out_anew(seed: int) -> None:
    """The pending engagements' first returns are worked out again only where a
    batch touched them (pair_columns._first_returns); after every batch they
    equal a computation from scratch over the whole pending state."""
    sources = 1 + seed % 3
    horizon = 3 * H if seed % 2 else 20 * H
    params = Params(windows=(H, D), horizon_s=horizon, lateness_s=60.0,
                    drop_days=3, drop_min_baseline=1.0, watched_orgs=frozenset())
    stage = ColumnarPairStage(REGISTRY, params, sources)
    stage.load(2, None)
    part = stage._partitions[2]
    checked = 0
    for batch in _scenario(seed, sources, horizon):
        stage.process(2, batch, "s", NOW)
        if part.p_first is None or part.t_sorted < len(part.t_pd):
            continue  # not decided since the last load or since new times came
        kept = part.p_first.copy()
        part.p_first = None
        assert stage._first_returns(part).tolist() == kept.tolist()
        checked += len(kept)
    assert checked or seed % 2 == 0


@pytest.mark.parametrize("seed", range(30))
def test_a_snapshot_between_decisions_keeps_the_new_times_for_the_next(seed: int) -> None:
    """The times added since the last decision are the ones not sorted in yet:
    a snapshot written in between (a batch without a decision) must leave
    them so, or the next decision misses them for engagements pending before."""
    sources = 1 + seed % 3
    params = Params(windows=(H, D), horizon_s=20 * H, lateness_s=60.0,
                    drop_days=3, drop_min_baseline=1.0, watched_orgs=frozenset())
    stage = ColumnarPairStage(REGISTRY, params, sources)
    stage.load(2, None)
    part = stage._partitions[2]
    checked = 0
    batches = _scenario(seed, sources, 20 * H)
    for i, batch in enumerate(batches):
        if i % 2 == 0 or part.p_first is None or not len(part.p_first):
            stage.process(2, batch, "s", NOW)
            continue
        stage._apply(part, batch, [], ColumnarOutcome())  # records in, no decision
        stage._snapshot(part)
        kept = stage._first_returns(part).copy()
        part.p_first = None
        assert stage._first_returns(part).tolist() == kept.tolist()
        checked += len(kept)
        part.p_first = kept
    assert checked


@pytest.mark.parametrize("seed", range(20))
def test_after_finds_the_first_later_time_of_the_same_key(seed: int) -> None:
    """``pair_columns._after`` on arrays sorted by (key, time), with runs of
    every length and equal times: the first entry after each query, and the
    end of the query's run, as a scan finds them."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(0, 300))
    keys = rng.integers(0, 12, n) if seed % 2 else rng.integers(0, 3, n)
    times = rng.integers(0, 40, n).astype(np.float64) / 4
    order = np.lexsort((times, keys))
    keys, times = keys[order], times[order]
    q_key = rng.integers(-1, 14, 200)
    q_ts = rng.integers(-4, 44, 200).astype(np.float64) / 4
    at, end = pair_columns._after(keys, times, q_key, q_ts)
    entries = list(zip(keys.tolist(), times.tolist(), strict=True))
    for i, (key, ts) in enumerate(zip(q_key.tolist(), q_ts.tolist(), strict=True)):
        expected = next((j for j, e in enumerate(entries) if e > (key, ts)), n)
        assert at[i] == expected
        assert end[i] == next((j for j, e in enumerate(entries) if e[0] > key), n)


def test_return_times_stay_sorted_through_merges_and_pruning() -> None:
    """``pair_columns._sort_times``: times appended in any order are merged
    into the sorted ones (or all sorted again when they are more), and
    pruning keeps the count of sorted ones right."""
    rng = np.random.default_rng(7)
    stage = ColumnarPairStage(REGISTRY, Params(windows=(H,), horizon_s=H, lateness_s=60.0), 1)
    part = pair_columns._Partition(WatermarkTracker(1, 60.0), 1)
    held: list[tuple[int, float]] = []
    for step in range(60):
        k = int(rng.integers(0, 50)) if step % 7 else int(rng.integers(100, 400))
        pd, ts = rng.integers(0, 30, k), rng.integers(0, 500, k).astype(np.float64)
        pair_columns._append(part, "t_pd", pd)
        pair_columns._append(part, "t_ts", ts)
        held += zip(pd.tolist(), ts.tolist(), strict=True)
        if step % 3 == 0:
            pair_columns._sort_times(part)
            assert part.t_sorted == len(part.t_pd)
            assert list(zip(part.t_pd.tolist(), part.t_ts.tolist(), strict=True)) == sorted(held)
        if step % 5 == 0:
            cut = float(rng.integers(0, 100))
            stage._prune_times(part, cut + H)  # keeps the times after the cut
            held = [(pd_, ts_) for pd_, ts_ in held if ts_ > cut]
    pair_columns._sort_times(part)
    assert list(zip(part.t_pd.tolist(), part.t_ts.tolist(), strict=True)) == sorted(held)


@pytest.mark.parametrize("seed", range(20))
def test_outside_equals_isin(seed: int) -> None:
    """``pair_columns._outside`` on sorted keys with runs of every length:
    whatever ``np.isin`` says of the same keys, negated."""
    rng = np.random.default_rng(seed)
    keys = np.sort(rng.integers(0, 3 + seed * 5, int(rng.integers(0, 300))))
    gone = np.unique(rng.integers(-2, 6 + seed * 5, int(rng.integers(0, 40))))
    assert (pair_columns._outside(keys, gone) == ~np.isin(keys, gone)).all()


@pytest.mark.parametrize("seed", range(20))
def test_medians_are_those_of_each_windows_delays(seed: int) -> None:
    """``ColumnarPairStage._medians``: the median of each asked window's
    delays, as ``statistics.median`` finds it, None without any, with the
    delays decided since the last call merged in first (some sorted, some
    not yet, some equal)."""
    rng = np.random.default_rng(seed)
    part = pair_columns._Partition(WatermarkTracker(1, 60.0), 1)
    held: list[tuple[int, float]] = []
    for _step in range(4):
        k = int(rng.integers(0, 80))
        key, val = rng.integers(0, 15, k), rng.integers(0, 30, k).astype(np.float64) / 2
        pair_columns._append(part, "d_key", key)
        pair_columns._append(part, "d_val", val)
        held += zip(key.tolist(), val.tolist(), strict=True)
        asked = np.unique(rng.integers(-1, 17, 10))
        got = ColumnarPairStage._medians(part, asked)
        assert part.d_sorted == len(part.d_key)
        for window, median in zip(asked.tolist(), got, strict=True):
            delays = [v for w, v in held if w == window]
            assert median == (statistics.median(delays) if delays else None)


def test_appends_keep_room_behind_an_array_and_never_change_what_was_handed_out() -> None:
    """``pair_columns._append``: appends to an array appended to before write
    behind it in kept room (no copy of what it holds), earlier views keep
    their values, and an array given a new value in between gets exactly
    the room it needs."""
    part = pair_columns._Partition(WatermarkTracker(1, 60.0), 1)
    pair_columns._append(part, "p_ts", np.array([1.0, 2.0]))
    assert len(part.room["p_ts"][0]) == 2  # new: no spare room
    pair_columns._append(part, "p_ts", np.array([3.0]))
    room = part.room["p_ts"][0]
    assert len(room) == 3 + 1024  # appended again: room behind it
    before = part.p_ts
    pair_columns._append(part, "p_ts", np.array([4.0]))
    assert part.p_ts.tolist() == [1.0, 2.0, 3.0, 4.0] and before.tolist() == [1.0, 2.0, 3.0]
    assert part.room["p_ts"][0] is room and np.shares_memory(part.p_ts, room)
    part.p_ts = part.p_ts[[True, False, True, True]]  # filtered: a new array
    pair_columns._append(part, "p_ts", np.array([5.0]))
    assert part.p_ts.tolist() == [1.0, 3.0, 4.0, 5.0] and part.room["p_ts"][0] is not room
    assert len(part.room["p_ts"][0]) == 4 and before.tolist() == [1.0, 2.0, 3.0]
    part.p_ts = part.p_ts[:2]  # replaced after its last append: its room is let go
    pair_columns._drop_stale_rooms(part)
    assert "p_ts" not in part.room
    pair_columns._append(part, "p_ts", np.array([5.0]))
    pair_columns._append(part, "w_counts", np.ones((3, N_KINDS), dtype=np.int64))
    big = np.arange(5000.0)
    pair_columns._append(part, "p_ts", big)  # beyond the room: a larger one
    assert part.p_ts.tolist() == [1.0, 3.0, 5.0, *big.tolist()]
    assert part.w_counts.shape == (3, N_KINDS) and part.w_counts.sum() == 3 * N_KINDS


@pytest.mark.parametrize("seed", range(30))
def test_windows_retire_once_the_watermark_passes_their_end_and_horizon(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """After every batch the partition holds no window whose end plus the
    horizon the watermark has passed (the retire check is skipped until the
    earliest such time, which every new window may bring forward)."""
    monkeypatch.setattr(pair_columns, "MIN_UNSORTED_WINDOWS", (1, 4096)[seed % 2])
    monkeypatch.setattr(pair_columns, "LARGE_BATCH_SHARE", 1 << 40)
    sources = 1 + seed % 3
    horizon = 3 * H if seed % 2 else 20 * H
    params = Params(windows=(H, D), horizon_s=horizon, lateness_s=60.0,
                    drop_days=3, drop_min_baseline=1.0)
    stage = ColumnarPairStage(REGISTRY, params, sources)
    stage.load(2, None)
    part = stage._partitions[2]
    retired = 0
    for batch in _scenario(seed, sources, horizon):
        before = set(part.w_key.tolist())
        stage.process(2, batch, "s", NOW)
        closed = part.tracker.closed
        if closed is None or not len(part.w_key):
            continue
        assert (stage._retires_at(part.w_key) > closed).all()
        assert set(part.d_key.tolist()) <= set(part.w_key.tolist())  # delays retire too
        retired += len(before - set(part.w_key.tolist()))
    assert retired or seed % 2


def test_a_new_window_that_retires_before_the_others_retires_in_time() -> None:
    """A window added for an earlier hour (an engagement within the lateness,
    across the hour's end) retires before every window held so far: the
    retire check must not wait for the later ones."""
    params = Params(windows=(H,), horizon_s=H, lateness_s=600.0, drop_days=3,
                    drop_min_baseline=1.0)
    stage = ColumnarPairStage(REGISTRY, params, 1)
    stage.load(2, None)
    part = stage._partitions[2]
    t = DAY0 + 10 * H
    batches = [
        [Engagement("a", 0, "uni", "med", t + 300.0, 0)],  # the 10h window, retires at 12h
        [Engagement("b", 0, "lab", "ext", t - 60.0, 1)],  # the 9h window, retires at 11h
        [],  # the watermark past 11h, before 12h
    ]
    highs = [t + 300.0, t + 300.0, t + H + 900.0]
    live = []
    for offset, (records, high) in enumerate(zip(batches, highs, strict=True)):
        stage.process(2, [Message(2, offset, encode(0, high, False, records))], "s", NOW)
        live.append(stage.live_windows())
    assert part.tracker.closed == t + H + 300.0
    assert [int(k) for k in stage._retires_at(part.w_key)] == [t + 2 * H]
    assert live == [1, 2, 1]  # (window, pair) keys held: the 9h window retired
    stage.load(3, None)
    stage.process(3, [Message(3, 0, encode(0, t, False, [
        Engagement("c", 0, "uni", "lab", t, 0), Engagement("d", 0, "uni", "lab", t + 1, 1),
        Engagement("e", 0, "lab", "uni", t + 2, 2)]))], "s", NOW)
    assert stage.live_windows() == 1 + 2  # every partition's; one key per direction


def test_a_day_series_begun_after_every_other_went_dormant_is_evaluated() -> None:
    """Day series are evaluated only once the watermark reaches the earliest
    next day of any (``s_due``); a series begun after every earlier one went
    dormant brings that day forward, and its drop is found."""
    params = Params(windows=(H,), horizon_s=H, lateness_s=60.0, drop_days=3,
                    drop_min_baseline=1.0, watched_orgs=frozenset())
    old, new = PairStage(REGISTRY, params, 1), ColumnarPairStage(REGISTRY, params, 1)
    old.load(2, None, [])
    new.load(2, None)
    plan = [(0, ("uni", "med")), (5, ("lab", "ext")), (6, ("lab", "ext")), (7, ("lab", "ext"))]
    messages = []
    for i, (day, (src, dst)) in enumerate(plan):
        at = DAY0 + day * D + 12 * H
        messages.append(encode(0, at, False, [Engagement(f"e{i}", 0, src, dst, float(at), i)]))
    messages.append(encode(0, DAY0 + 4 * D + 12 * H, False))  # uni -> med's series evaluated
    messages.sort(key=lambda value: orjson.loads(value)["max"])
    messages.append(encode(0, DAY0 + 10 * D, False))  # past lab -> ext's empty day 8
    drops = 0
    for offset, value in enumerate(messages):
        batch = [Message(2, offset, value)]
        expected = old.process(2, batch, "s", NOW)
        got = new.process(2, batch, "s", NOW)
        _same(expected, got)
        drops += got.counts.drops
    assert drops == 1


def test_partitions_fed_alike_write_their_snapshots_in_different_batches(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Four partitions given the same batches: each writes snapshots, but not
    all in the same batch (their thresholds are staggered by partition)."""
    monkeypatch.setattr(pair_columns, "MIN_SNAPSHOT_BYTES", 0)
    params = Params(windows=(H, D), horizon_s=3 * H, lateness_s=60.0, drop_days=3,
                    drop_min_baseline=1.0)
    partitions = range(4)
    stages = {p: ColumnarPairStage(REGISTRY, params, 2) for p in partitions}
    snapshots: dict[int, set[int]] = {p: set() for p in partitions}
    batches = [batch for seed in range(3) for batch in _scenario(seed, 2, 3 * H)]
    for p, stage in stages.items():
        stage.load(p, None)
        head = partition_prefix(p) + "head"
        for i, batch in enumerate(batches):
            if head in stage.process(p, batch, "s", NOW).states:
                snapshots[p].add(i)
    assert all(len(found) >= 3 for found in snapshots.values())
    assert len({frozenset(found) for found in snapshots.values()}) == len(partitions)
    # every partition's first batch writes its first snapshot; beyond it, at
    # most one batch has all four write one (without the stagger, every one)
    shared = set.intersection(*snapshots.values())
    assert 0 in shared and len(shared - {0}) <= 1
