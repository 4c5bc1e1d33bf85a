"""Events are stored once per id and feed the single customer view."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from omnisdk.core.problems import ProblemType
from omnisdk.testing import ATTRIBUTED_EVENTS
from server_stub.storage.tables import customers, events
from tests.server.conftest import Harness, ShopForTest


@pytest.fixture
async def shop(server: Harness) -> ShopForTest:
    """Events attributed without an analytics decision: this module is about what events do
    to the profile; what consent does to events is tested in test_consent.py."""
    return await server.shop(settings=ATTRIBUTED_EVENTS)


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


async def track(shop: ShopForTest, channel: str = "web", **event: Any) -> dict[str, Any]:
    response = await shop.request("POST", "/v1/events", channel, json=event)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def stored_events(server: Harness, shop: ShopForTest) -> int:
    async with server.database.transaction(write=False) as conn:
        count = (
            await conn.execute(select(func.count()).where(events.c.tenant_id == shop.id))
        ).scalar()
    return int(count or 0)


async def test_an_event_for_a_new_device_creates_its_customer(shop: ShopForTest) -> None:
    result = await track(
        shop,
        anonymous_id="phone-1",
        name="campaign_scanned",
        properties={"campaign": "billboard-7"},
    )
    resolved = await shop.request(
        "POST", "/v1/identity/resolve", json={"type": "anonymous", "value": "phone-1"}
    )
    assert resolved.json()["customer_id"] == result["customer_id"]


async def test_a_replayed_event_is_stored_once(server: Harness, shop: ShopForTest) -> None:
    first = await track(shop, anonymous_id="p", name="product_viewed", event_id="evt-1")
    again = await track(shop, anonymous_id="p", name="product_viewed", event_id="evt-1")
    assert not first["duplicate"] and again["duplicate"]
    assert await stored_events(server, shop) == 1


async def test_batch_takes_the_good_events_and_rejects_the_bad_with_reasons(
    server: Harness, shop: ShopForTest
) -> None:
    batch = [
        {"anonymous_id": "p", "name": "product_viewed", "event_id": "ok-1"},
        {"anonymous_id": "p", "name": "product_viewed", "event_id": "ok-1"},
        {"anonymous_id": "undefined", "name": "product_viewed", "event_id": "junk"},
        {"customer_id": "cus_nobody", "name": "product_viewed", "event_id": "ghost"},
        {"anonymous_id": "p", "name": "Product Viewed", "event_id": "badname"},
        {
            "anonymous_id": "p",
            "name": "order_completed",
            "properties": {"value": "12"},
            "event_id": "badvalue",
        },
        {
            "anonymous_id": "p",
            "name": "x",
            "timestamp": (datetime.now(UTC) + timedelta(days=1)).isoformat(),
            "event_id": "future",
        },
        {
            "anonymous_id": "p",
            "name": "x",
            "properties": {"blob": "x" * 20_000},
            "event_id": "huge",
        },
        {"anonymous_id": "p", "customer_id": "cus_x", "name": "x", "event_id": "twice-named"},
    ]
    result = (await shop.request("POST", "/v1/events/batch", json={"events": batch})).json()
    assert result["accepted"] == 1 and result["duplicates"] == 1
    rejected = {r["event_id"]: r["type"] for r in result["rejected"]}
    assert rejected == {
        "junk": ProblemType.INVALID_IDENTIFIER,
        "ghost": ProblemType.NOT_FOUND,
        "badname": ProblemType.INVALID_EVENT,
        "badvalue": ProblemType.INVALID_EVENT,
        "future": ProblemType.INVALID_EVENT,
        "huge": ProblemType.INVALID_EVENT,
        "twice-named": ProblemType.INVALID_EVENT,
    }
    assert await stored_events(server, shop) == 1


async def test_an_event_that_breaks_the_schema_is_rejected_alone_not_its_batch(
    server: Harness, shop: ShopForTest
) -> None:
    good = [{"anonymous_id": "p", "name": "x", "event_id": f"good-{n}"} for n in range(5)]
    batch = [
        good[0],
        {"anonymous_id": "p", "name": "x", "event_id": "e" * 65},
        good[1],
        {"customer_id": "c" * 41, "name": "x", "event_id": "long-customer"},
        good[2],
        {"anonymous_id": "p", "name": "x", "event_id": "nan", "properties": {"v": 1e400}},
        good[3],
        {"anonymous_id": "p", "name": "x", "event_id": "huge-int", "properties": {"v": 10**30}},
        {"anonymous_id": "p", "event_id": "no-name"},
        good[4],
    ]
    # 1e400 is not JSON: send it as Python's encoder writes it, as a hostile client would.
    body = json.dumps({"events": batch}).encode()
    response = await shop.request(
        "POST", "/v1/events/batch", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    result = response.json()
    assert result["accepted"] == 5 and result["duplicates"] == 0
    assert [(r["index"], r["type"]) for r in result["rejected"]] == [
        (1, ProblemType.VALIDATION_ERROR),
        (3, ProblemType.VALIDATION_ERROR),
        (5, ProblemType.INVALID_EVENT),
        (7, ProblemType.INVALID_EVENT),
        (8, ProblemType.VALIDATION_ERROR),
    ]
    assert await stored_events(server, shop) == 5


async def test_single_bad_event_is_a_problem_and_stores_nothing(
    server: Harness, shop: ShopForTest
) -> None:
    future = (datetime.now(UTC) + timedelta(hours=2)).isoformat()
    response = await shop.request(
        "POST", "/v1/events", json={"anonymous_id": "p", "name": "x", "timestamp": future}
    )
    assert response.status_code == 422
    assert response.json()["type"] == ProblemType.INVALID_EVENT
    assert "future" in response.json()["detail"]
    assert await stored_events(server, shop) == 0


async def test_batch_over_the_limit_is_refused_whole(shop: ShopForTest) -> None:
    batch = [{"anonymous_id": "p", "name": "x"}] * 501
    response = await shop.request("POST", "/v1/events/batch", json={"events": batch})
    assert response.status_code == 422


async def test_events_for_another_tenants_customer_are_refused(server: Harness) -> None:
    alice, mallory = await server.shop("alice"), await server.shop("mallory")
    amy = (
        await alice.request("POST", "/v1/identity/identify", json={"anonymous_id": "amy-phone"})
    ).json()
    response = await mallory.request(
        "POST", "/v1/events", json={"customer_id": amy["customer_id"], "name": "order_completed"}
    )
    assert response.status_code == 404
    assert await stored_events(server, mallory) == 0
    timeline = await mallory.request("GET", f"/v1/customers/{amy['customer_id']}/timeline")
    assert timeline.status_code == 404


async def test_profile_derives_interests_orders_channels_lifecycle_and_buyer_type(
    shop: ShopForTest,
) -> None:
    customer = (
        await track(
            shop,
            "web",
            anonymous_id="amy",
            name="product_viewed",
            properties={"sku": "s1", "category": "running"},
            timestamp=ago(days=1),
        )
    )["customer_id"]
    await track(
        shop,
        "app",
        customer_id=customer,
        name="product_added",
        properties={"sku": "s1", "category": "running"},
        timestamp=ago(hours=5),
    )
    await track(
        shop,
        "web",
        customer_id=customer,
        name="product_viewed",
        properties={"category": "hiking"},
        timestamp=ago(days=200),
    )
    await track(
        shop,
        "web",
        customer_id=customer,
        name="order_completed",
        properties={"order_id": "o1", "value": 120.5, "gift": True},
        timestamp=ago(hours=4),
    )
    await track(
        shop,
        "pos",
        customer_id=customer,
        name="order_completed",
        properties={"order_id": "o2", "value": 30, "shipping_differs_from_billing": True},
    )
    note = await shop.request(
        "POST",
        f"/v1/customers/{customer}/annotations",
        "web",
        json={"department": "service", "author": "Kim", "text": "prefers e-mail"},
    )
    assert note.status_code == 201

    view = (await shop.request("GET", f"/v1/customers/{customer}/profile")).json()
    assert list(view["interests"]) == ["running", "hiking"]
    assert view["interests"]["running"] > 3.5 > 0.1 > view["interests"]["hiking"]
    assert view["orders"] == {"count": 2, "total_value": 150.5}
    assert set(view["last_seen"]) == {"web", "app", "pos"}
    assert view["lifecycle"] == "active"  # first seen 200 days ago, seen today
    assert view["buyer_type"] == "gift"
    assert view["annotations"][0]["text"] == "prefers e-mail"
    assert view["recent_events"][0]["name"] == "order_completed"


async def test_timeline_pages_through_every_event(shop: ShopForTest) -> None:
    customer = (await track(shop, anonymous_id="amy", name="e0", timestamp=ago(minutes=60)))[
        "customer_id"
    ]
    for n in range(1, 25):
        await track(shop, customer_id=customer, name=f"e{n}", timestamp=ago(minutes=60 - n))
    names: list[str] = []
    cursor = None
    while True:
        params = {"limit": "10"} | ({"cursor": cursor} if cursor else {})
        page = (
            await shop.request("GET", f"/v1/customers/{customer}/timeline", params=params)
        ).json()
        names += [e["name"] for e in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert names == [f"e{n}" for n in range(24, -1, -1)]
    bad = await shop.request(
        "GET", f"/v1/customers/{customer}/timeline", params={"cursor": "nonsense"}
    )
    assert bad.status_code == 422


async def test_merged_customers_share_one_timeline(shop: ShopForTest) -> None:
    await track(
        shop, "app", anonymous_id="phone", name="campaign_scanned", timestamp=ago(minutes=3)
    )
    await shop.request(
        "POST",
        "/v1/identity/identify",
        "app",
        json={"anonymous_id": "phone", "email": "amy@example.com"},
    )
    await track(shop, "web", anonymous_id="laptop", name="email_clicked", timestamp=ago(minutes=2))
    joined = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={"anonymous_id": "laptop", "email": "amy@example.com"},
    )
    customer = joined.json()["customer_id"]
    page = (await shop.request("GET", f"/v1/customers/{customer}/timeline")).json()
    assert [(e["name"], e["channel"]) for e in page["items"]] == [
        ("email_clicked", "web"),
        ("campaign_scanned", "app"),
    ]


async def test_annotation_needs_a_department_slug(shop: ShopForTest) -> None:
    customer = (await track(shop, anonymous_id="amy", name="x"))["customer_id"]
    response = await shop.request(
        "POST",
        f"/v1/customers/{customer}/annotations",
        json={"department": "Customer Service!", "author": "K", "text": "t"},
    )
    assert response.status_code == 422


async def test_a_batch_of_new_visitors_makes_one_customer_each_and_its_replay_none(
    server: Harness, shop: ShopForTest
) -> None:
    """200 visitors never seen, each named by two events (one with a refused junk value
    in between): each becomes one customer, and the same batch again changes nothing."""
    batch: list[dict[str, Any]] = []
    for n in range(200):
        batch.append({"anonymous_id": f"new-{n}", "name": "page_viewed", "event_id": f"a{n}"})
        batch.append({"anonymous_id": f"new-{n}", "name": "page_viewed", "event_id": f"b{n}"})
    batch.insert(1, {"anonymous_id": "null", "name": "page_viewed", "event_id": "junk"})
    for attempt in ("first", "replay"):
        response = await shop.request("POST", "/v1/events/batch", json={"events": batch})
        assert response.status_code == 200, response.text
        result = response.json()
        assert (result["accepted"], result["duplicates"]) == (
            (400, 0) if attempt == "first" else (0, 400)
        )
        assert [(r["index"], r["type"]) for r in result["rejected"]] == [
            (1, ProblemType.INVALID_IDENTIFIER)
        ]
    async with server.database.transaction(write=False) as conn:
        owners = (
            await conn.execute(
                select(events.c.customer_id, func.count())
                .where(events.c.tenant_id == shop.id)
                .group_by(events.c.customer_id)
            )
        ).all()
        made = await conn.scalar(select(func.count()).where(customers.c.tenant_id == shop.id))
    assert len(owners) == 200 and {count for _, count in owners} == {2}
    assert made == 200
