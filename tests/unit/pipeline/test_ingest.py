"""Engagement resolution and batch pre-aggregation (pure; dicts stand in for Faust tables)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest

from pipeline.aggregate import (
    N_KINDS,
    OFFSET_SLOT,
    Aggregator,
    BatchOutcome,
    Counts,
    DeadLetter,
    Message,
    PairKey,
    PairState,
    split_message,
)
from pipeline.engagements import KIND_INDEX, MENTION, Resolution, raw_engagements, resolve
from schemas.event import ENGAGEMENT_KINDS, REASON_INVALID_EVENT, REASON_INVALID_JSON, Event
from schemas.registry import Org, Registry

H = 3600
D = 86400
DAY0 = 1772409600  # 2026-03-02T00:00:00Z
T0 = DAY0 + 10 * H  # 2026-03-02T10:00:00Z

REGISTRY = Registry(
    orgs={
        "uni": Org("uni", "Example University"),
        "med": Org("med", "Medical School", parent="uni", community="internal"),
        "ext": Org("ext", "City Press", community="external"),
    },
    org_of_account={
        "uni_main": "uni",
        "uni_news": "uni",
        "med_news": "med",
        "ext_a": "ext",
    },
    org_of_entity={"dr_smith": "med"},
)

_ids = iter(range(10**9))


def event(kind: str = "like", actor: str = "uni_main", target: str | None = "med_news",
          ts: float | str = T0, event_id: str | None = None, **extra: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": event_id or f"ev{next(_ids)}", "ts": ts, "kind": kind,
                           "actor": actor}
    if target is not None:
        obj["target"] = target
    obj.update(extra)
    return obj


def raw(obj: Any) -> bytes:
    return orjson.dumps(obj)


def messages(objs: Sequence[Any], partition: int = 0, first_offset: int = 0) -> list[Message]:
    """One message per object (bytes are passed through) at consecutive offsets."""
    return [
        Message(partition, first_offset + i, obj if isinstance(obj, bytes) else raw(obj))
        for i, obj in enumerate(objs)
    ]


def vec(offset: int, **counts: int) -> PairState:
    """A pair state vector: counts by kind name plus the applied-offset tag."""
    state = [0] * (N_KINDS + 1)
    for kind, n in counts.items():
        state[KIND_INDEX[kind]] = n
    state[OFFSET_SLOT] = offset
    return state


class Store:
    """What the Faust tables persist: absolute pair states and the dedup index."""

    def __init__(self) -> None:
        self.pair_states: dict[PairKey, PairState] = {}
        self.first_seen: dict[str, tuple[int, int, int]] = {}

    def apply(self, outcome: BatchOutcome) -> BatchOutcome:
        self.pair_states.update({k: list(v) for k, v in outcome.pair_states.items()})
        self.first_seen.update(outcome.first_seen)
        return outcome

    def counts(self) -> dict[PairKey, list[int]]:
        """Pair counts without the offset tags (what ends up in reports)."""
        return {k: v[:OFFSET_SLOT] for k, v in self.pair_states.items()}


def run(batches: Iterable[Sequence[Message]], windows: Sequence[int] = (H, D),
        store: Store | None = None) -> tuple[Store, list[BatchOutcome]]:
    store = store if store is not None else Store()
    agg = Aggregator(REGISTRY, windows)
    outcomes = [store.apply(agg.process(batch, store.pair_states, store.first_seen))
                for batch in batches]
    return store, outcomes


def process(msgs: Sequence[Message], windows: Sequence[int] = (H, D)) -> BatchOutcome:
    return Aggregator(REGISTRY, windows).process(msgs, {}, {})


# --------------------------------------------------------------------------- engagements


def test_kind_index_follows_engagement_kinds() -> None:
    assert list(KIND_INDEX) == list(ENGAGEMENT_KINDS)
    assert [KIND_INDEX[k] for k in ENGAGEMENT_KINDS] == list(range(N_KINDS))
    assert MENTION == KIND_INDEX["mention"] == 4
    assert OFFSET_SLOT == N_KINDS == 6


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        (Event("e", T0, "like", "a", "b"), [("b", KIND_INDEX["like"])]),
        (Event("e", T0, "follow", "a", "b"), [("b", KIND_INDEX["follow"])]),
        (Event("e", T0, "thanks", "a", "b"), [("b", KIND_INDEX["thanks"])]),
        (Event("e", T0, "mention", "a", "b"), [("b", MENTION)]),
        (Event("e", T0, "unfollow", "a", "b"), []),
        (Event("e", T0, "post", "a"), []),
        (Event("e", T0, "post", "a", "b"), []),
        (Event("e", T0, "post", "a", mentions=("b", "c", "b")), [("b", MENTION), ("c", MENTION)]),
        (Event("e", T0, "reply", "a", "b", mentions=("b",)),
         [("b", KIND_INDEX["reply"]), ("b", MENTION)]),
        (Event("e", T0, "like", "a", "b", mentions=("c",)), [("b", KIND_INDEX["like"])]),
        (Event("e", T0, "share", "a", "b", mentions=("c",)), [("b", KIND_INDEX["share"])]),
        (Event("e", T0, "unfollow", "a", "b", mentions=("c",)), []),
    ],
)
def test_raw_engagements(ev: Event, expected: list[tuple[str, int]]) -> None:
    assert list(raw_engagements(ev)) == expected


@pytest.mark.parametrize(
    ("actor", "target", "expected"),
    [
        ("uni_main", "med_news", (Resolution.PAIR, "uni", "med")),
        ("med_news", "uni_main", (Resolution.PAIR, "med", "uni")),
        ("uni_main", "uni_news", (Resolution.SAME_ORG, "uni", "uni")),
        ("uni_main", "uni_main", (Resolution.SAME_ORG, "uni", "uni")),
        ("uni_main", "stranger", (Resolution.UNMAPPED, "", "")),
        ("stranger", "uni_main", (Resolution.UNMAPPED, "", "")),
        ("stranger", "stranger", (Resolution.UNMAPPED, "", "")),
        # entities are not accounts
        ("uni_main", "dr_smith", (Resolution.UNMAPPED, "", "")),
    ],
)
def test_resolve(actor: str, target: str, expected: tuple[Resolution, str, str]) -> None:
    assert resolve(REGISTRY, actor, target) == expected


# --------------------------------------------------------------------------- counting


def test_counts_per_kind_per_pair_per_window() -> None:
    out = process(messages([
        event("like", ts=T0 + 10),
        event("share", ts=T0 + 20),
        event("follow", actor="med_news", target="uni_main", ts=T0 + 30),
        event("like", ts=T0 + H + 5),  # next hour, same day
        event("thanks", actor="ext_a", target="uni_news", ts=T0 + D),  # next day
    ]))
    assert out.pair_states == {
        (0, "1h", T0, "uni", "med"): vec(1, like=1, share=1),
        (0, "1h", T0 + H, "uni", "med"): vec(3, like=1),
        (0, "1d", DAY0, "uni", "med"): vec(3, like=2, share=1),
        (0, "1h", T0, "med", "uni"): vec(2, follow=1),
        (0, "1d", DAY0, "med", "uni"): vec(2, follow=1),
        (0, "1h", T0 + D, "ext", "uni"): vec(4, thanks=1),
        (0, "1d", DAY0 + D, "ext", "uni"): vec(4, thanks=1),
    }
    assert out.counts.as_dict() == {
        "messages": 5, "events": 5, "valid": 5, "duplicates": 0, "replayed": 0,
        "dead_lettered": 0, "engagements": 5, "same_org": 0, "unmapped": 0,
    }
    assert out.dead_letters == []
    assert out.last_offsets == {0: 4}


def test_every_engagement_kind_has_its_slot() -> None:
    kinds = ["follow", "like", "share", "reply", "mention", "thanks"]
    out = process(messages([event(k) for k in kinds]), windows=[D])
    assert out.pair_states == {
        (0, "1d", DAY0, "uni", "med"): [1, 1, 1, 1, 1, 1, 5],
    }


def test_rfc3339_ts_with_offset_lands_in_the_utc_window() -> None:
    # 23:30 at -02:00 is 01:30 UTC the next day
    out = process(messages([event(ts="2026-03-02T23:30:00-02:00")]), windows=[H, D])
    assert set(out.pair_states) == {
        (0, "1h", DAY0 + D + H, "uni", "med"),
        (0, "1d", DAY0 + D, "uni", "med"),
    }


def test_window_labels_are_normalised() -> None:
    out = process(messages([event()]), windows=[60 * 60, 15 * 60, 7 * D])
    assert {k[1] for k in out.pair_states} == {"1h", "15m", "1w"}


def test_partition_is_part_of_the_key() -> None:
    msgs = messages([event()], partition=0) + messages([event()], partition=3, first_offset=7)
    out = process(msgs, windows=[H])
    assert out.pair_states == {
        (0, "1h", T0, "uni", "med"): vec(0, like=1),
        (3, "1h", T0, "uni", "med"): vec(7, like=1),
    }
    assert out.last_offsets == {0: 0, 3: 7}


def test_mentions_on_post_and_reply() -> None:
    out = process(messages([
        # one mention per distinct account: med_news listed twice counts once
        event("post", target=None, mentions=["med_news", "ext_a", "med_news"]),
        # a reply is a reply to its target plus a mention of each mentioned account
        event("reply", target="med_news", mentions=["med_news"]),
        # mentions on other kinds are ignored
        event("like", target="med_news", mentions=["ext_a", "med_news"]),
        event("share", target="ext_a", mentions=["med_news"]),
    ]), windows=[H])
    assert out.pair_states == {
        (0, "1h", T0, "uni", "med"): vec(2, mention=2, reply=1, like=1),
        (0, "1h", T0, "uni", "ext"): vec(3, mention=1, share=1),
    }
    assert out.counts.engagements == 6


def test_mention_kind_event_counts_once() -> None:
    out = process(messages([event("mention", mentions=["med_news"])]), windows=[H])
    assert out.pair_states == {(0, "1h", T0, "uni", "med"): vec(0, mention=1)}


def test_unfollow_and_post_are_not_engagements() -> None:
    out = process(messages([
        event("unfollow"),
        event("post", target=None),
        event("post", target="med_news"),
    ]))
    assert out.pair_states == {}
    assert out.counts.valid == 3
    assert out.counts.engagements == 0
    assert out.counts.same_org == 0
    assert out.counts.unmapped == 0
    assert len(out.first_seen) == 3


def test_same_org_is_counted_but_has_no_pair() -> None:
    out = process(messages([
        event("like", actor="uni_main", target="uni_news"),
        event("post", actor="uni_main", target=None, mentions=["uni_news", "uni_main"]),
    ]))
    assert out.pair_states == {}
    assert out.counts.same_org == 3
    assert out.counts.engagements == 0


def test_parent_and_child_orgs_are_a_pair() -> None:
    out = process(messages([event(actor="med_news", target="uni_main")]), windows=[D])
    assert out.pair_states == {(0, "1d", DAY0, "med", "uni"): vec(0, like=1)}


def test_unknown_accounts_are_unmapped() -> None:
    out = process(messages([
        event(actor="uni_main", target="stranger"),
        event(actor="stranger", target="uni_main"),
        event("post", target=None, mentions=["stranger", "med_news"]),
    ]), windows=[H])
    assert out.counts.unmapped == 3
    assert out.counts.engagements == 1
    assert out.counts.valid == 3
    assert out.pair_states == {(0, "1h", T0, "uni", "med"): vec(2, mention=1)}


# --------------------------------------------------------------------------- dead letters


@pytest.mark.parametrize("value", [b"{not json", b"\xff\xfe not utf-8", b"", b'{"id": "e1",'])
def test_invalid_json_is_dead_lettered_with_original_bytes(value: bytes) -> None:
    msg = Message(2, 41, value, key=b"k1")
    out = process([msg])
    assert len(out.dead_letters) == 1
    dead = out.dead_letters[0]
    assert (dead.partition, dead.offset, dead.item) == (2, 41, 0)
    assert dead.reason == REASON_INVALID_JSON
    assert dead.error
    assert dead.raw == value
    assert dead.key == b"k1"
    assert out.counts.as_dict() == {
        "messages": 1, "events": 1, "valid": 0, "duplicates": 0, "replayed": 0,
        "dead_lettered": 1, "engagements": 0, "same_org": 0, "unmapped": 0,
    }
    assert out.pair_states == {}
    assert out.last_offsets == {2: 41}


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (b'{"id": "e1", "ts": 1772445600, "kind": "share", "actor": "uni_main"}',
         "target is required"),
        (b'{"id": "e1", "ts": "2026-03-02T10:00:00", "kind": "like", "actor": "a", "target": "b"}',
         "no UTC offset"),
        (b'{"id": "e1", "ts": 0, "kind": "poke", "actor": "a", "target": "b"}', "kind"),
        (b'"just a string"', "expected a JSON object"),
        (b"null", "expected a JSON object"),
    ],
)
def test_invalid_event_is_dead_lettered_with_original_bytes(value: bytes, message: str) -> None:
    out = process([Message(1, 9, value)])
    assert out.dead_letters == [
        DeadLetter(1, 9, 0, REASON_INVALID_EVENT, out.dead_letters[0].error, value, None)
    ]
    assert message in out.dead_letters[0].error
    assert out.counts.dead_lettered == 1
    assert out.counts.valid == 0


def test_dead_letters_do_not_stop_the_batch() -> None:
    out = process(messages([b"{bad", event(), b"[", event()]), windows=[H])
    assert [d.offset for d in out.dead_letters] == [0, 2]
    assert out.pair_states == {(0, "1h", T0, "uni", "med"): vec(3, like=2)}
    assert out.counts.messages == 4
    assert out.counts.valid == 2


# --------------------------------------------------------------------------- packed messages


def test_split_message() -> None:
    single = raw(event())
    items = split_message(single)
    assert isinstance(items, list)
    assert len(items) == 1
    assert isinstance(items[0][0], Event)
    assert items[0][1] == single  # the original bytes, not a re-serialization
    packed = split_message(b'[ %s , {"id": "x"} ]' % raw(event(event_id="p")))
    assert isinstance(packed, list)
    assert isinstance(packed[0][0], Event)
    assert packed[0][0].id == "p"
    assert not isinstance(packed[1][0], Event)
    assert packed[1][0].reason == REASON_INVALID_EVENT
    assert packed[1][1] == b'{"id":"x"}'
    invalid = split_message(b"{")
    assert not isinstance(invalid, list)
    assert invalid.reason == REASON_INVALID_JSON


@pytest.mark.parametrize("value", [b"[]", b"[1, 2, 3]", b'["a", "b"]', b"[{}, 1]", b"[[{}]]"])
def test_split_message_array_that_is_not_a_pack(value: bytes) -> None:
    invalid = split_message(value)
    assert not isinstance(invalid, list)
    assert invalid.reason == REASON_INVALID_EVENT


def test_packed_message_validates_each_element() -> None:
    good1 = event("like", event_id="p1")
    bad = event("share", target=None, event_id="p2")  # share without target
    good2 = event("follow", actor="ext_a", target="uni_main", event_id="p3")
    naive = event("like", ts="2026-03-02T10:00:00", event_id="p4")
    value = raw([good1, bad, good2, naive, {}])
    out = process([Message(5, 100, value, key=b"batch")], windows=[H])

    assert [(d.partition, d.offset, d.item, d.reason) for d in out.dead_letters] == [
        (5, 100, 1, REASON_INVALID_EVENT),
        (5, 100, 3, REASON_INVALID_EVENT),
        (5, 100, 4, REASON_INVALID_EVENT),
    ]
    # a dead element's bytes are that element alone, re-serialized
    assert orjson.loads(out.dead_letters[0].raw) == bad
    assert "target is required" in out.dead_letters[0].error
    assert orjson.loads(out.dead_letters[1].raw) == naive
    assert "no UTC offset" in out.dead_letters[1].error
    assert out.dead_letters[2].raw == b"{}"
    assert all(d.key == b"batch" for d in out.dead_letters)
    assert out.first_seen == {"p1": (5, 100, 0), "p3": (5, 100, 2)}
    assert out.pair_states == {
        (5, "1h", T0, "uni", "med"): vec(100, like=1),
        (5, "1h", T0, "ext", "uni"): vec(100, follow=1),
    }
    assert out.counts.messages == 1
    assert out.counts.events == 5
    assert out.counts.valid == 2
    assert out.counts.dead_lettered == 3


@pytest.mark.parametrize("value", [b"[1, 2, 3]", b'["id", "ts"]', b"[]", b"[{}, 2]"])
def test_array_that_is_not_a_pack_is_one_dead_letter(value: bytes) -> None:
    """Only a non-empty array of objects is the packed form; the rest dies whole."""
    out = process([Message(0, 7, value, key=b"k")])
    assert len(out.dead_letters) == 1
    dead = out.dead_letters[0]
    assert (dead.partition, dead.offset, dead.item) == (0, 7, 0)
    assert dead.reason == REASON_INVALID_EVENT
    assert dead.raw == value
    assert dead.key == b"k"
    assert out.counts.messages == 1
    assert out.counts.events == 1
    assert out.counts.dead_lettered == 1
    assert out.last_offsets == {0: 7}


def test_several_events_in_one_packed_message_all_count() -> None:
    out = process([Message(0, 3, raw([event(), event(), event("share")]))], windows=[H])
    assert out.pair_states == {(0, "1h", T0, "uni", "med"): vec(3, like=2, share=1)}


# --------------------------------------------------------------------------- duplicates


def test_duplicate_id_within_a_batch_counts_once() -> None:
    first = event(event_id="dup")
    changed = dict(first, kind="share")  # same id, different content: still a duplicate
    out = process(messages([first, first, changed]), windows=[H])
    assert out.pair_states == {(0, "1h", T0, "uni", "med"): vec(0, like=1)}
    assert out.counts.duplicates == 2
    assert out.counts.valid == 3
    assert out.counts.engagements == 1
    assert out.first_seen == {"dup": (0, 0, 0)}


def test_duplicate_id_within_a_packed_message() -> None:
    dup = event(event_id="dup")
    out = process([Message(0, 0, raw([dup, dup]))], windows=[H])
    assert out.counts.duplicates == 1
    assert out.pair_states == {(0, "1h", T0, "uni", "med"): vec(0, like=1)}


def test_duplicate_id_across_partitions_counts_once() -> None:
    dup = event(event_id="dup")
    out = process(messages([dup], partition=0) + messages([dup], partition=1), windows=[H])
    assert out.counts.duplicates == 1
    assert list(out.pair_states) == [(0, "1h", T0, "uni", "med")]


def test_duplicate_id_across_batches_counts_once() -> None:
    agg = Aggregator(REGISTRY, [H, D])
    dup = event(event_id="dup")
    first = agg.process(messages([dup, event("share")]), {}, {})
    second = agg.process(
        messages([dup, event("like", event_id="new")], first_offset=2),
        first.pair_states, first.first_seen,
    )
    assert second.counts.duplicates == 1
    assert second.counts.replayed == 0
    assert second.first_seen == {"new": (0, 3, 0)}  # only new entries are returned
    # absolute states: the first batch's counts plus the one new like
    assert second.pair_states == {
        (0, "1h", T0, "uni", "med"): vec(3, like=2, share=1),
        (0, "1d", DAY0, "uni", "med"): vec(3, like=2, share=1),
    }
    # the persisted views are read-only: the first outcome is untouched
    assert first.pair_states[(0, "1h", T0, "uni", "med")] == vec(1, like=1, share=1)


def test_first_seen_accepts_lists_as_positions() -> None:
    """Faust tables may hand positions back as lists (JSON round trip)."""
    dup = event(event_id="dup")
    out = Aggregator(REGISTRY, [H]).process(messages([dup], first_offset=4), {},
                                            {"dup": [0, 4, 0]})
    assert out.counts.replayed == 1
    assert out.counts.duplicates == 0
    out = Aggregator(REGISTRY, [H]).process(messages([dup], first_offset=5), {},
                                            {"dup": [0, 4, 0]})
    assert out.counts.duplicates == 1
    assert out.pair_states == {}


# --------------------------------------------------------------------------- replay


def replay_corpus() -> list[Message]:
    """Ten messages on partition 0 and four on partition 1, with every kind of input."""
    dup = event("reply", event_id="dup", mentions=["ext_a"])
    p0 = messages([
        event("like"),
        event("share", ts=T0 + 2 * H),
        dup,
        b"{broken",
        raw([event("follow", actor="ext_a", target="med_news"), event("like", target=None)]),
        event("post", target=None, mentions=["med_news", "ext_a"]),
        dup,
        event("like", actor="uni_main", target="uni_news"),
        event("thanks", actor="stranger"),
        event("like"),
    ])
    p1 = messages([
        event("like", actor="med_news", target="uni_main"),
        event("mention", actor="med_news", target="ext_a"),
        event("like", actor="med_news", target="uni_main", ts=T0 + D),
        event("like", actor="med_news", target="uni_main"),
    ], partition=1, first_offset=20)
    return p0 + p1


def clean_run() -> Store:
    store, _ = run([replay_corpus()])
    return store


def test_replay_with_full_state_changes_nothing() -> None:
    msgs = replay_corpus()
    store, (first,) = run([msgs])
    before = {k: list(v) for k, v in store.pair_states.items()}
    seen_before = dict(store.first_seen)

    again = Aggregator(REGISTRY, [H, D]).process(msgs, store.pair_states, store.first_seen)

    # every touched key comes back with exactly the persisted state
    assert again.pair_states == {k: before[k] for k in again.pair_states}
    assert set(again.pair_states) == set(before)
    assert again.first_seen == {}
    assert again.counts.replayed == first.counts.valid - first.counts.duplicates
    assert again.counts.duplicates == first.counts.duplicates
    store.apply(again)
    assert store.pair_states == before
    assert store.first_seen == seen_before
    assert again.last_offsets == first.last_offsets == {0: 9, 1: 23}


def test_partial_replay_pair_states_without_dedup_index() -> None:
    msgs = replay_corpus()
    store, _ = run([msgs])
    before = {k: list(v) for k, v in store.pair_states.items()}

    again = Aggregator(REGISTRY, [H, D]).process(msgs, store.pair_states, {})

    assert again.pair_states == before
    assert again.counts.replayed == 0
    assert again.counts.duplicates == 1  # the in-batch copy of "dup" is still a duplicate
    assert set(again.first_seen) == set(store.first_seen)


def test_partial_replay_dedup_index_without_pair_states_recounts_once() -> None:
    msgs = replay_corpus()
    store, _ = run([msgs])
    expected = store.counts()

    again = Aggregator(REGISTRY, [H, D]).process(msgs, {}, store.first_seen)

    assert {k: v[:OFFSET_SLOT] for k, v in again.pair_states.items()} == expected


@pytest.mark.parametrize("split", range(len(replay_corpus()) + 1))
@pytest.mark.parametrize("keep_first_seen", [True, False])
def test_crash_after_any_prefix_then_replay_matches_a_clean_run(
    split: int, keep_first_seen: bool
) -> None:
    """Process a prefix, persist, then re-deliver everything: same result as one clean run."""
    msgs = replay_corpus()
    store, _ = run([msgs[:split]])
    if not keep_first_seen:
        store.first_seen.clear()
    run([msgs], store=store)
    assert store.pair_states == clean_run().pair_states


def test_replay_across_many_small_batches_matches_a_clean_run() -> None:
    msgs = replay_corpus()
    store, _ = run([msgs[i:i + 3] for i in range(0, len(msgs), 3)])
    assert store.pair_states == clean_run().pair_states
    # then a full replay in different batch sizes changes nothing
    run([msgs[i:i + 5] for i in range(0, len(msgs), 5)], store=store)
    assert store.pair_states == clean_run().pair_states


def test_offset_tag_only_skips_already_applied_offsets() -> None:
    key = (0, "1h", T0, "uni", "med")
    persisted = {key: vec(5, like=3)}
    out = Aggregator(REGISTRY, [H]).process(
        messages([event(), event(), event("share")], first_offset=4), persisted, {}
    )
    # offsets 4 and 5 were applied before; offset 6 is new
    assert out.pair_states == {key: vec(6, like=3, share=1)}
    assert persisted == {key: vec(5, like=3)}  # input mapping not mutated


def test_expected_totals_of_the_replay_corpus() -> None:
    """Pins the clean-run result so the replay tests compare against the right thing."""
    counts = clean_run().counts()
    hour = {k[2:]: v for k, v in counts.items() if k[1] == "1h"}
    assert counts[(0, "1d", DAY0, "uni", "med")] == [0, 2, 1, 1, 1, 0]
    assert counts[(0, "1d", DAY0, "uni", "ext")] == [0, 0, 0, 0, 2, 0]
    assert counts[(0, "1d", DAY0, "ext", "med")] == [1, 0, 0, 0, 0, 0]
    assert counts[(1, "1d", DAY0, "med", "uni")] == [0, 2, 0, 0, 0, 0]
    assert counts[(1, "1d", DAY0 + D, "med", "uni")] == [0, 1, 0, 0, 0, 0]
    assert counts[(1, "1d", DAY0, "med", "ext")] == [0, 0, 0, 0, 1, 0]
    assert hour[(T0 + 2 * H, "uni", "med")] == [0, 0, 1, 0, 0, 0]
    assert len(counts) == 13


# --------------------------------------------------------------------------- counters


def test_counts_add_and_as_dict() -> None:
    a = Counts(messages=1, events=2, valid=1, dead_lettered=1, engagements=3)
    b = Counts(messages=4, duplicates=2, same_org=1, unmapped=5, replayed=1)
    a.add(b)
    assert a.as_dict() == {
        "messages": 5, "events": 2, "valid": 1, "duplicates": 2, "replayed": 1,
        "dead_lettered": 1, "engagements": 3, "same_org": 1, "unmapped": 5,
    }
    assert b.as_dict()["messages"] == 4


def test_last_offsets_per_partition() -> None:
    msgs = (messages([event(), b"{bad"], partition=0, first_offset=10)
            + messages([event()], partition=2, first_offset=3)
            + messages([b"[1]"], partition=1, first_offset=99)
            + messages([event()], partition=0, first_offset=12))
    out = process(msgs)
    assert out.last_offsets == {0: 12, 2: 3, 1: 99}


def test_empty_batch() -> None:
    out = process([])
    assert out.pair_states == {}
    assert out.first_seen == {}
    assert out.dead_letters == []
    assert out.last_offsets == {}
    assert out.counts.as_dict() == Counts().as_dict()
