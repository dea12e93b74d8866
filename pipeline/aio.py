"""Running an async main from a command, with a bounded shutdown."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

#: how long stopping may take once a run is over before the process gives up on
#: tasks that ignore cancellation (seen: Faust's after its producer failed)
SHUTDOWN_TIMEOUT_S = 15.0


def run_async(main: Coroutine[Any, Any, T], shutdown_timeout_s: float = SHUTDOWN_TIMEOUT_S) -> T:
    """Like :func:`asyncio.run`, but leftover tasks get ``shutdown_timeout_s`` to
    finish after cancellation instead of forever: a worker that failed must
    exit (so its supervisor restarts it), never hang."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                _, stuck = loop.run_until_complete(
                    asyncio.wait(tasks, timeout=shutdown_timeout_s))
                if stuck:
                    log.warning("%d task(s) ignored cancellation for %ss; exiting anyway",
                                len(stuck), shutdown_timeout_s)
            for step in (loop.shutdown_asyncgens(), loop.shutdown_default_executor()):
                loop.run_until_complete(asyncio.wait_for(step, shutdown_timeout_s))
        except (TimeoutError, RuntimeError) as exc:
            log.warning("unclean shutdown: %r", exc)
        finally:
            asyncio.set_event_loop(None)
            loop.close()
