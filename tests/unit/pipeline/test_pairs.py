"""Stage 2 (pipeline.pairs): windows, reciprocation, snubs, drops and rollups per
unordered org pair, driven with internal messages as stage 1 writes them."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from pipeline.alerts import DROP_PAIR, SNUB, Alert, Snub, drop_alert, snub_alert
from pipeline.engagements import KIND_INDEX
from pipeline.ingest import REASON_LATE, Engagement, Message
from pipeline.pairs import MAX_DELTAS, PairOutcome, PairStage, PairState, delta_key
from pipeline.reciprocity import Params
from pipeline.routing import encode, pair_key
from pipeline.sinks.base import PairWindowRow
from pipeline.windows import to_utc
from schemas.event import ENGAGEMENT_KINDS, format_ts
from schemas.registry import Org, Registry

H = 3600
D = 86400
DAY0 = 1772409600  # 2026-03-02T00:00:00Z
T0 = DAY0 + 10 * H  # 2026-03-02T10:00:00Z
L = 60.0  # lateness
HZ = 3 * H  # reciprocity horizon
Q = 2  # the internal partition under test
STREAM = "test-stream"
NOW = datetime(2026, 3, 20, tzinfo=UTC)
PARAMS = Params(windows=(H, D), horizon_s=HZ, lateness_s=L)

REGISTRY = Registry(
    orgs={
        "uni": Org("uni", "Example University", community="internal"),
        "med": Org("med", "Medical School", parent="uni"),  # community: uni's
        "lab": Org("lab", "Lab", parent="med", community="external"),  # its own
        "ext": Org("ext", "City Press"),  # none anywhere: external
    },
    org_of_account={},
    org_of_entity={},
)

RowKey = tuple[str, float, str, str]


class Feed:
    """Plays stage 1: engagements at consecutive offsets of each source partition,
    and internal messages at consecutive offsets of partition ``Q``."""

    def __init__(self, sources: int = 1) -> None:
        self.offset = 0
        self.source_offsets = [0] * sources
        self.high: dict[int, float] = {}
        self.ids = iter(range(10**9))

    def rec(self, src: str, dst: str, ts: float, kind: str = "like", source: int = 0,
            event_id: str | None = None) -> Engagement:
        offset = self.source_offsets[source]
        self.source_offsets[source] += 1
        return Engagement(event_id or f"e{next(self.ids)}", KIND_INDEX[kind], src, dst,
                          float(ts), offset)

    def msg(self, records: Sequence[Engagement] = (), source: int = 0, idle: bool = False,
            high: float | None = None) -> Message:
        """One internal message; the source's largest event time moves with its records
        (or to ``high``)."""
        for ts in [*(r.ts for r in records), *([] if high is None else [high])]:
            self.high[source] = max(self.high.get(source, ts), ts)
        message = Message(Q, self.offset, encode(source, self.high.get(source), idle, records))
        self.offset += 1
        return message

    def wm(self, watermark: float, source: int = 0) -> Message:
        """A marker that moves the source's watermark (largest time - lateness) to
        ``watermark``."""
        return self.msg(source=source, high=watermark + L)

    def idle(self, source: int) -> Message:
        return self.msg(source=source, idle=True)


class Harness:
    """A pair stage for partition ``Q`` plus what the sink and tables would hold."""

    def __init__(self, params: Params = PARAMS, sources: int = 1,
                 tracker: dict[str, Any] | None = None,
                 states: Iterable[tuple[str, list[Any]]] = ()) -> None:
        self.params = params
        self.sources = sources
        self.stage = PairStage(REGISTRY, params, sources)
        states = list(states)
        self.stage.load(Q, tracker, states)
        self.loaded = dict(states)
        self.outcomes: list[PairOutcome] = []
        #: what the tables hold after each batch: (tracker, table key -> snapshot
        #: or delta)
        self.tables: list[tuple[dict[str, Any] | None, dict[str, list[Any]]]] = []
        #: the stage's live states after each batch, as bytes
        self.live: list[dict[str, bytes]] = []

    def batch(self, *messages: Message) -> PairOutcome:
        out = self.stage.process(Q, messages, STREAM, NOW)
        self.outcomes.append(out)
        # a JSON round trip right away, as the changelog stores them
        states = dict(self.tables[-1][1] if self.tables else self.loaded)
        for key, doc in out.states.items():
            if doc is None:
                states.pop(key, None)  # a tombstone
            else:
                states[key] = orjson.loads(doc)
        self.tables.append((orjson.loads(orjson.dumps(out.tracker)), states))
        self.live.append({key: state.to_bytes()
                          for key, state in self.stage._partitions[Q].states.items()})
        return out

    def live_state(self, key: str) -> bytes:
        return self.stage._partitions[Q].states[key].to_bytes()

    def each(self, *messages: Message) -> list[PairOutcome]:
        """Every message in a batch of its own."""
        return [self.batch(m) for m in messages]

    def rows(self) -> list[PairWindowRow]:
        return [r for out in self.outcomes for r in out.pair_windows]

    def snubs(self) -> list[Snub]:
        return [s for out in self.outcomes for s in out.snubs]

    def alerts(self) -> list[Alert]:
        return [a for out in self.outcomes for a in out.alerts]

    def row(self, window: str, start: float, src: str, dst: str) -> PairWindowRow:
        return latest(self.rows())[(window, start, src, dst)]


def latest(rows: Iterable[PairWindowRow]) -> dict[RowKey, PairWindowRow]:
    """What the ReplacingMergeTree keeps: the newest version per key."""
    out: dict[RowKey, PairWindowRow] = {}
    for row in rows:
        key = (row.window, row.window_start.timestamp(), row.src, row.dst)
        if key not in out or row.version >= out[key].version:
            out[key] = row
    return out


def unversioned(rows: dict[Any, Any]) -> dict[Any, Any]:
    return {key: row._replace(version=0) for key, row in rows.items()}


def counts(row: PairWindowRow) -> dict[str, int]:
    kinds = dict(zip(ENGAGEMENT_KINDS, row[6:12], strict=True))
    return {k: n for k, n in kinds.items() if n}


# --------------------------------------------------------------------------- windows


def test_window_counts_value_and_row_fields() -> None:
    feed = Feed()
    h = Harness(Params(windows=(H, D), horizon_s=2 * D, lateness_s=L))  # nothing decided
    out = h.batch(feed.msg([
        feed.rec("uni", "ext", T0 + 10, "like"),
        feed.rec("uni", "ext", T0 + 20, "share"),
        feed.rec("uni", "ext", T0 + 30, "mention"),
        feed.rec("uni", "ext", T0 + H + 5, "reply"),  # next hour, same day
        feed.rec("ext", "uni", T0 + D, "thanks"),  # next day
    ]))
    rows = latest(out.pair_windows)
    assert sorted(rows) == sorted([
        ("1h", T0, "uni", "ext"), ("1h", T0 + H, "uni", "ext"), ("1d", DAY0, "uni", "ext"),
        ("1h", T0 + D, "ext", "uni"), ("1d", DAY0 + D, "ext", "uni"),
    ])
    hour = rows[("1h", T0, "uni", "ext")]
    assert hour == PairWindowRow("1h", to_utc(T0), "uni", "ext", STREAM, Q, 0, 1, 1, 0, 1, 0,
                                 6.0, 0, 0, None, 1, NOW)
    assert counts(rows[("1h", T0 + H, "uni", "ext")]) == {"reply": 1}
    assert rows[("1h", T0 + H, "uni", "ext")].value == 2.0
    day = rows[("1d", DAY0, "uni", "ext")]
    assert counts(day) == {"like": 1, "share": 1, "mention": 1, "reply": 1}
    assert day.value == 8.0
    assert counts(rows[("1d", DAY0 + D, "ext", "uni")]) == {"thanks": 1}
    assert out.counts.records == out.counts.applied == 5


def test_every_kind_has_its_column_and_weights_come_from_params() -> None:
    feed = Feed()
    h = Harness(Params(windows=(H,), horizon_s=HZ, lateness_s=L,
                       weights={"follow": 10, "thanks": 0.5}))
    h.batch(feed.msg([feed.rec("uni", "ext", T0, kind) for kind in ENGAGEMENT_KINDS]))
    row = h.row("1h", T0, "uni", "ext")
    assert row[6:12] == (1, 1, 1, 1, 1, 1)
    assert row.value == 10.5


def test_window_labels_follow_params() -> None:
    feed = Feed()
    h = Harness(Params(windows=(15 * 60, 7 * D), horizon_s=HZ, lateness_s=L))
    h.batch(feed.msg([feed.rec("uni", "ext", T0)]))
    assert {r.window for r in h.rows()} == {"15m", "1w"}
    # weekly windows are aligned to the UTC epoch (a Thursday)
    assert {r.window_start.timestamp() for r in h.rows() if r.window == "1w"} == {
        T0 // (7 * D) * (7 * D)
    }


# --------------------------------------------------------------------------- reciprocation


def test_reciprocation_is_decided_when_the_watermark_reaches_the_first_return() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0)]))
    h.batch(feed.msg([feed.rec("ext", "uni", T0 + 1000)]))
    assert h.stage.watermark(Q) == T0 + 1000 - L
    assert h.row("1h", T0, "uni", "ext").reciprocated == 0
    out = h.batch(feed.wm(T0 + 999))
    assert out.counts.reciprocated == 0
    assert h.row("1h", T0, "uni", "ext").reciprocated == 0
    out = h.batch(feed.wm(T0 + 1000))
    assert out.counts.reciprocated == 1
    row = h.row("1h", T0, "uni", "ext")
    assert (row.reciprocated, row.snubbed, row.median_reciprocate_s) == (1, 0, 1000.0)
    assert h.row("1d", DAY0, "uni", "ext").reciprocated == 1
    # the return itself is still open
    assert h.row("1h", T0, "ext", "uni")[12:15] == (1.0, 0, 0)
    assert out.snubs == []


def test_an_earlier_return_arriving_later_is_the_first_return() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0), feed.rec("ext", "uni", T0 + 500)]))
    h.batch(feed.msg([feed.rec("ext", "uni", T0 + 450)]))  # within the lateness
    h.batch(feed.wm(T0 + 450))
    assert h.row("1h", T0, "uni", "ext").median_reciprocate_s == 450.0


def test_a_return_is_strictly_after_and_at_most_the_horizon_after() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([
        feed.rec("uni", "ext", T0, event_id="same"),
        feed.rec("ext", "uni", T0, event_id="same-back"),  # same time: returns nothing
        feed.rec("uni", "med", T0, event_id="edge"),
        feed.rec("med", "uni", T0 + HZ, event_id="edge-back"),  # exactly t + H: returns
        feed.rec("uni", "lab", T0, event_id="over"),
        feed.rec("lab", "uni", T0 + HZ + 1, event_id="over-back"),  # one second too late
    ]))
    h.batch(feed.wm(T0 + HZ - 1))
    assert h.snubs() == []
    out = h.batch(feed.wm(T0 + HZ))
    assert sorted((s.id, s.src, s.dst) for s in out.snubs) == [
        ("over", "uni", "lab"), ("same", "uni", "ext"), ("same-back", "ext", "uni"),
    ]
    edge = h.row("1h", T0, "uni", "med")
    assert (edge.reciprocated, edge.snubbed, edge.median_reciprocate_s) == (1, 0, float(HZ))
    assert h.row("1h", T0, "uni", "ext")[13:16] == (0, 1, None)
    assert h.row("1h", T0, "ext", "uni")[13:16] == (0, 1, None)
    assert h.row("1h", T0, "uni", "lab")[13:16] == (0, 1, None)


def test_one_return_reciprocates_several_and_the_median_of_the_delays() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0 + s) for s in (0, 10, 20, 30)]
                     + [feed.rec("med", "ext", T0 + s) for s in (0, 40, 50)]
                     + [feed.rec("ext", "uni", T0 + 100), feed.rec("ext", "med", T0 + 100)]))
    h.batch(feed.wm(T0 + 100))
    even = h.row("1h", T0, "uni", "ext")
    assert (even.reciprocated, even.median_reciprocate_s) == (4, 85.0)  # 100 90 80 70
    odd = h.row("1h", T0, "med", "ext")
    assert (odd.reciprocated, odd.median_reciprocate_s) == (3, 60.0)  # 100 60 50


def test_decisions_wait_for_every_source_partition() -> None:
    feed, h = Feed(sources=2), Harness(sources=2)
    h.batch(feed.msg([feed.rec("uni", "ext", T0)]), feed.wm(T0 + D))
    assert h.stage.watermark(Q) is None
    assert h.snubs() == []
    h.batch(feed.wm(T0 + HZ - 1, source=1))  # the slower source holds it back
    assert h.stage.watermark(Q) == T0 + HZ - 1
    assert h.snubs() == []
    h.batch(feed.idle(1))  # idle: no longer holds it back
    assert h.stage.watermark(Q) == T0 + D
    assert [s.id for s in h.snubs()] == ["e0"]


# --------------------------------------------------------------------------- snubs


def test_snubs_when_the_watermark_reaches_t_plus_h_and_watched_alerts() -> None:
    params = Params(windows=(H, D), horizon_s=HZ, lateness_s=L, watched_orgs=frozenset({"uni"}))
    feed, h = Feed(), Harness(params)
    h.batch(feed.msg([
        feed.rec("uni", "ext", T0, "share", event_id="a"),
        feed.rec("ext", "med", T0 + 5, "follow", event_id="b"),
        feed.rec("med", "ext", T0 + 5, "like", event_id="c"),  # same time: no return
    ]))
    out = h.batch(feed.wm(T0 + HZ + 4))
    assert out.snubs == [Snub("a", "uni", "ext", KIND_INDEX["share"], T0, T0 + HZ)]
    out = h.batch(feed.wm(T0 + HZ + 5))
    assert sorted(out.snubs, key=lambda s: s.id) == [
        Snub("b", "ext", "med", KIND_INDEX["follow"], T0 + 5, T0 + 5 + HZ),
        Snub("c", "med", "ext", KIND_INDEX["like"], T0 + 5, T0 + 5 + HZ),
    ]
    assert out.counts.snubs == 2
    # only uni's findings are alerts
    assert h.alerts() == [snub_alert(h.snubs()[0], HZ)]
    alert = h.alerts()[0]
    assert (alert.id, alert.kind, alert.org, alert.other, alert.ts) == (
        "snub:a:uni:ext:share", SNUB, "uni", "ext", T0 + HZ)
    snub = h.snubs()[0]
    assert (snub.id, snub.src, snub.dst, snub.kind_name, format_ts(snub.ts),
            format_ts(snub.snub_ts)) == ("a", "uni", "ext", "share", "2026-03-02T10:00:00Z",
                                         "2026-03-02T13:00:00Z")
    assert h.row("1d", DAY0, "ext", "med").snubbed == 1
    # every org is watched by default
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("ext", "med", T0)]), feed.wm(T0 + HZ))
    assert [a.org for a in h.alerts()] == ["ext"]


def test_a_return_after_the_horizon_does_not_undo_a_snub() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0)]), feed.wm(T0 + HZ))
    h.batch(feed.msg([feed.rec("ext", "uni", T0 + HZ + 1)]), feed.wm(T0 + 2 * HZ + 1))
    row = h.row("1h", T0, "uni", "ext")
    assert (row.reciprocated, row.snubbed) == (0, 1)
    assert len(h.snubs()) == 2  # the late return is itself snubbed


def test_an_event_mentioning_two_accounts_of_one_org_is_one_snub_record() -> None:
    feed, h = Feed(), Harness()
    first = feed.rec("uni", "ext", T0, "mention", event_id="post")
    twin = first._replace()  # stage 1 routes one record per mentioned account
    h.batch(feed.msg([first, twin]), feed.wm(T0 + HZ))
    row = h.row("1h", T0, "uni", "ext")
    assert (row.mentions, row.snubbed) == (2, 2)  # engagements, not snub records
    assert h.snubs() == [Snub("post", "uni", "ext", KIND_INDEX["mention"], T0, T0 + HZ)]
    assert [a.id for a in h.alerts()] == ["snub:post:uni:ext:mention"]


# --------------------------------------------------------------------------- redelivery


def test_redelivered_records_are_skipped() -> None:
    feed, h = Feed(), Harness()
    recs = [feed.rec("uni", "ext", T0 + i) for i in range(4)]
    h.batch(feed.msg(recs[:3]))
    # stage 1 crashed and re-sent with other batch boundaries: offsets 1 and 2 again
    out = h.batch(feed.msg(recs[1:]))
    assert (out.counts.records, out.counts.replayed, out.counts.applied) == (3, 2, 1)
    assert h.row("1h", T0, "uni", "ext").likes == 4


def test_the_same_internal_message_replayed_changes_nothing() -> None:
    feed, h = Feed(), Harness()
    first = feed.msg([feed.rec("uni", "ext", T0), feed.rec("ext", "uni", T0 + 10)])
    h.batch(first)
    tracker = h.outcomes[-1].tracker
    again = h.batch(first)
    assert (again.counts.replayed, again.counts.applied) == (2, 0)
    assert again.pair_windows == [] and again.states == {}
    assert again.tracker == tracker
    assert h.row("1h", T0, "uni", "ext").likes == 1


def test_records_sharing_a_source_offset_in_one_message_all_apply() -> None:
    feed, h = Feed(), Harness()
    post = feed.rec("uni", "ext", T0, "mention", event_id="post")
    reply = Engagement("reply", KIND_INDEX["reply"], "uni", "ext", T0 + 1, post.offset + 1)
    h.batch(feed.msg([post, post._replace(), reply, reply._replace(kind=KIND_INDEX["mention"])]))
    assert counts(h.row("1h", T0, "uni", "ext")) == {"mention": 3, "reply": 1}


def test_applied_offsets_are_per_source_partition() -> None:
    feed, h = Feed(sources=2), Harness(sources=2)
    for _ in range(5):
        feed.rec("x", "y", T0)  # burn source 0 offsets
    h.batch(feed.msg([feed.rec("uni", "ext", T0)]))  # source 0, offset 5
    h.batch(feed.msg([feed.rec("uni", "ext", T0 + 1, source=1)], source=1))  # offset 0
    assert h.row("1h", T0, "uni", "ext").likes == 2


def test_state_round_trips_through_json() -> None:
    feed, h = Feed(), Harness()
    out = h.batch(feed.msg([feed.rec("uni", "ext", T0), feed.rec("ext", "uni", T0 + 10),
                            feed.rec("ext", "uni", T0 + D)]), feed.wm(T0 + 10))
    (key, doc), = out.states.items()
    assert key == pair_key("uni", "ext") == pair_key("ext", "uni")
    doc = orjson.loads(doc)
    assert orjson.loads(PairState.from_json(doc).to_bytes()) == doc
    state = PairState.from_json(doc)
    assert (state.lo, state.hi, state.applied) == ("ext", "uni", {0: 2})


# --------------------------------------------------------------------------- late after idle


def test_records_behind_the_watermark_after_an_idle_source_wakes_are_late() -> None:
    feed, h = Feed(sources=2), Harness(sources=2)
    h.batch(feed.msg([feed.rec("uni", "ext", T0)]), feed.idle(1))
    h.batch(feed.wm(T0 + 1000))
    assert h.stage.watermark(Q) == T0 + 1000
    late = feed.rec("ext", "uni", T0 + 1000, source=1, event_id="late")  # at the watermark
    fine = feed.rec("ext", "uni", T0 + 1001, source=1, event_id="fine")
    wake = feed.msg([late, fine], source=1)
    out = h.batch(wake)
    assert out.counts.late == 1 and out.counts.applied == 1
    assert len(out.dead_letters) == 1
    dead = out.dead_letters[0]
    assert (dead.partition, dead.offset, dead.item, dead.reason) == (1, late.offset, 0,
                                                                       REASON_LATE)
    assert dead.raw == wake.value
    assert h.row("1h", T0, "ext", "uni").likes == 1  # only "fine"
    # the watermark never moves back, although source 1 is behind
    assert h.stage.watermark(Q) == T0 + 1000
    # "fine" returns the like of T0 once the watermark reaches it
    h.batch(feed.wm(T0 + 1001), feed.wm(T0 + 1001, source=1))
    assert h.row("1h", T0, "uni", "ext").median_reciprocate_s == 1001.0
    # a redelivery of the late record is not dead-lettered twice
    assert h.batch(feed.msg([late], source=1)).dead_letters == []


# --------------------------------------------------------------------------- drops


DROP_PARAMS = Params(windows=(D,), horizon_s=HZ, lateness_s=L, drop_days=3,
                     drop_min_baseline=2, drop_threshold=0.5)


def drop_feed(feed: Feed, per_day: Sequence[int], src: str = "ext", dst: str = "uni",
              ) -> list[Message]:
    return [feed.msg([feed.rec(src, dst, DAY0 + day * D + 10 * H + i) for i in range(n)])
            for day, n in enumerate(per_day) if n]


def test_drop_pair_alert_when_a_day_falls_below_the_baseline() -> None:
    feed, h = Feed(), Harness(DROP_PARAMS)
    h.each(*drop_feed(feed, [4, 4, 4, 1]))
    h.batch(feed.wm(DAY0 + 4 * D - 1))
    assert [a for a in h.alerts() if a.kind == DROP_PAIR] == []
    out = h.batch(feed.wm(DAY0 + 4 * D))  # day 3 closed
    assert out.counts.drops == 1
    expected = drop_alert(DROP_PAIR, "uni", "ext", DAY0 + 3 * D, 1, 4.0, 0.5, 3)
    assert out.alerts == [expected]
    assert (expected.id, expected.org, expected.other) == (
        "drop_pair:ext:uni:2026-03-05T00:00:00Z", "uni", "ext")


def test_no_drop_without_enough_days_or_baseline_or_when_not_watched() -> None:
    # too few days before the empty ones, until there are enough
    feed, h = Feed(), Harness(DROP_PARAMS)
    h.each(*drop_feed(feed, [6]), feed.wm(DAY0 + 3 * D))
    assert sum(o.counts.drops for o in h.outcomes) == 0
    assert h.batch(feed.wm(DAY0 + 4 * D)).counts.drops == 1  # day 3: 0 < 0.5 x 6 / 3
    # a baseline under the minimum
    feed, h = Feed(), Harness(DROP_PARAMS)
    h.each(*drop_feed(feed, [2, 1, 2, 0]), feed.wm(DAY0 + 10 * D))
    assert sum(o.counts.drops for o in h.outcomes) == 0
    # exactly (1 - threshold) x the baseline is not below it
    feed, h = Feed(), Harness(DROP_PARAMS)
    h.each(*drop_feed(feed, [4, 4, 4, 2]), feed.wm(DAY0 + 4 * D))
    assert sum(o.counts.drops for o in h.outcomes) == 0
    # a drop of an unwatched receiving org is counted, not alerted
    params = Params(windows=(D,), horizon_s=HZ, lateness_s=L, drop_days=3,
                    drop_min_baseline=2, watched_orgs=frozenset({"ext"}))
    feed, h = Feed(), Harness(params)
    h.each(*drop_feed(feed, [4, 4, 4]), feed.wm(DAY0 + 4 * D))
    assert sum(o.counts.drops for o in h.outcomes) == 1
    assert [a.kind for a in h.alerts()] == [SNUB] * 12  # ext's snubs, no drop


def test_an_empty_day_after_a_busy_series_is_a_drop_once() -> None:
    feed, h = Feed(), Harness(DROP_PARAMS)
    h.each(*drop_feed(feed, [3, 3, 3]), feed.wm(DAY0 + 20 * D))
    drops = [a for a in h.alerts() if a.kind == DROP_PAIR]
    assert [(a.ts, a.details["count"]) for a in drops] == [(DAY0 + 3 * D, 0),
                                                            (DAY0 + 4 * D, 0)]


# --------------------------------------------------------------------------- windows retire


def test_a_window_retired_in_the_batch_that_changed_it_still_gets_its_last_row() -> None:
    feed, h = Feed(), Harness()
    out = h.batch(feed.msg([feed.rec("uni", "ext", T0)]), feed.wm(T0 + 2 * D))
    row = latest(out.pair_windows)[("1h", T0, "uni", "ext")]
    assert (row.likes, row.snubbed) == (1, 1)
    assert latest(out.pair_windows)[("1d", DAY0, "uni", "ext")].snubbed == 1
    state = PairState.from_json(orjson.loads(out.states[pair_key("uni", "ext")]))
    assert state.windows == {} and state.pending == ([], [])


# --------------------------------------------------------------------------- snapshots and deltas


def test_loading_snapshots_and_deltas_gives_back_the_live_states_after_every_batch() -> None:
    assert any(not key.endswith("]") for _, table in CLEAN.tables for key in table)
    for (tracker, table), live in zip(CLEAN.tables, CLEAN.live, strict=True):
        loaded = Harness(sources=2, tracker=tracker, states=table.items())
        states = loaded.stage._partitions[Q].states
        assert {key: state.to_bytes() for key, state in states.items()} == live


def test_a_busy_pair_writes_its_new_engagements_not_its_whole_state() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0 + i) for i in range(200)]))
    key = pair_key("uni", "ext")
    snapshot = h.outcomes[-1].states[key]
    assert snapshot is not None and len(snapshot) > 5000
    out = h.batch(feed.msg([feed.rec("uni", "ext", T0 + 300)]))
    (written, delta), = out.states.items()
    assert written == delta_key(key, 1) and delta is not None and len(delta) < 200
    assert orjson.loads(h.live[-1][key]) == orjson.loads(
        Harness(tracker=h.tables[-1][0], states=h.tables[-1][1].items()).live_state(key))


def test_deltas_give_way_to_a_snapshot_that_deletes_them() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0 + i) for i in range(20)]))
    key = pair_key("uni", "ext")
    for deltas in range(100):
        out = h.batch(feed.msg([feed.rec("ext", "uni", T0 + 100 + deltas)]))
        if key in out.states:  # the snapshot: the deltas before it go
            assert deltas > 0
            assert [k for k, v in out.states.items() if v is None] == [
                delta_key(key, n) for n in range(1, deltas + 1)]
            assert next(iter(out.states)) == key
            break
    else:
        pytest.fail("no snapshot after 100 deltas")
    assert set(h.tables[-1][1]) == {key}


def test_no_more_than_max_deltas_on_a_snapshot() -> None:
    feed, h = Feed(), Harness()
    h.batch(feed.msg([feed.rec("uni", "ext", T0 + i) for i in range(2000)]))
    key = pair_key("uni", "ext")
    for i in range(MAX_DELTAS + 1):
        h.batch(feed.msg([feed.rec("ext", "uni", T0 + 3000 + i)]))
    assert len(h.tables[-1][1]) == 1  # the snapshot after MAX_DELTAS deltas, alone
    assert key in h.outcomes[-1].states


def test_leftover_deltas_of_an_older_snapshot_are_ignored_and_deleted_later() -> None:
    """A crash between a new snapshot and the deletion of the deltas before it
    leaves those deltas behind: they are not applied to the new snapshot, and the
    pair's next snapshot deletes them."""
    feed, h = Feed(), Harness()
    key = pair_key("uni", "ext")
    h.batch(feed.msg([feed.rec("uni", "ext", T0 + i) for i in range(20)]))
    old: dict[str, list[Any]] = {}
    while True:
        out = h.batch(feed.msg([feed.rec("ext", "uni", T0 + 100 + len(h.outcomes))]))
        if key in out.states:
            break
        old.update(h.tables[-1][1])
    leftovers = {k: v for k, v in old.items() if k != key}
    assert leftovers
    tracker, table = h.tables[-1]
    crashed = Harness(tracker=tracker, states=[*table.items(), *leftovers.items()])
    assert crashed.live_state(key) == h.live[-1][key]
    # the same input on both: the crashed table's next snapshot deletes the leftovers
    for i in range(200):
        message = feed.msg([feed.rec("uni", "ext", T0 + 1000 + i)])
        h.batch(message)
        out = crashed.batch(message)
        if key in out.states:
            break
    assert key in out.states and set(leftovers) <= {k for k, v in out.states.items() if v is None}
    assert set(crashed.tables[-1][1]) == set(h.tables[-1][1]) == {key}
    assert crashed.live[-1] == h.live[-1]


