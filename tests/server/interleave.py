"""Two transactions made to overlap on purpose, the second reading before the first commits
(what two server processes, or a request and a background pass, do at the worst moment):
the tool of the race tests. PostgreSQL only: SQLite has one writer at a time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.server.conftest import Harness

Step = Callable[[AsyncConnection], Awaitable[Any]]


async def interleaved(
    server: Harness,
    first: Step,
    second: Step,
) -> list[Any]:
    """`first` in one transaction, then `second` in another before the first commits (what
    two server processes, or a request and a background pass, can do), which must wait on a
    lock for it. Their results in order, an exception raised being the result."""
    first_done = asyncio.Event()
    release = asyncio.Event()

    async def one() -> Any:
        async with server.database.transaction(write=True) as conn:
            result = await first(conn)
            first_done.set()
            await release.wait()
        return result

    async def two() -> Any:
        await first_done.wait()
        async with server.database.transaction(write=True) as conn:
            return await second(conn)

    tasks = [asyncio.create_task(one()), asyncio.create_task(two())]
    async with asyncio.timeout(60):
        await first_done.wait()
        while await waiting_for_a_lock(server) == 0:  # the second has read and now waits
            assert not tasks[1].done(), "the second transaction did not wait for the first"
            await asyncio.sleep(0.01)
        release.set()
        return list(await asyncio.gather(*tasks, return_exceptions=True))


async def waiting_for_a_lock(server: Harness, locktype: str | None = None) -> int:
    """Statements of this test's database waiting for a lock (of `locktype`, or any): other
    tests run beside it on the same server."""
    async with server.database.transaction(write=False) as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE NOT l.granted AND a.datname = current_database() "
                "AND (CAST(:locktype AS text) IS NULL OR l.locktype = :locktype)"
            ),
            {"locktype": locktype},
        )
    return int(found or 0)
