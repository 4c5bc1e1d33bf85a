"""Store sales over HTTP: linked to the online customer by customer code, loyalty id or keyed
hash only when her consent allows; orders follow merges and splits, are exported, and outlive
erasure anonymised; bad input is a problem+json and stores nothing."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from server_stub.storage.tables import events
from tests.server.conftest import Harness, ShopForTest
from tests.server.test_privacy import traces

SHOES = {"sku": "TR2-38", "quantity": 1, "unit_price": 120.0}


async def identify(shop: ShopForTest, *identifiers: tuple[str, str]) -> str:
    body = {"identifiers": [{"type": t, "value": v} for t, v in identifiers]}
    answer = await shop.request("POST", "/v1/identity/identify", "app", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["customer_id"])


async def consent(shop: ShopForTest, customer_id: str, status: str = "granted") -> None:
    decisions = [{"purpose": "analytics", "status": status}]
    answer = await shop.request(
        "POST", f"/v1/consent/{customer_id}", "app", json={"decisions": decisions}
    )
    assert answer.status_code == 200, answer.text


async def sale(shop: ShopForTest, reference: str, **buyer: Any) -> Any:
    body = {"reference": reference, "store_id": "warsaw-1", "currency": "EUR", "lines": [SHOES]}
    answer = await shop.request("POST", "/v1/orders", "pos", json={**body, **buyer})
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def code_of(shop: ShopForTest, customer_id: str, **params: Any) -> str:
    answer = await shop.request(
        "POST", f"/v1/customers/{customer_id}/customer-code", "app", params=params
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["code"])


async def test_a_customer_code_links_the_sale_to_her_with_full_confidence(
    shop: ShopForTest,
) -> None:
    amy = await identify(shop, ("anonymous", "amy-app"))
    await consent(shop, amy)
    recorded = await sale(shop, "S-1", customer_code=await code_of(shop, amy))
    assert recorded["created"] and recorded["link_refused"] is None
    order = recorded["order"]
    assert (order["customer_id"], order["link_method"], order["link_confidence"]) == (
        amy,
        "customer_code",
        1.0,
    )
    assert (order["channel"], order["store_id"]) == ("pos", "warsaw-1")


async def test_without_analytics_consent_the_sale_is_kept_unlinked(shop: ShopForTest) -> None:
    amy = await identify(shop, ("anonymous", "amy-no-consent"))
    recorded = await sale(shop, "S-2", customer_code=await code_of(shop, amy))
    assert recorded["order"]["customer_id"] is None
    assert (recorded["order"]["link_method"], recorded["link_refused"]) == ("none", "consent")
    await consent(shop, amy, "granted")
    await consent(shop, amy, "withdrawn")
    withdrawn = await sale(shop, "S-3", customer_code=await code_of(shop, amy))
    assert withdrawn["link_refused"] == "consent"


@pytest.mark.parametrize(
    ("field", "identifier", "value", "method"),
    [
        ("loyalty_id", "loyalty_card", "LC-7781", "loyalty_id"),
        ("email", "email", "Amy@Example.com", "email_hash"),
        ("e_receipt_email", "email", "amy@example.com ", "e_receipt"),
        ("phone", "phone", "+48 601 234 567", "phone_hash"),
    ],
)
async def test_loyalty_id_and_keyed_hashes_link_with_their_method(
    shop: ShopForTest, field: str, identifier: str, value: str, method: str
) -> None:
    amy = await identify(shop, ("anonymous", f"amy-{field}"), (identifier, value))
    await consent(shop, amy)
    order = (await sale(shop, f"S-{field}", **{field: value}))["order"]
    assert (order["customer_id"], order["link_method"]) == (amy, method)
    assert 0.5 < order["link_confidence"] < 1.0


async def test_an_unknown_identifier_or_a_return_code_leaves_the_sale_unlinked(
    shop: ShopForTest,
) -> None:
    unknown = await sale(shop, "S-unknown", loyalty_id="LC-NOBODY")
    assert (unknown["order"]["customer_id"], unknown["link_refused"]) == (None, "unknown")
    issued = await shop.request(
        "POST",
        "/v1/returns",
        "web",
        json={"order_ref": "W-1", "lines": [{"line_id": "1", "sku": "TR2-38", "quantity": 1}]},
    )
    assert issued.status_code == 201, issued.text
    wrong = await sale(shop, "S-wrong-code", customer_code=issued.json()["token"])
    assert wrong["order"]["customer_id"] is None
    assert wrong["link_refused"] == "customer_code_malformed"


async def test_orders_follow_a_merge_and_go_back_with_its_split(shop: ShopForTest) -> None:
    phone = await identify(shop, ("anonymous", "split-phone"))
    laptop = await identify(shop, ("anonymous", "split-laptop"))  # younger: merged into phone
    await consent(shop, laptop)
    await sale(shop, "S-laptop", customer_code=await code_of(shop, laptop))

    async def references(customer_id: str) -> list[str]:
        listed = await shop.request("GET", f"/v1/customers/{customer_id}/orders", "web")
        assert listed.status_code == 200, listed.text
        return [order["reference"] for order in listed.json()["items"]]

    both = [{"type": "anonymous", "value": v} for v in ("split-phone", "split-laptop")]
    merged = await shop.request("POST", "/v1/identity/identify", "web", json={"identifiers": both})
    assert merged.json()["customer_id"] == phone
    assert await references(phone) == ["S-laptop"]
    assert await references(laptop) == ["S-laptop"]  # the merged id resolves to phone
    split = await shop.request("POST", f"/v1/merges/{merged.json()['merge_ids'][0]}/split")
    assert split.status_code == 200, split.text
    assert await references(laptop) == ["S-laptop"]
    assert await references(phone) == []


async def test_erasure_keeps_her_orders_for_the_books_with_nothing_leading_to_her(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await identify(shop, ("anonymous", "erase-amy"), ("email", "erase-amy@example.com"))
    await consent(shop, amy)
    await sale(shop, "S-erase", customer_code=await code_of(shop, amy))
    exported = await shop.request("POST", f"/v1/privacy/{amy}/export")
    assert [o["reference"] for o in exported.json()["order_records"]] == ["S-erase"]
    erased = await shop.request("POST", f"/v1/privacy/{amy}/erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["kept_anonymised"]["order_records"] == 1
    assert erased.json()["removed"]["customer_codes"] == 1
    assert await traces(server, shop, {amy}) == []
    kept = await shop.request("GET", "/v1/orders/S-erase", "pos")
    assert kept.json()["customer_id"] is None and kept.json()["total"] == 120.0


@pytest.mark.parametrize(
    "body",
    [
        {"reference": "B-1", "currency": "EUR", "lines": [SHOES]},  # a till sale without store
        {"reference": "B-2", "store_id": "s", "currency": "eur", "lines": [SHOES]},
        {"reference": "B-3", "store_id": "s", "currency": "EUR", "lines": []},
        {
            "reference": "B-4",
            "store_id": "s",
            "currency": "EUR",
            "lines": [{**SHOES, "unit_price": -1}],
        },
        {
            "reference": "B-5",
            "store_id": "s",
            "currency": "EUR",
            "lines": [SHOES],
            "loyalty_id": "LC-1",
            "email": "a@example.com",
        },
        {
            "reference": "B-6",
            "store_id": "s",
            "currency": "EUR",
            "lines": [SHOES],
            "placed_at": "2999-01-01T00:00:00Z",
        },
        {"reference": "B 7", "store_id": "s", "currency": "EUR", "lines": [SHOES]},
    ],
)
async def test_bad_sales_get_a_problem_and_store_nothing(
    shop: ShopForTest, body: dict[str, Any]
) -> None:
    answer = await shop.request("POST", "/v1/orders", "pos", json=body)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["type"].endswith("/validation-error")
    assert (await shop.request("GET", "/v1/orders/B-1", "pos")).status_code == 404


async def test_a_reference_reused_for_another_sale_is_a_conflict(shop: ShopForTest) -> None:
    await sale(shop, "S-twice")
    again = await sale(shop, "S-twice")
    assert again["created"] is False
    other = {"reference": "S-twice", "store_id": "x", "currency": "EUR", "lines": [SHOES]}
    answer = await shop.request("POST", "/v1/orders", "pos", json=other)
    assert answer.status_code == 409 and answer.json()["type"].endswith("/conflict")


async def test_refunds_cannot_exceed_the_order_or_take_back_more_than_was_bought(
    shop: ShopForTest,
) -> None:
    await sale(shop, "S-refund")
    too_much = await shop.request(
        "POST", "/v1/orders/S-refund/refunds", "pos", json={"refund_id": "r1", "amount": 120.01}
    )
    assert too_much.status_code == 422, too_much.text
    nothing = await shop.request(
        "POST", "/v1/orders/S-refund/refunds", "pos", json={"refund_id": "r0"}
    )
    assert nothing.status_code == 422, nothing.text
    twice = {"refund_id": "r2", "lines": [{"line_no": 1, "quantity": 2}]}
    assert (
        await shop.request("POST", "/v1/orders/S-refund/refunds", "pos", json=twice)
    ).status_code == 409
    order = (await shop.request("GET", "/v1/orders/S-refund", "pos")).json()
    assert (order["refunded"], order["lines"][0]["returned_quantity"]) == (0.0, 0)


async def test_a_web_key_cannot_issue_orders_of_another_tenant(
    server: Harness, shop: ShopForTest
) -> None:
    await sale(shop, "S-mine")
    other = await server.shop("another shop")
    assert (await other.request("GET", "/v1/orders/S-mine", "web")).status_code == 404
    pos_code = await other.request("POST", "/v1/customers/cus_x/customer-code", "pos")
    assert pos_code.status_code == 403  # a till scans codes, it does not issue them


async def test_a_store_sale_is_her_order_completed_once_in_her_timeline(
    shop: ShopForTest,
) -> None:
    amy = await identify(shop, ("anonymous", "timeline-amy"), ("loyalty_card", "LC-TL-1"))
    await consent(shop, amy)
    await sale(shop, "S-timeline", loyalty_id="LC-TL-1")
    again = await sale(shop, "S-timeline", loyalty_id="LC-TL-1")  # the till's retry
    assert not again["created"]
    own = {
        "customer_id": amy,
        "name": "order_completed",
        "properties": {"order_id": "S-timeline", "value": 120.0, "skus": ["TR2-38"]},
    }
    sent = await shop.request("POST", "/v1/events", "pos", json=own)  # the shop's own event
    assert sent.status_code == 200, sent.text
    timeline = await shop.request("GET", f"/v1/customers/{amy}/timeline", "web")
    assert timeline.status_code == 200, timeline.text
    recorded = [
        item
        for item in timeline.json()["items"]
        if item["name"] == "order_completed" and item["properties"].get("source") == "order"
    ]
    assert len(recorded) == 1
    assert recorded[0]["channel"] == "pos"
    assert recorded[0]["properties"]["order_id"] == "S-timeline"
    assert recorded[0]["properties"]["skus"] == ["TR2-38"]
    profile = await shop.request("GET", f"/v1/customers/{amy}/profile", "web")
    assert profile.json()["orders"] == {"count": 1, "total_value": 120.0}


async def test_an_unlinked_store_sale_leaves_no_event(server: Harness, shop: ShopForTest) -> None:
    await sale(shop, "S-nobody")
    async with server.database.transaction(write=False) as conn:
        found = await conn.execute(
            select(events.c.event_id).where(
                events.c.tenant_id == shop.id, events.c.name == "order_completed"
            )
        )
        assert found.first() is None


async def test_units_of_a_discounted_order_are_refunded_at_their_share_of_its_total(
    shop: ShopForTest,
) -> None:
    """Two at 50 sold for 80 (a discount on the whole order): each unit taken back by its line
    gives back 40. At 50 each, the second unit was refused (50 + 50 > 80), where the same
    return at a till went through."""
    sale = {
        "reference": "S-discount",
        "store_id": "warsaw-1",
        "currency": "EUR",
        "total": 80,
        "lines": [{"sku": "TR2-38", "quantity": 2, "unit_price": 50}],
    }
    assert (await shop.request("POST", "/v1/orders", "pos", json=sale)).status_code in (200, 201)
    for n in (1, 2):
        unit = {"refund_id": f"unit-{n}", "lines": [{"line_no": 1, "quantity": 1}]}
        answer = await shop.request("POST", "/v1/orders/S-discount/refunds", "pos", json=unit)
        assert answer.status_code in (200, 201), answer.text
        assert answer.json()["refunded"] == 40.0 * n
    order = (await shop.request("GET", "/v1/orders/S-discount", "pos")).json()
    assert (order["refunded"], order["net"], order["lines"][0]["returned_quantity"]) == (
        80.0,
        0.0,
        2,
    )