# --------------------------------------------------------------------------- crash and replay

ORGS = ("uni", "med", "lab", "ext")


def scenario() -> list[list[Message]]:
    """Batches of internal messages from two source partitions: engagements among
    four orgs over several hours (within the lateness per source), source 1 idle
    for a while and waking behind the watermark, then the end of input."""
    rnd = random.Random(20260302)
    feed = Feed(sources=2)
    clock = [T0, T0]
    batches: list[list[Message]] = []
    for b in range(30):
        batch = []
        for source in (0, 1):
            if source == 1 and 12 <= b < 18:
                if b == 12:
                    batch.append(feed.idle(1))
                continue
            records = []
            for _ in range(rnd.randint(0, 3)):
                clock[source] += rnd.randint(0, 1500)
                ts = clock[source] - rnd.randint(0, int(L) - 1)
                src, dst = rnd.sample(ORGS, 2)
                records.append(feed.rec(src, dst, ts, rnd.choice(ENGAGEMENT_KINDS), source))
            if records or rnd.random() < 0.5:
                batch.append(feed.msg(records, source))
        if batch:
            batches.append(batch)
    batches.append([feed.idle(0), feed.idle(1)])
    return batches


SCENARIO = scenario()
N_BATCHES = len(SCENARIO)


def run_clean() -> Harness:
    h = Harness(sources=2)
    for batch in SCENARIO:
        h.batch(*batch)
    return h


