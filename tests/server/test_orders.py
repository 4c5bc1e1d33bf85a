"""A cart turned into an order counts as an order in the profile, on every channel, once."""

from __future__ import annotations

from typing import Any

from tests.server.conftest import ShopForTest


async def customer(shop: ShopForTest, anonymous_id: str) -> str:
    answer = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": anonymous_id}
    )
    return str(answer.json()["customer_id"])


def add(op_id: str, sku: str, quantity: int, unit_price: float) -> dict[str, Any]:
    return {
        "op_id": op_id,
        "type": "add",
        "line": {"sku": sku},
        "delta": quantity,
        "attributes": {"unit_price": unit_price, "currency": "EUR"},
    }


async def order_cart(shop: ShopForTest, customer_id: str, order_ref: str, *lines: Any) -> None:
    added = await shop.request(
        "POST", f"/v1/carts/{customer_id}/ops", "web", json={"ops": list(lines)}
    )
    version = added.json()["version"]
    ordered = await shop.request(
        "POST",
        f"/v1/carts/{customer_id}/mark-ordered",
        "web",
        json={"order_ref": order_ref},
        headers={"If-Match": f'"{version}"'},
    )
    assert ordered.status_code == 200, ordered.text


async def profile(shop: ShopForTest, customer_id: str, channel: str = "app") -> Any:
    answer = await shop.request("GET", f"/v1/customers/{customer_id}/profile", channel)
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_an_order_placed_through_the_cart_counts_in_the_profile(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop, "laptop-o1")
    await order_cart(shop, amy, "A-1", add("a:1", "TR2", 2, 89.0), add("a:2", "SOCK", 1, 5.5))
    seen = await profile(shop, amy)  # another channel sees it
    assert seen["orders"] == {"count": 1, "total_value": 183.5}
    assert set(seen["purchased_skus"]) == {"TR2", "SOCK"}


async def test_the_shops_own_order_completed_for_the_same_order_counts_once(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop, "laptop-o2")
    await order_cart(shop, amy, "A-2", add("b:1", "TR2", 1, 89.0))
    own = {
        "customer_id": amy,
        "name": "order_completed",
        "properties": {"order_id": "A-2", "value": 89.0, "skus": ["TR2"], "gift": True},
    }
    assert (await shop.request("POST", "/v1/events", "web", json=own)).status_code == 200
    other = {**own, "properties": {"order_id": "STORE-9", "value": 20.0, "skus": ["CAP"]}}
    assert (await shop.request("POST", "/v1/events", "pos", json=other)).status_code == 200
    seen = await profile(shop, amy)
    assert seen["orders"] == {"count": 2, "total_value": 109.0}
    assert set(seen["purchased_skus"]) == {"TR2", "CAP"}


async def test_an_order_of_lines_without_prices_counts_without_a_value(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop, "laptop-o3")
    line = {"op_id": "c:1", "type": "add", "line": {"sku": "GIFT-CARD"}, "delta": 1}
    await order_cart(shop, amy, "A-3", line)
    seen = await profile(shop, amy)
    assert seen["orders"] == {"count": 1, "total_value": 0.0}
    assert seen["purchased_skus"] == ["GIFT-CARD"]


async def test_the_checkout_records_the_order_linked_by_the_checkout(shop: ShopForTest) -> None:
    amy = await customer(shop, "laptop-o4")
    await order_cart(shop, amy, "A-4", add("d:1", "TR2", 2, 89.0), add("d:2", "SOCK", 1, 5.5))
    recorded = await shop.request("GET", "/v1/orders/A-4", "pos")
    assert recorded.status_code == 200, recorded.text
    order = recorded.json()
    assert (order["customer_id"], order["channel"], order["link_method"]) == (
        amy,
        "web",
        "checkout",
    )
    assert (order["currency"], order["total"], order["net"]) == ("EUR", 183.5, 183.5)
    assert sorted((line["sku"], line["quantity"]) for line in order["lines"]) == [
        ("SOCK", 1),
        ("TR2", 2),
    ]
    assert (await profile(shop, amy))["purchases"]["by_channel"] == {"web": 1}
