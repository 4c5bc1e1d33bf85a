"""The cart follows Amy from laptop to phone, through the SDK against a real server."""

from __future__ import annotations

import pytest

import omnisdk
from omnisdk.testing import ServerProcess


def test_laptop_adds_shoes_and_the_phone_sees_them(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as laptop, shop.client("app") as phone:
        amy = laptop.identity.identify(anonymous_id="laptop", email="amy@example.com").customer_id
        laptop.carts.add(
            amy, "TR2", 1, {"size": "38"}, name="Trail runner", unit_price=89.0, currency="EUR"
        )
        seen_on_phone = phone.carts.get(amy)
        assert [(x.sku, x.quantity, x.unit_price) for x in seen_on_phone.lines] == [
            ("TR2", 1, 89.0)
        ]
        phone.carts.set_quantity(amy, seen_on_phone, "TR2", 2, {"size": "38"})
        laptop.carts.add(amy, "SOCK", 1)  # meanwhile on the laptop
        cart = laptop.carts.get(amy)
        assert {x.sku: x.quantity for x in cart.lines} == {"TR2": 2, "SOCK": 1}
        phone.carts.remove(amy, seen_on_phone, "TR2", {"size": "38"})  # removes what it saw
        assert {x.sku: x.quantity for x in phone.carts.get(amy).lines} == {"TR2": 1, "SOCK": 1}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("max", {"CAP": 1, "TR2": 2}),
        ("sum", {"CAP": 1, "TR2": 3}),
        ("guest_wins", {"CAP": 1, "TR2": 2}),
        ("customer_wins", {"CAP": 1, "TR2": 1}),
    ],
)
def test_guest_cart_on_the_phone_merges_on_login_by_each_policy(
    server_process: ServerProcess, policy: str, expected: dict[str, int]
) -> None:
    shop = server_process.create_tenant()
    with shop.client("admin") as admin:
        admin.tenant.update_settings({"carts": {"merge_policy": policy}})
    with shop.client("web") as web, shop.client("app") as app:
        amy = web.identity.identify(email="amy@example.com", anonymous_id="laptop").customer_id
        web.carts.add(amy, "TR2", 1)
        guest = app.identity.identify(anonymous_id="phone").customer_id
        app.carts.add(guest, "TR2", 2)
        app.carts.add(guest, "CAP", 1, unit_price=15.0)
        login = app.identity.identify(anonymous_id="phone", email="amy@example.com")
        assert login.customer_id == amy
        assert login.cart_merges[0].policy == policy
        assert login.cart_merges[0].result == expected
        cart = web.carts.get(amy)
        assert cart.version >= 2 and {x.sku: x.quantity for x in cart.lines} == expected
        with pytest.raises(omnisdk.ConflictError) as stale:
            web.carts.mark_ordered(amy, "A1042", cart.version - 1)
        assert stale.value.problem["cart"]["version"] == cart.version
        ordered = web.carts.mark_ordered(amy, "A1042", cart.version)
        assert ordered.lines == []
