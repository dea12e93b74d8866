"""The stages' helpers: watermark tracker, daily drop series, the internal wire
format, the inbound stage and alert records (all pure)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.alerts import (
    ALERT_KINDS,
    DROP_INBOUND,
    DROP_PAIR,
    OMISSION,
    SNUB,
    Snub,
    SnubColumns,
    drop_alert,
    omission_alert,
    snub_alert,
    snub_alerts,
)
from pipeline.app import alert_rows
from pipeline.days import DAY, DaySeries, day_of
from pipeline.engagements import KIND_INDEX
from pipeline.inbound import InboundStage, InboundState
from pipeline.ingest import Engagement, EngagementColumns, Message
from pipeline.memory import dumps
from pipeline.reciprocity import Omission, Params
from pipeline.routing import (
    INBOUND_FIELDS,
    Routed,
    Router,
    by_partition,
    decode,
    decode_columns,
    encode,
    pair_key,
    partition_for,
    record_dst,
    record_pair,
)
from pipeline.sinks.schema import BY_NAME
from pipeline.watermark import WatermarkTracker
from pipeline.windows import to_utc

H = 3600
DAY0 = 1772409600  # 2026-03-02T00:00:00Z
T0 = DAY0 + 10 * H
L = 60.0


def day(n: int) -> int:
    return DAY0 + n * DAY


# --------------------------------------------------------------------------- watermark


def test_watermark_is_none_until_every_active_source_reported() -> None:
    tracker = WatermarkTracker(3, L)
    assert tracker.watermark() is None
    tracker.observe(0, T0, False)
    tracker.observe(1, T0 + 100, False)
    assert tracker.watermark() is None
    tracker.observe(2, None, False)  # a marker without any event time yet
    assert tracker.watermark() is None
    tracker.observe(2, T0 + 50, False)
    assert tracker.watermark() == T0 - L  # the minimum, minus the lateness
    assert tracker.closed == T0 - L


def test_watermark_skips_idle_sources_and_all_idle_is_the_maximum() -> None:
    tracker = WatermarkTracker(3, L)
    tracker.observe(0, T0, False)
    tracker.observe(1, T0 + 100, False)
    tracker.observe(2, None, True)  # idle before it ever had an event
    assert tracker.watermark() == T0 - L
    tracker.observe(0, None, True)
    assert tracker.watermark() == T0 + 100 - L
    tracker.observe(1, None, True)  # all idle (end of input): the largest time
    assert tracker.watermark() == T0 + 100 - L
    assert tracker.idle == {0, 1, 2}


def test_watermark_all_idle_without_any_time_is_none() -> None:
    tracker = WatermarkTracker(2, L)
    tracker.observe(0, None, True)
    tracker.observe(1, None, True)
    assert tracker.watermark() is None


def test_watermark_never_moves_back() -> None:
    tracker = WatermarkTracker(2, L)
    tracker.observe(0, T0 + 1000, False)
    tracker.observe(1, None, True)
    assert tracker.watermark() == T0 + 1000 - L
    tracker.observe(1, T0, False)  # wakes up far behind
    assert tracker._computed() == T0 - L
    assert tracker.watermark() == T0 + 1000 - L
    # a source's largest time never moves back either
    tracker.observe(0, T0 + 10, False)
    assert tracker.max_ts[0] == T0 + 1000
    tracker.observe(1, T0 + 2000, False)
    assert tracker.watermark() == T0 + 1000 - L
    tracker.observe(0, T0 + 3000, False)
    assert tracker.watermark() == T0 + 2000 - L


def test_watermark_json_round_trip() -> None:
    tracker = WatermarkTracker(3, L)
    fresh = WatermarkTracker.from_json(orjson.loads(orjson.dumps(tracker.to_json())), 3, L)
    assert (fresh.max_ts, fresh.idle, fresh.closed, fresh.tag) == ({}, set(), None, -1)
    tracker.observe(0, T0 + 0.5, False)
    tracker.observe(2, T0 + 7, True)
    tracker.observe(1, T0 + 9, False)
    tracker.watermark()
    tracker.tag = 41
    doc = orjson.loads(orjson.dumps(tracker.to_json()))
    assert doc == {"max": [[0, T0 + 0.5], [1, T0 + 9], [2, T0 + 7]], "idle": [2],
                   "closed": T0 + 0.5 - L, "tag": 41}
    back = WatermarkTracker.from_json(doc, 3, L)
    assert (back.max_ts, back.idle, back.closed, back.tag) == (
        tracker.max_ts, tracker.idle, tracker.closed, tracker.tag)
    assert (back.sources, back.lateness_s) == (3, L)
    assert back.to_json() == tracker.to_json()


# --------------------------------------------------------------------------- day series


def evaluate(series: DaySeries, watermark: float, days: int = 3,
             threshold: float = 0.5, min_baseline: float = 2) -> list[tuple[int, int, float]]:
    return series.evaluate(watermark, days, threshold, min_baseline)


def series_with(counts: dict[int, int], days: int = 3) -> DaySeries:
    first = min(counts)
    series = DaySeries.begin(first, days)
    for d, n in sorted(counts.items()):
        for _ in range(n):
            series.add(d, days)
    return series


def test_day_of_is_the_utc_day() -> None:
    assert day_of(T0) == DAY0
    assert day_of(DAY0) == DAY0
    assert day_of(DAY0 - 0.001) == DAY0 - DAY


def test_series_evaluates_a_day_once_the_watermark_reaches_its_end() -> None:
    series = series_with({day(0): 4, day(1): 4, day(2): 4, day(3): 1})
    assert (series.start, series.next, series.deadline()) == (day(0), day(3), day(4))
    assert evaluate(series, day(4) - 0.001) == []
    assert evaluate(series, day(4)) == [(day(3), 1, 4.0)]
    assert series.next == day(4)
    assert evaluate(series, day(4)) == []  # evaluated once


def test_series_drop_rule_boundaries() -> None:
    # exactly (1 - threshold) x the baseline is not below it
    assert evaluate(series_with({day(0): 4, day(1): 4, day(2): 4, day(3): 2}), day(4)) == []
    # a baseline under the minimum raises nothing
    assert evaluate(series_with({day(0): 1, day(1): 2, day(2): 2}), day(4)) == []
    # at the minimum it does
    assert evaluate(series_with({day(0): 2, day(1): 2, day(2): 2}), day(4)) == [
        (day(3), 0, 2.0)]


def test_series_goes_dormant_and_wakes_up() -> None:
    series = series_with({day(0): 6})
    assert evaluate(series, day(4)) == [(day(3), 0, 2.0)]
    # days 1..3 hold nothing: no drop is possible any more until the next engagement
    assert series.counts == {}
    assert series.next is None and series.deadline() is None
    assert evaluate(series, day(30)) == []
    series.add(day(10), 3)
    assert series.next == day(10)
    assert series.deadline() == day(11)
    assert evaluate(series, day(11)) == []  # zero baseline
    assert series.next == day(11)
    for _ in range(3):
        series.add(day(11), 3)
    assert evaluate(series, day(14)) == []  # baselines of 4/3 at most
    assert (series.next, series.counts) == (day(14), {day(11): 3})


def test_series_drops_days_it_no_longer_needs() -> None:
    series = series_with({day(0): 5, day(1): 5, day(2): 5, day(3): 5, day(4): 5})
    evaluate(series, day(5))  # days 3 and 4
    assert sorted(series.counts) == [day(2), day(3), day(4)]


def test_an_earlier_day_arriving_later_moves_the_start() -> None:
    series = DaySeries.begin(day(5), 3)
    series.add(day(5), 3)
    assert (series.start, series.next) == (day(5), day(8))
    series.add(day(4), 3)  # within the lateness of the day boundary
    assert (series.start, series.next) == (day(4), day(7))
    assert series.counts == {day(4): 1, day(5): 1}
    series.add(day(6), 3)
    assert (series.start, series.next) == (day(4), day(7))


def test_series_json_round_trip() -> None:
    series = series_with({day(0): 2, day(2): 1})
    def round_trip(series: DaySeries) -> Any:
        return orjson.loads(orjson.dumps(series.to_json(), option=orjson.OPT_NON_STR_KEYS))

    doc = round_trip(series)
    assert doc == [day(0), day(3), {str(day(0)): 2, str(day(2)): 1}]
    assert DaySeries.from_json(doc) == series
    series.next = None
    assert DaySeries.from_json(round_trip(series)) == series


# --------------------------------------------------------------------------- routing


def test_encode_decode_round_trip() -> None:
    records = [Engagement("e1", KIND_INDEX["share"], "uni", "med", T0 + 0.25, 17),
               Engagement("e\"2", 0, "med", "uni", T0, 18)]
    value = encode(3, T0 + 5, False, records)
    assert orjson.loads(value) == {
        "p": 3, "max": T0 + 5, "idle": False,
        "c": {"id": ["e1", "e\"2"], "kind": [2, 0], "src": ["uni", "med"],
              "dst": ["med", "uni"], "ts": [T0 + 0.25, T0], "offset": [17, 18]},
    }
    assert decode(value) == Routed(3, T0 + 5, False, records)
    marker = decode(encode(1, None, True))
    assert marker == Routed(1, None, True, [])
    assert isinstance(decode(encode(0, T0, False, records)).records[0], Engagement)


def test_inbound_messages_carry_only_the_inbound_columns() -> None:
    records = [Engagement("e1", 2, "uni", "med", T0 + 0.25, 17),
               Engagement("e2", 0, "med", "uni", T0, 18)]
    value = encode(2, T0, False, records, INBOUND_FIELDS)
    assert orjson.loads(value)["c"] == {"dst": ["med", "uni"], "ts": [T0 + 0.25, T0],
                                        "offset": [17, 18]}
    routed = decode_columns(value, INBOUND_FIELDS)
    assert (routed.source, routed.max_ts, routed.idle, routed.size) == (2, T0, False, 2)
    assert routed.columns["dst"] == ["med", "uni"]
    assert routed.columns["ts"].tolist() == [T0 + 0.25, T0]
    assert routed.columns["offset"].tolist() == [17, 18]
    with pytest.raises(ValueError, match="malformed internal message"):
        decode(value)  # not a pairs-topic message: no ids, kinds or sources
    marker = decode_columns(encode(1, None, True, (), INBOUND_FIELDS), INBOUND_FIELDS)
    assert (marker.size, marker.columns["dst"], len(marker.columns["ts"])) == (0, [], 0)


def test_the_earlier_row_form_is_still_read() -> None:
    """Messages written before the columns (``"r"``: a list per record) that
    are still in flight across an upgrade decode to the same records."""
    records = [Engagement("e1", 2, "uni", "med", T0 + 0.25, 17),
               Engagement("e2", 0, "med", "uni", T0, 18)]
    rows = orjson.dumps({"p": 3, "max": T0 + 5, "idle": False, "r": [list(r) for r in records]})
    assert decode(rows) == decode(encode(3, T0 + 5, False, records))
    inbound = decode_columns(rows, INBOUND_FIELDS)
    assert inbound.columns["dst"] == ["med", "uni"] and inbound.size == 2
    assert decode(b'{"p": 1, "max": null, "idle": true, "r": []}') == Routed(1, None, True, [])


@pytest.mark.parametrize("value", [
    b"{not json",
    b"[]",
    b"null",
    b'{"max": 1, "idle": false, "r": []}',
    b'{"p": 0, "idle": false, "r": []}',
    b'{"p": 0, "max": 1, "r": []}',
    b'{"p": 0, "max": 1, "idle": false}',
    b'{"p": "zero", "max": 1, "idle": false, "r": []}',
    b'{"p": null, "max": 1, "idle": false, "r": []}',
    b'{"p": 0, "max": "soon", "idle": false, "r": []}',
    b'{"p": 0, "max": 1, "idle": false, "r": 5}',
    b'{"p": 0, "max": 1, "idle": false, "r": [["e", 1, "a", "b", 1.0]]}',
    b'{"p": 0, "max": 1, "idle": false, "r": [["e", "like", "a", "b", 1.0, 0]]}',
    b'{"p": 0, "max": 1, "idle": false, "r": [["e", 1, "a", "b", null, 0]]}',
    b'{"p": 0, "max": 1, "idle": false, "r": [null]}',
    b'{"p": 0, "max": 1, "idle": false, "c": []}',
    b'{"p": 0, "max": 1, "idle": false, "c": {"id": [], "kind": [], "src": [], "dst": []}}',
    b'{"p": 0, "max": 1, "idle": false, "c": {"id": ["e"], "kind": [1], "src": ["a"],'
    b' "dst": ["b"], "ts": [1.0], "offset": []}}',
    b'{"p": 0, "max": 1, "idle": false, "c": {"id": ["e"], "kind": [1], "src": ["a"],'
    b' "dst": ["b"], "ts": [null], "offset": [0]}}',
    b'{"p": 0, "max": 1, "idle": false, "c": {"id": ["e"], "kind": ["like"], "src": ["a"],'
    b' "dst": ["b"], "ts": [1.0], "offset": [0]}}',
    b'{"p": 0, "max": 1, "idle": false, "c": {"id": "e", "kind": [1], "src": ["a"],'
    b' "dst": ["b"], "ts": [1.0], "offset": [0]}}',
])
def test_decode_errors_are_value_errors(value: bytes) -> None:
    with pytest.raises(ValueError, match="malformed internal message"):
        decode(value)


def test_records_go_to_the_partition_of_their_key_in_order() -> None:
    records = [Engagement(f"e{i}", 1, src, dst, T0 + i, i)
               for i, (src, dst) in enumerate([("uni", "med"), ("med", "uni"), ("lab", "uni"),
                                               ("uni", "lab"), ("med", "lab"), ("uni", "med")])]
    by_pair = by_partition(records, record_pair, 4)
    by_dst = by_partition(records, record_dst, 4)
    for grouped, key_of in ((by_pair, record_pair), (by_dst, record_dst)):
        assert sorted(r.id for rs in grouped.values() for r in rs) == sorted(r.id for r in records)
        for target, routed in grouped.items():
            assert routed == [r for r in records if partition_for(key_of(r), 4) == target]
    # both directions of a pair meet in one partition
    assert record_pair(records[0]) == record_pair(records[1]) == pair_key("uni", "med")
    assert record_dst(records[2]) == "uni"
    assert by_partition([], record_pair, 4) == {}


def test_the_router_splits_as_by_partition_does_while_it_remembers_keys() -> None:
    orgs = ["uni", "med", "lab", "ext", "zoo"]
    records = [Engagement(f"e{i}", 1, orgs[i % 5], orgs[(i * 3 + 1) % 5], T0 + i, i)
               for i in range(200) if i % 5 != (i * 3 + 1) % 5]
    router = Router(4, limit=3)  # forgets keys along the way
    columns = EngagementColumns.of(records)
    for _ in range(2):
        by_pair, by_dst = router.split(columns)
        assert ({p: list(c) for p, c in by_pair.items()},
                {p: list(c) for p, c in by_dst.items()}) == (
            by_partition(records, record_pair, 4), by_partition(records, record_dst, 4))
    one = EngagementColumns.of(records[:1])
    by_pair, by_dst = router.split(one)
    assert by_pair == {partition_for(record_pair(records[0]), 4): one}
    assert router.split(EngagementColumns()) == ({}, {})


def test_pair_key_is_symmetric_and_unambiguous() -> None:
    assert pair_key("uni", "med") == pair_key("med", "uni") == '["med","uni"]'
    assert orjson.loads(pair_key("b", "a")) == ["a", "b"]
    # ids holding separators or quotes cannot collide
    assert pair_key('a","b', "c") != pair_key("a", 'b","c')
    assert pair_key("a,b", "c") != pair_key("a", "b,c")


def test_partition_for_is_crc32_stable_and_in_range() -> None:
    # pinned: CRC-32 of the key's UTF-8 bytes, whatever the client library
    assert partition_for('["a","b"]', 8) == 1036623061 % 8 == 5
    assert partition_for('["med","uni"]', 3) == 1588832547 % 3 == 0
    keys = [pair_key(f"org{i}", f"org{j}") for i in range(20) for j in range(i)]
    for n in (1, 2, 7, 12):
        got = [partition_for(k, n) for k in keys]
        assert all(0 <= p < n for p in got)
        assert got == [partition_for(k, n) for k in keys]
    assert len({partition_for(k, 12) for k in keys}) > 6


# --------------------------------------------------------------------------- inbound stage

INBOUND_PARAMS = Params(windows=(DAY,), lateness_s=L, drop_days=3, drop_min_baseline=2,
                        drop_threshold=0.5)


class InboundFeed:
    def __init__(self) -> None:
        self.offset = 0
        self.source_offset = 0
        self.high: float | None = None

    def recs(self, src: str, dst: str, ts: float, n: int = 1) -> list[Engagement]:
        out = []
        for _ in range(n):
            out.append(Engagement(f"e{self.source_offset}", 1, src, dst, ts,
                                  self.source_offset))
            self.source_offset += 1
        return out

    def msg(self, records: Sequence[Engagement] = (),
            high: float | None = None, idle: bool = False, source: int = 0) -> Message:
        for ts in [*(r.ts for r in records), *([] if high is None else [high])]:
            self.high = ts if self.high is None else max(self.high, ts)
        message = Message(0, self.offset, encode(source, self.high, idle, records))
        self.offset += 1
        return message


def inbound_stage(params: Params = INBOUND_PARAMS, sources: int = 1,
                  tracker: dict[str, Any] | None = None,
                  states: list[tuple[str, list[Any]]] | None = None) -> InboundStage:
    stage = InboundStage(params, sources)
    stage.load(0, tracker, states or [])
    return stage


def test_inbound_drop_alert_over_every_src() -> None:
    feed, stage = InboundFeed(), inbound_stage()
    alerts = []
    for n, records in enumerate([
        feed.recs("ext", "uni", day(0) + H, 2) + feed.recs("med", "uni", day(0) + 2 * H, 2),
        feed.recs("lab", "uni", day(1) + H, 4),
        feed.recs("ext", "uni", day(2) + H, 4) + feed.recs("ext", "med", day(2) + 2 * H, 9),
        feed.recs("med", "uni", day(3) + H, 1),
    ]):
        out = stage.process(0, [feed.msg(records)])
        alerts += out.alerts
        assert out.counts.applied == len(records), n
    out = stage.process(0, [feed.msg(high=day(4) + L - 1)])
    assert out.alerts == []
    out = stage.process(0, [feed.msg(high=day(4) + L)])  # day 3 closed
    assert out.counts.drops == 1
    assert out.alerts == [drop_alert(DROP_INBOUND, "uni", "", day(3), 1, 4.0, 0.5, 3)]
    assert out.alerts[0].id == "drop_inbound:uni:2026-03-05T00:00:00Z"
    assert alerts == []
    assert set(out.states) == {"uni"}  # med's series is not due before day 5 ends
    assert out.tracker is not None and out.tracker["closed"] == day(4)


def test_inbound_alerts_only_for_watched_orgs() -> None:
    params = Params(windows=(DAY,), lateness_s=L, drop_days=3, drop_min_baseline=2,
                    watched_orgs=frozenset({"med"}))
    feed, stage = InboundFeed(), inbound_stage(params)
    stage.process(0, [feed.msg(feed.recs("ext", "uni", day(0) + H, 9))])
    out = stage.process(0, [feed.msg(high=day(10))])
    assert out.counts.drops == 1
    assert out.alerts == []


def test_inbound_skips_replays_and_redeliveries() -> None:
    feed, stage = InboundFeed(), inbound_stage()
    records = feed.recs("ext", "uni", day(0) + H, 3)
    first = feed.msg(records)
    out = stage.process(0, [first])
    assert (out.counts.applied, out.counts.replayed) == (3, 0)
    # the same internal message again
    out = stage.process(0, [first])
    assert (out.counts.applied, out.counts.replayed) == (0, 3)
    assert out.states == {}
    # stage 1 re-sent two of them with one new record
    out = stage.process(0, [feed.msg(records[1:] + feed.recs("med", "uni", day(0) + 2 * H))])
    assert (out.counts.applied, out.counts.replayed) == (1, 2)
    state = InboundState.from_json(orjson.loads(out.states["uni"]))
    assert state.series is not None and state.series.counts == {day(0): 4}
    assert state.applied == {0: 3}


def test_inbound_late_records_after_an_idle_source_wakes() -> None:
    stage = inbound_stage(sources=2)
    wake = [Engagement("late", 1, "ext", "uni", T0, 0), Engagement("ok", 1, "ext", "uni",
                                                                    T0 + 1, 1)]
    out = stage.process(0, [
        Message(0, 0, encode(0, T0 + L, False)), Message(0, 1, encode(1, None, True)),
        Message(0, 2, encode(1, T0 + 1, False, wake)),
    ])
    assert (out.counts.late, out.counts.applied) == (1, 1)
    state = InboundState.from_json(orjson.loads(out.states["uni"]))
    assert state.series is not None and state.series.counts == {DAY0: 1}
    assert state.applied == {1: 1}


def test_inbound_state_and_reload() -> None:
    feed, stage = InboundFeed(), inbound_stage()
    out = stage.process(0, [feed.msg(feed.recs("ext", "uni", day(0) + H, 6))])
    doc = orjson.loads(out.states["uni"])
    assert orjson.loads(InboundState.from_json(doc).to_bytes()) == doc
    assert InboundState.from_json([{}, None]) == InboundState()
    # a fresh stage from the tables gives the same alert
    fresh = InboundStage(INBOUND_PARAMS, 1)
    assert not fresh.owns(0)
    fresh.load(0, orjson.loads(orjson.dumps(out.tracker)), [("uni", doc)])
    assert fresh.owns(0)
    later = feed.msg(high=day(4) + L)
    assert fresh.process(0, [later]).alerts == stage.process(0, [later]).alerts != []
    fresh.forget(0)
    assert not fresh.owns(0)


def _inbound_scenario(seed: int, sources: int) -> list[Message]:
    """Internal inbound messages of one partition from ``sources`` sources:
    records in rough time order per source (some behind the closed time),
    redelivered messages, re-sent records with new ones, idle markers."""
    rng = random.Random(seed)
    orgs = ["uni", "med", "lab", "ext", "zoo"]
    clock = [DAY0 + rng.randrange(H) for _ in range(sources)]
    offsets = [0] * sources
    high: dict[int, float] = {}
    values: list[bytes] = []
    for _ in range(rng.randrange(20, 60)):
        source = rng.randrange(sources)
        roll = rng.random()
        if roll < 0.1 and values:  # an earlier message again
            values.append(rng.choice(values[-5:]))
            continue
        if roll < 0.15:
            values.append(encode(source, None, True))
            continue
        records = []
        if roll < 0.25 and offsets[source] > 3:  # stage 1 re-sent a few with new ones
            back = offsets[source] - rng.randrange(1, 4)
            records += [Engagement(f"r{source}-{back}", 1, "src", rng.choice(orgs),
                                   clock[source], back)]
        for _ in range(rng.randrange(0, 8)):
            clock[source] += rng.choice([0, 60, 600, 3 * H, DAY, -2 * L])
            records.append(Engagement(f"e{source}-{offsets[source]}", 1, "src",
                                      rng.choice(orgs), clock[source], offsets[source]))
            offsets[source] += rng.choice([0, 1, 1, 1])
        records.sort(key=lambda r: r.offset)
        for r in records:
            high[source] = max(high.get(source, r.ts), r.ts)
        values.append(encode(source, high.get(source), False, records))
    return [Message(0, i, value) for i, value in enumerate(values)]


def _inbound_model(messages: Sequence[Message], sources: int) -> tuple[Any, ...]:
    """What the inbound stage must apply, record by record: a record counts
    once its offset is above what its source applied for its org before its
    message, and is applied when its time is after the closed time before its
    message."""
    tracker = WatermarkTracker(sources, L)
    applied: dict[str, dict[int, int]] = {}
    days: dict[str, list[int]] = {}
    replayed = late = 0
    for message in messages:
        routed = decode_columns(message.value, INBOUND_FIELDS)
        closed = tracker.closed
        start = {org: dict(done) for org, done in applied.items()}
        for org, ts, offset in zip(routed.columns["dst"], routed.columns["ts"].tolist(),
                                   routed.columns["offset"].tolist(), strict=True):
            if offset <= start.get(org, {}).get(routed.source, -1):
                replayed += 1
                continue
            done = applied.setdefault(org, {})
            done[routed.source] = max(done.get(routed.source, -1), offset)
            if closed is not None and ts <= closed:
                late += 1
                continue
            days.setdefault(org, []).append(day_of(ts))
        if message.offset > tracker.tag:
            tracker.observe(routed.source, routed.max_ts, routed.idle)
            tracker.tag = message.offset
        tracker.watermark()
    return applied, {org: sorted(d) for org, d in days.items()}, replayed, late


@pytest.mark.parametrize("seed", range(40))
def test_inbound_batches_apply_what_records_one_by_one_would(seed: int) -> None:
    sources = 1 + seed % 3
    rng = random.Random(seed)
    messages = _inbound_scenario(seed, sources)
    applied, days, replayed, late = _inbound_model(messages, sources)
    results = []
    for split in ("one", "all", "random"):
        stage = InboundStage(INBOUND_PARAMS, sources)
        stage.load(0, None, [])
        states: dict[str, bytes] = {}
        totals = [0, 0, 0, 0]
        alerts = []
        pending = list(messages)
        while pending:
            take = {"one": 1, "all": len(pending)}.get(split) or rng.randrange(1, 9)
            out = stage.process(0, pending[:take])
            pending = pending[take:]
            states.update(out.states)
            totals = [a + b for a, b in zip(totals, (out.counts.applied, out.counts.replayed,
                                                     out.counts.late, out.counts.drops),
                                            strict=True)]
            alerts += out.alerts
        decoded = {org: InboundState.from_json(orjson.loads(v)) for org, v in states.items()}
        assert {org: st.applied for org, st in decoded.items()} == applied
        assert totals[1:3] == [replayed, late]
        assert totals[0] == sum(map(len, days.values()))
        results.append((decoded, totals, sorted(a.id for a in alerts)))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("seed", range(40))
def test_inbound_messages_in_bulk_apply_what_record_by_record_does(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-(org, day) path gives the same states (bytes), counts and
    alerts as the per-record path, and takes the plain messages."""
    sources = 1 + seed % 3
    messages = _inbound_scenario(seed, sources)
    plain = []
    original = InboundStage._apply_plain

    def counted(self: InboundStage, *args: Any) -> bool:
        taken: bool = original(self, *args)
        plain.append(taken)
        return taken

    results = []
    for bulk in (True, False):
        if bulk:
            monkeypatch.setattr(InboundStage, "_apply_plain", counted)
        else:
            monkeypatch.setattr(InboundStage, "_apply_plain", lambda *args: False)
        stage = InboundStage(INBOUND_PARAMS, sources)
        stage.load(0, None, [])
        outs = [stage.process(0, messages[i:i + 3]) for i in range(0, len(messages), 3)]
        results.append([(o.states, o.tracker, o.alerts, o.counts, o.last_offset)
                        for o in outs])
    assert results[0] == results[1]
    assert any(plain)


