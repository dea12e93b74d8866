"""Stage 1 (pipeline.ingest): decoding, dedup, the late rule, omissions and routed
engagements (pure; dicts stand in for the Faust tables)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import pytest

from pipeline.engagements import KIND_INDEX, MENTION, Resolution, raw_engagements, resolve
from pipeline.ingest import (
    REASON_LATE,
    Counts,
    DeadLetter,
    Engagement,
    EngagementColumns,
    Ingest,
    IngestOutcome,
    Message,
    NewIds,
    Seen,
    SeenIndex,
    expired_seen,
    item_bytes,
    seen_columns,
    split_message,
)
from pipeline.pairs import N_KINDS
from pipeline.reciprocity import Omission
from schemas.event import (
    ENGAGEMENT_KINDS,
    KINDS,
    REASON_INVALID_EVENT,
    REASON_INVALID_JSON,
    Event,
    format_ts,
)
from schemas.registry import Org, Registry

H = 3600
D = 86400
DAY0 = 1772409600  # 2026-03-02T00:00:00Z
T0 = DAY0 + 10 * H  # 2026-03-02T10:00:00Z
#: lateness of most tests: the corpora stay within it unless a test says otherwise
LATENESS = 3 * H

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
        "med_lab": "med",
        "ext_a": "ext",
    },
    org_of_entity={"dr_smith": "med", "dr_jones": "med", "reporter": "ext", "rector": "uni"},
)

_ids = iter(range(10**9))



def routed(out: IngestOutcome) -> dict[int, list[Engagement]]:
    """An outcome's engagements per source partition, as records."""
    return {p: list(records) for p, records in out.engagements.items()}

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


def process(msgs: Sequence[Message], first_seen: dict[str, Any] | None = None,
            max_ts: dict[int, float] | None = None,
            lateness: float = LATENESS) -> IngestOutcome:
    return Ingest(REGISTRY, lateness).process(msgs, first_seen or {}, max_ts or {})


def pairs(out: IngestOutcome) -> Counter[tuple[int, str, str, str]]:
    """Routed engagements counted by (source partition, src, dst, kind name)."""
    return Counter(
        (partition, e.src, e.dst, ENGAGEMENT_KINDS[e.kind])
        for partition, records in out.engagements.items()
        for e in records
    )


def eng(event_id: str, kind: str, src: str, dst: str, ts: float, offset: int) -> Engagement:
    return Engagement(event_id, KIND_INDEX[kind], src, dst, ts, offset)


def all_counts(**nonzero: int) -> dict[str, int]:
    return {**Counts().as_dict(), **nonzero}


class Store:
    """What the Faust table persists: the dedup index and each partition's
    largest event time, written together per batch."""

    def __init__(self) -> None:
        self.first_seen: dict[str, Seen] = {}
        self.max_ts: dict[int, float] = {}

    def apply(self, outcome: IngestOutcome) -> IngestOutcome:
        self.first_seen.update(outcome.first_seen)
        self.max_ts.update(outcome.max_ts)
        return outcome


def run(batches: Iterable[Sequence[Message]], store: Store | None = None,
        lateness: float = LATENESS) -> tuple[Store, list[IngestOutcome]]:
    store = store if store is not None else Store()
    ingest = Ingest(REGISTRY, lateness)
    outcomes = [store.apply(ingest.process(batch, store.first_seen, store.max_ts))
                for batch in batches]
    return store, outcomes


# --------------------------------------------------------------------------- engagements


def test_kind_index_follows_engagement_kinds() -> None:
    assert list(KIND_INDEX) == list(ENGAGEMENT_KINDS)
    assert [KIND_INDEX[k] for k in ENGAGEMENT_KINDS] == list(range(N_KINDS))
    assert MENTION == KIND_INDEX["mention"] == 4
    assert N_KINDS == len(ENGAGEMENT_KINDS) == 6


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


# --------------------------------------------------------------------------- routed records


