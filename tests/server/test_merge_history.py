"""A merge moves none of the loser's events: they stay under the id they were recorded for,
and every read of the person (profile, timeline, export, erasure) goes by her ids. A split
then gives the loser back exactly what it had, with nothing to move."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from omnisdk.testing import ATTRIBUTED_EVENTS
from server_stub.services import history_folds
from server_stub.storage.tables import events
from server_stub.storage.tables import history_folds as folds_table
from tests.server.conftest import Harness, ShopForTest


@pytest.fixture
async def shop(server: Harness) -> ShopForTest:
    return await server.shop(settings=ATTRIBUTED_EVENTS)


async def identify(shop: ShopForTest, **body: Any) -> dict[str, Any]:
    answer = await shop.request("POST", "/v1/identity/identify", "web", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def track_many(shop: ShopForTest, customer: str, prefix: str, count: int) -> None:
    start = datetime.now(UTC) - timedelta(days=1)
    batch = [
        {
            "name": "product_viewed" if n % 3 else "order_completed",
            "customer_id": customer,
            "event_id": f"{prefix}-{n}",
            "timestamp": (start + timedelta(minutes=n)).isoformat(),
            "properties": {"sku": f"S{n}", "category": prefix}
            if n % 3
            else {"order_id": f"{prefix}-o{n}", "skus": [f"S{n}"], "value": 10.0},
        }
        for n in range(count)
    ]
    answer = await shop.request("POST", "/v1/events/batch", "web", json={"events": batch})
    assert answer.json()["accepted"] == count, answer.text


async def stored_under(server: Harness, customer: str) -> int:
    async with server.database.transaction(write=False) as conn:
        found = await conn.scalar(
            select(func.count()).select_from(events).where(events.c.customer_id == customer)
        )
    return int(found or 0)


async def whole_timeline(shop: ShopForTest, customer: str) -> list[str]:
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 7}
    while True:
        page = (
            await shop.request("GET", f"/v1/customers/{customer}/timeline", params=params)
        ).json()
        seen += [item["event_id"] for item in page["items"]]
        if page["next_cursor"] is None:
            return seen
        params["cursor"] = page["next_cursor"]


async def test_a_merge_leaves_the_losers_events_in_place_and_reads_find_them(
    server: Harness, shop: ShopForTest
) -> None:
    older = (await identify(shop, customer_ref="acct-1"))["customer_id"]
    newer = (await identify(shop, anonymous_id="phone"))["customer_id"]
    await track_many(shop, older, "old", 12)
    await track_many(shop, newer, "new", 18)
    merged = await identify(shop, customer_ref="acct-1", anonymous_id="phone")
    assert merged["customer_id"] == older and merged["merged_customer_ids"] == [newer]
    # The person is read whole at once (every event once, newest first, across both ids),
    # whether or not the background fold has moved the loser's events yet.
    timeline = await whole_timeline(shop, newer)  # the old id resolves to the survivor
    assert len(timeline) == len(set(timeline)) == 30
    profile = (await shop.request("GET", f"/v1/customers/{older}/profile")).json()
    assert profile["orders"]["count"] == 4 + 6
    assert set(profile["interests"]) == {"old", "new"}
    assert profile["recent_events"][0]["event_id"] in {"new-17", "old-11"}
    exported = await shop.request("POST", f"/v1/privacy/{older}/export")
    assert len(exported.json()["events"]) == 30
    # Folded in the background: every event under the survivor, each keeping its origin.
    await fold_all(server)
    assert await stored_under(server, newer) == 0
    assert await stored_under(server, older) == 30
    assert len(await whole_timeline(shop, older)) == 30


async def test_the_fold_moves_a_losers_events_in_bounded_batches(
    server: Harness, shop: ShopForTest
) -> None:
    older = (await identify(shop, customer_ref="acct-3"))["customer_id"]
    newer = (await identify(shop, anonymous_id="watch"))["customer_id"]
    await track_many(shop, newer, "w", 25)
    await identify(shop, customer_ref="acct-3", anonymous_id="watch")
    while await history_folds.drain_one(server.database, batch=10):
        pass
    await fold_all(server)  # and what the server's own folder held meanwhile
    assert await stored_under(server, newer) == 0
    assert await stored_under(server, older) == 25
    assert await folds_queued(server) == set()


async def test_a_split_before_the_fold_leaves_the_events_where_they_are(
    server: Harness, shop: ShopForTest
) -> None:
    older = (await identify(shop, customer_ref="acct-4"))["customer_id"]
    newer = (await identify(shop, anonymous_id="car"))["customer_id"]
    await track_many(shop, newer, "car", 7)
    merge_id = (await identify(shop, customer_ref="acct-4", anonymous_id="car"))["merge_ids"][0]
    split = await shop.request("POST", f"/v1/merges/{merge_id}/split")
    assert split.status_code == 200, split.text
    await fold_all(server)
    assert await stored_under(server, newer) == 7
    assert await stored_under(server, older) == 0
    assert await folds_queued(server) == set()


async def fold_all(server: Harness) -> None:
    """Fold every queued loser. The server's own background folder may hold a fold at this
    moment, which `drain` passes over (SKIP LOCKED): a plain FOR UPDATE waits for its
    transaction to end, and the next round takes what it left."""
    for _ in range(100):
        await history_folds.drain(server.database)
        async with server.database.transaction(write=True) as conn:
            left = (await conn.execute(select(folds_table.c.customer_id).with_for_update())).all()
        if not left:
            return
    raise AssertionError(f"folds still queued after 100 rounds: {left}")


async def folds_queued(server: Harness) -> set[str]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(select(folds_table.c.customer_id))
    return {row.customer_id for row in rows}


async def test_a_split_gives_back_the_losers_events_and_erasure_takes_them_all(
    server: Harness, shop: ShopForTest
) -> None:
    older = (await identify(shop, customer_ref="acct-2"))["customer_id"]
    newer = (await identify(shop, anonymous_id="tablet"))["customer_id"]
    await track_many(shop, newer, "tab", 9)
    merge_id = (await identify(shop, customer_ref="acct-2", anonymous_id="tablet"))["merge_ids"][0]
    await track_many(shop, newer, "after", 3)  # addressed to the old id: the survivor's now
    split = await shop.request("POST", f"/v1/merges/{merge_id}/split")
    assert split.status_code == 200, split.text
    assert sorted(await whole_timeline(shop, newer)) == sorted(f"tab-{n}" for n in range(9))
    assert sorted(await whole_timeline(shop, older)) == sorted(f"after-{n}" for n in range(3))
    # Merged again, then erased: both ids' events go.
    await identify(shop, customer_ref="acct-2", anonymous_id="tablet")
    erased = await shop.request("POST", f"/v1/privacy/{older}/erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["events"] == 12
    assert await stored_under(server, newer) == await stored_under(server, older) == 0
