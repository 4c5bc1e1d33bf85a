"""The change feed never skips and never leaks: two server processes on one database (SQLite
file or PostgreSQL), concurrent writers on both, watchers on both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

import omnisdk
from omnisdk._content_cache import ProfileFacts
from omnisdk._sync import Client
from omnisdk.core.problems import ProblemType
from omnisdk.resources.changes import RESYNC, Change, SseParser
from omnisdk.testing import ServerProcess, TestTenant
from server_stub.ids import utcnow
from server_stub.services import changes
from server_stub.storage.database import Database
from tests.conftest import DATABASES, PostgresDatabases, new_database_url

WRITERS = 8
ROUNDS = 24  # writes per writer: cart adds, session writes and consent decisions in turn
CUSTOMERS = 4
ALL_KINDS = "consent,content,cart,session"
ARRIVAL_DEADLINE = 30.0  # seconds: a bound for a hang, not a figure (see bench_feed)
# Shorter than the server's 15 s keepalive re-read, so only a wake-up passes; the figure
# (within 1 s; 0.1 s polls on SQLite) is measured in bench_feed.
WAKE_DEADLINE = 10.0


@pytest.fixture(scope="module", params=DATABASES)
def two_processes(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two `omnisdk-server serve` processes on one database."""
    directory = tmp_path_factory.mktemp("feed")
    url = new_database_url(request.param, directory, postgres_databases)
    with ServerProcess(url, log_path=directory / "first.log") as first:
        with ServerProcess(
            url, secret_key=first.secret_key, log_path=directory / "second.log"
        ) as second:
            yield first, second


def on(server: ServerProcess, shop: TestTenant) -> TestTenant:
    """The same tenant, reached through another server process."""
    return TestTenant(shop.id, shop.name, server)


