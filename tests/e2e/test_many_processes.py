"""Many server processes on one PostgreSQL database, directly and through PgBouncer in
transaction pooling mode, with the live change feed (docs/scaling.md, "Pooling").

Each test runs real `omnisdk-server serve` processes; writes go through fault proxies that
lose answers after the server applied them (the SDK retries with the same ids), and every
total is exact. Live watchers on every process must see the final state, whichever process
made the write: the feed's LISTEN runs on a direct connection (`OMNISDK_DATABASE_LISTEN_URL`)
even when everything else goes through the pooler.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.engine import make_url

import omnisdk
from omnisdk.core import recs
from omnisdk.models import CartChange
from omnisdk.resources.changes import Change
from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess, TestTenant
from tests.conftest import POSTGRES_SKIP_REASON, PostgresDatabases
from tests.fault_proxy import FaultProxy, writes
from tests.pgbouncer import PgBouncer, pgbouncer_binary

pytestmark = pytest.mark.postgres

FAST_RETRIES = omnisdk.RetryPolicy(max_retries=10, initial_delay=0.005, max_delay=0.05)
ADDS = 24
BATCHES = 6
BATCH = 50


def _direct_url(postgres: PostgresDatabases | None) -> str:
    if postgres is None:
        pytest.skip(POSTGRES_SKIP_REASON)
    return postgres.new()


def _count_events(url: str, tenant_id: str) -> int:
    """Events the tenant holds, counted over a direct connection."""
    import asyncpg

    where = make_url(url)

    async def count() -> int:
        conn = await asyncpg.connect(
            host=where.host, port=where.port, user=where.username, database=where.database
        )
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM events WHERE tenant_id = $1", tenant_id
            )
            return int(found)
        finally:
            await conn.close()

    return asyncio.run(count())


class Watcher:
    """A live watch of one customer's feed on one server process, on a thread."""

    def __init__(self, client: omnisdk.Client, customer_id: str) -> None:
        self.seen: queue.Queue[Change] = queue.Queue()
        self._feed = client.changes.watch(customer_id, timeout=120)
        self.feed = self._feed.__enter__()
        self._thread = threading.Thread(
            target=lambda: [self.seen.put(c) for c in self.feed], daemon=True
        )
        self._thread.start()
        assert self.feed.connected.wait(20)

    def wait_for_quantity(self, sku: str, quantity: int) -> None:
        """Return once a change shows the cart holding `quantity` of `sku` (or fail)."""
        while True:
            change = self.seen.get(timeout=30)
            if isinstance(change.data, CartChange):
                held = sum(line.quantity for line in change.data.lines if line.sku == sku)
                assert held <= quantity, "the feed showed more than was ever added"
                if held == quantity:
                    return

    def close(self) -> None:
        self.feed.close()
        self._thread.join(10)
        self._feed.__exit__(None, None, None)


def _exercise(servers: list[ServerProcess], shop: TestTenant, tag: str) -> None:
    """Adds and event batches through lossy proxies to every process; watchers on every
    process see the exact final cart; the database holds every event exactly once."""
    with contextlib.ExitStack() as stack:
        proxies = [
            stack.enter_context(FaultProxy(server.url, writes(0.25, n)))
            for n, server in enumerate(servers)
        ]
        web = shop.key("web")
        clients = [
            stack.enter_context(
                omnisdk.Client(proxy.url, web, channel="web", retry_policy=FAST_RETRIES)
            )
            for proxy in proxies
        ]
        amy = clients[0].identity.identify(anonymous_id=f"amy-{tag}").customer_id
        watchers = []
        for server in servers:
            reader = stack.enter_context(omnisdk.Client(server.url, shop.key("app"), channel="app"))
            watcher = Watcher(reader, amy)
            stack.callback(watcher.close)
            watchers.append(watcher)

        def add(n: int) -> None:
            clients[n % len(clients)].carts.add(amy, "TR2", 1, unit_price=10.0, currency="EUR")

        def send(n: int) -> None:
            clients[n % len(clients)].events.send_batch(
                [
                    {
                        "customer_id": amy,
                        "name": "product_viewed",
                        "event_id": f"{tag}-{n}-{k}",
                        "properties": {"sku": "TR2"},
                    }
                    for k in range(BATCH)
                ]
            )

        work = [threading.Thread(target=add, args=(n,)) for n in range(ADDS)]
        work += [threading.Thread(target=send, args=(n,)) for n in range(BATCHES)]
        for thread in work:
            thread.start()
        for thread in work:
            thread.join(60)
        assert not any(thread.is_alive() for thread in work)
        for watcher in watchers:
            watcher.wait_for_quantity("TR2", ADDS)
        cart = clients[-1].carts.get(amy)
        assert sum(line.quantity for line in cart.lines) == ADDS
        assert sum(proxy.dropped for proxy in proxies) > 0  # the retries were exercised


