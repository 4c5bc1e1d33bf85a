"""Staff and the customer correct a line's gift-or-self label (issue 19)."""

from __future__ import annotations

from sqlalchemy import select

from omnisdk.core.problems import ProblemType
from server_stub.storage.tables import audit_log, order_lines
from tests.server.conftest import Harness, ShopForTest


async def test_a_corrected_label_is_certain_audited_and_changes_her_buyer_type(
    server: Harness, shop: ShopForTest
) -> None:
    amy = (
        await shop.request("POST", "/v1/identity/identify", "web", json={"anonymous_id": "amy"})
    ).json()["customer_id"]
    line = {"sku": "KIDS-31", "quantity": 1, "unit_price": 40.0, "gift": False}
    sale = {"reference": "W-1", "currency": "EUR", "customer_id": amy, "lines": [line]}
    assert (await shop.request("POST", "/v1/orders", "web", json=sale)).status_code in (200, 201)
    before = (await shop.request("GET", f"/v1/customers/{amy}/profile", "web")).json()
    corrected = await shop.request(
        "PUT", "/v1/orders/W-1/lines/1/gift", "web", json={"gift": True, "by": "customer"}
    )
    assert corrected.status_code == 200, corrected.text
    after = (await shop.request("GET", f"/v1/customers/{amy}/profile", "web")).json()
    assert (before["buyer_type"], after["buyer_type"]) == ("self", "gift")
    async with server.database.transaction(write=False) as conn:
        line_of_hers = order_lines.c.tenant_id == shop.id
        stored = (
            await conn.execute(
                select(order_lines.c.gift, order_lines.c.gift_confidence).where(line_of_hers)
            )
        ).one()
        audited = select(audit_log.c.action, audit_log.c.detail).where(
            audit_log.c.tenant_id == shop.id
        )
        actions = list((await conn.execute(audited)).all())
    assert (stored.gift, stored.gift_confidence) == (True, 1.0)
    assert ("order.gift_corrected", "order W-1 line 1: gift (corrected by customer)") in actions


async def test_correcting_a_line_that_does_not_exist_is_not_found(shop: ShopForTest) -> None:
    missing = await shop.request("PUT", "/v1/orders/NOPE/lines/1/gift", json={"gift": True})
    assert missing.status_code == 404
    assert missing.json()["type"] == ProblemType.NOT_FOUND.value
    bad = await shop.request("PUT", "/v1/orders/NOPE/lines/1/gift", json={"gift": "yes"})
    assert bad.status_code == 422


async def test_gifts_stay_out_of_her_interests_and_recommendations_but_count_in_her_value(
    shop: ShopForTest,
) -> None:
    amy = (
        await shop.request("POST", "/v1/identity/identify", "web", json={"anonymous_id": "gifts"})
    ).json()["customer_id"]
    analytics = {"decisions": [{"purpose": "analytics", "status": "granted"}]}
    assert (await shop.request("POST", f"/v1/consent/{amy}", "web", json=analytics)).is_success
    shoes = {"sku": "TR2-38", "quantity": 1, "unit_price": 89.0}
    kids = {"sku": "KIDS-31", "quantity": 1, "unit_price": 40.0, "gift": True}
    sale = {"reference": "W-2", "currency": "EUR", "customer_id": amy, "lines": [shoes, kids]}
    assert (await shop.request("POST", "/v1/orders", "web", json=sale)).status_code in (200, 201)
    viewed = {"customer_id": amy, "name": "product_viewed", "properties": {"category": "running"}}
    gift_order = {
        "customer_id": amy,
        "name": "order_completed",  # an order the shop sends only as its event, a gift
        "properties": {
            "order_id": "E-9",
            "gift": True,
            "category": "toys",
            "value": 25.0,
            "skus": ["TOY-1"],
        },
    }
    for event in (viewed, gift_order):
        assert (await shop.request("POST", "/v1/events", "web", json=event)).status_code == 200

    async def profile() -> dict[str, object]:
        answer = await shop.request("GET", f"/v1/customers/{amy}/profile", "web")
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]

    seen = await profile()
    assert seen["purchased_skus"] == ["TR2-38"]  # what anchors her recommendations
    assert seen["interests"] == {"running": 1.0}
    assert seen["orders"] == {"count": 2, "total_value": 154.0}
    corrected = await shop.request(
        "PUT", "/v1/orders/W-2/lines/1/gift", "web", json={"gift": True, "by": "staff"}
    )
    assert corrected.status_code == 200, corrected.text
    kept = await shop.request(
        "PUT", "/v1/orders/W-2/lines/2/gift", "web", json={"gift": False, "by": "customer"}
    )
    assert kept.status_code == 200, kept.text
    seen = await profile()
    assert seen["purchased_skus"] == ["KIDS-31"]
    assert seen["orders"] == {"count": 2, "total_value": 154.0}


SHOE_38 = {"category": "shoes", "size": "38", "gender": "women", "age_band": "adult"}


async def labels(shop: ShopForTest, customer_id: str, reference: str) -> list[tuple[bool, float]]:
    listed = await shop.request("GET", f"/v1/customers/{customer_id}/orders", "web")
    assert listed.status_code == 200, listed.text
    [order] = [o for o in listed.json()["items"] if o["reference"] == reference]
    return [(line["gift"], line["gift_confidence"]) for line in order["lines"]]


async def test_each_line_is_labelled_when_recorded_and_a_correction_wins(
    shop: ShopForTest,
) -> None:
    amy = (
        await shop.request("POST", "/v1/identity/identify", "web", json={"anonymous_id": "lab"})
    ).json()["customer_id"]

    async def record(reference: str, *lines: dict[str, object], **order: object) -> None:
        priced = [{"quantity": 1, "unit_price": 50.0, **line} for line in lines]
        sale = {"reference": reference, "currency": "EUR", "customer_id": amy, "lines": priced}
        answer = await shop.request("POST", "/v1/orders", "web", json={**sale, **order})
        assert answer.status_code in (200, 201), answer.text

    for n in range(3):  # her own history: women's shoes in 38
        await record(f"H-{n}", {"sku": f"SH-{n}", **SHOE_38})
    assert await labels(shop, amy, "H-0") == [(False, 0.85)]  # no history yet: the prior
    mixed = (
        {"sku": "KIDS-31", "category": "shoes", "size": "31", "age_band": "kids"},
        {"sku": "SH-9", **SHOE_38},
        {"sku": "BOOK-1", "category": "books", "gift": True},
        {"sku": "CAP-1", "gift": False, "gift_confidence": 0.6},  # the shop's own label
    )
    await record("L-1", *mixed)
    kids, usual, wrapped, told = await labels(shop, amy, "L-1")
    assert kids[0] is True and 0.5 < kids[1] < 0.98  # kids' size and age band, her category
    assert usual[0] is False and usual[1] > 0.9
    assert wrapped == (True, 0.98) and told == (False, 0.6)
    await record("L-2", {"sku": "BOOK-2", "category": "books"}, ship_to_other_name=True)
    assert (await labels(shop, amy, "L-2"))[0][0] is True
    corrected = await shop.request(
        "PUT", "/v1/orders/L-1/lines/1/gift", "web", json={"gift": False, "by": "customer"}
    )
    assert corrected.status_code == 200, corrected.text
    await record("L-1", *mixed)  # sent again: recorded once, her correction stands
    assert (await labels(shop, amy, "L-1"))[0] == (False, 1.0)