# --------------------------------------------------------------------------- alerts


def test_alert_kinds() -> None:
    assert ALERT_KINDS == (SNUB, OMISSION, DROP_PAIR, DROP_INBOUND) == (
        "snub", "omission", "drop_pair", "drop_inbound")


def test_snub_alert() -> None:
    snub = Snub("ev1", "uni", "ext", KIND_INDEX["share"], T0, T0 + 72 * H)
    assert snub.kind_name == "share"
    alert = snub_alert(snub, 72 * H)
    assert (alert.id, alert.kind, alert.org, alert.other, alert.ts) == (
        "snub:ev1:uni:ext:share", SNUB, "uni", "ext", T0 + 72 * H)
    assert alert.message == "ext did not return uni's share of 2026-03-02T10:00:00Z within 72 h"
    assert alert.details == {"id": "ev1", "src": "uni", "dst": "ext", "kind": "share",
                             "ts": "2026-03-02T10:00:00Z", "snub_ts": "2026-03-05T10:00:00Z"}
    assert alert.to_json() == {
        "id": alert.id, "kind": "snub", "org": "uni", "other": "ext",
        "ts": "2026-03-05T10:00:00Z", "message": alert.message, "details": alert.details,
    }
    assert snub_alert(snub, 1.5 * H).message.endswith("within 1.5 h")
    # the same finding always has the same id
    assert snub_alert(Snub("ev1", "uni", "ext", 2, T0, T0 + H), H).id == alert.id


