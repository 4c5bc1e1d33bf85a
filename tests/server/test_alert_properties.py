"""Laws of messages, checked on generated histories (hypothesis):

- no message is sent to a customer after she ordered its SKU, on any channel;
- every sent message cites the consent decision it relied on: a grant of the purpose of the
  channel it went to, standing when it was sent;
- no message is delivered as two (one webhook-id each), whatever the order of restocks, sell-
  outs, price changes, orders, consent changes and delivery passes.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnisdk.core.notifications import PURPOSE_OF_CHANNEL
from server_stub.alert_delivery import run_until_idle
from tests.server.conftest import start_harness
from tests.server.test_alerts import SHOES, customer, grant, level, subscribe, worker_of
from tests.webhook_receiver import WebhookReceiver

PROPERTIES = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
STEP = st.one_of(
    st.tuples(st.just("restock"), st.integers(1, 5)),
    st.tuples(st.just("sell_out"), st.just(0)),
    st.tuples(st.just("price"), st.integers(10, 90)),
    st.tuples(st.just("order"), st.sampled_from(["web", "app", "pos"])),
    st.tuples(st.just("withdraw"), st.sampled_from(["push", "sms"])),
    st.tuples(st.just("grant"), st.sampled_from(["push", "sms"])),
    st.tuples(st.just("deliver"), st.just(0)),
)


@PROPERTIES
@given(steps=st.lists(STEP, min_size=1, max_size=10))
def test_messages_respect_orders_and_consent_and_never_repeat(
    migrated_database_url: str, steps: list[tuple[str, Any]]
) -> None:
    async def scenario() -> None:
        async for server in start_harness(
            migrated_database_url, log_level="WARNING", alerts_delivery=False
        ):
            with WebhookReceiver() as receiver:
                shop = await server.shop(settings={"notifications": {"max_per_day": 0}})
                made = await shop.request("POST", "/v1/alerts/webhooks", json={"url": receiver.url})
                receiver.secret = made.json()["secret"]
                amy = await customer(shop, "phone", preferred_channel="sms")
                await grant(shop, amy, "marketing:push")
                await subscribe(shop, amy)
                await subscribe(shop, amy, kind="price_drop")
                await shop.request(
                    "POST", "/v1/inventory", "pos", json={"items": [{**SHOES, "price": 99.0}]}
                )
                worker = worker_of(server)
                ordered_at: datetime | None = None
                for n, (action, value) in enumerate(steps):
                    if action == "restock":
                        body = {"levels": [level(value)]}
                    elif action == "sell_out":
                        body = {"levels": [level(0)]}
                    elif action == "price":
                        body = {"items": [{**SHOES, "price": float(value)}]}
                    if action in ("restock", "sell_out", "price"):
                        answer = await shop.request("POST", "/v1/inventory", "pos", json=body)
                        assert answer.status_code == 200, answer.text
                    elif action == "order":
                        event = {
                            "name": "order_completed",
                            "customer_id": amy,
                            "event_id": f"order-{n}",
                            "properties": {"order_id": f"O-{n}", "skus": ["TR2"]},
                        }
                        answer = await shop.request("POST", "/v1/events", value, json=event)
                        assert answer.status_code in (200, 201, 202), answer.text
                        timeline = await shop.request("GET", f"/v1/customers/{amy}/timeline", "web")
                        placed = [
                            datetime.fromisoformat(e["occurred_at"])
                            for e in timeline.json()["items"]
                            if e["event_id"] == f"order-{n}"
                        ]
                        ordered_at = ordered_at or placed[0]
                    elif action in ("withdraw", "grant"):
                        status = "withdrawn" if action == "withdraw" else "granted"
                        decided = await shop.request(
                            "POST",
                            f"/v1/consent/{amy}",
                            "app",
                            json={
                                "decisions": [
                                    {"purpose": PURPOSE_OF_CHANNEL[value], "status": status}
                                ]
                            },
                        )
                        # Nothing to withdraw, or a repeated grant: a refusal, nothing recorded.
                        assert decided.status_code in (200, 409), decided.text
                    else:
                        await run_until_idle(worker)
                await run_until_idle(worker)
                history = (await shop.request("GET", f"/v1/consent/{amy}/history", "web")).json()[
                    "items"
                ]
                decisions = {d["id"]: d for d in history}
                sent = [
                    m
                    for m in (
                        await shop.request("GET", f"/v1/alerts/{amy}/messages", "web")
                    ).json()["items"]
                    if m["status"] == "sent"
                ]
                assert sorted(p["data"]["message_id"] for p in receiver.unique) == sorted(
                    m["id"] for m in sent
                )
                for message in sent:
                    sent_at = datetime.fromisoformat(message["sent_at"])
                    if ordered_at is not None:
                        assert sent_at < ordered_at, "a message went out after her order"
                    cited = decisions[message["consent_decision_id"]]
                    assert cited["status"] == "granted"
                    assert cited["purpose"] == PURPOSE_OF_CHANNEL[message["channel"]]
                    later = [
                        d
                        for d in history
                        if d["purpose"] == cited["purpose"]
                        and cited["recorded_at"] < d["recorded_at"] <= message["sent_at"]
                    ]
                    assert later == [], "it relied on a decision no longer standing"

    asyncio.run(scenario())
