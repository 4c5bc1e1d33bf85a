"""Clients that hang up at any moment: SSE watchers closing mid-read, requests cut off by
their own timeouts. The server process they hung up on goes on serving the others, its
writes reach every other process, and no connection of its pool is left inside a
transaction (a cancelled BEGIN once left one there for good: every later transaction on
that connection was a savepoint in it, never committed, its row locks held)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterator

import asyncpg
import httpx
import pytest

import omnisdk
from omnisdk.testing import ServerProcess
from tests.conftest import PostgresDatabases, new_database_url

ROUNDS = 30
AT_ONCE = 24  # hang-ups per round, all at once
SETTLE_SECONDS = 30.0  # a bound for a hang, not a figure


@pytest.fixture(scope="module")
def two_processes(
    tmp_path_factory: pytest.TempPathFactory, postgres_databases: PostgresDatabases | None
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    directory = tmp_path_factory.mktemp("hangups")
    url = new_database_url("postgres", directory, postgres_databases)
    with ServerProcess(url, log_path=directory / "first.log") as first:
        with ServerProcess(
            url, secret_key=first.secret_key, log_path=directory / "second.log"
        ) as second:
            yield first, second


async def _hang_up_on_feed(
    http: httpx.AsyncClient, url: str, key: str, path: str, rng: random.Random
) -> None:
    """Open the SSE stream and close it within a few milliseconds of its first bytes (its
    connection goes with it: a stream cut short is never kept alive)."""
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("GET", url + path, headers=headers) as response:
        assert response.status_code == 200
        async for _chunk in response.aiter_raw():
            await asyncio.sleep(rng.random() * 0.004)
            break


async def _hang_up_on_write(
    http: httpx.AsyncClient, url: str, key: str, customer: str, rng: random.Random
) -> None:
    """A consent write whose client gives up after a few milliseconds, before the answer."""
    with contextlib.suppress(httpx.TimeoutException):
        await http.post(
            f"{url}/v1/consent/{customer}",
            headers={"Authorization": f"Bearer {key}"},
            json={"decisions": [{"purpose": "analytics", "status": "granted"}]},
            timeout=rng.random() * 0.004 + 0.0005,
        )


async def _transactions_left_open(database_url: str) -> list[str]:
    """The server connections of this database that sit idle inside a transaction."""
    url = database_url.replace("postgresql+asyncpg://", "postgresql://")
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT left(query, 80) AS query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND state LIKE 'idle in transaction%'"
        )
    finally:
        await conn.close()
    return [row["query"] for row in rows]


@pytest.mark.postgres
def test_hang_ups_leave_no_transaction_open_and_every_write_reaches_the_other_process(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    shop = first.create_tenant()
    rng = random.Random(21)
    with shop.client("web") as web:
        amy = web.identity.identify(anonymous_id="amy-hangups").customer_id
    key = shop.key("web")

    async def hang_ups() -> None:
        # The tenant's feed of some kinds: its read begins with a statement run on the driver
        # (storage/prepared.py), where a cancelled BEGIN is ours to clean up.
        path = "/v1/changes?kinds=consent,content"
        limits = httpx.Limits(max_connections=AT_ONCE * 2)
        async with httpx.AsyncClient(timeout=10, limits=limits) as http:
            for _ in range(ROUNDS):
                await asyncio.gather(
                    *(_hang_up_on_feed(http, first.url, key, path, rng) for _ in range(AT_ONCE)),
                    *(_hang_up_on_write(http, first.url, key, amy, rng) for _ in range(4)),
                )

    asyncio.run(hang_ups())

    async def writes_then_reads() -> list[bool]:
        async with (
            omnisdk.AsyncClient(first.url, key, channel="web", consent_watch=False) as writer,
            omnisdk.AsyncClient(second.url, key, channel="web", consent_watch=False) as reader,
        ):
            # More transactions than the first process's pool has connections: each one of
            # them serves a write here.
            made = [
                (await writer.identity.identify(anonymous_id=f"after-{n}")).customer_id
                for n in range(40)
            ]
            for customer in made:
                await writer.consent.grant(customer, "personalisation")
            return [await reader.consent.check(c, "personalisation") for c in made]

    assert asyncio.run(writes_then_reads()) == [True] * 40

    # A transaction of a request still finishing may show for a moment; none may stay.
    deadline = time.monotonic() + SETTLE_SECONDS
    while (left := asyncio.run(_transactions_left_open(first.database_url))) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    assert left == []
