"""Hand-computed cases for the independent reference (tests/reference_analytics.py)."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest

from tests.reference_analytics import (
    Params,
    Result,
    ancestors_or_self,
    community_of,
    epoch,
    fmt,
    load_registry,
    recompute,
)

D0 = 1772409600  # 2026-03-02T00:00:00Z, the start of a UTC day
DAY = 86400
H0 = "2026-03-02T00:00:00Z"  # start of the 1h and 1d windows holding D0

REGISTRY = """\
orgs:
  - {id: uni, name: University, community: internal}
  - {id: med, name: Medical School, parent: uni}
  - {id: lab, name: Lab, parent: med}
  - {id: city, name: City Hospital, community: external}
  - {id: press, name: Press}
  - {id: spin, name: Spin-off, parent: city, community: internal}
  - {id: ward, name: Ward, parent: spin}
accounts:
  uni_main: uni
  med_news:
    org: med
    identities: ["did:plc:abc123", "mednews@mastodon.social"]
  med_alt: med
  lab_a: lab
  city_a: city
  city_b: city
  press_a: press
  spin_a: spin
entities:
  dr_smith: med
  dr_jones: med
  proj_x: lab
  nurse_n: city
"""

REGISTRY_AS_LISTS = """\
orgs:
  - {id: uni, community: internal}
  - {id: med, parent: uni}
  - {id: city, community: external}
accounts:
  - {id: uni_main, org: uni}
  - {id: med_news, org: med, identities: ["did:plc:abc123"]}
  - {id: city_a, org: city}
entities:
  - {id: dr_smith, org: med}
