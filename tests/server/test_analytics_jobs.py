"""The journey refresh and the lifetime value fit as jobs (services/analytics_jobs.py): a day
per step, resumable, one at a time per tenant, and behind the old endpoints."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import select

from server_stub.services import analytics
from server_stub.storage.tables import journey_days
from tests.server.conftest import Harness, ShopForTest
from tests.server.test_analytics_service import AS_OF, T0, amy_and_friends, customer, sell, touch


async def long_chain(server: Harness, shop: ShopForTest) -> None:
    """Journeys that reach further back than two lookbacks: where reading starts matters."""
    await amy_and_friends(server, shop)
    fay = await customer(server, shop)
    for n in range(6):  # a touch every 20 days: one journey of 100 days, ended unconverted
        kind = "email_clicked" if n % 2 else "campaign_scanned"
        await touch(server, shop, fay, kind, "web", T0 + timedelta(days=20 * n), campaign="c")
    gus = await customer(server, shop)
    for n in range(5):  # the same, ended by a sale
        await touch(server, shop, gus, "email_clicked", "web", T0 + timedelta(days=15 * n))
    await sell(server, shop, gus, "web", T0 + timedelta(days=61), "40.00")


async def stored_rows(server: Harness, tenant_id: str) -> list[tuple[Any, ...]]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(journey_days)
            .where(journey_days.c.tenant_id == tenant_id)
            .order_by(journey_days.c.day, journey_days.c.path_no)
        )
        return [(r.day, r.setup, r.path_no, r.path, r.conversions, r.nulls, r.value) for r in rows]


async def test_refreshing_day_by_day_stores_what_one_range_refresh_stores(
    server: Harness,
) -> None:
    whole, daily = await server.shop(), await server.shop()
    await long_chain(server, whole)
    await long_chain(server, daily)
    since, until = AS_OF - timedelta(days=10), AS_OF + timedelta(days=80)
    as_of = until + timedelta(days=1)
    async with server.database.transaction(write=True) as conn:
        written = await analytics.refresh_days(
            conn, whole.id, since=since, until=until, as_of=as_of
        )
    day = since
    while day < until:
        async with server.database.transaction(write=True) as conn:
            await analytics.refresh_days(
                conn, daily.id, since=day, until=day + timedelta(days=1), as_of=as_of
            )
        day += timedelta(days=1)
    assert len(written) == (until - since).days
    stored = await stored_rows(server, whole.id)
    # Both long journeys end in the period: Fay's unconverted, Gus's with his order.
    assert sum(row[4] for row in stored) == 1 and sum(row[5] for row in stored) == 1
    assert stored == await stored_rows(server, daily.id)
