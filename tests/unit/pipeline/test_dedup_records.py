"""Loading a partition's dedup records (``Pipeline._index_partitions``): the
records a worker wrote in columns and those of releases before them (a list
per id) build the same index, largest event time and expiry queue."""

from __future__ import annotations

import collections
import zlib
from typing import Any

import orjson

from pipeline.app import Pipeline
from pipeline.ingest import (
    SEEN_COMPRESS_MIN_BYTES,
    SeenIndex,
    decode_seen_record,
    encode_seen_record,
)


def _worker(table: dict[str, bytes]) -> Any:
    """The parts of a Pipeline that indexing a partition uses."""
    worker: Any = Pipeline.__new__(Pipeline)
    worker.seen_table = table
    worker._indexed = set()
    worker._seen_index = SeenIndex()
    worker._max_ts = {}
    worker._seen_records = collections.defaultdict(collections.deque)
    return worker


def _held(index: SeenIndex) -> dict[str, Any]:
    """What the index holds of the ids these tests use (it cannot list its ids)."""
    found = {event_id: index.get(event_id) for event_id in "abcdz"}
    assert len(index) == sum(seen is not None for seen in found.values())
    return {event_id: seen for event_id, seen in found.items() if seen is not None}


def _columns(entries: list[list[Any]], high: float | None, hi: float | None) -> bytes:
    ids, offsets, items, lates = (list(c) for c in zip(*entries, strict=True)) if entries else (
        [], [], [], [])
    return orjson.dumps({"c": {"id": ids, "offset": offsets, "item": items, "late": lates},
                         "max": high, "hi": hi})


def _rows(entries: list[list[Any]], high: float | None, hi: float | None) -> bytes:
    return orjson.dumps({"ids": entries, "max": high, "hi": hi})


def test_records_in_columns_and_in_rows_index_alike() -> None:
    first = [["a", 3, 0, 0], ["b", 3, 1, 1], ["c", 4, 0, 0]]
    second = [["d", 7, 0, 0], ["a", 9, 0, 0]]  # "a" again: a replay stored it twice
    other = [["z", 1, 0, 0]]
    loaded = []
    for encode_first, encode_second in ((_rows, _columns), (_columns, _rows),
                                        (_columns, _columns), (_rows, _rows)):
        worker = _worker({
            "0:3": encode_first(first, 50.0, 40.0),
            "0:7": encode_second(second, 80.0, 70.0),
            "0:9": encode_second([], 90.0, None),  # a batch without new ids
            "1:1": encode_first(other, 5.0, 5.0),
        })
        worker._index_partitions({0})
        assert _held(worker._seen_index) == {"a": (0, 3, 0, 0), "b": (0, 3, 1, 1),
                                             "c": (0, 4, 0, 0), "d": (0, 7, 0, 0)}
        assert worker._max_ts == {0: 90.0}
        assert list(worker._seen_records[0]) == [(40.0, 4, "0:3"), (70.0, 9, "0:7"),
                                                 (None, 9, "0:9")]
        assert worker._indexed == {0}
        loaded.append((_held(worker._seen_index), list(worker._seen_records[0])))
    assert all(one == loaded[0] for one in loaded)


def test_large_records_are_stored_compressed_and_index_as_plain_json_does() -> None:
    """A record of SEEN_COMPRESS_MIN_BYTES or more is a zlib stream of its JSON
    (the table store holds every record in the worker's memory); a smaller one
    stays JSON, and records of earlier releases (plain JSON of any size) load
    the same way."""
    ids = [f"ev{i:08d}" for i in range(2000)]
    entries = [[event_id, 100 + i // 500, i % 500, int(i % 7 == 0)]
               for i, event_id in enumerate(ids)]
    record = orjson.loads(_columns(entries, 90.0, 80.0))
    small = orjson.loads(_columns([["a", 3, 0, 0], ["b", 3, 1, 1], ["c", 4, 0, 0]], 50.0, 40.0))
    stored, stored_small = encode_seen_record(record), encode_seen_record(small)
    plain = orjson.dumps(record)
    assert len(plain) >= SEEN_COMPRESS_MIN_BYTES > len(orjson.dumps(small))
    assert stored[:1] == b"x" and len(stored) * 3 < len(plain)
    assert zlib.decompress(stored) == plain  # a standard zlib stream
    assert stored_small == orjson.dumps(small)
    assert decode_seen_record(stored) == record == decode_seen_record(plain)
    assert decode_seen_record(stored_small) == small
    held = []
    for value in (stored, plain):
        worker = _worker({"0:100": value, "1:1": stored_small})
        worker._index_partitions({0, 1})
        index = worker._seen_index
        assert len(index) == len(ids) + 3
        assert [index.get(i) for i in ("ev00000000", "ev00001999", "b")] == [
            (0, 100, 0, 1), (0, 103, 499, 0), (1, 3, 1, 1)]
        held.append((worker._max_ts, list(worker._seen_records[0])))
    assert held[0] == held[1] == ({0: 90.0, 1: 50.0}, [(80.0, 103, "0:100")])
