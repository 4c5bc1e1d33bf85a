"""Event ids make delivery idempotent under the partitioned key (tenant, event id, time):
docs/events.md, "Event ids"."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from sqlalchemy import func, select

from server_stub.ids import utcnow
from server_stub.services import maintenance
from server_stub.storage.tables import event_receipts, events
from tests.server.conftest import Harness, ShopForTest

ATTRIBUTED = {"consent": {"analytics": "legitimate_interest"}}


async def stored(server: Harness, shop: ShopForTest, event_id: str) -> int:
    async with server.database.transaction(write=False) as conn:
        return int(
            (
                await conn.execute(
                    select(func.count()).where(
                        events.c.tenant_id == shop.id, events.c.event_id == event_id
                    )
                )
            ).scalar_one()
        )


async def post(shop: ShopForTest, event: dict[str, object]) -> dict[str, object]:
    response = await shop.request("POST", "/v1/events/batch", "web", json={"events": [event]})
    assert response.status_code == 200, response.text
    result: dict[str, object] = response.json()
    return result


async def test_an_event_sent_without_a_time_is_a_duplicate_when_replayed(server: Harness) -> None:
    shop = await server.shop(settings=ATTRIBUTED)
    event = {"anonymous_id": "amy", "name": "product_viewed", "event_id": "untimed-1"}
    first, again = await post(shop, event), await post(shop, event)
    assert (first["accepted"], again["duplicates"]) == (1, 1)
    assert await stored(server, shop, "untimed-1") == 1


async def test_concurrent_deliveries_of_one_untimed_event_store_it_once(server: Harness) -> None:
    shop = await server.shop(settings=ATTRIBUTED)
    await post(shop, {"anonymous_id": "amy", "name": "page_viewed", "event_id": "warm"})
    event = {"anonymous_id": "amy", "name": "product_viewed", "event_id": "raced"}
    results = await asyncio.gather(*(post(shop, event) for _ in range(8)))
    assert sorted(r["accepted"] for r in results) == [0] * 7 + [1]
    assert await stored(server, shop, "raced") == 1


async def test_concurrent_deliveries_of_one_timed_event_store_it_once(server: Harness) -> None:
    shop = await server.shop(settings=ATTRIBUTED)
    await post(shop, {"anonymous_id": "amy", "name": "page_viewed", "event_id": "warm"})
    when = (utcnow() - timedelta(days=40)).isoformat()
    event = {"anonymous_id": "amy", "name": "product_viewed", "event_id": "t", "timestamp": when}
    results = await asyncio.gather(*(post(shop, event) for _ in range(8)))
    assert sum(int(str(r["accepted"])) for r in results) == 1
    assert await stored(server, shop, "t") == 1


async def test_an_id_reused_for_an_event_days_apart_is_a_new_event(server: Harness) -> None:
    shop = await server.shop(settings=ATTRIBUTED)
    base = {"anonymous_id": "amy", "name": "product_viewed", "event_id": "reused"}
    now = utcnow()
    await post(shop, {**base, "timestamp": now.isoformat()})
    close = await post(shop, {**base, "timestamp": (now - timedelta(hours=20)).isoformat()})
    far = await post(shop, {**base, "timestamp": (now - timedelta(days=3)).isoformat()})
    assert close["duplicates"] == 1  # within the one-day window: the same event
    assert far["accepted"] == 1  # days apart: another event (docs/events.md)
    assert await stored(server, shop, "reused") == 2


async def test_claims_of_untimed_event_ids_are_forgotten_after_the_window(
    server: Harness,
) -> None:
    shop = await server.shop(settings=ATTRIBUTED)
    await post(shop, {"anonymous_id": "amy", "name": "product_viewed", "event_id": "claimed"})
    settings = server.app.state.runtime.settings
    await maintenance.run(server.database, settings, now=utcnow() + timedelta(days=2))
    async with server.database.transaction(write=False) as conn:
        left = (
            await conn.execute(select(func.count()).where(event_receipts.c.tenant_id == shop.id))
        ).scalar_one()
    assert left == 0
