"""The SDK's typed surface against a real server: mappings wherever a model is taken, bad input
refused with an omnisdk error before anything is sent, the same on both clients."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import httpx
import pytest

import omnisdk
from omnisdk.testing import ServerProcess


def test_mappings_work_wherever_a_model_is_taken(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as web, shop.client("admin") as admin:
        amy = web.identity.identify(
            anonymous_id="laptop-t1", identifiers=[{"type": "loyalty_card", "value": "LC-7"}]
        ).customer_id
        web.consent.grant(amy, "analytics", notice={"id": "privacy", "version": 2})
        sent = web.events.send(
            "product_viewed", identifier={"type": "loyalty_card", "value": "LC-7"}
        )
        assert sent.customer_id == amy
        op = {"op_id": "typed-test:1", "type": "add", "line": {"sku": "TR2"}, "delta": 2}
        assert web.carts.apply(amy, [op]).lines[0].quantity == 2
        issued = web.returns.issue(
            "A-T1", [{"line_id": "1", "sku": "TR2", "quantity": 2, "unit_price": 89.0}]
        )
        assert issued.order_ref == "A-T1"
        settings = admin.tenant.update_settings({"carts": {"merge_policy": "sum"}})
        assert settings.carts.merge_policy == "sum"


@pytest.mark.parametrize(
    "bad_call",
    [
        lambda c: c.events.track("product_viewed", identifier={"type": "email"}),
        lambda c: c.events.send("product_viewed"),  # nobody named
        lambda c: c.carts.add("cus_x", "TR2", 1, unit_price=-5),
        lambda c: c.carts.apply("cus_x", [{"type": "add"}]),
        lambda c: c.consent.grant("cus_x", "analytics", scope="planet"),
        lambda c: c.consent.can_contact("cus_x", "pigeon"),
        lambda c: c.returns.issue("A-1", [{"sku": "TR2"}]),
        lambda c: c.tenant.update_settings(["not", "a", "mapping"]),
    ],
)
def test_bad_input_is_an_omnisdk_validation_error_before_anything_is_sent(
    server_process: ServerProcess, bad_call: object
) -> None:
    shop = server_process.create_tenant()
    with shop.client("admin") as client:
        with pytest.raises(omnisdk.InvalidRequestError) as refused:
            bad_call(client)  # type: ignore[operator]
    assert isinstance(refused.value, omnisdk.ValidationError)
    assert refused.value.detail


async def test_the_async_client_refuses_the_same_way(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    async with shop.async_client("web") as web:
        with pytest.raises(omnisdk.InvalidRequestError):
            await web.carts.add("cus_x", "TR2", 1, currency="euro")
        amy = (await web.identity.identify(anonymous_id="phone-t3")).customer_id
        cart = await web.carts.add(amy, "TR2", 2)
        cart = await web.carts.set_quantity(amy, cart.model_dump(mode="json"), "TR2", 1)
        assert cart.lines[0].quantity == 1
        cart = await web.carts.clear(amy, cart)
        assert cart.lines == [] or all(line.quantity == 0 for line in cart.lines)
        assert await web.returns.pending() == []


def test_a_wrong_client_option_is_a_configuration_error() -> None:
    with pytest.raises(omnisdk.ConfigurationError, match="channel"):
        omnisdk.Client("http://127.0.0.1:1", "osk_x", channel="kiosk")
    with pytest.raises(omnisdk.ConfigurationError, match="base_url"):
        omnisdk.AsyncClient("127.0.0.1:1", "osk_x")
    with pytest.raises(omnisdk.ConfigurationError, match="full_policy"):
        omnisdk.Client("http://127.0.0.1:1", "osk_x", full_policy="shrug")  # type: ignore[arg-type]


# Every kind of operation that names a customer: answered from memory, read, written, queued,
# watched.
NAMING_A_CUSTOMER: dict[str, Callable[[Any, Any], Any]] = {
    "consent.check": lambda c, who: c.consent.check(who, "analytics"),
    "consent.can_contact": lambda c, who: c.consent.can_contact(who, "email"),
    "consent.get": lambda c, who: c.consent.get(who),
    "consent.state": lambda c, who: c.consent.state(who),
    "consent.grant": lambda c, who: c.consent.grant(who, "analytics"),
    "consent.queue": lambda c, who: c.consent.queue(who, "analytics", "granted"),
    "consent.history": lambda c, who: c.consent.history(who),
    "carts.get": lambda c, who: c.carts.get(who),
    "carts.add": lambda c, who: c.carts.add(who, "TR2", 1),
    "carts.ops.add": lambda c, who: c.carts.ops.add(who, "TR2", 1, None),
    "sessions.set": lambda c, who: c.sessions.set(who, {"viewed": ["TR2"]}),
    "identity.get_profile": lambda c, who: c.identity.get_profile(who),
    "orders.of_customer": lambda c, who: c.orders.of_customer(who),
    "alerts.subscribe": lambda c, who: c.alerts.subscribe(who, "TR2"),
    "privacy.export": lambda c, who: c.privacy.export(who),
    "segments.explain": lambda c, who: c.segments.explain("vip", who),
    "changes.watch": lambda c, who: c.changes.watch(who),
}


async def _refusal(call: Callable[[], Any]) -> omnisdk.InvalidRequestError:
    with pytest.raises(omnisdk.InvalidRequestError) as refused:
        result = call()
        if inspect.isawaitable(result):
            await result
    return refused.value


@pytest.mark.parametrize(
    "customer_id", [["cus_x"], None, 7, "", "cus_x/history", "x" * 41, ".", ".."]
)
async def test_a_customer_id_of_the_wrong_form_is_refused_alike_before_anything_is_sent(
    server_process: ServerProcess, customer_id: object
) -> None:
    shop = server_process.create_tenant()
    sent: list[str] = []

    def record(request: httpx.Request) -> None:
        sent.append(request.url.path)

    async def record_async(request: httpx.Request) -> None:
        record(request)

    sync_http = httpx.Client(event_hooks={"request": [record]})
    async_http = httpx.AsyncClient(event_hooks={"request": [record_async]})
    with shop.client("web", http_client=sync_http) as web:
        async with shop.async_client("web", http_client=async_http) as async_web:
            for name, call in NAMING_A_CUSTOMER.items():
                blocking = await _refusal(lambda call=call: call(web, customer_id))
                awaited = await _refusal(lambda call=call: call(async_web, customer_id))
                assert type(awaited) is type(blocking), name
                assert awaited.detail == blocking.detail, name
                assert "customer_id" in blocking.detail, name
    assert sent == []