CLEAN = run_clean()


def test_the_scenario_exercises_everything() -> None:
    total = CLEAN.outcomes
    assert sum(o.counts.reciprocated for o in total) > 10
    assert sum(o.counts.snubs for o in total) > 10
    assert sum(o.counts.late for o in total) > 0
    assert len(latest(CLEAN.rows())) > 40


def test_row_versions_never_decrease_and_a_version_means_one_content() -> None:
    seen: dict[RowKey, PairWindowRow] = {}
    for row in CLEAN.rows():
        key = (row.window, row.window_start.timestamp(), row.src, row.dst)
        before = seen.get(key)
        if before is not None:
            assert row.version >= before.version
            if row.version == before.version:
                assert row == before
        seen[key] = row


def test_deciding_once_per_batch_equals_deciding_after_every_message() -> None:
    """The stage decides at a batch's last watermark only; a batch of every message
    gives what a batch per message gives (figures, snubs, alerts, dead letters)."""
    messages = [m for batch in SCENARIO for m in batch]
    apart, together = Harness(sources=2), Harness(sources=2)
    apart.each(*messages)
    together.batch(*messages)
    assert unversioned(latest(together.rows())) == unversioned(latest(apart.rows()))
    assert set(together.snubs()) == set(apart.snubs())
    assert sorted(a.id for a in together.alerts()) == sorted(a.id for a in apart.alerts())
    late = [(d.partition, d.offset) for o in apart.outcomes for d in o.dead_letters]
    assert [(d.partition, d.offset) for d in together.outcomes[0].dead_letters] == late
    assert late


