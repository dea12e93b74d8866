"""pipeline.broker: the embedded broker's CPU figure (the bench reports it)."""

from __future__ import annotations

import pytest

from pipeline.broker import EmbeddedBroker

pytestmark = pytest.mark.integration


def test_cpu_seconds_while_running_and_none_otherwise() -> None:
    broker = EmbeddedBroker()
    assert broker.cpu_seconds() is None  # not started
    with broker:
        used = broker.cpu_seconds()
        assert isinstance(used, float) and used >= 0
    assert broker.cpu_seconds() is None  # stopped
