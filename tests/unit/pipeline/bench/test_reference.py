"""The bench's own engagement rules (docs/metrics.md "Engagement") and counts."""

from __future__ import annotations

import orjson

from pipeline.bench.reference import (
    compare,
    count_windows,
    engagements,
    event_time,
    hourly_totals,
    totals_digest,
)

ORG_OF = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
LIKE, REPLY, MENTION, FOLLOW = 1, 3, 4, 0


def found(event: dict) -> list[tuple[int, str, str]]:
    return list(engagements(event, ORG_OF))


def test_engagement_kinds_between_orgs() -> None:
    assert found({"kind": "like", "actor": "a1", "target": "b1"}) == [(LIKE, "A", "B")]
    assert found({"kind": "follow", "actor": "b1", "target": "a2"}) == [(FOLLOW, "B", "A")]
    assert found({"kind": "unfollow", "actor": "a1", "target": "b1"}) == []
    assert found({"kind": "post", "actor": "a1"}) == []


def test_same_org_and_unmapped_give_nothing() -> None:
    assert found({"kind": "like", "actor": "a1", "target": "a2"}) == []
    assert found({"kind": "like", "actor": "zz", "target": "b1"}) == []
    assert found({"kind": "like", "actor": "a1", "target": "zz"}) == []


def test_mentions_of_posts_and_replies_count_once_per_distinct_account() -> None:
    post = {"kind": "post", "actor": "a1", "mentions": ["b1", "b1", "a2", "c1", "zz"]}
    assert found(post) == [(MENTION, "A", "B"), (MENTION, "A", "C")]
    reply = {"kind": "reply", "actor": "a1", "target": "b1", "mentions": ["b1"]}
    assert found(reply) == [(REPLY, "A", "B"), (MENTION, "A", "B")]
    # mentions on other kinds are ignored
    like = {"kind": "like", "actor": "a1", "target": "b1", "mentions": ["c1"]}
    assert found(like) == [(LIKE, "A", "B")]


def test_event_time_accepts_rfc3339_and_epoch() -> None:
    assert event_time("1970-01-01T01:00:00Z") == 3600.0
    assert event_time("1970-01-01T02:00:00.500+01:00") == 3600.5
    assert event_time(7200) == 7200.0


def test_count_windows_aligns_to_the_epoch() -> None:
    lines = [orjson.dumps(e) for e in (
        {"id": "1", "ts": "1970-01-02T00:59:59Z", "kind": "like", "actor": "a1", "target": "b1"},
        {"id": "2", "ts": "1970-01-02T01:00:00Z", "kind": "like", "actor": "a1", "target": "b1"},
        {"id": "3", "ts": 90000.5, "kind": "share", "actor": "b1", "target": "a1"},
    )]
    counts, total = count_windows(lines, ORG_OF, {"1h": 3600, "1d": 86400}, orjson.loads)
    assert total == 3
    assert counts[("1h", 86400, "A", "B")] == [0, 1, 0, 0, 0, 0]
    assert counts[("1h", 90000, "A", "B")] == [0, 1, 0, 0, 0, 0]
    assert counts[("1h", 90000, "B", "A")] == [0, 0, 1, 0, 0, 0]
    assert counts[("1d", 86400, "A", "B")] == [0, 2, 0, 0, 0, 0]
    assert hourly_totals(counts) == {(86400, "A", "B"): 1, (90000, "A", "B"): 1,
                                     (90000, "B", "A"): 1}


def test_digest_ignores_order_and_zero_counts() -> None:
    one = {(0, "A", "B"): 2, (3600, "B", "A"): 1}
    other = {(3600, "B", "A"): 1, (0, "A", "B"): 2, (7200, "C", "A"): 0}
    assert totals_digest(one) == totals_digest(other)
    assert totals_digest(one) != totals_digest({(0, "A", "B"): 1, (3600, "B", "A"): 1})


def test_compare_names_every_difference() -> None:
    expected = {("1h", 0, "A", "B"): [1, 0, 0, 0, 0, 0], ("1h", 0, "B", "A"): [0, 2, 0, 0, 0, 0]}
    stored = {("1h", 0, "A", "B"): [1, 0, 0, 0, 0, 0], ("1h", 0, "C", "A"): [0] * 6}
    assert compare(expected, dict(expected)) == []
    problems = compare(expected, stored)
    assert len(problems) == 1 and "('1h', 0, 'B', 'A')" in problems[0]
