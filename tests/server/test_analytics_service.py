"""Journeys, ROPO and lifetime value from the event store and the orders, over SQLite and
PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select

from server_stub.analytics.attribution import Model, Settings, attribute
from server_stub.analytics.touchpoints import Grouping
from server_stub.services import analytics, identity, orders
from server_stub.services.orders import NewOrder, SaleLine
from server_stub.storage.tables import customer_scores, events, journey_days
from tests.server.conftest import Harness, ShopForTest

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
AS_OF = datetime(2026, 12, 1, tzinfo=UTC)
_seq = iter(range(1, 1_000_000))


async def customer(server: Harness, shop: ShopForTest) -> str:
    async with server.database.transaction(write=True) as conn:
        return await identity.create_customer(conn, shop.id, T0)


async def touch(
    server: Harness,
    shop: ShopForTest,
    who: str,
    name: str,
    channel: str,
    at: datetime,
    **props: Any,
) -> None:
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            insert(events).values(
                tenant_id=shop.id,
                event_id=f"ev-{next(_seq)}",
                customer_id=who,
                origin_customer_id=who,
                name=name,
                channel=channel,
                occurred_at=at,
                received_at=at,
                properties=props,
                category=None,
                value=None,
            )
        )


async def sell(
    server: Harness,
    shop: ShopForTest,
    who: str | None,
    channel: str,
    at: datetime,
    amount: str,
    link: str = "checkout",
) -> None:
    order = NewOrder(
        reference=f"R-{next(_seq)}",
        customer_id=who,
        channel=channel,
        store_id="warsaw-1" if channel == "pos" else None,
        currency="EUR",
        total=Decimal(amount),
        placed_at=at,
        link_method=link if who else "none",  # type: ignore[arg-type]
        lines=(SaleLine("SKU", 1, Decimal(amount)),),
    )
    async with server.database.transaction(write=True) as conn:
        await orders.store(conn, shop.id, order)


async def amy_and_friends(server: Harness, shop: ShopForTest) -> dict[str, str]:
    amy, bob, cay = [await customer(server, shop) for _ in range(3)]
    # Amy: billboard QR, e-mail click, then buys in the store (linked by her app's code).
    await touch(server, shop, amy, "campaign_scanned", "app", T0, campaign="billboard-7")
    await touch(server, shop, amy, "email_clicked", "web", T0 + timedelta(days=3), campaign="nl")
    await sell(server, shop, amy, "pos", T0 + timedelta(days=5), "120.00", "customer_code")
    # Bob: visits a store, then buys online.
    await touch(server, shop, bob, "store_visit", "pos", T0 + timedelta(days=1), store_id="w1")
    await touch(server, shop, bob, "product_viewed", "web", T0 + timedelta(days=2), sku="X")
    await sell(server, shop, bob, "web", T0 + timedelta(days=2, hours=1), "80.00")
    # Cay: an ad click, and nothing bought.
    await touch(server, shop, cay, "product_viewed", "web", T0, utm_medium="cpc", utm_source="g")
    # A store sale linked to nobody.
    await sell(server, shop, None, "pos", T0 + timedelta(days=6), "50.00")
    return {"amy": amy, "bob": bob, "cay": cay}


async def test_journeys_end_with_an_order_on_any_channel_and_count_ropo(
    server: Harness, shop: ShopForTest
) -> None:
    await amy_and_friends(server, shop)
    async with server.database.transaction(write=False) as conn:
        found = await analytics.collect_journeys(conn, shop.id, since=T0, until=AS_OF, as_of=AS_OF)
    rows = dict(found.paths().items())
    assert rows[(("qr_scan", "email_click"), (5, 2))] == (1.0, 0.0, 120.0)
    assert rows[(("store_visit", "site_visit"), (1, 0))] == (1.0, 0.0, 80.0)
    assert rows[(("ad_click",), (30,))] == (0.0, 1.0, 0.0)  # ended when the lookback passed
    assert found.unattributed_orders == 1 and found.unattributed_revenue == 50.0
    ropo = found.ropo
    assert (ropo.store_orders, ropo.store_revenue) == (2, 170.0)
    assert ropo.store_revenue_researched_online == 120.0
    assert ropo.ropo_share == pytest.approx(120 / 170)
    assert ropo.online_revenue_after_store == 80.0 and ropo.reverse_ropo_share == 1.0
    assert ropo.store_links["customer_code"].revenue == 120.0
    assert ropo.store_links["none"].revenue == 50.0
    assert ropo.linked_share == pytest.approx(120 / 170)


async def test_a_journey_still_open_is_not_counted_and_touches_outside_lookback_are_dropped(
    server: Harness, shop: ShopForTest
) -> None:
    dee = await customer(server, shop)
    await touch(server, shop, dee, "email_clicked", "web", T0)
    await touch(server, shop, dee, "product_viewed", "app", T0 + timedelta(days=20))
    await sell(server, shop, dee, "app", T0 + timedelta(days=40), "10.00")
    eve = await customer(server, shop)
    await touch(server, shop, eve, "product_viewed", "web", AS_OF - timedelta(days=3))
    async with server.database.transaction(write=False) as conn:
        found = await analytics.collect_journeys(conn, shop.id, since=T0, until=AS_OF, as_of=AS_OF)
    # The e-mail click was 40 days before the order: outside the 30-day lookback.
    assert dict(found.paths().items()) == {(("app_visit",), (20,)): (1.0, 0.0, 10.0)}


async def test_the_shop_groups_kinds_into_its_channels_and_campaigns(
    server: Harness, shop: ShopForTest
) -> None:
    await amy_and_friends(server, shop)
    setup = analytics.JourneySetup(
        grouping=Grouping({"qr_scan": "offline ads", "email_click": "crm"}, by_campaign=True)
    )
    async with server.database.transaction(write=False) as conn:
        found = await analytics.collect_journeys(
            conn, shop.id, since=T0, until=AS_OF, setup=setup, as_of=AS_OF
        )
    labels = {labels for (labels, _), _ in found.paths().items()}
    assert ("offline ads:billboard-7", "crm:nl") in labels


async def test_the_daily_aggregate_gives_the_same_paths_as_computing_live(
    server: Harness, shop: ShopForTest
) -> None:
    await amy_and_friends(server, shop)
    async with server.database.transaction(write=True) as conn:
        written = await analytics.refresh_days(
            conn, shop.id, since=T0 - timedelta(hours=9), until=AS_OF, as_of=AS_OF
        )
        again = await analytics.refresh_days(
            conn, shop.id, since=T0 - timedelta(hours=9), until=AS_OF, as_of=AS_OF
        )
    assert len(written) == 61 and again == []
    async with server.database.transaction(write=False) as conn:
        stored = (
            await conn.execute(select(journey_days).where(journey_days.c.tenant_id == shop.id))
        ).all()
        assert sum(row.conversions for row in stored) == 2
        combined, read_stored = await analytics.journeys_for(
            conn, shop.id, since=T0 - timedelta(hours=9), until=AS_OF, as_of=AS_OF
        )
        live = await analytics.collect_journeys(
            conn, shop.id, since=T0 - timedelta(hours=9), until=AS_OF, as_of=AS_OF
        )
    assert read_stored == 61
    assert combined.freeze().rows() == live.paths().freeze().rows()
    model = attribute(combined.freeze(), Model.LINEAR, Settings(bootstrap=0))
    assert model.conversions == 2 and model.revenue == 200.0


async def test_a_period_from_the_middle_of_a_day_counts_that_days_rest_with_stored_days(
    server: Harness, shop: ShopForTest
) -> None:
    """The stored days are whole days: a period from 09:00 read them from the next midnight
    on and lost the journeys ending between 09:00 and midnight (Bob's, at 10:00)."""
    await amy_and_friends(server, shop)
    since = T0 + timedelta(days=2)  # 09:00 on the day of Bob's order at 10:00
    for refreshed in (False, True):  # with no day stored yet (the usual report), then stored
        if refreshed:
            async with server.database.transaction(write=True) as conn:
                await analytics.refresh_days(
                    conn, shop.id, since=T0 - timedelta(hours=9), until=AS_OF, as_of=AS_OF
                )
        async with server.database.transaction(write=False) as conn:
            combined, read_stored = await analytics.journeys_for(
                conn, shop.id, since=since, until=AS_OF, as_of=AS_OF
            )
            live = await analytics.collect_journeys(
                conn, shop.id, since=since, until=AS_OF, as_of=AS_OF
            )
        assert (read_stored > 0) is refreshed
        assert combined.freeze().rows() == live.paths().freeze().rows()
        model = attribute(combined.freeze(), Model.LINEAR, Settings(bootstrap=0))
        assert model.conversions == 2 and model.revenue == 200.0


async def test_lifetime_value_falls_back_to_rfm_with_few_repeat_buyers(
    server: Harness, shop: ShopForTest
) -> None:
    people = await amy_and_friends(server, shop)
    await sell(server, shop, people["amy"], "web", T0 + timedelta(days=20), "30.00")
    async with server.database.transaction(write=True) as conn:
        fit = await analytics.fit_lifetime_value(conn, shop.id, as_of=AS_OF)
        stored = {
            row.customer_id: row
            for row in await conn.execute(
                select(customer_scores).where(customer_scores.c.tenant_id == shop.id)
            )
        }
    assert fit.model == "rfm" and "repeat buyers" in fit.note
    assert set(stored) == {people["amy"], people["bob"]}  # buyers only; the unlinked sale too
    amy = stored[people["amy"]]
    assert amy.clv is None and amy.rfm_frequency == 5 and amy.fitted_at == AS_OF


async def sixty_buyers(server: Harness, shop: ShopForTest) -> list[str]:
    """60 buyers, 45 of them buying again: enough for the models to be fitted."""
    buyers = []
    for n in range(60):
        who = await customer(server, shop)
        buyers.append(who)
        for k in range(n % 4 + 1):
            at = T0 - timedelta(days=200) + timedelta(days=n + 37 * k, hours=k)
            await sell(server, shop, who, "web" if k % 2 else "pos", at, f"{20 + n % 7}.00")
    return buyers


async def test_lifetime_value_fit_stores_scores_for_every_buyer(
    server: Harness, shop: ShopForTest
) -> None:
    await sixty_buyers(server, shop)
    async with server.database.transaction(write=True) as conn:
        fit = await analytics.fit_lifetime_value(
            conn, shop.id, as_of=AS_OF, holdout=timedelta(days=60)
        )
        rows = list(
            await conn.execute(
                select(customer_scores).where(customer_scores.c.tenant_id == shop.id)
            )
        )
    assert fit.model == "bgnbd+gamma_gamma" and fit.customers == 60 and fit.repeat_buyers == 45
    assert {"r", "alpha", "a", "b", "p", "q", "gamma"} <= set(fit.parameters)
    assert len(rows) == 60
    assert all(0 < row.p_alive <= 1 and row.clv >= 0 for row in rows)
    assert sum(count for _, _, count in fit.clv_histogram) == 60
    assert fit.clv_total == pytest.approx(sum(row.clv for row in rows))


async def test_scores_written_after_her_erasure_are_not_given_back_to_her(
    server: Harness, shop: ShopForTest
) -> None:
    """The job reads its buyers, then writes their scores batch after batch: a customer erased
    in between had her scores deleted by the erasure, then written again by the next batch."""
    await sixty_buyers(server, shop)
    async with server.database.transaction(write=True) as conn:
        await analytics.fit_lifetime_value(conn, shop.id, as_of=AS_OF)
        computed = [
            dict(row._mapping)
            for row in await conn.execute(
                select(customer_scores).where(customer_scores.c.tenant_id == shop.id)
            )
        ]
    gone = computed[0]["customer_id"]
    erased = await shop.request("POST", f"/v1/privacy/{gone}/erase", "admin")
    assert erased.status_code == 200, erased.text
    async with server.database.transaction(write=True) as conn:
        await analytics.write_scores(conn, computed)  # the job's batch, read before
        stored = {
            row.customer_id
            for row in await conn.execute(
                select(customer_scores).where(customer_scores.c.tenant_id == shop.id)
            )
        }
    assert gone not in stored and len(stored) == len(computed) - 1


async def test_ropo_looks_back_across_an_earlier_order(server: Harness, shop: ShopForTest) -> None:
    # Fay researches online, buys online, then buys in the store a week later: the store sale's
    # journey is empty (the online order ended it), but her research still makes it ROPO.
    fay = await customer(server, shop)
    await touch(server, shop, fay, "product_viewed", "web", T0)
    await sell(server, shop, fay, "web", T0 + timedelta(hours=2), "40.00")
    await sell(server, shop, fay, "pos", T0 + timedelta(days=7), "60.00", "loyalty_id")
    async with server.database.transaction(write=False) as conn:
        found = await analytics.collect_journeys(conn, shop.id, since=T0, until=AS_OF, as_of=AS_OF)
    assert found.ropo.store_revenue_researched_online == 60.0
    assert found.unattributed_orders == 1  # no model credits the store sale
    assert dict(found.paths().items()) == {(("site_visit",), (0,)): (1.0, 0.0, 40.0)}
