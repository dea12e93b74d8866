"""The embedded store's ``release_memory`` when its engine refuses the purge
(a chdb built without jemalloc): nothing fails, the refusal is logged once
and the command is not sent again. The purge itself runs against the real
engine in ``tests/integration/pipeline/sinks/test_backends.py``."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from pipeline.sinks.embedded import ChdbBackend


class _Refusing:
    def __init__(self) -> None:
        self.queries: list[str] = []

    def query(self, sql: str, *args: Any) -> None:
        self.queries.append(sql)
        raise RuntimeError("Code: 344. DB::Exception: jemalloc is not used. (SUPPORT_IS_DISABLED)")


def test_a_refused_purge_is_logged_once_and_not_sent_again(
        caplog: pytest.LogCaptureFixture) -> None:
    store: Any = ChdbBackend.__new__(ChdbBackend)
    store._session, store._purge = _Refusing(), True
    with caplog.at_level(logging.INFO, logger="pipeline.sinks.embedded"):
        for _ in range(3):
            store.release_memory()
    assert store._session.queries == ["SYSTEM JEMALLOC PURGE"]
    assert [r.getMessage() for r in caplog.records] == [
        "the embedded store cannot purge its allocator: Code: 344. DB::Exception: "
        "jemalloc is not used. (SUPPORT_IS_DISABLED)"]