def test_engagement_records_in_offset_order() -> None:
    out = process(messages([
        event("like", ts=T0 + 10, event_id="a"),
        event("share", ts=T0 + 20, event_id="b"),
        event("follow", actor="med_news", target="uni_main", ts=T0 + 30, event_id="c"),
        event("like", ts=T0 + H + 5, event_id="d"),
        event("thanks", actor="ext_a", target="uni_news", ts=T0 + 40, event_id="e"),
    ]))
    assert routed(out) == {0: [
        eng("a", "like", "uni", "med", T0 + 10, 0),
        eng("b", "share", "uni", "med", T0 + 20, 1),
        eng("c", "follow", "med", "uni", T0 + 30, 2),
        eng("d", "like", "uni", "med", T0 + H + 5, 3),
        eng("e", "thanks", "ext", "uni", T0 + 40, 4),
    ]}
    assert out.counts.as_dict() == all_counts(messages=5, events=5, valid=5, engagements=5)
    assert out.dead_letters == []
    assert out.omissions == []
    assert out.last_offsets == {0: 4}
    assert out.max_ts == {0: T0 + H + 5}
    assert out.first_seen == {
        "a": (0, 0, 0, 0), "b": (0, 1, 0, 0), "c": (0, 2, 0, 0), "d": (0, 3, 0, 0),
        "e": (0, 4, 0, 0),
    }


def test_every_engagement_kind_is_routed_with_its_index() -> None:
    kinds = ["follow", "like", "share", "reply", "mention", "thanks"]
    out = process(messages([event(k) for k in kinds]))
    assert [e.kind for e in out.engagements[0]] == list(range(N_KINDS))


def test_rfc3339_ts_with_offset_is_utc_epoch_seconds() -> None:
    # 23:30 at -02:00 is 01:30 UTC the next day
    out = process(messages([event(ts="2026-03-02T23:30:00-02:00", event_id="x")]))
    assert routed(out) == {0: [eng("x", "like", "uni", "med", DAY0 + D + 1.5 * H, 0)]}


def test_records_are_grouped_by_source_partition() -> None:
    msgs = (messages([event(event_id="p0")], partition=0)
            + messages([event(event_id="p3")], partition=3, first_offset=7))
    out = process(msgs)
    assert routed(out) == {
        0: [eng("p0", "like", "uni", "med", T0, 0)],
        3: [eng("p3", "like", "uni", "med", T0, 7)],
    }
    assert out.last_offsets == {0: 0, 3: 7}
    assert out.max_ts == {0: T0, 3: T0}


def test_mentions_on_post_and_reply() -> None:
    out = process(messages([
        # one mention per distinct account: med_news listed twice counts once
        event("post", target=None, mentions=["med_news", "ext_a", "med_news"]),
        # a reply is a reply to its target plus a mention of each mentioned account
        event("reply", target="med_news", mentions=["med_news"]),
        # mentions on other kinds are ignored
        event("like", target="med_news", mentions=["ext_a", "med_news"]),
        event("share", target="ext_a", mentions=["med_news"]),
    ]))
    assert pairs(out) == {
        (0, "uni", "med", "mention"): 2, (0, "uni", "med", "reply"): 1,
        (0, "uni", "med", "like"): 1,
        (0, "uni", "ext", "mention"): 1, (0, "uni", "ext", "share"): 1,
    }
    assert out.counts.engagements == 6


def test_mentions_of_two_accounts_of_one_org_are_two_records() -> None:
    out = process(messages([event("post", target=None, mentions=["med_news", "med_lab"],
                                  event_id="p")]))
    assert routed(out) == {0: [eng("p", "mention", "uni", "med", T0, 0)] * 2}


def test_mention_kind_event_counts_once() -> None:
    out = process(messages([event("mention", mentions=["med_news"])]))
    assert pairs(out) == {(0, "uni", "med", "mention"): 1}


def test_unfollow_and_post_are_not_engagements() -> None:
    out = process(messages([
        event("unfollow"),
        event("post", target=None),
        event("post", target="med_news"),
    ]))
    assert routed(out) == {}
    assert out.counts.valid == 3
    assert out.counts.engagements == 0
    assert out.counts.same_org == 0
    assert out.counts.unmapped == 0
    assert len(out.first_seen) == 3
    assert out.max_ts == {0: T0}  # they still move the partition's event time


def test_same_org_is_counted_but_has_no_pair() -> None:
    out = process(messages([
        event("like", actor="uni_main", target="uni_news"),
        event("post", actor="uni_main", target=None, mentions=["uni_news", "uni_main"]),
    ]))
    assert routed(out) == {}
    assert out.counts.same_org == 3
    assert out.counts.engagements == 0


def test_parent_and_child_orgs_are_a_pair() -> None:
    out = process(messages([event(actor="med_news", target="uni_main")]))
    assert pairs(out) == {(0, "med", "uni", "like"): 1}


