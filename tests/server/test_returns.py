"""Return codes on the server: issue, verify, redeem exactly once, revoke, rotate keys."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from omnisdk.core import tokens
from omnisdk.core.problems import ProblemType
from omnisdk.models import PublishedKeys
from server_stub.sealing import Sealer
from server_stub.storage.tables import signing_keys
from tests.server.conftest import TEST_SECRET_KEY, Harness, ShopForTest

SHOES = [
    {
        "line_id": "1",
        "sku": "TR2-38",
        "quantity": 2,
        "name": "Trail runner, size 38",
        "unit_price": 89.0,
    },
    {"line_id": "2", "sku": "SOCK-3P", "quantity": 1, "name": "Socks, 3 pairs", "unit_price": 12.5},
]


async def issue(shop: ShopForTest, order_ref: str = "1042", **extra: Any) -> dict[str, Any]:
    body = {
        "order_ref": order_ref,
        "lines": SHOES,
        "return_window_days": 30,
        "refund_methods": ["card", "voucher"],
        "currency": "EUR",
        **extra,
    }
    response = await shop.request("POST", "/v1/returns", "web", json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def redeem(
    shop: ShopForTest, token: str, lines: dict[str, int], tx: str, **extra: Any
) -> Any:
    body = {
        "token": token,
        "lines": [{"line_id": k, "quantity": v} for k, v in lines.items()],
        "till_transaction_id": tx,
        "store_id": "berlin-1",
        "refund_method": "card",
        **extra,
    }
    return await shop.request("POST", "/v1/returns/redeem", "pos", json=body)


async def published(shop: ShopForTest) -> PublishedKeys:
    return PublishedKeys.model_validate(
        (await shop.request("GET", "/v1/returns/keys", "pos")).json()
    )


async def test_an_issued_code_verifies_offline_with_the_published_keys(shop: ShopForTest) -> None:
    issued = await issue(shop)
    keys = await published(shop)
    result = tokens.verify(
        issued["token"], keys.verification_keys(), issuer=shop.id, now=datetime.now(UTC)
    )
    assert result.valid and result.claims is not None
    assert [(line.line_id, line.sku, line.quantity) for line in result.claims.lines] == [
        ("1", "TR2-38", 2),
        ("2", "SOCK-3P", 1),
    ]
    assert result.claims.refund_methods == ("card", "voucher")
    assert "1042" in result.message


async def test_qr_images_are_served_and_cached(server: Harness, shop: ShopForTest) -> None:
    issued = await issue(shop)
    png = await shop.request("GET", issued["qr_png_path"], "web")
    again = await shop.request("GET", issued["qr_png_path"], "web")
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert again.content == png.content
    printed = await shop.request("GET", issued["qr_png_path"], "web", params={"medium": "print"})
    assert printed.content != png.content
    svg = await shop.request("GET", issued["qr_svg_path"], "web")
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert len(server.app.state.runtime.qr_images) >= 3


async def test_return_one_of_two_then_the_other_then_nothing(shop: ShopForTest) -> None:
    token = (await issue(shop))["token"]
    first = await redeem(shop, token, {"1": 1}, "till-7:0001")
    assert first.status_code == 200, first.text
    assert first.json()["value"] == 89.0
    status = (await shop.request("POST", "/v1/returns/status", "pos", json={"token": token})).json()
    assert {line["line_id"]: line["remaining"] for line in status["lines"]} == {"1": 1, "2": 1}
    assert status["redemptions"][0]["store_id"] == "berlin-1"

    replay = await redeem(shop, token, {"1": 1}, "till-7:0001")
    assert replay.json()["redemption_id"] == first.json()["redemption_id"]
    second = await redeem(shop, token, {"1": 1}, "till-7:0002")
    assert second.status_code == 200
    third = await redeem(shop, token, {"1": 1}, "till-9:0001")
    assert third.status_code == 409
    problem = third.json()
    assert problem["type"] == ProblemType.ALREADY_RETURNED
    assert problem["remaining"] == 0
    assert "berlin-1" in problem["detail"]


async def test_a_till_transaction_id_cannot_return_something_else(shop: ShopForTest) -> None:
    token = (await issue(shop))["token"]
    assert (await redeem(shop, token, {"1": 1}, "till-1:77")).status_code == 200
    other = await redeem(shop, token, {"2": 1}, "till-1:77")
    assert other.status_code == 409
    assert other.json()["type"] == ProblemType.CONFLICT


async def test_two_tills_racing_for_the_last_unit_only_one_gets_it(shop: ShopForTest) -> None:
    token = (await issue(shop, order_ref="race-1"))["token"]
    assert (await redeem(shop, token, {"1": 1}, "till-1:1")).status_code == 200
    answers = await asyncio.gather(
        *(redeem(shop, token, {"1": 1}, f"till-{n}:race") for n in range(2, 8))
    )
    assert sorted(a.status_code for a in answers) == [200, 409, 409, 409, 409, 409]
    status = (await shop.request("POST", "/v1/returns/status", "pos", json={"token": token})).json()
    assert next(line for line in status["lines"] if line["line_id"] == "1")["returned"] == 2


async def test_bad_redemptions_are_refused_and_change_nothing(shop: ShopForTest) -> None:
    token = (await issue(shop))["token"]
    cases = [
        ({"1": 1}, {"refund_method": "cash"}, "card, voucher"),
        ({"9": 1}, {}, "not on this return code"),
        ({"1": 3}, {}, "at most 2"),
    ]
    for lines, extra, words in cases:
        response = await redeem(shop, token, lines, f"bad-{words}", **extra)
        assert response.status_code == 422, response.text
        assert words in response.json()["detail"]
    status = (await shop.request("POST", "/v1/returns/status", "pos", json={"token": token})).json()
    assert all(line["returned"] == 0 for line in status["lines"])


async def test_an_altered_code_is_refused_with_a_reason_for_the_clerk(shop: ShopForTest) -> None:
    token = (await issue(shop))["token"]
    position = len(token) - 10
    altered = token[:position] + ("A" if token[position] != "A" else "B") + token[position + 1 :]
    response = await redeem(shop, altered, {"1": 1}, "tampered")
    assert response.status_code == 422
    assert response.json()["type"] == ProblemType.RETURN_CODE_INVALID
    assert response.json()["reason"] in {"bad_signature", "malformed"}


async def test_another_shops_code_is_not_a_code_of_this_shop(server: Harness) -> None:
    ours, theirs = await server.shop("ours"), await server.shop("theirs")
    token = (await issue(theirs))["token"]
    response = await redeem(ours, token, {"1": 1}, "x")
    assert response.status_code == 422
    assert response.json()["reason"] == "wrong_shop"
    assert "not a return code of this shop" in response.json()["detail"]


async def test_revoked_codes_and_orders_are_refused(shop: ShopForTest) -> None:
    issued = await issue(shop, order_ref="rev-1")
    assert (
        await shop.request("POST", f"/v1/returns/{issued['token_id']}/revoke")
    ).status_code == 200
    refused = await redeem(shop, issued["token"], {"1": 1}, "r1")
    assert refused.status_code == 409 and refused.json()["type"] == ProblemType.RETURN_REVOKED
    fresh = await issue(shop, order_ref="rev-1")  # a new code for the same order works
    assert (await redeem(shop, fresh["token"], {"1": 1}, "r2")).status_code == 200
    assert (await shop.request("POST", "/v1/returns/orders/rev-1/revoke")).status_code == 200
    assert (await redeem(shop, fresh["token"], {"2": 1}, "r3")).status_code == 409
    again = await shop.request(
        "POST", "/v1/returns", "web", json={"order_ref": "rev-1", "lines": SHOES}
    )
    assert again.status_code == 409


async def test_a_reissued_code_carries_only_what_remains(shop: ShopForTest) -> None:
    first = await issue(shop, order_ref="re-1")
    await redeem(shop, first["token"], {"1": 2}, "re:1")
    second = await issue(shop, order_ref="re-1")
    claims = tokens.decode_unverified(second["token"])
    assert [(line.line_id, line.quantity) for line in claims.lines] == [("2", 1)]
    changed = await shop.request(
        "POST", "/v1/returns", "web", json={"order_ref": "re-1", "lines": [SHOES[0]]}
    )
    assert changed.status_code == 409


async def test_rotation_keeps_old_codes_until_their_key_is_retired(shop: ShopForTest) -> None:
    old = await issue(shop, order_ref="rot-1")
    rotated = await shop.request("POST", "/v1/returns/keys/rotate")
    assert rotated.status_code == 200
    keys = rotated.json()["keys"]
    assert len(keys) == 2 and keys[0]["retires_at"] is not None and keys[1]["retires_at"] is None
    new = await issue(shop, order_ref="rot-2")
    assert tokens.decode_unverified(new["token"]) != tokens.decode_unverified(old["token"])
    assert (await redeem(shop, old["token"], {"1": 1}, "rot:1")).status_code == 200
    retired = await shop.request("POST", f"/v1/returns/keys/{keys[0]['kid']}/retire")
    assert retired.status_code == 200
    refused = await redeem(shop, old["token"], {"1": 1}, "rot:2")
    assert refused.status_code == 422 and refused.json()["reason"] == "retired_key"
    assert (await redeem(shop, new["token"], {"1": 1}, "rot:3")).status_code == 200


async def test_channels_may_only_do_their_part(shop: ShopForTest) -> None:
    token = (await issue(shop))["token"]
    body = {
        "token": token,
        "lines": [{"line_id": "1", "quantity": 1}],
        "till_transaction_id": "w",
        "store_id": "web",
        "refund_method": "card",
    }
    assert (await shop.request("POST", "/v1/returns/redeem", "web", json=body)).status_code == 403
    issue_body = {"order_ref": "pos-1", "lines": SHOES}
    assert (await shop.request("POST", "/v1/returns", "pos", json=issue_body)).status_code == 403


async def test_a_redemption_shows_on_the_customers_profile(shop: ShopForTest) -> None:
    customer = (
        await shop.request("POST", "/v1/identity/identify", json={"email": "amy@example.com"})
    ).json()
    token = (await issue(shop, order_ref="amy-1", customer_id=customer["customer_id"]))["token"]
    assert (await redeem(shop, token, {"1": 1}, "amy:1")).status_code == 200
    profile = (await shop.request("GET", f"/v1/customers/{customer['customer_id']}/profile")).json()
    event = profile["recent_events"][0]
    assert event["name"] == "return_completed" and event["channel"] == "pos"
    assert event["properties"]["store_id"] == "berlin-1" and event["properties"]["value"] == 89.0


async def test_signing_keys_are_sealed_at_rest(server: Harness, shop: ShopForTest) -> None:
    await issue(shop)
    async with server.database.transaction(write=False) as conn:
        row = (
            await conn.execute(select(signing_keys).where(signing_keys.c.tenant_id == shop.id))
        ).one()
    sealer = Sealer(base64.b64decode(TEST_SECRET_KEY))
    raw = sealer.unseal(row.sealed_private_key, f"signing-key:{shop.id}:{row.kid}")
    assert len(raw) == 32 and raw not in bytes(row.sealed_private_key)
    assert tokens.key_id(bytes(row.public_key)).hex() == row.kid


async def test_issue_validates_its_input(shop: ShopForTest) -> None:
    bad = [
        {"order_ref": "x", "lines": []},
        {"order_ref": "x", "lines": [dict(SHOES[0], quantity=0)]},
        {"order_ref": "x", "lines": SHOES, "refund_methods": ["bitcoin"]},
        {"order_ref": "x", "lines": SHOES, "return_window_days": 0},
        {"order_ref": "has space", "lines": SHOES},
        {"order_ref": "x", "lines": [SHOES[0], SHOES[0]]},
    ]
    for body in bad:
        response = await shop.request("POST", "/v1/returns", "web", json=body)
        assert response.status_code == 422, body
    missing = await shop.request(
        "POST",
        "/v1/returns",
        "web",
        json={"order_ref": "x", "lines": SHOES, "customer_id": "cus_nobody"},
    )
    assert missing.status_code == 404


async def test_expiry_is_checked_against_the_clock(shop: ShopForTest) -> None:
    token = (await issue(shop, return_window_days=1))["token"]
    keys = (await published(shop)).verification_keys()
    later = datetime.now(UTC) + timedelta(days=2)
    result = tokens.verify(token, keys, issuer=shop.id, now=later)
    assert result.status is tokens.Status.EXPIRED