"""

Line = dict[str, Any] | list[Any] | str | bytes


def ev(id_: str, ts: float | str, kind: str, actor: str, target: str | None = None,
       **extra: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"id": id_, "ts": ts, "kind": kind, "actor": actor}
    if target is not None:
        event["target"] = target
    event.update(extra)
    return event


def filler(id_: str, ts: float) -> dict[str, Any]:
    """An accepted event that gives no engagement: it only moves the watermark."""
    return ev(id_, ts, "post", "uni_main")


def write(path: Path, lines: list[Line]) -> Path:
    raw = []
    for line in lines:
        if isinstance(line, bytes):
            raw.append(line)
        elif isinstance(line, str):
            raw.append(line.encode("utf-8"))
        else:
            raw.append(json.dumps(line).encode("utf-8"))
    path.write_bytes(b"\n".join(raw) + b"\n")
    return path


def run(tmp_path: Path, lines: list[Line], registry: str = REGISTRY, **params: Any) -> Result:
    events = write(tmp_path / "events.jsonl", lines)
    reg = tmp_path / "registry.yaml"
    reg.write_text(registry)
    return recompute(events, reg, Params(**params))


def row(**figures: Any) -> dict[str, Any]:
    """A pair-window row: zeros and None unless given."""
    out: dict[str, Any] = {
        "follow": 0, "like": 0, "share": 0, "reply": 0, "mention": 0, "thanks": 0,
        "engagements": 0, "value": 0.0, "reciprocated": 0, "snubbed": 0,
        "median_reciprocate_s": None,
    }
    out.update(figures)
    return out


# ------------------------------------------------------------------ time helpers


def test_epoch_and_fmt() -> None:
    assert epoch(D0) == D0
    assert epoch(D0 + 0.25) == D0 + 0.25
    assert epoch("2026-03-02T00:00:00Z") == D0
    assert epoch("2026-03-02t00:00:00z") == D0
    assert epoch("2026-03-02T01:00:00.250+01:00") == D0 + 0.25
    assert epoch("2026-03-01T19:30:00-04:30") == D0
    assert fmt(D0) == "2026-03-02T00:00:00Z"
    assert fmt(D0 + 0.25) == "2026-03-02T00:00:00.250000Z"
    assert fmt(D0 + 3 * DAY) == "2026-03-05T00:00:00Z"


def test_params_defaults() -> None:
    p = Params()
    assert p.horizon_s == 72 * 3600
    assert p.lateness_s == 300
    assert p.windows == (("1h", 3600), ("1d", 86400))
    assert dict(p.weights) == {"follow": 1, "like": 1, "share": 3, "reply": 2,
                               "mention": 2, "thanks": 2}
    assert (p.drop_threshold, p.drop_days, p.drop_min_baseline) == (0.5, 7, 5.0)
    assert p.watched_orgs == ()


# ------------------------------------------------------------------ input lines


def test_valid_invalid_blank_and_crlf_lines(tmp_path: Path) -> None:
    good = ev("a", D0, "like", "uni_main", "city_a")
    crlf = json.dumps(ev("b", D0 + 1, "like", "uni_main", "city_a")).encode() + b"\r"
    lines: list[Line] = [
        good,
        "",
        "   ",
        b"\r",
        crlf,
        "{not json",
        b"\xff\xfe{}",                                               # not UTF-8
        '{"id": "n", "ts": NaN, "kind": "like", "actor": "uni_main", "target": "city_a"}',
        '{"id": "\\ud800", "ts": 1772409600, "kind": "like", "actor": "u", "target": "c"}',
        ev("c", "2026-03-02T00:00:00", "like", "uni_main", "city_a"),  # no offset
        ev("d", 1772409600000, "like", "uni_main", "city_a"),         # milliseconds
        ev("e", True, "like", "uni_main", "city_a"),                   # not a number
        ev("f", D0, "like", "uni_main"),                               # no target
        {**ev("g", D0, "unfollow", "uni_main"), "target": None},      # null target
        ev("h", D0, "retweet", "uni_main", "city_a"),                  # unknown kind
        {"id": "i", "ts": D0, "kind": "like", "target": "city_a"},     # no actor
        ev("", D0, "like", "uni_main", "city_a"),                      # empty id
        "5",
        '"text"',
        ev("j", D0 + 2, "post", "uni_main", platform=None, mentions=None, extra={"x": 1}),
    ]
    result = run(tmp_path, lines)
    assert (result.valid, result.duplicates, result.invalid) == (3, 0, 14)
    assert result.late == []
    assert result.watermark == D0 + 2 - 300
    assert result.pairs[("1h", H0, "uni", "city")]["like"] == 2


def test_packed_array_lines(tmp_path: Path) -> None:
    lines: list[Line] = [
        ev("a", D0, "like", "uni_main", "city_a"),
        [
            ev("b", D0 + 1, "share", "uni_main", "city_a"),
            {"id": "broken"},
            5,
            ev("a", D0 + 2, "follow", "uni_main", "city_a"),    # duplicate of line 1
            ev("c", D0 + 3, "thanks", "uni_main", "city_a"),
        ],
        [],                                                     # empty array: invalid
        [[ev("d", D0 + 4, "like", "uni_main", "city_a")]],      # nested array: invalid
        [ev("e", D0 + 1000, "like", "uni_main", "city_a"),
         ev("f", D0 + 700, "like", "uni_main", "city_a")],      # f is late after e
    ]
    result = run(tmp_path, lines)
    assert (result.valid, result.duplicates, result.invalid) == (6, 1, 4)
    assert result.late == ["f"]
    assert result.pairs[("1h", H0, "uni", "city")] == row(
        like=2, share=1, thanks=1, engagements=4, value=7.0
    )


def test_late_boundary(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("a", D0 + 1000, "reply", "uni_main", "city_a"),
        ev("b", D0 + 700, "like", "uni_main", "city_a"),        # exactly max - L: late
        ev("c", D0 + 700.001, "share", "uni_main", "city_a"),   # just after: accepted
        ev("d", "2026-03-02T00:11:40Z", "like", "uni_main", "city_a"),  # D0+700 as text
        ev("e", D0 + 1200, "like", "city_a", "uni_main"),
        ev("f", D0 + 900, "like", "uni_main", "city_a"),        # max is now D0+1200: late
    ])
    assert result.late == ["b", "d", "f"]
    assert (result.valid, result.duplicates, result.invalid) == (6, 0, 0)
    assert result.watermark == D0 + 900
    got = result.pairs[("1h", H0, "uni", "city")]
    assert (got["like"], got["share"], got["reply"], got["engagements"]) == (0, 1, 1, 2)


def test_duplicates_first_copy_wins_even_when_late(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("a", D0 + 1000, "like", "uni_main", "city_a"),
        ev("a", D0 + 9000, "share", "uni_main", "city_a"),   # duplicate: no effect at all
        ev("b", D0 + 100, "like", "uni_main", "city_a"),     # late
        ev("b", D0 + 1000, "like", "uni_main", "city_a"),    # copy of a late event
        ev("c", D0 + 800, "follow", "uni_main", "city_a"),   # max is still D0+1000
        ev("b", "not a time", "like", "uni_main", "city_a"),  # invalid, not a duplicate
    ])
    assert (result.valid, result.duplicates, result.invalid) == (5, 2, 1)
    assert result.late == ["b"]
    assert result.watermark == D0 + 700
    assert result.pairs[("1h", H0, "uni", "city")] == row(
        like=1, follow=1, engagements=2, value=2.0
    )


def test_no_accepted_event(tmp_path: Path) -> None:
    result = run(tmp_path, ["{", "[]"])
    assert result.watermark is None
    assert (result.valid, result.invalid) == (0, 2)
    assert result.pairs == {} and result.alerts == set() and result.rollups == {}


# ------------------------------------------------------------------ engagements


def test_engagements_of_every_kind(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("1", D0, "follow", "uni_main", "city_a"),
        ev("2", D0, "like", "uni_main", "city_b"),
        ev("3", D0, "share", "uni_main", "city_a"),
        ev("4", D0, "reply", "uni_main", "city_a", mentions=["city_b", "press_a", "city_b"]),
        ev("5", D0, "mention", "uni_main", "city_a", mentions=["press_a"]),  # mentions ignored
        ev("6", D0, "thanks", "uni_main", "city_a"),
        ev("7", D0, "unfollow", "uni_main", "city_a"),                    # not an engagement
        ev("8", D0, "post", "uni_main", "city_a", mentions=["city_a", "nobody", "med_news"]),
        ev("9", D0, "like", "nobody", "city_a"),                           # unmapped actor
        ev("10", D0, "like", "uni_main", "nobody"),                        # unmapped target
        ev("11", D0, "like", "city_a", "city_b"),                          # same org
        ev("12", D0, "post", "city_a", mentions=["city_b"]),               # same org
    ])
    assert set(result.pairs) == {
        (label, H0, "uni", dst) for label in ("1h", "1d") for dst in ("city", "press", "med")
    }
    assert result.pairs[("1d", H0, "uni", "city")] == row(
        follow=1, like=1, share=1, reply=1, mention=3, thanks=1, engagements=8, value=15.0
    )
    assert result.pairs[("1d", H0, "uni", "press")] == row(mention=1, engagements=1, value=2.0)
    assert result.pairs[("1d", H0, "uni", "med")] == row(mention=1, engagements=1, value=2.0)


def test_custom_weights_and_windows(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("1", D0 + 3599, "like", "uni_main", "city_a"),
        ev("2", D0 + 3600, "share", "uni_main", "city_a"),
        ev("3", D0 + 3600.5, "like", "uni_main", "city_a"),
    ], windows=(("1h", 3600), ("2h", 7200)), weights=(("like", 0.5), ("share", 4)))
    assert result.pairs == {
        ("1h", H0, "uni", "city"): row(like=1, engagements=1, value=0.5),
        ("1h", "2026-03-02T01:00:00Z", "uni", "city"): row(
            like=1, share=1, engagements=2, value=4.5
        ),
        ("2h", H0, "uni", "city"): row(like=2, share=1, engagements=3, value=5.0),
    }


def test_registry_in_list_form(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("1", D0, "like", "uni_main", "city_a"),
        ev("2", D0, "post", "city_a", features=["dr_smith"]),
        ev("3", D0, "like", "did:plc:abc123", "city_a"),  # an identity is not an account
    ], registry=REGISTRY_AS_LISTS, windows=(("1d", DAY),))
    assert result.pairs == {("1d", H0, "uni", "city"): row(like=1, engagements=1, value=1.0)}
    assert result.omissions == {("2", "med", "city", ("dr_smith",), H0)}


# -------------------------------------------------------------- reciprocation


def one_hour(result: Result, src: str, dst: str, start: str = H0) -> dict[str, Any]:
    return result.pairs[("1h", start, src, dst)]


def test_return_at_the_same_time_does_not_count(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e", D0, "like", "uni_main", "city_a"),
        ev("r", D0, "like", "city_a", "uni_main"),
        filler("z", D0 + 5000),
    ], horizon_s=1000)
    assert one_hour(result, "uni", "city") == row(like=1, engagements=1, value=1.0, snubbed=1)
    assert one_hour(result, "city", "uni") == row(like=1, engagements=1, value=1.0, snubbed=1)
    assert result.snubs == {
        ("e", "uni", "city", "like", H0, "2026-03-02T00:16:40Z"),
        ("r", "city", "uni", "like", H0, "2026-03-02T00:16:40Z"),
    }


def test_return_exactly_at_horizon_counts(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e", D0, "share", "uni_main", "city_a"),
        ev("r", D0 + 1000, "like", "city_a", "uni_main"),
        filler("z", D0 + 5000),
    ], horizon_s=1000)
    assert one_hour(result, "uni", "city") == row(
        share=1, engagements=1, value=3.0, reciprocated=1, median_reciprocate_s=1000.0
    )
    assert result.snubs == {("r", "city", "uni", "like", "2026-03-02T00:16:40Z",
                             "2026-03-02T00:33:20Z")}


def test_return_after_horizon_does_not_count(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e", D0, "share", "uni_main", "city_a"),
        ev("r", D0 + 1000.5, "like", "city_a", "uni_main"),
        filler("z", D0 + 5000),
    ], horizon_s=1000)
    assert one_hour(result, "uni", "city")["snubbed"] == 1
    assert one_hour(result, "uni", "city")["reciprocated"] == 0
    assert ("e", "uni", "city", "share", H0, "2026-03-02T00:16:40Z") in result.snubs


@pytest.mark.parametrize(("last", "reciprocated"), [(D0 + 799, 0), (D0 + 800, 1)])
def test_reciprocated_once_watermark_reaches_first_return(
    tmp_path: Path, last: float, reciprocated: int
) -> None:
    result = run(tmp_path, [
        ev("e", D0, "like", "uni_main", "city_a"),
        ev("r", D0 + 500, "like", "city_a", "uni_main"),
        filler("z", last),
    ], horizon_s=1000)
    got = one_hour(result, "uni", "city")
    assert (got["reciprocated"], got["snubbed"]) == (reciprocated, 0)
    assert got["median_reciprocate_s"] == (500.0 if reciprocated else None)
    assert result.snubs == set()


@pytest.mark.parametrize(("last", "snubbed"), [(D0 + 1300, True), (D0 + 1299, False)])
def test_snub_exactly_when_watermark_reaches_deadline(
    tmp_path: Path, last: float, snubbed: bool
) -> None:
    result = run(tmp_path, [ev("e", D0, "like", "uni_main", "city_a"), filler("z", last)],
                 horizon_s=1000)
    assert result.watermark == last - 300
    got = one_hour(result, "uni", "city")
    assert (got["reciprocated"], got["snubbed"]) == (0, int(snubbed))
    if snubbed:
        assert result.snubs == {("e", "uni", "city", "like", H0, "2026-03-02T00:16:40Z")}
        assert result.alerts == {
            ("snub:e:uni:city:like", "snub", "uni", "city", "2026-03-02T00:16:40Z")
        }
    else:
        assert result.snubs == set() and result.alerts == set()


def test_mention_of_two_accounts_of_one_org(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("p", D0, "post", "uni_main", mentions=["city_a", "city_b", "city_a"]),
        filler("z", D0 + 1300),
    ], horizon_s=1000)
    assert one_hour(result, "uni", "city") == row(
        mention=2, engagements=2, value=4.0, snubbed=2
    )
    assert result.pairs[("1d", H0, "uni", "city")]["snubbed"] == 2
    assert result.snubs == {("p", "uni", "city", "mention", H0, "2026-03-02T00:16:40Z")}
    assert result.alerts == {
        ("snub:p:uni:city:mention", "snub", "uni", "city", "2026-03-02T00:16:40Z")
    }


def test_reply_with_mention_gives_two_snub_records(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("r", D0, "reply", "uni_main", "city_a", mentions=["city_b"]),
        filler("z", D0 + 1300),
    ], horizon_s=1000)
    assert one_hour(result, "uni", "city")["snubbed"] == 2
    assert {s[3] for s in result.snubs} == {"reply", "mention"}
    assert len(result.alerts) == 2


def test_median_of_an_even_count_and_one_return_for_several(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e1", D0, "like", "uni_main", "city_a"),
        ev("e2", D0 + 10, "share", "uni_main", "city_b"),
        ev("r", D0 + 50, "like", "city_b", "uni_main"),
        filler("z", D0 + 5000),
    ], horizon_s=1000)
    assert one_hour(result, "uni", "city") == row(
        like=1, share=1, engagements=2, value=4.0, reciprocated=2, median_reciprocate_s=45.0
    )
    assert one_hour(result, "city", "uni") == row(like=1, engagements=1, value=1.0, snubbed=1)


def test_first_return_is_earliest_in_time_not_in_file(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e1", D0, "like", "uni_main", "city_a"),
        ev("e2", D0 + 10, "like", "uni_main", "city_a"),
        ev("e3", D0 + 30, "like", "uni_main", "city_a"),
        ev("r1", D0 + 100, "like", "city_a", "uni_main"),
        ev("r2", D0 + 20, "like", "city_a", "uni_main"),  # earlier, arrives later, not late
        filler("z", D0 + 5000),
    ], horizon_s=1000)
    # delays: e1 -> r2 20, e2 -> r2 10, e3 -> r1 70; median 20
    got = one_hour(result, "uni", "city")
    assert (got["reciprocated"], got["median_reciprocate_s"]) == (3, 20.0)
    # r2 (D0+20) is returned by e3 (D0+30) after 10 s; r1 (D0+100) is snubbed
    back = one_hour(result, "city", "uni")
    assert (back["reciprocated"], back["snubbed"], back["median_reciprocate_s"]) == (1, 1, 10.0)


def test_reciprocation_across_windows(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e", D0 + 3500, "like", "uni_main", "city_a"),
        ev("r", D0 + 3700, "like", "city_a", "uni_main"),
        filler("z", D0 + 20000),
    ])
    assert one_hour(result, "uni", "city")["reciprocated"] == 1
    assert one_hour(result, "city", "uni", "2026-03-02T01:00:00Z")["reciprocated"] == 0
    assert result.pairs[("1d", H0, "uni", "city")]["median_reciprocate_s"] == 200.0
    assert result.snubs == set()  # default horizon 72 h: r is still open


# ------------------------------------------------------------------- omissions


def test_omissions(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("p1", D0, "post", "city_a", mentions=["lab_a"],
           features=["dr_smith", "proj_x", "dr_jones", "nurse_n", "unknown", "dr_smith"]),
        ev("p2", D0 + 1, "post", "uni_main", features=["dr_smith"], mentions=["med_alt"]),
        ev("p3", D0 + 2, "post", "uni_main", features=["proj_x"], mentions=["med_news"]),
        ev("p4", D0 + 3, "post", "nobody", features=["dr_smith"]),
        ev("p5", D0 + 4, "reply", "city_a", "uni_main", features=["dr_smith"]),
        ev("p6", D0 + 5, "post", "med_news", features=["dr_smith", "proj_x"], mentions=None),
        ev("p7", D0 + 1000, "post", "press_a", features=["nurse_n"]),
        ev("p8", D0 + 600, "post", "press_a", features=["proj_x"]),  # late
    ])
    assert result.late == ["p8"]
    assert result.omissions == {
        ("p1", "med", "city", ("dr_jones", "dr_smith"), H0),
        ("p3", "lab", "uni", ("proj_x",), "2026-03-02T00:00:02Z"),
        ("p6", "lab", "med", ("proj_x",), "2026-03-02T00:00:05Z"),
        ("p7", "city", "press", ("nurse_n",), "2026-03-02T00:16:40Z"),
    }
    assert result.alerts == {
        ("omission:p1:med", "omission", "med", "city", H0),
        ("omission:p3:lab", "omission", "lab", "uni", "2026-03-02T00:00:02Z"),
        ("omission:p6:lab", "omission", "lab", "med", "2026-03-02T00:00:05Z"),
        ("omission:p7:city", "omission", "city", "press", "2026-03-02T00:16:40Z"),
    }


# ------------------------------------------------------------------------ drops


DROP: dict[str, Any] = {"drop_days": 3, "drop_min_baseline": 2.0, "drop_threshold": 0.5,
        "horizon_s": 10 * DAY}


def likes(src: str, dst: str, per_day: list[int], tag: str = "") -> list[Line]:
    out: list[Line] = []
    for day, count in enumerate(per_day):
        for i in range(count):
            out.append(ev(f"{tag}{src}-{day}-{i}", D0 + day * DAY + 60 * i, "like", src, dst))
    return out


def chronological(*series: list[Line]) -> list[Line]:
    """Several series merged in time order (so that none of them arrives late)."""
    merged = [event for events in series for event in events]
    return sorted(merged, key=lambda event: event["ts"] if isinstance(event, dict) else 0)


def drops(result: Result) -> set[tuple[str, str, str, str, str]]:
    return {a for a in result.alerts if a[1].startswith("drop")}


def test_drop_with_zero_days(tmp_path: Path) -> None:
    # 3, 0, 3 then 0: baseline (3 + 0 + 3) / 3 = 2 >= 2, and 0 < 0.5 * 2
    events = [*likes("uni_main", "city_a", [3, 0, 3]), filler("z", D0 + 4 * DAY + 300)]
    result = run(tmp_path, events, **DROP)
    day3 = "2026-03-05T00:00:00Z"
    assert drops(result) == {
        (f"drop_pair:uni:city:{day3}", "drop_pair", "city", "uni", day3),
        (f"drop_inbound:city:{day3}", "drop_inbound", "city", "", day3),
    }


def test_drop_waits_for_the_day_to_close(tmp_path: Path) -> None:
    events = [*likes("uni_main", "city_a", [3, 0, 3]), filler("z", D0 + 4 * DAY + 299)]
    assert drops(run(tmp_path, events, **DROP)) == set()


def test_drop_evaluates_every_closed_day(tmp_path: Path) -> None:
    # days 3..9 are closed and evaluated, each against its 3 previous days:
    per_day = [3, 0, 3, 0, 4, 3, 0, 0, 0, 0]
    # day 3: base (3+0+3)/3=2, count 0 -> alert
    # day 4: base (0+3+0)/3=1 < 2 -> no
    # day 5: base (3+0+4)/3=7/3, count 3 >= 7/6 -> no
    # day 6: base (0+4+3)/3=7/3, count 0 -> alert
    # day 7: base (4+3+0)/3=7/3, count 0 -> alert
    # day 8: base (3+0+0)/3=1 -> no; day 9: base 0 -> no
    events = [*likes("uni_main", "city_a", per_day), filler("z", D0 + 10 * DAY + 300)]
    got = {a[4] for a in drops(run(tmp_path, events, **DROP)) if a[1] == "drop_pair"}
    assert got == {"2026-03-05T00:00:00Z", "2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z"}


def test_drop_series_starts_at_first_engagement(tmp_path: Path) -> None:
    # the series starts on day 1: day 3 has only 2 days before it and is not evaluated
    events = [*likes("uni_main", "city_a", [0, 6, 6, 0, 0]), filler("z", D0 + 5 * DAY + 300)]
    got = {a[4] for a in drops(run(tmp_path, events, **DROP)) if a[1] == "drop_pair"}
    assert got == {"2026-03-06T00:00:00Z"}  # day 4: (6 + 6 + 0) / 3 = 4, count 0


@pytest.mark.parametrize(
    ("per_day", "params", "alert"),
    [
        ([2, 2, 2, 1], {}, False),                            # 1 is not below 0.5 * 2
        ([2, 2, 2, 0], {}, True),
        ([2, 2, 2, 0], {"drop_min_baseline": 2.5}, False),    # baseline below the minimum
        ([2, 2, 1, 0], {}, False),                            # baseline 5/3 < 2
        ([4, 4, 4, 3], {"drop_threshold": 0.2}, True),        # 3 < 0.8 * 4
    ],
)
def test_drop_rule_boundaries(
    tmp_path: Path, per_day: list[int], params: dict[str, Any], alert: bool
) -> None:
    events = [*likes("uni_main", "city_a", per_day), filler("z", D0 + 4 * DAY + 300)]
    result = run(tmp_path, events, **{**DROP, **params})
    assert bool(drops(result)) == alert


def test_drop_pair_without_inbound_drop(tmp_path: Path) -> None:
    events = chronological(
        likes("uni_main", "city_a", [2, 2, 2, 0]),
        likes("press_a", "city_a", [0, 0, 0, 2]),   # keeps city's inbound level
        [filler("z", D0 + 4 * DAY + 300)],
    )
    day3 = "2026-03-05T00:00:00Z"
    assert drops(run(tmp_path, events, **DROP)) == {
        (f"drop_pair:uni:city:{day3}", "drop_pair", "city", "uni", day3)
    }


def test_drop_inbound_without_pair_drop(tmp_path: Path) -> None:
    # each pair alone stays under the minimum baseline; together they do not
    events = chronological(
        likes("uni_main", "city_a", [1, 1, 1, 0]),
        likes("press_a", "city_a", [1, 1, 1, 0]),
        [filler("z", D0 + 4 * DAY + 300)],
    )
    result = run(tmp_path, events, **DROP)
    assert result.late == []
    day3 = "2026-03-05T00:00:00Z"
    assert drops(result) == {
        (f"drop_inbound:city:{day3}", "drop_inbound", "city", "", day3)
    }


# ----------------------------------------------------------------------- alerts


def test_watched_orgs_filter_alerts(tmp_path: Path) -> None:
    events: list[Line] = [
        *likes("uni_main", "city_a", [2, 2, 2, 0]),   # snubs of uni, drops of city
        ev("p", D0 + 3 * DAY, "post", "city_a", features=["dr_smith"]),  # omission of med
        filler("z", D0 + 4 * DAY + 300),
    ]
    params = {**DROP, "horizon_s": 3600}
    everything = run(tmp_path, events, **params).alerts
    assert {a[1] for a in everything} == {"snub", "omission", "drop_pair", "drop_inbound"}
    assert len([a for a in everything if a[1] == "snub"]) == 6
    assert {a[2] for a in everything} == {"uni", "city", "med"}
    for watched in [("med",), ("uni", "city"), ("press",), ("city", "med", "uni")]:
        got = run(tmp_path, events, **params, watched_orgs=watched).alerts
        assert got == {a for a in everything if a[2] in watched}
    assert run(tmp_path, events, **params, watched_orgs=("med",)).alerts == {
        ("omission:p:med", "omission", "med", "city", "2026-03-05T00:00:00Z")
    }


# ---------------------------------------------------------------------- rollups


def test_ancestors_and_community_inheritance(tmp_path: Path) -> None:
    reg = tmp_path / "registry.yaml"
    reg.write_text(REGISTRY)
    registry = load_registry(reg)
    assert ancestors_or_self(registry, "lab") == ["lab", "med", "uni"]
    assert ancestors_or_self(registry, "ward") == ["ward", "spin", "city"]
    assert community_of(registry, "uni") == "internal"
    assert community_of(registry, "lab") == "internal"    # from uni, two levels up
    assert community_of(registry, "city") == "external"
    assert community_of(registry, "spin") == "internal"   # own value beats the parent's
    assert community_of(registry, "ward") == "internal"   # nearest ancestor: spin
    assert community_of(registry, "press") == "external"  # none anywhere


def test_multilevel_rollups(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("e1", D0, "like", "lab_a", "city_a"),          # lab -> city, value 1
        ev("e2", D0 + 60, "share", "city_a", "lab_a"),    # city -> lab, 3, returns e1
        ev("e3", D0 + 120, "follow", "lab_a", "uni_main"),  # lab -> uni, 1, inside uni
        ev("e4", D0 + 180, "thanks", "press_a", "lab_a"),  # press -> lab, 2
        filler("z", D0 + 7200 + 300),
    ], horizon_s=3600)

    def fig(eg: int, er: int, vg: float, vr: float, rec: float, bal: float,
            reciprocated: int = 0, snubbed: int = 0) -> dict[str, Any]:
        return {"engagements_given": eg, "engagements_received": er,
                "value_given": vg, "value_received": vr, "reciprocity": rec,
                "balance": bal, "reciprocated": reciprocated, "snubbed": snubbed}

    expected = {
        # lab gives e1 (to external city) and e3 (to internal uni); receives e2, e4
        ("lab", "external"): fig(1, 2, 1.0, 5.0, 0.2, -4 / 6, reciprocated=1),
        ("lab", "internal"): fig(1, 0, 1.0, 0.0, 0.0, 1.0, snubbed=1),
        # med has no account of its own in play: exactly lab's figures
        ("med", "external"): fig(1, 2, 1.0, 5.0, 0.2, -4 / 6, reciprocated=1),
        ("med", "internal"): fig(1, 0, 1.0, 0.0, 0.0, 1.0, snubbed=1),
        # e3 is between two members of uni: both given and received
        ("uni", "external"): fig(1, 2, 1.0, 5.0, 0.2, -4 / 6, reciprocated=1),
        ("uni", "internal"): fig(1, 1, 1.0, 1.0, 1.0, 0.0, snubbed=1),
        ("city", "internal"): fig(1, 1, 3.0, 1.0, 1 / 3, 0.5, snubbed=1),
        ("press", "internal"): fig(1, 0, 2.0, 0.0, 0.0, 1.0, snubbed=1),
    }
    for label in ("1h", "1d"):
        got = {(org, c): v for (lab, org, c), v in result.rollups.items() if lab == label}
        assert got.keys() == expected.keys()
        for key, want in expected.items():
            assert got[key] == pytest.approx(want), (label, key)


def test_rollups_sum_over_window_starts(tmp_path: Path) -> None:
    result = run(tmp_path, [
        ev("a", D0, "share", "spin_a", "uni_main"),
        ev("b", D0 + 3600, "share", "spin_a", "uni_main"),
        ev("c", D0 + 7200, "like", "uni_main", "spin_a"),
        filler("z", D0 + 8000),
    ])
    assert result.rollups[("1h", "spin", "internal")] == {
        "engagements_given": 2, "engagements_received": 1, "value_given": 6.0,
        "value_received": 1.0, "reciprocity": 1 / 6, "balance": 5 / 7,
        "reciprocated": 2, "snubbed": 0,
    }
    # city is spin's parent: spin's figures roll up to it
    assert result.rollups[("1h", "city", "internal")] == result.rollups[
        ("1h", "spin", "internal")
    ]
    assert result.rollups[("1d", "uni", "internal")]["engagements_received"] == 2
    assert set(result.rollups) == {
        (label, org, "internal") for label in ("1h", "1d") for org in ("spin", "city", "uni")
    }


def test_rollups_with_zero_values(tmp_path: Path) -> None:
    result = run(tmp_path, [ev("a", D0, "like", "uni_main", "press_a")],
                 weights=(("like", 0),), windows=(("1d", DAY),))
    assert result.rollups == {
        ("1d", "uni", "external"): {
            "engagements_given": 1, "engagements_received": 0, "value_given": 0.0,
            "value_received": 0.0, "reciprocity": 0.0, "balance": 0.0,
            "reciprocated": 0, "snubbed": 0,
        },
        ("1d", "press", "internal"): {
            "engagements_given": 0, "engagements_received": 1, "value_given": 0.0,
            "value_received": 0.0, "reciprocity": 0.0, "balance": 0.0,
            "reciprocated": 0, "snubbed": 0,
        },
    }


# ------------------------------------------------------------------------- scale


def test_twenty_thousand_events_in_a_few_seconds(tmp_path: Path) -> None:
    rng = random.Random(7)
    accounts = ["uni_main", "med_news", "med_alt", "lab_a", "city_a", "city_b", "press_a",
                "spin_a", "stranger"]
    kinds = ["follow", "like", "share", "reply", "mention", "thanks", "unfollow", "post"]
    lines: list[Line] = []
    t = float(D0)
    for i in range(20_000):
        t += rng.uniform(0, 120)
        jitter = rng.choice([0.0, 0.0, 0.0, -100.0, -400.0])   # some out of order, some late
        actor, target = rng.sample(accounts, 2)
        event = ev(f"id{i}", round(t + jitter, 3), rng.choice(kinds), actor, target,
                   mentions=rng.sample(accounts, rng.randint(0, 2)),
                   features=rng.sample(["dr_smith", "proj_x", "nurse_n"], rng.randint(0, 2)))
        lines.append(event)
        if rng.random() < 0.02:
            lines.append(event)                                  # a duplicate
    started = time.monotonic()
    result = run(tmp_path, lines, horizon_s=600, drop_days=3, drop_min_baseline=3.0)
    assert time.monotonic() - started < 15
    assert result.valid == len(lines)
    assert result.duplicates == len(lines) - 20_000
    assert 0 < len(result.late) < 20_000 // 4
    for label in ("1h", "1d"):
        rows = [v for k, v in result.pairs.items() if k[0] == label]
        assert sum(r["engagements"] for r in rows) == sum(
            r["engagements"] for k, r in result.pairs.items() if k[0] == "1d"
        )
        assert all(r["reciprocated"] + r["snubbed"] <= r["engagements"] for r in rows)
    assert result.snubs and result.omissions