def test_unknown_accounts_are_unmapped() -> None:
    out = process(messages([
        event(actor="uni_main", target="stranger"),
        event(actor="stranger", target="uni_main"),
        event("post", target=None, mentions=["stranger", "med_news"]),
    ]))
    assert out.counts.unmapped == 3
    assert out.counts.engagements == 1
    assert out.counts.valid == 3
    assert pairs(out) == {(0, "uni", "med", "mention"): 1}
    assert [e.offset for e in out.engagements[0]] == [2]


# --------------------------------------------------------------------------- omissions


def test_omissions_of_posts() -> None:
    out = process(messages([
        # features med's researchers without naming med: one omission, entities sorted
        event("post", target=None, features=["dr_smith", "dr_jones"], event_id="p1"),
        # naming any account of med is enough (and is a mention engagement)
        event("post", target=None, features=["dr_smith"], mentions=["med_lab"], event_id="p2"),
        # two left-out orgs: one record each, ordered by org id
        event("post", target=None, features=["reporter", "dr_smith"], ts=T0 + 5,
              event_id="p3"),
        # the poster's own org is never left out
        event("post", actor="med_news", target=None, features=["dr_smith"], event_id="p4"),
        # unmapped posters and other kinds give none
        event("post", actor="stranger", target=None, features=["dr_smith"], event_id="p5"),
        event("share", features=["dr_smith"], event_id="p6"),
    ]))
    assert out.omissions == [
        Omission("p1", "med", "uni", ("dr_jones", "dr_smith"), T0),
        Omission("p3", "ext", "uni", ("reporter",), T0 + 5),
        Omission("p3", "med", "uni", ("dr_smith",), T0 + 5),
    ]
    assert out.counts.omissions == 3
    assert pairs(out) == {(0, "uni", "med", "mention"): 1, (0, "uni", "med", "share"): 1}


def test_duplicate_posts_give_no_second_omission() -> None:
    post = event("post", target=None, features=["dr_smith"], event_id="p")
    out = process(messages([post, post]))
    assert [o.post_id for o in out.omissions] == ["p"]
    assert out.counts.duplicates == 1


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
    assert out.counts.as_dict() == all_counts(messages=1, events=1, dead_lettered=1)
    assert routed(out) == {}
    assert out.max_ts == {}
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
    assert out.first_seen == {}


def test_dead_letters_do_not_stop_the_batch() -> None:
    out = process(messages([b"{bad", event(), b"[", event()]))
    assert [d.offset for d in out.dead_letters] == [0, 2]
    assert pairs(out) == {(0, "uni", "med", "like"): 2}
    assert [e.offset for e in out.engagements[0]] == [1, 3]
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
    assert item_bytes(packed[1][1]) == b'{"id":"x"}'
    assert item_bytes(items[0][1]) == single
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
    out = process([Message(5, 100, value, key=b"batch")])

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
    assert out.first_seen == {"p1": (5, 100, 0, 0), "p3": (5, 100, 2, 0)}
    assert routed(out) == {5: [
        eng("p1", "like", "uni", "med", T0, 100),
        eng("p3", "follow", "ext", "uni", T0, 100),
    ]}
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
    out = process([Message(0, 3, raw([event(), event(), event("share")]))])
    assert pairs(out) == {(0, "uni", "med", "like"): 2, (0, "uni", "med", "share"): 1}
    assert {e.offset for e in out.engagements[0]} == {3}
    assert sorted(pos[2] for pos in out.first_seen.values()) == [0, 1, 2]


# --------------------------------------------------------------------------- duplicates


def test_duplicate_id_within_a_batch_counts_once() -> None:
    first = event(event_id="dup")
    changed = dict(first, kind="share")  # same id, different content: still a duplicate
    out = process(messages([first, first, changed]))
    assert routed(out) == {0: [eng("dup", "like", "uni", "med", T0, 0)]}
    assert out.counts.duplicates == 2
    assert out.counts.valid == 3
    assert out.counts.engagements == 1
    assert out.first_seen == {"dup": (0, 0, 0, 0)}


def test_duplicate_id_within_a_packed_message() -> None:
    dup = event(event_id="dup")
    out = process([Message(0, 0, raw([dup, dup]))])
    assert out.counts.duplicates == 1
    assert routed(out) == {0: [eng("dup", "like", "uni", "med", T0, 0)]}
    assert out.first_seen == {"dup": (0, 0, 0, 0)}