async def follow(url: str, key: str, path: str, after: int, into: asyncio.Queue[Change]) -> None:
    """Follow an SSE feed from `after`, putting every change (and resync) into `into`."""
    headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": str(after)}
    async with httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as http:
        async with http.stream("GET", url + path, headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            parser = SseParser()
            async for line in response.aiter_lines():
                change = parser.feed(line)
                if change is not None:
                    await into.put(change)


async def collect(
    into: asyncio.Queue[Change], count: int, within: float = ARRIVAL_DEADLINE
) -> list[Change]:
    """The next `count` changes that arrive (fails if they do not arrive in time)."""
    got: list[Change] = []
    deadline = time.monotonic() + within
    while len(got) < count:
        got.append(await asyncio.wait_for(into.get(), deadline - time.monotonic()))
    return got


async def write_mix(server: str, key: str, customers: list[str], writer: int) -> None:
    """One writer: cart adds, session writes and consent decisions, round-robin on customers."""
    async with omnisdk.AsyncClient(server, key, channel="web", consent_watch=False) as client:
        for n in range(ROUNDS):
            customer = customers[(writer + n) % len(customers)]
            if n % 3 == 0:
                await client.carts.add(customer, f"SKU-{writer}-{n}", 1)
            elif n % 3 == 1:
                await client.sessions.set(customer, {f"writer-{writer}": n})
            else:
                status = "granted" if n % 2 else "denied"
                await client.consent.record(customer, "personalisation", status)


async def eight_writers_and_watchers(
    first: ServerProcess, second: ServerProcess, shop: TestTenant, customers: list[str], start: int
) -> tuple[list[Change], dict[str, list[Change]]]:
    """8 writers split over both processes; the tenant feed watched through one process and
    each customer's feed through the other, all from `start`, live while writes happen."""
    tenant_seen: asyncio.Queue[Change] = asyncio.Queue()
    customer_seen = {customer: asyncio.Queue[Change]() for customer in customers}
    tenant_path = f"/v1/changes?kinds={ALL_KINDS}"
    watchers = [
        asyncio.create_task(follow(first.url, shop.key("web"), tenant_path, start, tenant_seen)),
        *(
            asyncio.create_task(
                follow(second.url, shop.key("app"), f"/v1/customers/{c}/changes", start, queue)
            )
            for c, queue in customer_seen.items()
        ),
    ]
    try:
        servers = [first, second]
        await asyncio.gather(
            *(write_mix(servers[w % 2].url, shop.key("web"), customers, w) for w in range(WRITERS))
        )
        total = WRITERS * ROUNDS  # each of these writes publishes exactly one change
        tenant_feed = await collect(tenant_seen, total)
        by_customer: dict[str, list[Change]] = {}
        for customer, queue in customer_seen.items():
            expected = sum(1 for change in tenant_feed if change.data.customer_id == customer)
            by_customer[customer] = await collect(queue, expected)
        return tenant_feed, by_customer
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


def test_eight_writers_every_position_arrives_once_and_in_order(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    shop = first.create_tenant()
    with shop.client("web") as web:
        customers = [
            web.identity.identify(anonymous_id=f"feed-{n}").customer_id for n in range(CUSTOMERS)
        ]
    start = horizon(first.database_url, shop.id).newest
    tenant_feed, by_customer = asyncio.run(
        eight_writers_and_watchers(first, second, shop, customers, start)
    )
    total = WRITERS * ROUNDS
    # The tenant's positions follow on one by one: none skipped, none twice, in order.
    assert [change.id for change in tenant_feed] == list(range(start + 1, start + total + 1))
    kinds = [change.kind for change in tenant_feed]
    assert (kinds.count("cart"), kinds.count("session"), kinds.count("consent")) == (
        WRITERS * ROUNDS // 3,
    ) * 3
    by_position = {change.id: change for change in tenant_feed}
    for customer, feed in by_customer.items():
        # Each customer's feed is exactly her part of the tenant's, in the same order.
        mine = [c.id for c in tenant_feed if c.data.customer_id == customer]
        assert [change.id for change in feed] == mine
        assert all(change.data == by_position[change.id].data for change in feed)
    assert sum(len(feed) for feed in by_customer.values()) == total


def test_positions_are_per_tenant_and_show_nothing_of_another_tenant(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    north, south = first.create_tenant("north"), first.create_tenant("south")
    with north.client("web") as n_web, on(second, south).client("web") as s_web:
        n_amy = n_web.identity.identify(anonymous_id="amy").customer_id
        s_bob = s_web.identity.identify(anonymous_id="bob").customer_id
        n_start = horizon(first.database_url, north.id).newest
        s_start = horizon(first.database_url, south.id).newest
        for turn in range(5):  # interleaved: 5 changes in north, 3 in south
            n_web.sessions.set(n_amy, {"turn": turn})
            if turn < 3:
                s_web.sessions.set(s_bob, {"turn": turn})

    async def both() -> tuple[list[Change], list[Change]]:
        n_seen: asyncio.Queue[Change] = asyncio.Queue()
        s_seen: asyncio.Queue[Change] = asyncio.Queue()
        path = f"/v1/changes?kinds={ALL_KINDS}"
        tasks = [
            asyncio.create_task(follow(second.url, north.key("web"), path, n_start, n_seen)),
            asyncio.create_task(follow(first.url, south.key("web"), path, s_start, s_seen)),
        ]
        try:
            return await collect(n_seen, 5), await collect(s_seen, 3)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    north_feed, south_feed = asyncio.run(both())
    # Interleaved writes, yet each tenant's positions run on without a gap: no shared counter.
    assert [c.id - n_start for c in north_feed] == [1, 2, 3, 4, 5]
    assert [c.id - s_start for c in south_feed] == [1, 2, 3]
    assert {c.data.customer_id for c in south_feed} == {s_bob}


def test_a_change_on_one_process_wakes_a_watcher_on_the_other(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    """Also on one SQLite file, where there is no NOTIFY: the other process polls."""
    first, second = two_processes
    shop = first.create_tenant()
    with shop.client("web") as web:
        amy = web.identity.identify(anonymous_id="laptop").customer_id
    start = horizon(first.database_url, shop.id).newest

    async def watch_then_write() -> list[Change]:
        seen: asyncio.Queue[Change] = asyncio.Queue()
        path = f"/v1/customers/{amy}/changes"
        watcher = asyncio.create_task(follow(second.url, shop.key("app"), path, start, seen))
        arrived: list[Change] = []
        try:
            async with shop.async_client("web", consent_watch=False) as laptop:
                for n in range(3):  # each write waits for the one before to arrive
                    await laptop.sessions.set(amy, {"page": f"/shoes/{n}"})
                    arrived += await collect(seen, 1, WAKE_DEADLINE)
            return arrived
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)

    got = asyncio.run(watch_then_write())
    assert [change.id - start for change in got] == [1, 2, 3]
    pages = [change.data.entries["page"].value for change in got]
    assert pages == ["/shoes/0", "/shoes/1", "/shoes/2"]


# --- retention and resync -------------------------------------------------------------------


def horizon(database_url: str, tenant_id: str) -> changes.Horizon:
    async def read() -> changes.Horizon:
        database = Database(database_url)
        try:
            async with database.transaction(write=False) as conn:
                return await changes.horizon(conn, tenant_id)
        finally:
            await database.dispose()

    return asyncio.run(read())


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + ARRIVAL_DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)


def prune_everything(database_url: str) -> None:
    """What the retention does, at once: every change so far is pruned."""

    async def prune() -> None:
        database = Database(database_url)
        try:
            async with database.transaction(write=True) as conn:
                await changes.prune(conn, 0, utcnow())
        finally:
            await database.dispose()

    asyncio.run(prune())


# --- SDK caches ---------------------------------------------------------------------------

CACHES = 3
CONSENTING = 24


def backends(
    server: ServerProcess, shop: TestTenant, customers: list[str], count: int = CACHES
) -> list[Client]:
    """SDK clients with consent caches following the feed through `server`, each holding all
    `customers`. No age limit comes into play: only the feed may drop an entry."""
    clients = [
        on(server, shop).client("web", consent_max_age=600, consent_offline_max_age=600)
        for _ in range(count)
    ]
    for client in clients:
        client.consent.check(customers[0], "personalisation")  # starts the feed
        assert client.consent_cache.connected.wait(ARRIVAL_DEADLINE)
        # Filled after the feed connected (connecting drops what was cached before).
        assert all(client.consent.check(c, "personalisation") for c in customers)
    return clients


async def withdraw_among_other_writes(server: str, key: str, customers: list[str]) -> None:
    """8 writers withdraw consent for their share of customers, with cart and session writes
    for the same customers in between."""

    async def writer(mine: list[str]) -> None:
        async with omnisdk.AsyncClient(server, key, channel="web", consent_watch=False) as client:
            for customer in mine:
                await client.carts.add(customer, "SHOES", 1)
                await client.consent.withdraw(customer, "personalisation")
                await client.sessions.set(customer, {"page": "/privacy"})

    await asyncio.gather(*(writer(customers[w::WRITERS]) for w in range(WRITERS)))


def test_withdrawals_on_one_process_reach_every_sdk_cache_on_the_other(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    first, second = two_processes
    shop = first.create_tenant()
    with shop.client("web") as web:
        customers = [
            web.identity.identify(anonymous_id=f"consenting-{n}").customer_id
            for n in range(CONSENTING)
        ]
        for customer in customers:
            web.consent.grant(customer, "personalisation")
    clients = backends(second, shop, customers)
    try:
        caches = [client.consent_cache for client in clients]
        held = [sum(cache.get(c, None) is not None for c in customers) for cache in caches]
        assert held == [CONSENTING] * CACHES
        asyncio.run(withdraw_among_other_writes(first.url, shop.key("web"), customers))
        wait_until(
            lambda: all(cache.get(c, None) is None for cache in caches for c in customers),
            "every cache dropped every withdrawn customer",
        )
        still_granted = [
            sum(client.consent.check(c, "personalisation") for c in customers) for client in clients
        ]
        assert still_granted == [0] * CACHES
    finally:
        for client in clients:
            client.close()


def test_after_missing_pruned_changes_sdk_caches_reload_and_watchers_resync(
    two_processes: tuple[ServerProcess, ServerProcess],
) -> None:
    """The backend's server process goes away; meanwhile a withdrawal is made through the
    other one, and pruned. When its process is back, the feed answers `resync`: the SDK caches
    drop what they held, and a watcher resuming from an old position is told to resync, then
    continues. (Last in the module: it restarts the second process.)"""
    first, second = two_processes
    shop = first.create_tenant()
    with shop.client("web") as web:
        amy = web.identity.identify(anonymous_id="amy").customer_id
        web.consent.grant(amy, "personalisation")
        (backend,) = backends(second, shop, [amy], count=1)
        cache = backend.consent_cache
        backend.content_cache.profiles[amy] = ProfileFacts({}, (), (), time.monotonic())
        port = int(second.url.rsplit(":", 1)[1])
        second.stop()
        wait_until(lambda: not cache.connected.is_set(), "the feed noticed")
        web.consent.withdraw(amy, "personalisation")
        withdrawal = horizon(first.database_url, shop.id).newest
        prune_everything(first.database_url)
        assert cache.get(amy, None) is not None  # still believes she consents
        back = ServerProcess(first.database_url, secret_key=first.secret_key, port=port)
        with back, on(back, shop).client("app") as app:
            wait_until(lambda: cache.resyncs == 1, "the resync")
            assert cache.get(amy, None) is None
            assert amy not in backend.content_cache.profiles
            assert not backend.consent.check(amy, "personalisation")
            backend.close()
            feed = app.changes.watch(amy, last_event_id=withdrawal - 1)
            resync = next(feed)
            web.sessions.set(amy, {"page": "/after"})
            after = next(feed)
    assert (resync.kind, resync.id) == (RESYNC, withdrawal)
    assert resync.data.type == ProblemType.CHANGE_FEED_RESYNC.value
    assert resync.data.position == withdrawal
    assert (after.kind, after.id) == ("session", withdrawal + 1)
    assert after.data.entries["page"].value == "/after"
