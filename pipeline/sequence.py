"""Offset continuity per source partition (pure).

The pipeline's exactness rests on applying each partition's messages in offset
order with no holes (``pipeline.pairs``: offset-tagged state skips anything
at or below a key's tag, so a message applied after a later one would be lost
for good). Faust can deliver a stream with a hole in it: a race between table
recovery and the fetcher drops queued messages (faust-streaming issue #596);
we reproduced it here after a worker crash, in about one restart out of four.

:class:`SequenceGuard` checks each message against the next offset expected
for its partition. On a hole the worker must stop before applying anything
past it: Faust never commits past offsets that were not acked, so the restart
resumes at or before the hole and nothing is lost.

Limitation: a topic whose log itself has holes (compaction, a transactional
producer's commit markers) stops the worker at each hole; the input topic of
this pipeline must be a plain, non-compacted topic (see docs/contract.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Verdict(Enum):
    APPLY = "apply"  # next in sequence (or the first seen after assignment)
    STALE = "stale"  # below the next expected offset: already applied by this worker
    HOLE = "hole"  # offsets between the expected one and this never arrived


class OffsetHoleError(RuntimeError):
    """Messages of a partition were skipped by the stream; restart to re-read them."""


@dataclass
class SequenceGuard:
    #: next offset expected per partition (unknown until its first message)
    expected: dict[int, int] = field(default_factory=dict)

    def start(self, partition: int, offset: int) -> None:
        """Expect ``offset`` first (where consumption resumes after an assignment):
        a first message past it reveals a hole at the head of the partition."""
        self.expected.setdefault(partition, offset)

    def forget(self, partition: int) -> None:
        """Drop what is known of a partition (revoked or reassigned)."""
        self.expected.pop(partition, None)

    def check(self, partition: int, offset: int) -> Verdict:
        """Classify the next message of ``partition`` the stream delivered."""
        expected = self.expected.get(partition)
        if expected is None or offset == expected:
            self.expected[partition] = offset + 1
            return Verdict.APPLY
        return Verdict.STALE if offset < expected else Verdict.HOLE
