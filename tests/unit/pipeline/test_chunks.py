"""Splitting routed records into internal messages (pipeline.app.chunk_by_offset)."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from pipeline.app import chunk_by_offset
from pipeline.ingest import Engagement, EngagementColumns


def records(offsets: list[int]) -> EngagementColumns:
    return EngagementColumns.of(
        Engagement(f"e{i}", 0, "a", "b", 1.0, o) for i, o in enumerate(offsets))


def test_chunks_never_split_a_source_offset() -> None:
    chunks = chunk_by_offset(records([1, 1, 1, 2, 2, 3, 4, 4, 4, 4, 5]), 2)
    assert [[r.offset for r in c] for c in chunks] == [[1, 1, 1], [2, 2], [3, 4, 4, 4, 4], [5]]


def test_no_records_is_one_empty_chunk() -> None:
    assert [list(c) for c in chunk_by_offset(EngagementColumns(), 5)] == [[]]


@given(st.lists(st.integers(0, 20), max_size=200).map(sorted), st.integers(1, 30))
def test_chunks_keep_every_record_in_order(offsets: list[int], size: int) -> None:
    given_records = records(offsets)
    chunks = chunk_by_offset(given_records, size)
    assert [r for c in chunks for r in c] == list(given_records)
    assert all(chunks[:-1]) and (chunks[-1] or len(chunks) == 1)
    for before, after in itertools.pairwise(chunks):
        assert before[-1].offset != after[0].offset
        assert len(before) >= size
