"""The change feed: a change made through one channel reaches another channel's watcher live."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from omnisdk.resources.changes import Change
from omnisdk.testing import ServerProcess, TestTenant
from server_stub.storage.migrate import upgrade
from tests.conftest import PostgresDatabases, direct_connection


@contextlib.contextmanager
def watch_in_background(
    shop: TestTenant, channel: str, customer_id: str, seen: queue.Queue[Change]
) -> Iterator[None]:
    """Put every change of the customer on `seen` from a thread, until the block ends: the
    watch is closed and its thread joined, so it never outlives the server it watches (a
    leftover watcher would reconnect to whatever server takes the port next)."""
    with shop.client(channel) as client:
        watch = client.changes.watch(customer_id)

        def run() -> None:
            for change in watch:
                seen.put(change)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield
        finally:
            watch.close()
            thread.join(10)
            assert not thread.is_alive(), "the watcher did not stop when closed"


def wait_until_watching(shop: TestTenant, customer_id: str, seen: queue.Queue[Change]) -> None:
    """Poke the cart until the watcher reports a change (it may connect a moment late)."""
    with shop.client("web") as web:
        for attempt in range(50):
            web.carts.add(customer_id, f"PROBE-{attempt}", 1)
            try:
                seen.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        while not seen.empty():
            seen.get_nowait()


def test_the_phone_sees_the_shoes_the_laptop_adds(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as laptop:
        amy = laptop.identity.identify(anonymous_id="laptop", email="amy@example.com").customer_id
        seen: queue.Queue[Change] = queue.Queue()
        with watch_in_background(shop, "app", amy, seen):
            wait_until_watching(shop, amy, seen)
            laptop.carts.add(amy, "TR2", 1, {"size": "38"}, name="Trail runner", unit_price=89.0)
            change = seen.get(timeout=10)
    assert change.kind == "cart"
    assert any(line.sku == "TR2" and line.quantity == 1 for line in change.data.lines)


def test_a_change_through_one_process_reaches_a_watcher_on_another(
    postgres_databases: PostgresDatabases | None, tmp_path: Path
) -> None:
    if postgres_databases is None:
        pytest.skip("needs PostgreSQL (several server processes share it)")
    url = postgres_databases.new()
    with ServerProcess(url) as first:
        shop = first.create_tenant()
        with ServerProcess(url, secret_key=first.secret_key) as second:
            with shop.client("web") as web:
                amy = web.identity.identify(anonymous_id="laptop").customer_id
            seen: queue.Queue[Change] = queue.Queue()
            watcher = TestTenant(shop.id, shop.name, second)  # same tenant, the other process
            with watch_in_background(watcher, "app", amy, seen):
                wait_until_watching(shop, amy, seen)  # writes go through the first process
                with shop.client("web") as web:
                    web.carts.add(amy, "TR2", 2)
                change = seen.get(timeout=10)
    assert any(line.sku == "TR2" and line.quantity == 2 for line in change.data.lines)


BACKLOG = 20_000  # expired changes waiting when the server starts


@pytest.mark.postgres
def test_a_server_serves_before_its_expired_backlog_is_pruned_and_prunes_it_all(
    postgres_databases: PostgresDatabases | None, tmp_path: Path
) -> None:
    """The start-up pruning runs behind the server: while a transaction holds the feed's
    counter (so no pruning batch can commit), the server still becomes ready and answers;
    once it lets go, every expired change goes, in batches, and the horizon covers them."""
    if postgres_databases is None:
        pytest.skip("needs PostgreSQL (OMNISDK_TEST_POSTGRES_URL)")
    url = postgres_databases.new()
    asyncio.run(upgrade(url))
    asyncio.run(_seed_backlog(url))
    holder = asyncio.new_event_loop()
    try:
        counter = holder.run_until_complete(_hold_counter(url))
        env = {
            "OMNISDK_CHANGE_RETENTION_SECONDS": "3600",
            "OMNISDK_MAINTENANCE_BATCH_ROWS": "1000",
        }
        with ServerProcess(url, env=env, log_path=tmp_path / "server.log") as server:
            assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200
            assert asyncio.run(_horizon(url)) == (BACKLOG, 0)  # nothing pruned yet
            holder.run_until_complete(counter.close())  # lets the pruning through
            deadline = time.monotonic() + 120
            while asyncio.run(_horizon(url)) != (BACKLOG, BACKLOG):
                assert time.monotonic() < deadline, "the backlog was not pruned"
                time.sleep(0.2)
            assert asyncio.run(_left(url)) == 0
    finally:
        holder.close()


async def _seed_backlog(url: str) -> None:
    conn = await direct_connection(url)
    try:
        await conn.execute(
            "INSERT INTO change_positions (tenant_id, position, pruned_through) "
            "VALUES ('ten_backlog', $1, 0)",
            BACKLOG,
        )
        await conn.execute(
            "INSERT INTO changes (tenant_id, position, customer_id, kind, payload, created_at) "
            "SELECT 'ten_backlog', n, 'cus_' || (n % 100), 'session', '{}', "
            "now() - interval '30 days' FROM generate_series(1, $1) AS n",
            BACKLOG,
        )
    finally:
        await conn.close()


async def _hold_counter(url: str) -> Any:
    """A connection in a transaction holding the tenant's feed counter row."""
    conn = await direct_connection(url)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM change_positions WHERE tenant_id = 'ten_backlog' FOR UPDATE")
    return conn


async def _horizon(url: str) -> tuple[int, int]:
    conn = await direct_connection(url)
    try:
        row = await conn.fetchrow(
            "SELECT position, pruned_through FROM change_positions WHERE tenant_id = 'ten_backlog'"
        )
    finally:
        await conn.close()
    assert row is not None
    return int(row[0]), int(row[1])


async def _left(url: str) -> int:
    conn = await direct_connection(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM changes WHERE tenant_id = 'ten_backlog'")
        )
    finally:
        await conn.close()
