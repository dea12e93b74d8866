"""Shared fixtures: a real Tansu broker and a real ClickHouse server, per session."""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.broker import EmbeddedBroker
from tests.support.clickhouse_server import clickhouse_server

_db_counter = itertools.count()

# Faust keeps each app's table data in "{app id}-data" under the working
# directory; tests (and the workers they start, which inherit this) use a
# temporary one. Read when faust is imported, so set before any test imports it.
os.environ.setdefault("FAUST_DATADIR", os.path.join(
    tempfile.mkdtemp(prefix="reciprocity-tests-faust-"), "{conf.name}-data"))


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    with EmbeddedBroker() as running:
        yield running


@pytest.fixture(scope="session")
def clickhouse_ports(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    with clickhouse_server(Path(tmp_path_factory.mktemp("clickhouse"))) as ports:
        yield ports


@pytest.fixture
def clickhouse_url(clickhouse_ports: tuple[int, int]) -> str:
    """A URL to a fresh database on the session's server (isolation by database)."""
    tcp, _ = clickhouse_ports
    return f"clickhouse://default:@127.0.0.1:{tcp}/test_{next(_db_counter)}?send_receive_timeout=30"
