"""The reciprocity definitions of docs/metrics.md, checked on hand-made cases."""

from __future__ import annotations

import pytest

from pipeline.reciprocity import (
    Omission,
    balance,
    first_return,
    is_drop,
    omissions,
    pair_reciprocity,
    value,
)
from schemas.event import Event
from schemas.registry import Org, Registry

REG = Registry(
    orgs={"uni": Org("uni", "U"), "fac": Org("fac", "F", "uni"), "ext": Org("ext", "E")},
    org_of_account={"uni_a": "uni", "fac_a": "fac", "fac_b": "fac", "ext_a": "ext"},
    org_of_entity={"dr_f": "fac", "lab_f": "fac", "dr_e": "ext", "dr_u": "uni"},
)


def post(mentions: tuple[str, ...] = (), features: tuple[str, ...] = (),
         actor: str = "uni_a") -> Event:
    return Event("p1", 100.0, "post", actor, None, mentions, features)


def test_value_uses_default_weights() -> None:
    counts = {"share": 1, "mention": 1, "reply": 1, "thanks": 1, "follow": 1, "like": 1}
    assert value(counts) == 3 + 2 + 2 + 2 + 1 + 1
    assert value({"like": 4}, {"like": 0.5}) == 2
    assert value({"unfollow": 3, "post": 2}) == 0


@pytest.mark.parametrize(("ab", "ba", "r", "b"), [
    (0, 0, 0.0, 0.0), (10, 0, 0.0, 1.0), (0, 4, 0.0, -1.0), (6, 3, 0.5, 1 / 3), (5, 5, 1.0, 0.0),
])
def test_pair_reciprocity_and_balance(ab: float, ba: float, r: float, b: float) -> None:
    assert pair_reciprocity(ab, ba) == pytest.approx(r)
    assert balance(ab, ba) == pytest.approx(b)


def test_parent_featuring_a_faculty_researcher_without_naming_it_is_an_omission() -> None:
    assert omissions(post(features=("lab_f", "dr_f")), REG) == [
        Omission("p1", "fac", "uni", ("dr_f", "lab_f"), 100.0)
    ]


def test_mentioning_any_account_of_the_featured_org_is_not_an_omission() -> None:
    assert omissions(post(mentions=("fac_b",), features=("dr_f",)), REG) == []


def test_one_record_per_left_out_org_and_own_entities_ignored() -> None:
    found = omissions(post(mentions=("fac_a",), features=("dr_f", "dr_e", "dr_u")), REG)
    assert found == [Omission("p1", "ext", "uni", ("dr_e",), 100.0)]


def test_omissions_need_a_registered_poster_and_a_post() -> None:
    assert omissions(post(features=("dr_f",), actor="stranger"), REG) == []
    like = Event("l1", 1.0, "like", "uni_a", "fac_a", (), ("dr_f",))
    assert omissions(like, REG) == []


def test_drop_rule() -> None:
    assert is_drop(4.9, 10.0)  # below (1 - 0.5) x 10
    assert not is_drop(5.0, 10.0)  # not strictly below
    assert not is_drop(0.0, 4.0)  # baseline under min_baseline
    assert is_drop(0.0, 4.0, min_baseline=4.0)
    assert is_drop(7.0, 10.0, threshold=0.25) and not is_drop(7.5, 10.0, threshold=0.25)


def test_first_return() -> None:
    horizon = 100.0
    returned = [10.0, 50.0, 500.0, 600.0]
    assert first_return(returned, 0.0, horizon) == 10.0
    assert first_return(returned, 10.0, horizon) == 50.0  # strictly after t
    assert first_return(returned, 60.0, horizon) is None  # 500 is beyond t + H
    assert first_return(returned, 500.0 - horizon, horizon) == 500.0  # t + H counts
    assert first_return([], 0.0, horizon) is None