def test_duplicate_id_across_partitions_counts_once() -> None:
    dup = event(event_id="dup")
    out = process(messages([dup], partition=0) + messages([dup], partition=1))
    assert out.counts.duplicates == 1
    assert list(out.engagements) == [0]
    assert out.max_ts == {0: T0}  # a duplicate does not move its partition's event time


def test_duplicate_id_across_batches_counts_once() -> None:
    ingest = Ingest(REGISTRY, LATENESS)
    dup = event(event_id="dup")
    first = ingest.process(messages([dup, event("share")]), {}, {})
    second = ingest.process(
        messages([dup, event("like", event_id="new")], first_offset=2),
        first.first_seen, first.max_ts,
    )
    assert second.counts.duplicates == 1
    assert second.counts.replayed == 0
    assert second.first_seen == {"new": (0, 3, 0, 0)}  # only new entries are returned
    assert routed(second) == {0: [eng("new", "like", "uni", "med", T0, 3)]}
    assert second.max_ts == {}  # nothing moved the partition's largest event time


def test_first_seen_accepts_lists_as_positions() -> None:
    """Faust tables may hand positions back as lists (JSON round trip)."""
    dup = event(event_id="dup")
    out = process(messages([dup], first_offset=4), {"dup": [0, 4, 0, 0]})
    assert out.counts.replayed == 1
    assert out.counts.duplicates == 0
    assert routed(out) == {0: [eng("dup", "like", "uni", "med", T0, 4)]}
    out = process(messages([dup], first_offset=5), {"dup": [0, 4, 0, 0]})
    assert out.counts.duplicates == 1
    assert routed(out) == {}


def test_inputs_are_read_only() -> None:
    first_seen = {"old": (0, 0, 0, 0)}
    max_ts = {0: T0}
    process(messages([event(ts=T0 + 10)], first_offset=1), first_seen, max_ts)
    assert first_seen == {"old": (0, 0, 0, 0)}
    assert max_ts == {0: T0}


# --------------------------------------------------------------------------- the late rule

L = 300.0


def test_late_is_at_or_before_the_partitions_largest_time_minus_the_lateness() -> None:
    out = process(messages([
        event(ts=T0, event_id="a"),
        event(ts=T0 + 1000, event_id="b"),
        event(ts=T0 + 1000 - L, event_id="at"),  # exactly L behind: late
        event(ts=T0 + 1000 - L + 0.001, event_id="in"),  # less than L behind: not late
        event(ts=T0, event_id="old"),
    ], first_offset=10), lateness=L)
    assert [e.id for e in out.engagements[0]] == ["a", "b", "in"]
    assert [(d.offset, d.reason) for d in out.dead_letters] == [
        (12, REASON_LATE), (14, REASON_LATE),
    ]
    assert out.counts.as_dict() == all_counts(messages=5, events=5, valid=5, engagements=3,
                                              late=2, dead_lettered=2)
    assert out.first_seen["at"] == (0, 12, 0, 1)
    assert out.first_seen["old"] == (0, 14, 0, 1)
    assert out.first_seen["in"] == (0, 13, 0, 0)
    assert out.max_ts == {0: T0 + 1000}
    assert out.last_offsets == {0: 14}


def test_late_dead_letter_keeps_the_original_bytes_and_key() -> None:
    late = raw(event(ts=T0, event_id="late"))
    packed = raw([event(ts=T0, event_id="x"), event(ts=T0 - L, event_id="y")])
    out = process([Message(0, 0, raw(event(ts=T0 + L))),
                   Message(0, 1, late, key=b"late"),
                   Message(0, 2, packed, key=b"pk")], lateness=L)
    assert out.dead_letters[0] == DeadLetter(0, 1, 0, REASON_LATE, out.dead_letters[0].error,
                                             late, b"late")
    assert "watermark" in out.dead_letters[0].error
    # in a packed message: the item alone, with its index
    second = out.dead_letters[1]
    assert (second.offset, second.item, second.key) == (2, 0, b"pk")
    assert orjson.loads(second.raw)["id"] == "x"
    assert [(d.offset, d.item) for d in out.dead_letters] == [(1, 0), (2, 0), (2, 1)]


def test_the_late_rule_uses_the_persisted_largest_time() -> None:
    out = process(messages([event(ts=T0 - L, event_id="at"), event(ts=T0 - L + 1, event_id="in")]),
                  max_ts={0: T0}, lateness=L)
    assert out.counts.late == 1
    assert [e.id for e in out.engagements[0]] == ["in"]
    assert out.max_ts == {}  # neither moved it


