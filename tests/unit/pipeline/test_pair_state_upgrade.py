"""Taking a pairs partition over from the ``pair-states`` table of releases
before the columns (``Pipeline._load_pairs``, ``_adopt_legacy``): what an
older worker left in its table becomes the columnar stage's state, and the
stage then finds what the stage on objects would have found."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson

from pipeline.app import _TRACKER, Pipeline
from pipeline.ingest import Message
from pipeline.pair_columns import ColumnarPairStage
from pipeline.pairs import PairStage
from pipeline.reciprocity import Params
from pipeline.routing import decode, encode, pair_key, partition_for
from tests.unit.pipeline.test_pair_columns import NOW, REGISTRY, H, _same, _scenario

PARTITIONS = 4


def _worker(legacy: dict[str, bytes], current: dict[str, bytes], params: Params) -> Any:
    """The parts of a Pipeline that loading a pairs partition uses."""
    worker: Any = Pipeline.__new__(Pipeline)
    worker.settings = SimpleNamespace(partitions=PARTITIONS)
    worker.params = params
    worker.ingest = SimpleNamespace(registry=REGISTRY)
    worker.pair_stage = ColumnarPairStage(REGISTRY, params, PARTITIONS)
    worker.pair_table = current
    worker.legacy_pair_table = legacy
    worker._legacy_keys = {}
    return worker


def _routed_to(partition: int, batches: list[list[Message]]) -> list[list[Message]]:
    """The scenario's messages with only the records of pairs that stage 1
    routes to ``partition`` (as a real pairs partition holds)."""
    out = []
    for batch in batches:
        kept = []
        for message in batch:
            routed = decode(message.value)
            records = [r for r in routed.records
                       if partition_for(pair_key(r.src, r.dst), PARTITIONS) == partition]
            kept.append(message._replace(
                value=encode(routed.source, routed.max_ts, routed.idle, records)))
        out.append(kept)
    return out


def test_an_older_workers_pair_states_are_taken_over() -> None:
    params = Params(windows=(H, 24 * H), horizon_s=3 * H, lateness_s=60.0, drop_days=3,
                    drop_min_baseline=1.0)
    batches = _routed_to(2, _scenario(11, 2, 3 * H))
    cut = len(batches) // 2
    old = PairStage(REGISTRY, params, PARTITIONS)
    old.load(2, None, [])
    legacy: dict[str, bytes] = {}
    for batch in batches[:cut]:  # what an older worker wrote to its table
        outcome = old.process(2, batch, "s", NOW)
        for key, value in outcome.states.items():
            if value is None:
                legacy.pop(key, None)
            else:
                legacy[key] = value
        legacy[f"{_TRACKER}2"] = orjson.dumps(outcome.tracker)
    # another partition's keys, which partition 2 must leave alone
    other = next(pair_key(a, b) for a in "abcdefgh" for b in "ijklmnop"
                 if partition_for(pair_key(a, b), PARTITIONS) != 2)
    legacy[other] = legacy[next(k for k in legacy if not k.startswith(_TRACKER))]
    ours = [k for k in legacy if k != other]
    assert len(ours) > 2

    worker = _worker(legacy, {}, params)
    worker._load_pairs(2)
    assert sorted(worker._legacy_keys[2]) == sorted(ours)
    stage = worker.pair_stage
    assert stage.owns(2) and not stage.snapshotted(2)
    for batch in batches[cut:]:
        _same(old.process(2, batch, "s", NOW), stage.process(2, batch, "s", NOW))
    assert stage.snapshotted(2)


def test_a_partition_the_new_table_holds_is_not_taken_over_again() -> None:
    params = Params(windows=(H,), horizon_s=3 * H, lateness_s=60.0)
    legacy = {f"{_TRACKER}1": orjson.dumps({"max": [], "idle": [], "closed": None,
                                            "tag": 7})}
    worker = _worker(legacy, {f"{_TRACKER}1": orjson.dumps(
        {"max": [], "idle": [], "closed": None, "tag": 3})}, params)
    worker._load_pairs(1)
    assert worker._legacy_keys == {}
    assert worker.pair_stage._partitions[1].tracker.tag == 3
    nothing = _worker({}, {}, params)
    nothing._load_pairs(0)
    assert nothing._legacy_keys == {} and nothing.pair_stage.owns(0)