@pytest.fixture
def bouncer(postgres_databases: PostgresDatabases | None) -> Iterator[PgBouncer]:
    if postgres_databases is None:
        pytest.skip(POSTGRES_SKIP_REASON)
    binary = pgbouncer_binary()
    if binary is None:
        pytest.skip("PgBouncer tests skipped: install Debian's `pgbouncer` package (CI does)")
    with PgBouncer(postgres_databases.admin_url, binary) as running:
        yield running


def _rebuild_recommendations(servers: list[ServerProcess], shop: TestTenant) -> None:
    """Orders through one process, the recommendations job through the other: its window
    counts go by COPY and its batches by prepared statements, each of which must hold
    behind a pooler that hands the transaction's server connection to others between them."""
    baskets = [["TR2", "SOCKS"], ["TR2", "CAP", "SOCKS"], ["CAP", "BAG"]] * 4
    orders = [
        {
            "anonymous_id": f"buyer-{n}",
            "name": "order_completed",
            "event_id": f"order-{n}",
            "properties": {"order_id": f"O-{n}", "skus": skus},
        }
        for n, skus in enumerate(baskets)
    ]
    sent = httpx.post(
        f"{servers[0].url}/v1/events/batch",
        json={"events": orders},
        headers={"Authorization": f"Bearer {shop.key('web')}"},
        timeout=60,
    )
    assert sent.status_code == 200 and sent.json()["accepted"] == len(orders), sent.text
    built = httpx.post(
        f"{servers[-1].url}/v1/content/recommendations/rebuild",
        headers={"Authorization": f"Bearer {shop.key('admin')}"},
        timeout=120,
    )
    assert built.status_code == 200, built.text
    model = built.json()
    assert {key: model[key] for key in ("baskets", "together", "popular")} == recs.build(baskets)


def test_two_processes_behind_pgbouncer_in_transaction_mode_keep_every_write_exact(
    bouncer: PgBouncer, postgres_databases: PostgresDatabases, tmp_path: Path
) -> None:
    direct = _direct_url(postgres_databases)
    pooled = bouncer.url(make_url(direct).database or "")
    env = {
        "OMNISDK_DATABASE_POOLER": "transaction",
        "OMNISDK_DATABASE_LISTEN_URL": direct,
        "OMNISDK_DATABASE_POOL_SIZE": "4",
    }
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ServerProcess(pooled, env=env, log_path=tmp_path / "first.log"))
        second = stack.enter_context(
            ServerProcess(
                pooled, env=env, secret_key=first.secret_key, log_path=tmp_path / "second.log"
            )
        )
        # Tenants are made over the direct connection (the test's own writes use no pooler).
        first.database_url = direct
        shop = first.create_tenant("pooled shop", ATTRIBUTED_EVENTS)
        _exercise([first, second], shop, "pooled")
        assert _count_events(direct, shop.id) == BATCHES * BATCH
        _rebuild_recommendations([first, second], shop)
    assert "prepared statement" not in (tmp_path / "first.log").read_text(errors="replace")
    # The servers' connections did go through the pooler.
    assert f"{make_url(direct).database}/" in bouncer.log


def test_four_processes_on_one_database_share_the_live_feed(
    postgres_databases: PostgresDatabases | None, tmp_path: Path
) -> None:
    direct = _direct_url(postgres_databases)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ServerProcess(direct, log_path=tmp_path / "0.log"))
        servers = [first] + [
            stack.enter_context(
                ServerProcess(direct, secret_key=first.secret_key, log_path=tmp_path / f"{n}.log")
            )
            for n in range(1, 4)
        ]
        shop = first.create_tenant("four processes", ATTRIBUTED_EVENTS)
        _exercise(servers, shop, "four")
        assert _count_events(direct, shop.id) == BATCHES * BATCH