def test_snub_alerts_are_snub_alert_of_each() -> None:
    snubs = [Snub(f"ev{i}", "uni", "ext", i % 6, T0 + i * 0.25, T0 + i * 0.25 + 1.5 * H)
             for i in range(50)]
    assert snub_alerts(snubs, 1.5 * H) == [snub_alert(s, 1.5 * H) for s in snubs]
    assert [a.to_json() for a in snub_alerts(snubs, 1.5 * H)] == [
        snub_alert(s, 1.5 * H).to_json() for s in snubs]
    assert snub_alerts([], H) == []


def test_snubs_in_columns_give_the_rows_and_records_of_snub_objects() -> None:
    """The snubs and alerts tables' rows and the alerts topic's records from
    columns equal those the objects give (``SnubRow``, ``alert_rows``,
    ``Alert.to_json``), times with sub-second parts and a rounding carry included."""
    now = datetime(2026, 3, 9, 12, 0, 5, 250000, tzinfo=UTC)
    snubs = [Snub(f"ev{i}", f"org{i % 3}", f"org{(i + 1) % 3}", i % 6,
                  T0 + i * 0.3 + (0.9999996 if i == 7 else 0), 0.0) for i in range(40)]
    snubs = [Snub(s.id, s.src, s.dst, s.kind, s.ts, s.ts + 1.5 * H) for s in snubs]
    columns = SnubColumns.of(snubs)
    assert len(columns) == 40 and columns.snubs() == snubs
    table = BY_NAME["snubs"]
    assert columns.block("st", now).rows(table) == [
        (s.id, s.src, s.dst, s.kind_name, s.ts, s.snub_ts,
         to_utc(s.snub_ts).replace(microsecond=0), "st", now.replace(microsecond=0))
        for s in snubs]
    found = columns.alerts(1.5 * H)
    alerts = snub_alerts(snubs, 1.5 * H)
    assert found.alerts() == alerts == [snub_alert(s, 1.5 * H) for s in snubs]
    assert found.keys() == [a.id.encode() for a in alerts]
    assert found.values() == [dumps(a.to_json()) for a in alerts]
    assert found.block("st", now).rows(BY_NAME["alerts"]) == [
        row._replace(time=row.time.replace(microsecond=0),
                     created_at=row.created_at.replace(microsecond=0))
        for row in alert_rows(alerts, "st", now)]
    some = columns.where([s.src == "org1" for s in snubs])
    assert some.snubs() == [s for s in snubs if s.src == "org1"]
    assert columns.where([True] * 40) is columns
    assert SnubColumns.of([]).alerts(H).alerts() == []


