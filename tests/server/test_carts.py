"""The shared cart on the server: operations applied once, limits, checkout versions, merges."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from sqlalchemy import select

from omnisdk.core.problems import ProblemType
from server_stub.storage.tables import carts, changes
from tests.server.conftest import Harness, ShopForTest

SHOES = {"sku": "TR2", "options": {"size": "38"}}


def add(
    op_id: str, delta: int = 1, line: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    return {"op_id": op_id, "type": "add", "line": line or SHOES, "delta": delta, **extra}


async def customer(shop: ShopForTest, anonymous_id: str = "laptop") -> str:
    answer = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": anonymous_id}
    )
    return str(answer.json()["customer_id"])


async def ops(shop: ShopForTest, customer_id: str, *items: dict[str, Any]) -> Any:
    return await shop.request(
        "POST", f"/v1/carts/{customer_id}/ops", "web", json={"ops": list(items)}
    )


async def test_adds_apply_once_and_the_answer_carries_the_version(shop: ShopForTest) -> None:
    amy = await customer(shop)
    attrs = {"name": "Trail runner 38", "unit_price": 89.0, "currency": "EUR"}
    first = await ops(shop, amy, add("laptop:1", 1, attributes=attrs))
    again = await ops(shop, amy, add("laptop:1", 1, attributes=attrs))
    assert first.status_code == again.status_code == 200
    assert again.json()["duplicates"] == ["laptop:1"]
    cart = (await shop.request("GET", f"/v1/carts/{amy}", "app")).json()
    (line,) = cart["lines"]
    assert (line["sku"], line["options"], line["quantity"], line["unit_price"]) == (
        "TR2",
        {"size": "38"},
        1,
        89.0,
    )
    assert cart["version"] == 1
    response = await shop.request("GET", f"/v1/carts/{amy}", "app")
    assert response.headers["etag"] == '"1"'


async def test_remove_cancels_only_the_adds_it_saw(shop: ShopForTest) -> None:
    amy = await customer(shop)
    seen = (await ops(shop, amy, add("laptop:1"))).json()["lines"][0]["observed"]
    await ops(shop, amy, add("phone:1"))  # the phone adds a pair the laptop has not seen
    after = await ops(
        shop, amy, {"op_id": "laptop:2", "type": "remove", "line": SHOES, "observed": seen}
    )
    assert after.json()["lines"][0]["quantity"] == 1


async def test_bad_operations_are_refused_whole_and_change_nothing(shop: ShopForTest) -> None:
    amy = await customer(shop)
    await ops(shop, amy, add("a:1"))
    cases = [
        [add("a:2"), add("a:3", 0)],
        [add("a:4", 5000)],
        [add("a:5", 999)],
        [{"op_id": "a:6", "type": "remove", "line": {"sku": "NOPE"}, "observed": []}],
        [add("no-sequence")],
        [add("a:7", 1, attributes={"unit_price": -5})],
    ]
    for batch in cases:
        response = await ops(shop, amy, *batch)
        assert response.status_code == 422, batch
    cart = (await shop.request("GET", f"/v1/carts/{amy}")).json()
    assert cart["version"] == 1 and cart["lines"][0]["quantity"] == 1
    problem = (await ops(shop, amy, add("a:8"), add("a:9", 0))).json()
    assert problem["type"] == ProblemType.INVALID_CART_OPERATION and problem["index"] == 1


async def test_another_tenants_cart_is_not_found(server: Harness) -> None:
    alice, mallory = await server.shop("alice"), await server.shop("mallory")
    amy = await customer(alice)
    await ops(alice, amy, add("a:1"))
    assert (await mallory.request("GET", f"/v1/carts/{amy}")).status_code == 404
    assert (await ops(mallory, amy, add("m:1"))).status_code == 404
    assert (await alice.request("GET", f"/v1/carts/{amy}")).json()["lines"][0]["quantity"] == 1


async def test_checkout_needs_the_version_the_customer_saw(shop: ShopForTest) -> None:
    amy = await customer(shop)
    await ops(shop, amy, add("a:1", 2))
    path = f"/v1/carts/{amy}/mark-ordered"
    body = {"order_ref": "A1042"}
    assert (await shop.request("POST", path, json=body)).status_code == 428
    stale = await shop.request("POST", path, json=body, headers={"If-Match": '"0"'})
    assert stale.status_code == 409
    assert stale.json()["type"] == ProblemType.VERSION_CONFLICT
    assert stale.json()["cart"]["lines"][0]["quantity"] == 2
    done = await shop.request("POST", path, json=body, headers={"If-Match": '"1"'})
    assert done.status_code == 200
    assert done.json()["lines"] == [] and done.json()["version"] == 2
    await ops(shop, amy, add("a:2", 1))
    twice = await shop.request("POST", path, json=body, headers={"If-Match": '"3"'})
    assert twice.status_code == 409 and "already placed" in twice.json()["detail"]


async def test_a_guest_cart_merges_into_the_customers_on_login(shop: ShopForTest) -> None:
    known = (
        await shop.request(
            "POST",
            "/v1/identity/identify",
            json={"email": "amy@example.com", "anonymous_id": "laptop"},
        )
    ).json()["customer_id"]
    await ops(shop, known, add("laptop:1", 1), add("laptop:2", 3, {"sku": "SOCK"}))
    guest = await customer(shop, "phone")
    await ops(
        shop,
        guest,
        add("phone:1", 2),
        add("phone:2", 1, {"sku": "CAP"}, attributes={"name": "Cap", "unit_price": 15.0}),
    )
    login = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "phone", "email": "amy@example.com"}
    )
    result = login.json()
    assert result["customer_id"] == known
    (report,) = result["cart_merges"]
    assert report["policy"] == "max" and report["from_customer_id"] == guest
    assert report["result"] == {"CAP": 1, "SOCK": 3, "TR2|size=38": 2}
    cart = (await shop.request("GET", f"/v1/carts/{guest}")).json()  # the guest's id resolves
    assert {line["key"]: line["quantity"] for line in cart["lines"]} == report["result"]
    assert next(line for line in cart["lines"] if line["sku"] == "CAP")["unit_price"] == 15.0
    split = await shop.request("POST", f"/v1/merges/{result['merge_ids'][0]}/split")
    assert split.status_code == 200
    back = (await shop.request("GET", f"/v1/carts/{guest}")).json()
    assert {line["key"]: line["quantity"] for line in back["lines"]} == {"TR2|size=38": 2, "CAP": 1}


async def test_the_tenant_chooses_the_merge_policy(shop: ShopForTest) -> None:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["carts"]["merge_policy"] = "sum"
    assert (await shop.request("PUT", "/v1/tenant/settings", json=settings)).status_code == 200
    known = (
        await shop.request("POST", "/v1/identity/identify", json={"customer_ref": "acct-1"})
    ).json()["customer_id"]
    await ops(shop, known, add("k:1", 1))
    guest = await customer(shop, "tablet")
    await ops(shop, guest, add("g:1", 2))
    login = (
        await shop.request(
            "POST",
            "/v1/identity/identify",
            json={"anonymous_id": "tablet", "customer_ref": "acct-1"},
        )
    ).json()
    assert login["cart_merges"][0]["result"] == {"TR2|size=38": 3}


async def test_concurrent_devices_with_retries_lose_and_double_nothing(shop: ShopForTest) -> None:
    amy = await customer(shop)
    rng = random.Random(3)
    acknowledged: dict[str, int] = {}

    async def device(n: int) -> None:
        for step in range(6):
            op = add(f"dev{n}:{step + 1}", rng.choice([1, 2, -1]) if step else 1)
            for attempt in range(1 + (rng.random() < 0.4)):  # some are retried after a "timeout"
                response = await ops(shop, amy, op)
                assert response.status_code in (200, 422), response.text
                if response.status_code == 200 and op["op_id"] in response.json()["applied"]:
                    acknowledged[op["op_id"]] = op["delta"]
                del attempt

    await asyncio.gather(*(device(n) for n in range(16)))
    cart = (await shop.request("GET", f"/v1/carts/{amy}")).json()
    assert cart["lines"][0]["quantity"] == max(sum(acknowledged.values()), 0)


async def test_the_profile_reports_an_abandoned_cart(shop: ShopForTest) -> None:
    amy = await customer(shop)
    await ops(shop, amy, add("a:1", 2, attributes={"unit_price": 89.0}))
    fresh = (await shop.request("GET", f"/v1/customers/{amy}/profile")).json()["cart"]
    assert fresh == {**fresh, "lines": 1, "units": 2, "value": 178.0, "abandoned": False}
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["carts"]["abandoned_after_hours"] = 0.0000001
    await shop.request("PUT", "/v1/tenant/settings", json=settings)
    assert (await shop.request("GET", f"/v1/customers/{amy}/profile")).json()["cart"]["abandoned"]


async def cart_changes(server: Harness, shop: ShopForTest, customer_id: str) -> list[Any]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(changes.c.payload).where(
                changes.c.tenant_id == shop.id,
                changes.c.customer_id == customer_id,
                changes.c.kind == "cart",
            )
        )
        return sorted((row.payload for row in rows), key=lambda payload: payload["version"])


async def test_a_cart_change_carries_the_lines_it_touched_not_the_cart(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop)
    await ops(shop, amy, add("laptop:1", 2), add("laptop:2", 1, {"sku": "CAP"}))
    seen = (await ops(shop, amy, add("laptop:3", 1, {"sku": "SOCK"}))).json()
    cap = next(line for line in seen["lines"] if line["sku"] == "CAP")
    remove = {"op_id": "laptop:4", "type": "remove", "line": {"sku": "CAP"}}
    await ops(shop, amy, {**remove, "observed": cap["observed"]})
    *_, added, removed = await cart_changes(server, shop, amy)
    assert [(line["key"], line["quantity"]) for line in added["lines"]] == [("SOCK", 1)]
    assert [(line["key"], line["quantity"]) for line in removed["lines"]] == [("CAP", 0)]
    assert (added["version"], removed["version"]) == (2, 3)


async def test_a_write_to_a_merged_guest_goes_to_the_customer_and_its_retry_is_a_duplicate(
    shop: ShopForTest,
) -> None:
    known = (
        await shop.request("POST", "/v1/identity/identify", json={"customer_ref": "acct-9"})
    ).json()["customer_id"]
    guest = await customer(shop, "kiosk")
    first = await ops(shop, guest, add("kiosk:1", 2))
    assert first.json()["applied"] == ["kiosk:1"]
    login = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "kiosk", "customer_ref": "acct-9"}
    )
    assert login.json()["customer_id"] == known
    retried = (await ops(shop, guest, add("kiosk:1", 2))).json()  # its answer had been lost
    assert retried["customer_id"] == known and retried["duplicates"] == ["kiosk:1"]
    later = (await ops(shop, guest, add("kiosk:2", 1))).json()
    assert later["customer_id"] == known and later["lines"][0]["quantity"] == 3


async def test_a_stored_cart_does_not_grow_with_its_history(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop)
    for batch in range(20):  # 2,000 operations on 4 lines
        batch_ops = [
            add(f"web:{batch * 100 + n + 1}", 1 if n % 2 else -1, {"sku": f"S{n % 4}"})
            for n in range(100)
        ]
        assert (await ops(shop, amy, *batch_ops)).status_code == 200
    async with server.database.transaction(write=False) as conn:
        state = (
            await conn.execute(
                select(carts.c.state).where(
                    carts.c.tenant_id == shop.id, carts.c.customer_id == amy
                )
            )
        ).scalar_one()
    assert len(str(state)) < 2_000
    assert state["applied"] == {"web": [2_000, []]}


async def test_adds_racing_a_sign_in_leave_no_cart_behind_the_merged_away_guest(
    server: Harness, shop: ShopForTest
) -> None:
    for round in range(10):
        ref, device = f"acct-race-{round}", f"tablet-race-{round}"
        known = (
            await shop.request("POST", "/v1/identity/identify", json={"customer_ref": ref})
        ).json()["customer_id"]
        guest = await customer(shop, device)
        await ops(shop, guest, add(f"{device}:1", 1))
        sign_in = shop.request(
            "POST", "/v1/identity/identify", json={"anonymous_id": device, "customer_ref": ref}
        )
        answers = await asyncio.gather(
            sign_in, *(ops(shop, guest, add(f"{device}:{n}", 1)) for n in range(2, 6))
        )
        assert all(answer.status_code == 200 for answer in answers)
        async with server.database.transaction(write=False) as conn:
            rows = await conn.execute(
                select(carts.c.customer_id).where(
                    carts.c.tenant_id == shop.id, carts.c.customer_id.in_([known, guest])
                )
            )
            assert [row.customer_id for row in rows] == [known]
        cart = (await shop.request("GET", f"/v1/carts/{known}")).json()
        assert cart["lines"][0]["quantity"] == 5  # max(0, guest's units) + adds after the merge


@pytest.mark.parametrize(
    "options",
    [{"a=b": "c"}, {"size": "38;colour=red"}, {"": "x"}, {"a|b": "c"}, {"size": "38|x"}],
    ids=["= in a name", "; in a value", "empty name", "| in a name", "| in a value"],
)
async def test_option_separators_that_would_change_a_line_are_refused(
    shop: ShopForTest, options: dict[str, str]
) -> None:
    amy = await customer(shop)
    answer = await ops(shop, amy, add("laptop:1", line={"sku": "TR2", "options": options}))
    assert answer.status_code == 422, answer.text
    assert answer.json()["type"] == ProblemType.INVALID_CART_OPERATION
    cart = (await shop.request("GET", f"/v1/carts/{amy}", "web")).json()
    assert cart["lines"] == []


async def test_options_with_other_punctuation_read_back_as_sent(shop: ShopForTest) -> None:
    amy = await customer(shop)
    options = {"engraving": "A=B, C & D", "size": "38 ½"}
    answer = await ops(shop, amy, add("laptop:1", line={"sku": "TR2", "options": options}))
    assert answer.status_code == 200, answer.text
    cart = (await shop.request("GET", f"/v1/carts/{amy}", "web")).json()
    assert [line["options"] for line in cart["lines"]] == [options]
