"""A write asked for twice, one after the other or at the same moment on two connections, is
made once and audited once: revoking a key, a return code or an order's codes, removing a
webhook endpoint, correcting a line's gift label. The second asking answers as the first did
and changes nothing (before, each asking wrote its own audit entry, and two at once both
wrote the change)."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel
from server_stub.services import gifts
from server_stub.services import keys as key_store
from server_stub.storage.tables import audit_log
from tests.server.conftest import Harness, ShopForTest
from tests.server.interleave import interleaved

SHOES = [{"line_id": "1", "sku": "TR2-38", "name": "Trail shoe", "quantity": 1, "unit_price": 89.0}]


async def _audited(server: Harness, shop: ShopForTest) -> Counter[str]:
    async with server.database.transaction(write=False) as conn:
        actions = await conn.execute(
            select(audit_log.c.action).where(audit_log.c.tenant_id == shop.id)
        )
        return Counter(actions.scalars())


async def _sale(shop: ShopForTest, reference: str) -> None:
    line = {"sku": "KIDS-31", "quantity": 1, "unit_price": 40.0, "gift": False}
    sale = {"reference": reference, "currency": "EUR", "lines": [line]}
    answer = await shop.request("POST", "/v1/orders", "web", json=sale)
    assert answer.status_code in (200, 201), answer.text


async def test_asking_twice_writes_and_audits_once(server: Harness, shop: ShopForTest) -> None:
    made = await shop.request("POST", "/v1/keys", json={"channel": "web", "name": "spare"})
    assert made.status_code == 201, made.text
    key_id = made.json()["key_id"]
    body = {"order_ref": "R-1", "lines": SHOES, "return_window_days": 30, "currency": "EUR"}
    code = await shop.request("POST", "/v1/returns", "web", json=body)
    assert code.status_code == 201, code.text
    hook = await shop.request(
        "POST", "/v1/alerts/webhooks", json={"url": "https://hooks.example.com/omnisdk"}
    )
    assert hook.status_code == 201, hook.text
    await _sale(shop, "W-1")
    asks = [
        ("DELETE", f"/v1/keys/{key_id}", None),
        ("POST", f"/v1/returns/{code.json()['token_id']}/revoke", None),
        ("POST", "/v1/returns/orders/R-1/revoke", None),
        ("DELETE", f"/v1/alerts/webhooks/{hook.json()['id']}", None),
        ("PUT", "/v1/orders/W-1/lines/1/gift", {"gift": True, "by": "staff"}),
    ]
    for method, path, json in asks:
        first = await shop.request(method, path, json=json)
        again = await shop.request(method, path, json=json)
        assert first.status_code == again.status_code == 200, (path, again.text)
    audited = await _audited(server, shop)
    for action in (
        "key.revoke",
        "return.revoke_code",
        "return.revoke_order",
        "webhook.remove",
        "order.gift_corrected",
    ):
        assert audited[action] == 1, (action, audited)


async def test_asking_twice_at_once_writes_and_audits_once(
    server: Harness, shop: ShopForTest
) -> None:
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two writes cannot overlap")
    made = await shop.request("POST", "/v1/keys", json={"channel": "web", "name": "spare"})
    key_id = made.json()["key_id"]
    await _sale(shop, "W-2")

    async def revoke(conn: AsyncConnection) -> bool:
        key, revoked = await key_store.revoke(conn, shop.id, key_id)
        assert key is not None and key.revoked_at is not None and key.channel is Channel.WEB
        return revoked

    assert await interleaved(server, revoke, revoke) == [True, False]

    async def correct(conn: AsyncConnection) -> object:
        return await gifts.correct(conn, shop.id, "W-2", 1, True, by="staff", actor_key_id=None)

    await interleaved(server, correct, correct)
    audited = await _audited(server, shop)
    assert (audited["order.gift_corrected"], audited["key.revoke"]) == (1, 0)