def test_omission_alert() -> None:
    alert = omission_alert(Omission("p1", "med", "uni", ("dr_jones", "dr_smith"), T0))
    assert (alert.id, alert.kind, alert.org, alert.other, alert.ts) == (
        "omission:p1:med", OMISSION, "med", "uni", T0)
    assert alert.message == ("uni featured dr_jones, dr_smith of med without naming med "
                             "(post p1)")
    assert alert.details == {"post_id": "p1", "left_out": "med", "by": "uni",
                             "entities": ["dr_jones", "dr_smith"], "ts": "2026-03-02T10:00:00Z"}
    assert orjson.loads(orjson.dumps(alert.to_json()))["ts"] == "2026-03-02T10:00:00Z"


def test_drop_alerts() -> None:
    pair = drop_alert(DROP_PAIR, "uni", "ext", day(3), 1, 4.0, 0.5, 7)
    assert (pair.id, pair.kind, pair.org, pair.other, pair.ts) == (
        "drop_pair:ext:uni:2026-03-05T00:00:00Z", DROP_PAIR, "uni", "ext", float(day(3)))
    assert pair.message == ("ext engaged uni 1 times on 2026-03-05, below 0.5 x the mean of "
                            "the previous 7 days (4.0)")
    assert pair.details == {"day": "2026-03-05T00:00:00Z", "count": 1, "baseline": 4.0}
    inbound = drop_alert(DROP_INBOUND, "uni", "", day(3), 0, 5.5, 0.25, 3)
    assert (inbound.id, inbound.org, inbound.other) == (
        "drop_inbound:uni:2026-03-05T00:00:00Z", "uni", "")
    assert inbound.message == ("uni received 0 engagements on 2026-03-05, below 0.75 x the "
                               "mean of the previous 3 days (5.5)")
