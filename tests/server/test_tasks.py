"""Background tasks stop for certain when a process shuts down (server_stub/tasks.py)."""

from __future__ import annotations

import asyncio

from server_stub import tasks


async def test_a_task_that_lost_its_cancellation_is_stopped_all_the_same() -> None:
    # As asyncio.wait_for on Python 3.11 may do inside a driver's connect: the first
    # cancellation is swallowed and the loop goes on.
    lost = []

    async def loop_that_loses_one_cancellation() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(True)
                current = asyncio.current_task()
                assert current is not None
                current.uncancel()

    task = asyncio.create_task(loop_that_loses_one_cancellation())
    await asyncio.sleep(0)
    assert await asyncio.wait_for(tasks.stop(task), timeout=60) is None
    assert task.cancelled() and lost == [True]


async def test_stop_gives_back_what_the_task_raised() -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    error = await tasks.stop(task)
    assert isinstance(error, ValueError)
    assert await tasks.stop(None) is None