def test_the_late_rule_is_per_partition() -> None:
    out = process(
        messages([event(ts=T0 + D, event_id="ahead")], partition=0)
        + messages([event(ts=T0, event_id="p1")], partition=1)
        + messages([event(ts=T0 - 2 * L, event_id="p2")], partition=2),
        max_ts={2: T0 - 2 * L + 1}, lateness=L,
    )
    assert out.counts.late == 0
    assert {p: [e.id for e in r] for p, r in out.engagements.items()} == {
        0: ["ahead"], 1: ["p1"], 2: ["p2"],
    }
    assert out.max_ts == {0: T0 + D, 1: T0}  # partition 2 did not move


def test_late_posts_give_no_omission_and_late_events_no_engagement() -> None:
    out = process(messages([
        event(ts=T0),
        event("post", target=None, features=["dr_smith"], mentions=["ext_a"], ts=T0 - L),
    ]), lateness=L)
    assert out.omissions == []
    assert out.counts.omissions == 0
    assert pairs(out) == {(0, "uni", "med", "like"): 1}


def test_a_copy_of_a_late_event_is_a_duplicate() -> None:
    late = event(ts=T0, event_id="late")
    out = process(messages([event(ts=T0 + L), late, late]), lateness=L)
    assert out.counts.late == 1
    assert out.counts.duplicates == 1
    assert len(out.dead_letters) == 1


def test_a_replayed_late_event_stays_late() -> None:
    """Replayed at its first position, an event keeps its verdict even though
    the largest time passed in is older than the one that made it late."""
    out = process(messages([event(ts=T0, event_id="x")], first_offset=5),
                  first_seen={"x": [0, 5, 0, 1]}, max_ts={}, lateness=L)
    assert out.counts.as_dict() == all_counts(messages=1, events=1, valid=1, replayed=1,
                                              late=1, dead_lettered=1)
    assert [d.reason for d in out.dead_letters] == [REASON_LATE]
    assert routed(out) == {}
    assert out.first_seen == {}
    assert out.max_ts == {}  # a late event never moves the largest time


def test_a_replayed_event_that_was_on_time_stays_on_time() -> None:
    out = process(messages([event(ts=T0, event_id="x")], first_offset=5),
                  first_seen={"x": (0, 5, 0, 0)}, max_ts={0: T0 + D}, lateness=L)
    assert out.counts.late == 0
    assert out.counts.replayed == 1
    assert routed(out) == {0: [eng("x", "like", "uni", "med", T0, 5)]}


def test_a_replay_moves_a_stale_largest_time() -> None:
    out = process(messages([event(ts=T0, event_id="x")], first_offset=5),
                  first_seen={"x": (0, 5, 0, 0)}, max_ts={0: T0 - H}, lateness=L)
    assert out.max_ts == {0: T0}


def test_max_ts_only_for_partitions_that_moved() -> None:
    out = process(
        messages([event(ts=T0 - 10)], partition=0)  # behind its persisted maximum
        + messages([event(ts=T0 + 5), event(ts=T0 + 1)], partition=1)
        + messages([b"{bad"], partition=2)
        + messages([event("post", target=None, ts=T0 + 9)], partition=3),
        max_ts={0: T0, 1: T0}, lateness=L,
    )
    assert out.max_ts == {1: T0 + 5, 3: T0 + 9}
    assert out.last_offsets == {0: 0, 1: 1, 2: 0, 3: 0}


# --------------------------------------------------------------------------- replay


def replay_corpus() -> list[Message]:
    """Ten messages on partition 0 and four on partition 1, with every kind of input,
    including one event late by the lateness (partition 1's last)."""
    dup = event("reply", event_id="dup", mentions=["ext_a"])
    p0 = messages([
        event("like"),
        event("share", ts=T0 + 2 * H),
        dup,
        b"{broken",
        raw([event("follow", actor="ext_a", target="med_news"), event("like", target=None)]),
        event("post", target=None, mentions=["med_news", "ext_a"], features=["reporter"]),
        dup,
        event("like", actor="uni_main", target="uni_news"),
        event("thanks", actor="stranger"),
        event("like"),
    ])
    p1 = messages([
        event("like", actor="med_news", target="uni_main"),
        event("mention", actor="med_news", target="ext_a"),
        event("like", actor="med_news", target="uni_main", ts=T0 + D),
        event("like", actor="med_news", target="uni_main", event_id="late"),
    ], partition=1, first_offset=20)
    return p0 + p1