@pytest.mark.parametrize("grouping", ["same", "one", "fives"])
@pytest.mark.parametrize("rewind", [0, 3])
@pytest.mark.parametrize("crash_after", range(0, N_BATCHES, 4))
def test_crash_then_replay_from_an_earlier_snapshot_matches_a_clean_run(
    crash_after: int, rewind: int, grouping: str
) -> None:
    """The tables hold the state after batch ``crash_after``; the sink holds the rows
    of two more batches (their table writes were lost). Input is re-delivered from
    ``rewind`` batches before the snapshot's next one, with the same batch boundaries,
    in one batch or five messages at a time: the newest rows are a clean run's."""
    tracker, states = CLEAN.tables[crash_after]
    sunk = CLEAN.outcomes[:crash_after + 3]
    h = Harness(sources=2, tracker=tracker, states=states.items())
    batches = SCENARIO[max(0, crash_after + 1 - rewind):]
    replay = [m for batch in batches for m in batch]
    if grouping == "same":
        for batch in batches:
            h.batch(*batch)
    elif grouping == "one":
        h.batch(*replay)
    else:
        for i in range(0, len(replay), 5):
            h.batch(*replay[i:i + 5])
    rows = [r for o in sunk for r in o.pair_windows] + h.rows()
    if grouping == "same":
        assert latest(rows) == latest(CLEAN.rows())
    # a version is the pair's last change at the end of a batch: with other batch
    # boundaries it may be higher, with the same figures
    assert unversioned(latest(rows)) == unversioned(latest(CLEAN.rows()))
    snubs = {s for o in sunk for s in o.snubs} | set(h.snubs())
    assert snubs == set(CLEAN.snubs())
    alerts = {a.id for o in sunk for a in o.alerts} | {a.id for a in h.alerts()}
    assert alerts == {a.id for a in CLEAN.alerts()}
    assert h.stage.watermark(Q) == CLEAN.stage.watermark(Q)


