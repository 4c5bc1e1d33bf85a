"""What the recommendations count of an order, and who an order may be linked to: a gift
line is no part of her basket, an order is one basket however many events name it, and a
till's key cannot pass a store sale off as an online one to link a customer who said no."""

from __future__ import annotations

from typing import Any

from omnisdk.core.problems import ProblemType
from server_stub.services import jobs, recommendations
from tests.server.conftest import Harness, ShopForTest

SHOES = {"sku": "TR2-38", "quantity": 1, "unit_price": 89.0}
SOCKS = {"sku": "SOCK-M", "quantity": 1, "unit_price": 9.0}
KIDS_GIFT = {"sku": "KIDS-31", "quantity": 1, "unit_price": 40.0, "gift": True}
MUG_GIFT = {"sku": "MUG-1", "quantity": 1, "unit_price": 12.0, "gift": True}


async def customer(shop: ShopForTest, anonymous_id: str, *identifiers: tuple[str, str]) -> str:
    extra = [{"type": kind, "value": value} for kind, value in identifiers]
    body = {"identifiers": [{"type": "anonymous", "value": anonymous_id}, *extra]}
    answer = await shop.request("POST", "/v1/identity/identify", "app", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["customer_id"])


async def record(shop: ShopForTest, reference: str, buyer: str, *lines: dict[str, Any]) -> None:
    order = {"reference": reference, "currency": "EUR", "customer_id": buyer, "lines": [*lines]}
    answer = await shop.request("POST", "/v1/orders", "web", json=order)
    assert answer.status_code == 201, answer.text


async def rebuild(server: Harness, shop: ShopForTest, **params: Any) -> dict[str, Any]:
    """The real rebuild job, then the model the shop reads."""
    claim = await jobs.start(server.database, shop.id, recommendations.KIND, params)
    job = await jobs.execute(server.database, claim)
    assert job.state == "done", job.error
    model = (await shop.request("GET", "/v1/content/recommendations")).json()
    return {key: model[key] for key in ("baskets", "together", "popular")}


async def test_a_gift_line_is_not_bought_together_with_what_she_bought_for_herself(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "amy-gift")
    await record(shop, "W-1", amy, SHOES, KIDS_GIFT, SOCKS)
    model = await rebuild(server, shop)
    assert model["baskets"] == 1
    assert model["together"] == {"SOCK-M": [["TR2-38", 1]], "TR2-38": [["SOCK-M", 1]]}
    assert "KIDS-31" not in {sku for sku, _ in model["popular"]}


async def test_an_order_wholly_of_gifts_counts_nothing(server: Harness, shop: ShopForTest) -> None:
    amy = await customer(shop, "amy-all-gifts")
    await record(shop, "W-2", amy, KIDS_GIFT, MUG_GIFT)
    event = {"name": "order_completed", "customer_id": amy}
    sent_as_gift = {"order_id": "W-3", "skus": ["TR2-38", "SOCK-M"], "gift": True}
    answer = await shop.request(
        "POST", "/v1/events", "web", json={**event, "properties": sent_as_gift}
    )
    assert answer.status_code == 200, answer.text
    model = await rebuild(server, shop)
    assert (model["baskets"], model["together"], model["popular"]) == (0, {}, [])


async def test_an_order_recorded_and_sent_as_the_shops_own_event_is_one_basket(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "amy-twice")
    await record(shop, "W-4", amy, SHOES, SOCKS)
    own = {"order_id": "W-4", "skus": ["TR2-38", "SOCK-M"], "value": 98.0, "currency": "EUR"}
    event = {"name": "order_completed", "customer_id": amy, "properties": own}
    sent = await shop.request("POST", "/v1/events", "web", json=event)
    assert sent.status_code == 200, sent.text
    once = {"baskets": 1, "together": {"SOCK-M": [["TR2-38", 1]], "TR2-38": [["SOCK-M", 1]]}}
    first = await rebuild(server, shop)
    assert {key: first[key] for key in once} == once
    # The shop sends its event again (another id) after the build: the next build, which
    # reads only the new event, adds nothing either.
    again = await shop.request("POST", "/v1/events", "web", json={**event, "event_id": "own-2"})
    assert again.status_code == 200, again.text
    assert await rebuild(server, shop) == first
    assert await rebuild(server, shop, full=True) == first  # counting everything again


async def test_a_till_key_claiming_an_online_sale_cannot_link_a_customer_who_denied_analytics(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop, "amy-denied", ("loyalty_card", "LC-4242"))
    denied = {"decisions": [{"purpose": "analytics", "status": "denied"}]}
    decided = await shop.request("POST", f"/v1/consent/{amy}", "app", json=denied)
    assert decided.status_code == 200, decided.text
    sale = {"reference": "S-1", "currency": "EUR", "lines": [SHOES], "loyalty_id": "LC-4242"}
    as_web = await shop.request("POST", "/v1/orders", "pos", json={**sale, "channel": "web"})
    assert as_web.status_code == 422, as_web.text
    assert as_web.headers["content-type"].startswith("application/problem+json")
    assert as_web.json()["type"] == ProblemType.VALIDATION_ERROR.value
    assert (await shop.request("GET", "/v1/orders/S-1")).status_code == 404
    # Named by her card, the sale stays unlinked on whatever channel it is recorded.
    at_till = await shop.request("POST", "/v1/orders", "pos", json={**sale, "store_id": "w-1"})
    assert at_till.status_code == 201, at_till.text
    assert (at_till.json()["order"]["customer_id"], at_till.json()["link_refused"]) == (
        None,
        "consent",
    )
    online = {**sale, "reference": "W-5", "channel": "web"}
    by_backend = await shop.request("POST", "/v1/orders", "web", json=online)
    assert by_backend.status_code == 201, by_backend.text
    assert (by_backend.json()["order"]["customer_id"], by_backend.json()["link_refused"]) == (
        None,
        "consent",
    )