CORPUS = replay_corpus()


def clean_run() -> tuple[Store, IngestOutcome]:
    store, (outcome,) = run([CORPUS])
    return store, outcome


def test_expected_totals_of_the_replay_corpus() -> None:
    """Pins the clean-run result so the replay tests compare against the right thing."""
    store, out = clean_run()
    assert pairs(out) == {
        (0, "uni", "med", "like"): 2, (0, "uni", "med", "share"): 1,
        (0, "uni", "med", "reply"): 1, (0, "uni", "med", "mention"): 1,
        (0, "uni", "ext", "mention"): 2, (0, "ext", "med", "follow"): 1,
        (1, "med", "uni", "like"): 2, (1, "med", "ext", "mention"): 1,
    }
    assert out.counts.as_dict() == all_counts(
        messages=14, events=15, valid=13, duplicates=1, dead_lettered=3, late=1,
        engagements=11, same_org=1, unmapped=1, omissions=0,
    )
    assert [(d.partition, d.offset, d.item, d.reason) for d in out.dead_letters] == [
        (0, 3, 0, REASON_INVALID_JSON), (0, 4, 1, REASON_INVALID_EVENT),
        (1, 23, 0, REASON_LATE),
    ]
    assert store.first_seen["late"] == (1, 23, 0, 1)
    assert store.max_ts == {0: T0 + 2 * H, 1: T0 + D}
    assert out.last_offsets == {0: 9, 1: 23}


def test_replay_with_full_state_routes_the_same_and_records_nothing_new() -> None:
    store, first = clean_run()
    seen_before = dict(store.first_seen)

    again = process(CORPUS, store.first_seen, store.max_ts)

    assert again.engagements == first.engagements
    assert again.dead_letters == first.dead_letters
    assert again.first_seen == {}
    assert again.max_ts == {}
    assert again.counts.replayed == first.counts.valid - first.counts.duplicates
    assert again.counts.duplicates == first.counts.duplicates
    assert again.counts.late == first.counts.late
    assert again.last_offsets == first.last_offsets
    store.apply(again)
    assert store.first_seen == seen_before


def test_replay_after_losing_the_whole_table_matches_a_clean_run() -> None:
    _, first = clean_run()
    again = process(CORPUS, {}, {})
    assert again.engagements == first.engagements
    assert again.counts == first.counts


@pytest.mark.parametrize("split", range(len(CORPUS) + 1))
def test_crash_after_any_prefix_then_replay_matches_a_clean_run(split: int) -> None:
    """Process a prefix, persist, then re-deliver everything: the same records go
    downstream (which skips the ones it applied) with the same verdicts."""
    clean_store, clean = clean_run()
    store, _ = run([CORPUS[:split]])
    _, (again,) = run([CORPUS], store=store)
    assert again.engagements == clean.engagements
    assert again.dead_letters == clean.dead_letters
    assert store.first_seen == clean_store.first_seen
    assert store.max_ts == clean_store.max_ts


def test_many_small_batches_match_one_clean_run() -> None:
    clean_store, clean = clean_run()
    store, outcomes = run([CORPUS[i:i + 3] for i in range(0, len(CORPUS), 3)])
    routed: dict[int, list[Engagement]] = {}
    for out in outcomes:
        for partition, records in out.engagements.items():
            routed.setdefault(partition, []).extend(records)
    assert routed == {p: list(records) for p, records in clean.engagements.items()}
    assert store.first_seen == clean_store.first_seen
    assert store.max_ts == clean_store.max_ts
    total = Counts()
    for out in outcomes:
        total.add(out.counts)
    assert total == clean.counts


# --------------------------------------------------------------------------- counters


