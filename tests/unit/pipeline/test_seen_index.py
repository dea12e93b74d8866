"""The dedup index (:class:`pipeline.seen_index.SeenIndex`) against a dict of
the same ids: every operation the worker uses, with its runs compacted, ids
forgotten and seen again, and first halves of keys shared by many ids."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import pytest

import pipeline.seen_index as seen_index
from pipeline.seen_index import ITEMS, OFFSETS, Seen, SeenIndex


@pytest.fixture(params=["real keys", "shared first halves"])
def shared(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """With ``shared first halves`` every id's first half is one of 64
    values, so every lookup walks ids that share it (the path a real
    collision of 64 bits, or a forgotten copy of an id, takes)."""
    if request.param == "shared first halves":
        def few(ids: Sequence[str]) -> np.ndarray:
            return np.fromiter((hash(i) % 64 for i in ids), dtype=np.int64, count=len(ids))
        monkeypatch.setattr(seen_index, "_first_halves", few)
        monkeypatch.setattr(seen_index, "_YOUNG_MIN", 8)  # compact often
    yield request.param == "shared first halves"


def _check(index: SeenIndex, model: dict[str, Seen], others: Sequence[str]) -> None:
    assert len(index) == len(model)
    for event_id, seen in model.items():
        assert index.get(event_id) == seen and event_id in index
    for event_id in others:
        if event_id not in model:
            assert index.get(event_id) is None and event_id not in index
    assert index.get_many([*model, *others, *model]) == model
    assert index.contains_any(list(model)[:3] + list(others)) == bool(model)
    assert not index.contains_any([i for i in others if i not in model])


def test_positions_come_back_as_they_went_in(shared: bool) -> None:
    index = SeenIndex()
    positions = {"a": (0, 0, 0, 0), "b": (3, OFFSETS - 1, ITEMS - 1, 1),
                 "c": (17, 123456, 499, 0), "é": (2, 5, 1, 1)}
    for event_id, seen in positions.items():
        index[event_id] = seen
    _check(index, positions, ["x", "ab", "a\x1f"])
    index["a"] = (1, 2, 3, 1)  # set again: replaced, not added
    assert index["a"] == (1, 2, 3, 1) and len(index) == 4
    del index["a"]
    index.drop_partition(3)
    _check(index, {"c": (17, 123456, 499, 0), "é": (2, 5, 1, 1)}, ["a", "b"])
    with pytest.raises(KeyError):
        index["a"]
    with pytest.raises(KeyError):
        del index["a"]
    for bad in ((0, OFFSETS, 0, 0), (0, 0, ITEMS, 0), (-1, 0, 0, 0), (0, -1, 0, 0)):
        with pytest.raises(ValueError):
            index["d"] = bad
        with pytest.raises(ValueError):
            index.add({bad[0]: (["d"], [bad[1]], [bad[2]], [bad[3]])})
    assert "d" not in index and len(index) == 2


def test_forget_through_lets_go_of_a_partitions_ids_up_to_an_offset(shared: bool) -> None:
    index = SeenIndex()
    index.add({3: (["b", "x", "y"], [7, 8, 9], [0, 0, 1], [1, 0, 0]), 17: (["c"], [7], [2], [0])})
    index.load(3, ["z"], [2], [0], [0])  # loaded, in the other run
    index.forget_through({3: 8})
    _check(index, {"c": (17, 7, 2, 0), "y": (3, 9, 1, 0)}, ["b", "x", "z"])
    index.forget_through({3: 8, 17: 6})  # nothing left there: nothing changes
    _check(index, {"c": (17, 7, 2, 0), "y": (3, 9, 1, 0)}, ["b", "x", "z"])
    index.add({4: (["b"], [1], [0], [0])})  # seen again after it was forgotten
    index.forget_through({17: 7, 3: 9})
    _check(index, {"b": (4, 1, 0, 0)}, ["c", "x", "y"])
    index.forget_through({})
    _check(index, {"b": (4, 1, 0, 0)}, ["c"])


def test_load_keeps_the_earliest_position_in_any_order(shared: bool) -> None:
    records = [(0, ["a", "b", "a"], [5, 5, 9], [1, 2, 0], [0, 1, 0]),
               (1, ["a", "c"], [1, 2], [0, 0], [1, 0]),
               (0, ["c", "d"], [11, 12], [0, 0], [0, 0])]
    expected = {"a": (0, 5, 1, 0), "b": (0, 5, 2, 1), "c": (0, 11, 0, 0), "d": (0, 12, 0, 0)}
    for order in ([0, 1, 2], [1, 0, 2], [2, 1, 0], [1, 2, 0]):
        index = SeenIndex()
        for i in order:
            index.load(*records[i])
        _check(index, expected, ["e"])


def test_many_batches_match_a_dict(shared: bool) -> None:
    """Batches of new ids, forgotten records, partitions dropped and loaded
    again, against a dict model, with the runs compacted on the way."""
    rng = random.Random(7)
    index, model = SeenIndex(), dict[str, Seen]()
    records: list[list[str]] = []
    next_id, offsets = 0, [0, 0, 0]
    for step in range(150):
        batch: dict[int, tuple[list[str], list[int], list[int], list[int]]] = {}
        for _ in range(rng.randint(1, 60)):
            p = rng.randrange(3)
            offsets[p] += rng.randint(0, 1)
            event_id = f"e{next_id}" if rng.random() < 0.9 or not records else \
                rng.choice(records)[0]  # an id forgotten earlier, or still held
            next_id += 1
            if event_id in model or any(event_id in ids for ids, *_ in batch.values()):
                continue
            ids, offs, items, lates = batch.setdefault(p, ([], [], [], []))
            ids.append(event_id)
            offs.append(offsets[p])
            items.append(rng.randrange(500))
            lates.append(rng.randint(0, 1))
        index.add(batch)
        for p, (ids, offs, items, lates) in batch.items():
            model.update(zip(ids, zip([p] * len(ids), offs, items, lates, strict=True),
                             strict=True))
            records.append(ids)
        if step % 7 == 3:
            through = {p: offsets[p] - rng.randint(100, 250) for p in rng.sample(range(3), 2)}
            index.forget_through(through)
            model = {i: s for i, s in model.items() if s[1] > through.get(s[0], -1)}
        if step % 50 == 49:
            gone = rng.randrange(3)
            index.drop_partition(gone)
            held = {i: s for i, s in model.items() if s[0] == gone}
            model = {i: s for i, s in model.items() if s[0] != gone}
            _check(index, model, list(held)[:20])
            ids = list(held)
            index.load(gone, ids, [held[i][1] for i in ids], [held[i][2] for i in ids],
                       [held[i][3] for i in ids])
            model.update(held)
        if step % 10 == 0:
            _check(index, model, [f"e{next_id + k}" for k in range(5)])
    _check(index, model, [f"e{next_id + k}" for k in range(50)])
    assert len(model) > 1000