def test_replay_after_the_sink_was_written_but_the_tables_were_not() -> None:
    """app.process_pairs writes results (sink, DLQ, alerts) before the pair table:
    a crash in between leaves the sink ahead of the tables, and the replay against
    the older tables produces the same results again (never fewer)."""
    for crash_after in range(N_BATCHES - 1):
        tracker, states = CLEAN.tables[crash_after]  # the next batch's tables were lost
        sunk = CLEAN.outcomes[:crash_after + 2]  # ... but its results reached the sink
        h = Harness(sources=2, tracker=tracker, states=states.items())
        h.batch(*[m for batch in SCENARIO[crash_after + 1:] for m in batch])
        rows = [r for o in sunk for r in o.pair_windows] + h.rows()
        assert unversioned(latest(rows)) == unversioned(latest(CLEAN.rows())), (
            f"rows differ after batch {crash_after + 1}")
        snubs = {s for o in sunk for s in o.snubs} | set(h.snubs())
        assert snubs == set(CLEAN.snubs()), f"snubs differ after batch {crash_after + 1}"


# --------------------------------------------------------------------------- assignment


def test_load_forget_owns() -> None:
    stage = PairStage(REGISTRY, PARAMS, 1)
    assert not stage.owns(Q) and stage.watermark(Q) is None
    stage.load(Q, None, [])
    assert stage.owns(Q) and stage.watermark(Q) is None
    stage.forget(Q)
    assert not stage.owns(Q)
    stage.forget(Q)  # forgetting twice is fine