def test_counts_add_and_as_dict() -> None:
    a = Counts(messages=1, events=2, valid=1, dead_lettered=1, engagements=3, late=1)
    b = Counts(messages=4, duplicates=2, same_org=1, unmapped=5, replayed=1, omissions=2)
    a.add(b)
    assert a.as_dict() == {
        "messages": 5, "events": 2, "valid": 1, "duplicates": 2, "replayed": 1,
        "dead_lettered": 1, "late": 1, "engagements": 3, "same_org": 1, "unmapped": 5,
        "omissions": 2,
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
    assert out == IngestOutcome()
    assert out.counts.as_dict() == Counts().as_dict()


# --------------------------------------------------------------------------- dedup retention


def test_expired_seen_keeps_ids_the_watermark_has_not_passed() -> None:
    records = [(100.0, 4, "0:0"), (None, 5, "0:5"), (400.0, 9, "0:6"), (700.0, 12, "0:10")]
    # watermark 1000 - 300 = 700: the first three are due, the newest never is
    assert expired_seen(records, 1000.0, 300.0, committed=20) == 3
    assert expired_seen(records, 650.0, 300.0, committed=20) == 2
    # at the watermark exactly: a later copy would be late
    assert expired_seen(records, 700.0, 300.0, committed=20) == 3
    # a prefix only: an old record behind a younger one waits for it
    assert expired_seen([(100.0, 1, "0:0"), (900.0, 2, "0:2"), (100.0, 3, "0:3"),
                         (999.0, 4, "0:4")], 1000.0, 300.0, committed=20) == 1


def test_expired_seen_keeps_what_a_redelivery_can_reach() -> None:
    records = [(100.0, 4, "0:0"), (200.0, 9, "0:5"), (300.0, 12, "0:10")]
    assert expired_seen(records, 1e9, 300.0, committed=9) == 1
    assert expired_seen(records, 1e9, 300.0, committed=None) == 0
    assert expired_seen(records, None, 300.0, committed=100) == 0
    assert expired_seen([], 1e9, 300.0, committed=100) == 0


def test_new_ids_hold_columns_per_partition_and_read_as_a_mapping() -> None:
    entries = {"a": (0, 5, 0, 0), "b": (1, 7, 2, 1), "c": (0, 6, 3, 0)}
    new = NewIds.of(entries)
    assert new.columns == {0: (["a", "c"], [5, 6], [0, 3], [0, 0]), 1: (["b"], [7], [2], [1])}
    assert new == entries and len(new) == 3 and new["b"] == (1, 7, 2, 1)
    index = SeenIndex()
    index.add(new.columns)
    assert {event_id: index[event_id] for event_id in entries} == entries and len(index) == 3
    with pytest.raises(ValueError):
        index.add(NewIds({2: (["z"], [2**48], [0], [0])}).columns)
    assert "z" not in index and len(index) == 3
    assert NewIds() == {} and len(NewIds()) == 0


def test_dedup_records_are_read_in_either_form() -> None:
    columns = {"c": {"id": ["a", "b"], "offset": [5, 6], "item": [0, 2], "late": [0, 1]},
               "max": 10.0, "hi": 9.0}
    rows = {"ids": [["a", 5, 0, 0], ["b", 6, 2, 1]], "max": 10.0, "hi": 9.0}
    assert seen_columns(columns) == seen_columns(rows) == (["a", "b"], [5, 6], [0, 2], [0, 1])
    assert seen_columns({"ids": [], "max": None, "hi": None}) == ([], [], [], [])


# --------------------------------------------------------------------------- in columns


def _random_batches(seed: int, plain: bool = False) -> list[list[Message]]:
    """Batches of single and packed messages of valid events over two
    partitions: every kind, mentions (repeated, unmapped, same org), posts with
    features, and unless ``plain`` duplicates within and across batches and
    partitions, replays of earlier messages, events late by the lateness."""
    rng = random.Random(seed)
    accounts = [*REGISTRY.org_of_account, "stranger"]
    offsets = [0, 0]
    clock = [T0, T0]
    sent: list[list[Message]] = []
    ids: list[str] = []
    batches: list[list[Message]] = []
    for _ in range(rng.randrange(3, 8)):
        batch: list[Message] = []
        for _ in range(rng.randrange(1, 8)):
            partition = rng.randrange(2)
            if rng.random() < 0.1 and sent and not plain:  # a replay of an earlier message
                batch.extend(m for m in rng.choice(sent) if m.partition == partition)
                continue
            objs = []
            for _ in range(rng.choice((1, 1, rng.randrange(1, 9)))):
                clock[partition] += rng.choice((0, 1, 60, 3600))
                ts = clock[partition] - rng.choice((0,) if plain else (0, 0, 0, LATENESS,
                                                                      2 * LATENESS))
                kind = rng.choice(KINDS)
                extra: dict[str, Any] = {}
                if kind in ("post", "reply") or rng.random() < 0.2:
                    extra["mentions"] = rng.sample(accounts, rng.randrange(0, 3)) * rng.choice(
                        (1, 2))
                if kind == "post" and rng.random() < 0.7:
                    extra["features"] = rng.sample(sorted(REGISTRY.org_of_entity), 2)
                event_id = rng.choice(ids) if ids and rng.random() < 0.1 and not plain else None
                obj = event(kind, rng.choice(accounts),
                            None if kind == "post" and rng.random() < 0.5
                            else rng.choice(accounts),
                            ts=format_ts(ts), event_id=event_id, **extra)
                ids.append(obj["id"])
                objs.append(obj)
            value = raw(objs[0] if len(objs) == 1 and rng.random() < 0.7 else objs)
            batch.append(Message(partition, offsets[partition], value, b"k"))
            offsets[partition] += 1
        batch.sort(key=lambda m: (m.partition, m.offset))  # each partition in offset order
        sent.append(batch)
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed", range(40))
def test_columns_and_events_give_the_same_outcome(seed: int) -> None:
    """Plain batches go in columns, with the outcome event by event gives;
    others (a duplicate, a replay or a late event) event by event."""
    for plain in (True, False):
        store = Store()
        ingest = Ingest(REGISTRY, LATENESS)
        used = 0
        for batch in _random_batches(seed, plain):
            by_columns = ingest._columns(batch, store.first_seen, store.max_ts)
            by_events = ingest._events(batch, store.first_seen, store.max_ts)
            plain_batch = not any(getattr(by_events.counts, name) for name in (
                "duplicates", "replayed", "late", "dead_lettered"))
            assert (by_columns is not None) == plain_batch
            if by_columns is not None:
                assert by_columns == by_events
                used += by_columns.counts.engagements
            store.apply(by_events)
        assert used or not plain


@pytest.mark.parametrize("seed", range(10))
def test_the_worker_index_gives_the_outcomes_a_dict_gives(seed: int) -> None:
    """Stage 1 against the worker's :class:`SeenIndex` (its batch check and
    its lookups) and against a plain dict of the same ids: the same outcome
    for every batch, duplicates, replays and late events among them."""
    ingest, store, index = Ingest(REGISTRY, LATENESS), Store(), SeenIndex()
    for batch in _random_batches(seed):
        expected = ingest.process(batch, store.first_seen, store.max_ts)
        assert ingest.process(batch, index, store.max_ts) == expected
        index.add(expected.first_seen.columns)
        store.apply(expected)
    assert len(index) == len(store.first_seen)
    assert all(index[event_id] == seen for event_id, seen in store.first_seen.items())


def test_the_random_batches_reach_every_verdict() -> None:
    totals = Counts()
    for seed in range(40):
        for outcome in run(_random_batches(seed))[1]:
            totals.add(outcome.counts)
    assert all(getattr(totals, name) > 0 for name in (
        "duplicates", "replayed", "late", "engagements", "same_org", "unmapped",
        "omissions")), totals


def test_a_batch_with_any_event_not_in_the_fast_form_goes_event_by_event() -> None:
    ingest = Ingest(REGISTRY, LATENESS)
    for odd in (event(ts="2026-03-02T12:00:00+02:00"), event(ts=True), {"id": "x"}):
        batch = messages([event(), odd])
        assert ingest._columns(batch, {}, {}) is None
        assert ingest.process(batch, {}, {}) == ingest._events(batch, {}, {})
    assert ingest._columns(messages([b"not json"]), {}, {}) is None


def test_epoch_seconds_times_are_in_the_fast_form() -> None:
    ingest = Ingest(REGISTRY, LATENESS)
    batch = messages([event(), event(ts=T0 + 1.5), event(ts=int(T0) + 2)])
    by_columns = ingest._columns(batch, {}, {})
    assert by_columns is not None
    assert by_columns == ingest._events(batch, {}, {})


def test_engagement_columns_are_a_sequence_of_engagements() -> None:
    records = [eng(f"e{i}", "like", "uni", "med", T0 + i, i // 2) for i in range(5)]
    columns = EngagementColumns.of(records)
    assert len(columns) == 5 and list(columns) == records
    assert columns[3] == records[3] and list(columns[1:3]) == records[1:3]
    assert list(columns.take([4, 0])) == [records[4], records[0]]
    assert list(columns.take([2])) == [records[2]]
    assert columns.column("offset") == (0, 0, 1, 1, 2)
    assert columns == EngagementColumns.of(records) != EngagementColumns.of(records[:4])
    assert not EngagementColumns() and list(EngagementColumns()) == []
    assert EngagementColumns.of([]) == EngagementColumns()
