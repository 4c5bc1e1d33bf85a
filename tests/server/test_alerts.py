"""Inventory, stock alerts and messages on the real app, over SQLite and PostgreSQL.

The delivery loop is driven pass by pass here (`worker.tick()`), so every outcome is exact;
a real HTTP receiver verifies each webhook with the `standardwebhooks` library.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import func, insert, select, update

from server_stub import alert_delivery
from server_stub.alert_delivery import AlertWorker, run_until_idle
from server_stub.sealing import Sealer
from server_stub.services import alerts, tenants
from server_stub.storage.tables import alert_messages, alert_restocks, alert_subscriptions, carts
from tests.server.conftest import Harness, ShopForTest, start_harness
from tests.webhook_receiver import WebhookReceiver

PROBLEMS = "https://omnisdk.dev/problems/"
SHOES = {"sku": "TR2", "options": {"size": "38"}}
ITEM = "TR2|size=38"


@pytest.fixture
async def server(migrated_database_url: str) -> AsyncIterator[Harness]:
    # No loop of its own: each test drives the delivery passes itself.
    async for harness in start_harness(migrated_database_url, alerts_delivery=False):
        yield harness


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


def worker_of(server: Harness) -> AlertWorker:
    runtime = server.app.state.runtime
    return AlertWorker(
        runtime.database,
        runtime.tenants,
        runtime.sealer,
        poll_seconds=1.0,
        batch=50,
        timeout=5.0,
        abandoned_scan_seconds=0.0,
        metrics=runtime.metrics,
    )


async def shop_with_webhook(
    server: Harness, receiver: WebhookReceiver, settings: dict[str, Any] | None = None
) -> ShopForTest:
    shop = await server.shop(settings=settings)
    made = await shop.request("POST", "/v1/alerts/webhooks", json={"url": receiver.url})
    assert made.status_code == 201, made.text
    receiver.secret = made.json()["secret"]
    return shop


async def customer(
    shop: ShopForTest, device: str, preferred_channel: str | None = None, **traits: Any
) -> str:
    body: dict[str, Any] = {"anonymous_id": device}
    if traits:
        body["traits"] = traits
    answer = await shop.request("POST", "/v1/identity/identify", "app", json=body)
    assert answer.status_code == 200, answer.text
    customer_id = str(answer.json()["customer_id"])
    if preferred_channel is not None:
        declared = await shop.request(
            "PUT",
            f"/v1/customers/{customer_id}/preferred-channel",
            "app",
            json={"channel": preferred_channel},
        )
        assert declared.status_code == 200, declared.text
    return customer_id


async def grant(shop: ShopForTest, customer_id: str, purpose: str, status: str = "granted") -> str:
    answer = await shop.request(
        "POST",
        f"/v1/consent/{customer_id}",
        "app",
        json={"decisions": [{"purpose": purpose, "status": status}]},
    )
    assert answer.status_code == 200, answer.text
    history = (await shop.request("GET", f"/v1/consent/{customer_id}/history", "app")).json()
    return str(history["items"][-1]["id"])


async def subscribe(shop: ShopForTest, customer_id: str, **body: Any) -> dict[str, Any]:
    answer = await shop.request(
        "POST", f"/v1/alerts/{customer_id}/subscriptions", "app", json={**SHOES, **body}
    )
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


async def stock(shop: ShopForTest, **body: Any) -> dict[str, Any]:
    answer = await shop.request("POST", "/v1/inventory", "pos", json=body)
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def level(quantity: int, location: str = "online", kind: str = "online") -> dict[str, Any]:
    return {**SHOES, "location": location, "kind": kind, "quantity": quantity}


async def messages_of(shop: ShopForTest, customer_id: str) -> list[dict[str, Any]]:
    answer = await shop.request("GET", f"/v1/alerts/{customer_id}/messages", "web")
    assert answer.status_code == 200, answer.text
    return answer.json()["items"]  # type: ignore[no-any-return]


async def timeline_names(shop: ShopForTest, customer_id: str) -> list[tuple[str, dict[str, Any]]]:
    page = (await shop.request("GET", f"/v1/customers/{customer_id}/timeline", "web")).json()
    return [(item["name"], item["properties"]) for item in page["items"]]


# --- inventory ------------------------------------------------------------------------------


async def test_deltas_apply_once_by_op_id_and_online_and_store_stock_stay_apart(
    shop: ShopForTest,
) -> None:
    await stock(shop, levels=[level(3), level(2, "berlin-1", "store")])
    delta = {**SHOES, "op_id": "erp:1", "location": "online", "delta": 4}
    first = await stock(shop, deltas=[delta])
    again = await stock(shop, deltas=[delta])
    assert (first["applied"], first["duplicates"]) == (1, 0)
    assert (again["applied"], again["duplicates"]) == (0, 1)
    read = await shop.request("GET", "/v1/inventory", "web", params={"item": ITEM})
    [shoes] = read.json()["items"]
    assert shoes["online"] == 7
    assert shoes["stores"] == {"berlin-1": 2}


async def test_a_bad_inventory_batch_is_refused_whole_and_changes_nothing(
    shop: ShopForTest,
) -> None:
    good = {**SHOES, "op_id": "erp:2", "location": "online", "delta": 5}
    bad = {**SHOES, "op_id": "erp:3", "location": "online", "delta": "many"}
    refused = await shop.request("POST", "/v1/inventory", "pos", json={"deltas": [good, bad]})
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"] == PROBLEMS + "validation-error"
    read = await shop.request("GET", "/v1/inventory", "web", params={"item": ITEM})
    assert read.json()["items"][0]["online"] == 0


async def test_a_web_key_may_not_write_stock_nor_manage_webhooks(shop: ShopForTest) -> None:
    write = await shop.request("POST", "/v1/inventory", "web", json={"levels": [level(1)]})
    hooks = await shop.request("GET", "/v1/alerts/webhooks", "web")
    assert write.status_code == hooks.status_code == 403
    assert write.json()["type"] == PROBLEMS + "insufficient-scope"


async def test_another_tenant_cannot_subscribe_or_read_a_customer(server: Harness) -> None:
    alice, mallory = await server.shop("alice"), await server.shop("mallory")
    amy = await customer(alice, "phone")
    answer = await mallory.request("POST", f"/v1/alerts/{amy}/subscriptions", "app", json=SHOES)
    assert answer.status_code == 404
    assert (await mallory.request("GET", f"/v1/alerts/{amy}/messages", "web")).status_code == 404


# --- back in stock ---------------------------------------------------------------------------


async def test_back_in_stock_is_one_signed_webhook_to_her_preferred_channel(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone", preferred_channel="sms", first_name="Amy")
    await grant(shop, amy, "marketing:push")
    decision = await grant(shop, amy, "marketing:sms")
    sub = await subscribe(shop, amy)
    assert sub["status"] == "waiting" and sub["consent_decision_id"] == decision
    result = await stock(shop, levels=[level(4)])
    assert result["triggered"] == {"back_in_stock": 1}
    again = await stock(shop, levels=[level(0)])  # sold out, then back: same window, same key
    assert again["triggered"] == {}
    await stock(shop, levels=[level(4)])
    await run_until_idle(worker_of(server))
    assert [m["payload"]["data"]["message_id"] for m in receiver.requests] == [
        m["id"] for m in receiver.requests
    ]
    [payload] = receiver.unique
    assert payload["type"] == "message.back_in_stock"
    data = payload["data"]
    assert (data["customer_id"], data["channel"], data["sku"]) == (amy, "sms", "TR2")
    assert data["options"] == {"size": "38"}
    assert data["consent_decision_id"] == decision
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["consent_decision_id"]) == ("sent", decision)
    subs = (await shop.request("GET", f"/v1/alerts/{amy}/subscriptions", "web")).json()
    assert subs["items"][0]["status"] == "notified"
    assert ("message_sent", data["message_id"]) in [
        (name, props.get("message_id")) for name, props in await timeline_names(shop, amy)
    ]


async def test_a_tenant_this_server_cannot_unseal_does_not_stop_the_others_messages(
    server: Harness, receiver: WebhookReceiver
) -> None:
    # Another shop in the database was sealed with another secret key (restored from another
    # installation, say): its restock and its carts are skipped, ours are delivered.
    async with server.database.transaction(write=True) as conn:
        foreign = await tenants.create(conn, "foreign", sealer=Sealer(b"k" * 32))
        long_ago = datetime.now(UTC) - timedelta(hours=1)
        await conn.execute(
            insert(alert_restocks).values(
                tenant_id=foreign.id,
                item="TR2",
                store_key="",
                next_at=long_ago,
                batches=0,
                started_at=long_ago,
            )
        )
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone", preferred_channel="sms")
    await grant(shop, amy, "marketing:sms")
    await subscribe(shop, amy)
    await stock(shop, levels=[level(4)])
    await run_until_idle(worker_of(server))
    [payload] = receiver.unique
    assert (payload["type"], payload["data"]["customer_id"]) == ("message.back_in_stock", amy)
    async with server.database.transaction(write=False) as conn:
        next_at = await conn.scalar(
            select(alert_restocks.c.next_at).where(alert_restocks.c.tenant_id == foreign.id)
        )
    assert next_at > datetime.now(UTC) + timedelta(minutes=5)  # put back, not in the way


async def test_no_message_after_she_bought_the_sku_on_any_channel(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    await subscribe(shop, amy)
    await stock(shop, levels=[level(2)])
    bought = await shop.request(
        "POST",
        "/v1/events",
        "pos",
        json={
            "name": "order_completed",
            "customer_id": amy,
            "event_id": "till-sale-1",
            "properties": {"order_id": "S-1", "skus": ["TR2"]},
        },
    )
    assert bought.status_code in (200, 201, 202), bought.text
    await run_until_idle(worker_of(server))
    assert receiver.requests == []
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["reason"]) == ("skipped", "bought_since")
    skipped = [p for name, p in await timeline_names(shop, amy) if name == "message_skipped"]
    assert [p["reason"] for p in skipped] == ["bought_since"]


async def test_a_withdrawal_between_trigger_and_send_stops_the_message(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    await subscribe(shop, amy)
    assert (await stock(shop, levels=[level(2)]))["triggered"] == {"back_in_stock": 1}
    await grant(shop, amy, "marketing:push", "withdrawn")
    await run_until_idle(worker_of(server))
    assert receiver.requests == []
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["reason"]) == ("skipped", "no_consent")


async def test_quiet_hours_in_her_time_zone_delay_the_message(
    server: Harness, receiver: WebhookReceiver
) -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    now = datetime.now(UTC).astimezone(tokyo)
    start, end = (now - timedelta(hours=1)), (now + timedelta(hours=2))
    quiet = {"quiet_hours_start": f"{start:%H:%M}", "quiet_hours_end": f"{end:%H:%M}"}
    shop = await shop_with_webhook(server, receiver, {"notifications": quiet})
    amy = await customer(shop, "phone", time_zone="Asia/Tokyo")
    bob = await customer(shop, "laptop", time_zone="America/Los_Angeles")
    for person in (amy, bob):
        await grant(shop, person, "marketing:push")
        await subscribe(shop, person)
    await stock(shop, levels=[level(5)])
    await run_until_idle(worker_of(server))
    [sent] = receiver.unique
    assert sent["data"]["customer_id"] == bob  # 9 hours apart: not in his quiet hours
    [waiting] = await messages_of(shop, amy)
    assert (waiting["status"], waiting["reason"]) == ("pending", "quiet_hours")
    due = datetime.fromisoformat(waiting["due_at"]).astimezone(tokyo)
    assert f"{due:%H:%M}" == quiet["quiet_hours_end"]
    assert due > now


async def test_the_frequency_cap_counts_every_kind(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver, {"notifications": {"max_per_day": 1}})
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    await subscribe(shop, amy)
    await subscribe(shop, amy, sku="CAP", options={}, kind="price_drop")
    await stock(shop, items=[{"sku": "CAP", "price": 20.0}])
    await stock(shop, levels=[level(3)], items=[{"sku": "CAP", "price": 15.0}])
    await run_until_idle(worker_of(server))
    assert len(receiver.unique) == 1
    outcomes = sorted((m["status"], m["reason"]) for m in await messages_of(shop, amy))
    assert outcomes == [("sent", None), ("skipped", "frequency_cap")]


# --- pacing ---------------------------------------------------------------------------------


async def test_a_restock_of_50_units_notifies_2_x_50_of_10000_waiting_first_come(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver, {"notifications": {"max_per_day": 0}})
    amy = await customer(shop, "phone")
    start = datetime.now(UTC) - timedelta(days=1)
    rows = [
        {
            "tenant_id": shop.id,
            "id": f"sub_{n:06d}",
            "customer_id": amy if n == 0 else f"cus_waiting{n:06d}",
            "origin_customer_id": amy if n == 0 else f"cus_waiting{n:06d}",
            "kind": "back_in_stock",
            "item": ITEM,
            "sku": "TR2",
            "store_id": None,
            "min_quantity": 1,
            "status": "waiting",
            "consent_decision_id": None,
            "channel": "app",
            "price_seen": None,
            "created_at": start + timedelta(seconds=n),
            "notified_at": None,
        }
        for n in range(10_000)
    ]
    async with server.database.transaction(write=True) as conn:
        await conn.execute(insert(alert_subscriptions), rows)
    result = await stock(shop, levels=[level(50)])
    assert result["triggered"] == {"back_in_stock": 100}
    async with server.database.transaction(write=False) as conn:
        queued = await conn.execute(
            select(alert_messages.c.subscription_id).where(alert_messages.c.tenant_id == shop.id)
        )
        assert sorted(row.subscription_id for row in queued) == [f"sub_{n:06d}" for n in range(100)]
    # Sold out before the next batch is due: the next pass re-reads the stock and stops.
    await stock(shop, levels=[level(0)])
    async with server.database.transaction(write=True) as conn:
        from server_stub.storage.tables import alert_restocks

        await conn.execute(
            update(alert_restocks)
            .where(alert_restocks.c.tenant_id == shop.id)
            .values(next_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await worker_of(server).tick()
    async with server.database.transaction(write=False) as conn:
        total = await conn.scalar(select(func.count()).where(alert_messages.c.tenant_id == shop.id))
        restocks = await conn.scalar(
            select(func.count()).where(alert_restocks.c.tenant_id == shop.id)
        )
    assert (total, restocks) == (100, 0)


# --- carts ----------------------------------------------------------------------------------


async def cart_add(shop: ShopForTest, customer_id: str, op_id: str, **line: Any) -> None:
    op = {"op_id": op_id, "type": "add", "line": line or SHOES, "delta": 1}
    answer = await shop.request("POST", f"/v1/carts/{customer_id}/ops", "web", json={"ops": [op]})
    assert answer.status_code == 200, answer.text


async def test_low_stock_tells_those_holding_the_item_in_their_cart(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy, bob = await customer(shop, "laptop"), await customer(shop, "tablet")
    for person in (amy, bob):
        await grant(shop, person, "marketing:push")
    await cart_add(shop, amy, "laptop-a:1")
    await cart_add(shop, bob, "tablet-b:1", sku="TR3", options={})
    await stock(shop, levels=[level(10)])
    result = await stock(
        shop, deltas=[{**SHOES, "op_id": "sale:1", "location": "online", "delta": -7}]
    )
    assert result["triggered"] == {"low_stock": 1}
    await run_until_idle(worker_of(server))
    [payload] = receiver.unique
    assert payload["type"] == "message.low_stock"
    assert payload["data"]["customer_id"] == amy
    assert payload["data"]["cart_items"] == [ITEM]


async def test_an_idle_cart_becomes_one_abandoned_cart_message(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "laptop")
    await grant(shop, amy, "marketing:push")
    await cart_add(shop, amy, "laptop-a:1")
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(carts)
            .where(carts.c.tenant_id == shop.id, carts.c.customer_id == amy)
            .values(updated_at=datetime.now(UTC) - timedelta(hours=30))
        )
    worker = worker_of(server)
    await run_until_idle(worker)
    await run_until_idle(worker)  # a second scan finds the same idle stretch: no second message
    [payload] = receiver.unique
    assert payload["type"] == "message.abandoned_cart"
    assert len(await messages_of(shop, amy)) == 1


async def test_the_abandoned_cart_scan_goes_on_where_it_stopped_past_a_full_batch(
    server: Harness, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Five idle carts, two per batch, one batch per scan: the scans go on from one another
    # (the oldest batch is not read again and again), and a cart changed after the scan
    # passed it is found again once it is idle again.
    monkeypatch.setattr(alerts, "CART_SCAN_BATCH", 2)
    monkeypatch.setattr(alert_delivery, "IDLE_BATCHES_PER_SCAN", 1)
    shop = await shop_with_webhook(server, receiver)
    people = []
    for n in range(5):
        who = await customer(shop, f"idle-{n}")
        await grant(shop, who, "marketing:push")
        await cart_add(shop, who, f"idle-{n}:1")
        people.append(who)
    async with server.database.transaction(write=True) as conn:
        for n, who in enumerate(people):
            await conn.execute(
                update(carts)
                .where(carts.c.tenant_id == shop.id, carts.c.customer_id == who)
                .values(updated_at=datetime.now(UTC) - timedelta(hours=40 - n))
            )
    worker = worker_of(server)
    reached = []
    for _ in range(3):
        await worker.tick()
        reached.append(sum([len(await messages_of(shop, who)) for who in people]))
    assert reached == [2, 4, 5]
    async with server.database.transaction(write=True) as conn:
        await conn.execute(  # the first one changed since, and is idle again
            update(carts)
            .where(carts.c.tenant_id == shop.id, carts.c.customer_id == people[0])
            .values(updated_at=datetime.now(UTC) - timedelta(hours=30))
        )
    await worker.tick()
    assert len(await messages_of(shop, people[0])) == 2
    monkeypatch.setattr(alert_delivery, "IDLE_BATCHES_PER_SCAN", 50)
    await run_until_idle(worker)
    assert [len(await messages_of(shop, who)) for who in people] == [2, 1, 1, 1, 1]


# --- delivery -------------------------------------------------------------------------------


async def test_a_failing_receiver_gets_retries_then_a_dead_letter_that_replay_sends(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver, {"notifications": {"max_attempts": 2}})
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    await subscribe(shop, amy)
    await stock(shop, levels=[level(1)])
    receiver.fail_next = 2
    worker = worker_of(server)
    await worker.tick()
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["attempts"]) == ("retry", 1)
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(alert_messages)
            .where(alert_messages.c.tenant_id == shop.id)
            .values(due_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    await worker.tick()
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["attempts"]) == ("failed", 2)
    metrics = (await shop.request("GET", "/v1/alerts/metrics")).json()
    assert metrics["kinds"]["back_in_stock"]["failed"] == 1
    replayed = await shop.request("POST", "/v1/alerts/replay", json={})
    assert replayed.json() == {"replayed": 1}
    await run_until_idle(worker)
    assert [p["data"]["message_id"] for p in receiver.unique] == [message["id"]]
    metrics = (await shop.request("GET", "/v1/alerts/metrics")).json()
    assert metrics["kinds"]["back_in_stock"] == {
        "triggered": 1,
        "sent": 1,
        "failed": 0,
        "pending": 0,
        "skipped": {},
    }
    scraped = (await server.http.get("/metrics")).text
    for outcome, count in (("delivery_failed", 2), ("sent", 1)):
        label = f'kind="back_in_stock",outcome="{outcome}"'
        assert f"omnisdk_alert_messages_total{{{label}}} {count}.0" in scraped


# --- merges, export, erasure ----------------------------------------------------------------


async def test_subscriptions_follow_a_merge_and_go_with_an_erasure(shop: ShopForTest) -> None:
    phone = await customer(shop, "phone")
    await subscribe(shop, phone)
    merged = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={
            "identifiers": [
                {"type": "anonymous", "value": "phone"},
                {"type": "customer_ref", "value": "amy-1"},
            ]
        },
    )
    assert merged.status_code == 200, merged.text
    laptop = await customer(shop, "laptop")
    linked = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={
            "identifiers": [
                {"type": "anonymous", "value": "laptop"},
                {"type": "customer_ref", "value": "amy-1"},
            ]
        },
    )
    survivor = linked.json()["customer_id"]
    assert {phone, laptop} >= {survivor}
    subs = (await shop.request("GET", f"/v1/alerts/{survivor}/subscriptions", "web")).json()
    assert [s["item"] for s in subs["items"]] == [ITEM]
    export = (await shop.request("POST", f"/v1/privacy/{survivor}/export")).json()
    assert [s["item"] for s in export["alerts"]["subscriptions"]] == [ITEM]
    erased = (await shop.request("POST", f"/v1/privacy/{survivor}/erase")).json()
    assert erased["removed"]["alerts"] == 1


async def test_delta_op_ids_are_remembered_for_30_days_then_forgotten(
    server: Harness, shop: ShopForTest
) -> None:
    from server_stub.services import inventory

    delta = {**SHOES, "op_id": "erp:old", "location": "online", "delta": 1}
    await stock(shop, deltas=[delta])
    async with server.database.transaction(write=True) as conn:
        assert await inventory.forget_ops(conn, datetime.now(UTC) + timedelta(days=29)) == 0
    assert (await stock(shop, deltas=[delta]))["duplicates"] == 1
    async with server.database.transaction(write=True) as conn:
        assert await inventory.forget_ops(conn, datetime.now(UTC) + timedelta(days=31)) >= 1
    assert (await stock(shop, deltas=[delta]))["applied"] == 1
