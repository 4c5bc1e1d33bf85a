"""Feed positions are handed out at commit, per tenant; the retention prunes and sets the
horizon below which a watcher must resync. (Live behaviour: tests/e2e/test_feed_ordering.py.)"""

from __future__ import annotations

import contextlib

import pytest
from sqlalchemy import text

from server_stub.services import changes
from server_stub.storage.database import Database
from tests.server.conftest import Harness, ShopForTest, start_harness


class RolledBack(Exception):
    pass


async def publish(database: Database, tenant_id: str, note: str, *, commit: bool = True) -> None:
    with contextlib.nullcontext() if commit else pytest.raises(RolledBack):
        async with database.transaction(write=True) as conn:
            await changes.publish(conn, tenant_id, "amy", "session", {"note": note})
            if not commit:
                raise RolledBack


async def feed(database: Database, tenant_id: str) -> list[tuple[int, str]]:
    async with database.transaction(write=False) as conn:
        rows = await changes.since(conn, tenant_id, "amy", 0)
    return [(row.position, row.payload["note"]) for row in rows]


async def test_a_rolled_back_change_takes_no_position_and_leaves_no_gap(
    server: Harness, shop: ShopForTest
) -> None:
    await publish(server.database, shop.id, "first")
    await publish(server.database, shop.id, "undone", commit=False)
    await publish(server.database, shop.id, "second")
    assert await feed(server.database, shop.id) == [(1, "first"), (2, "second")]


async def test_positions_count_each_tenant_on_its_own(server: Harness) -> None:
    north, south = await server.shop("north"), await server.shop("south")
    for note in ("a", "b", "c"):
        await publish(server.database, north.id, note)
        await publish(server.database, south.id, note)
    assert await feed(server.database, north.id) == [(1, "a"), (2, "b"), (3, "c")]
    assert await feed(server.database, south.id) == [(1, "a"), (2, "b"), (3, "c")]


async def test_the_retention_prunes_old_changes_and_raises_the_horizon(
    server: Harness, shop: ShopForTest, migrated_database_url: str
) -> None:
    for note in ("a", "b", "c"):
        await publish(server.database, shop.id, note)
    # A process starting with a retention shorter than their age prunes them once it serves.
    async for restarted in start_harness(migrated_database_url, change_retention_seconds=1e-6):
        await restarted.app.state.changes_pruned_once.wait()
        async with restarted.database.transaction(write=False) as conn:
            bounds = await changes.horizon(conn, shop.id)
    assert bounds == changes.Horizon(newest=3, pruned_through=3)
    assert await feed(server.database, shop.id) == []
    await publish(server.database, shop.id, "d")  # numbering goes on
    assert await feed(server.database, shop.id) == [(4, "d")]


@pytest.mark.parametrize(
    ("after", "resync"),
    [(0, True), (3, True), (4, False), (7, False), (10, False), (11, True)],
)
def test_a_watcher_resyncs_below_the_pruned_position_or_beyond_the_newest(
    after: int, resync: bool
) -> None:
    assert changes.Horizon(newest=10, pruned_through=4).resync_needed(after) is resync


async def test_a_page_of_some_kinds_is_the_next_changes_of_those_kinds_in_order(
    server: Harness, shop: ShopForTest
) -> None:
    """Whatever kinds, position and page size: the page is the first `limit` changes of those
    kinds after the position, in order, with the horizon (on PostgreSQL each kind is read from
    its partition, a kind with none from the default one; services/changes.py), and each
    change as it was published."""
    written = ["cart", "session", "cart", "consent", "cart", "content", "session", "later"] * 3
    async with server.database.transaction(write=True) as conn:
        for n, kind in enumerate(written):
            await changes.publish(conn, shop.id, f"c{n % 3}", kind, {"n": n})
    everything = list(enumerate(written, start=1))
    choices = [["consent"], ["consent", "later"], ["cart", "session"], ["content", "cart"]]
    async with server.database.transaction(write=False) as conn:
        postgres = conn.dialect.name == "postgresql"
        settings = "SELECT current_setting('enable_indexscan')" if postgres else "SELECT 1"
        before = (await conn.execute(text(settings))).scalar()
        for kinds in choices:
            for after in (0, 3, 11, 23, 24):
                for limit in (1, 2, 5, 100):
                    page = await changes.read_page(conn, shop.id, after, kinds=kinds, limit=limit)
                    wanted = [p for p, kind in everything if kind in kinds and p > after][:limit]
                    assert [row.position for row in page.rows] == wanted, (kinds, after, limit)
                    assert all(row.kind in kinds for row in page.rows)
                    assert [row.payload for row in page.rows] == [{"n": p - 1} for p in wanted]
                    assert all(row.customer_id == f"c{(row.position - 1) % 3}" for row in page.rows)
                    assert page.horizon == changes.Horizon(newest=len(written), pruned_through=0)
        assert (await conn.execute(text(settings))).scalar() == before
