"""pipeline.aio.run_async: a command's async main, with a bounded shutdown."""

from __future__ import annotations

import asyncio
import time

import pytest

from pipeline.aio import run_async


async def stubborn() -> None:
    """A task that swallows cancellation (as a crashed Faust service did)."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            continue


def test_returns_the_result_and_stops_tasks_that_ignore_cancellation() -> None:
    async def main() -> int:
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        return 7

    started = time.monotonic()
    assert run_async(main(), shutdown_timeout_s=0.3) == 7
    assert time.monotonic() - started < 5


def test_the_main_error_propagates_after_a_bounded_shutdown() -> None:
    async def main() -> None:
        asyncio.get_running_loop().create_task(stubborn())
        await asyncio.sleep(0)
        raise RuntimeError("pipeline failed")

    started = time.monotonic()
    with pytest.raises(RuntimeError, match="pipeline failed"):
        run_async(main(), shutdown_timeout_s=0.3)
    assert time.monotonic() - started < 5
