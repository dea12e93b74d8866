"""Fixtures for the integration tests: one store on each engine."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sinks import Backend, open_backend


@pytest.fixture(params=["chdb", "server"])
def bare_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh, empty store: embedded chdb (modern ClickHouse) or a database of
    the session's clickhouse-server 18.16."""
    url = (f"chdb://{tmp_path / 'store'}" if request.param == "chdb"
           else request.getfixturevalue("clickhouse_url"))
    store = open_backend(url)
    yield store
    store.close()


@pytest.fixture
def backend(bare_store: Backend) -> Backend:
    """The same store with the schema migrated."""
    bare_store.ensure_schema()
    return bare_store
