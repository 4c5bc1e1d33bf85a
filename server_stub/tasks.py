"""Stopping a process's background tasks for certain, when it shuts down."""

from __future__ import annotations

import asyncio
from typing import Any

STOP_NUDGE_SECONDS = 1.0


async def stop(task: asyncio.Task[Any] | None) -> BaseException | None:
    """Cancel `task` and wait until it has ended; return what it raised other than its
    cancellation (None if it was cancelled or returned).

    One cancellation is not always enough on Python 3.11: `asyncio.wait_for` (inside a
    database driver's connect, say) swallows a cancellation that lands as the call it waits
    for completes (python/cpython#86296), and the task's loop then goes on as if nothing had
    happened. So the task is cancelled again every STOP_NUDGE_SECONDS until it ends: a shutdown
    never waits forever for a background loop."""
    if task is None:
        return None
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=STOP_NUDGE_SECONDS)
    return None if task.cancelled() else task.exception()
