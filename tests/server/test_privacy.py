"""Export and erasure: everything about a person, across every linked identifier, on both DBs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import null, select, update

from omnisdk.core.channels import Channel, Scope
from server_stub.storage.tables import audit_log, idempotency_records, identifiers, metadata
from tests.server.conftest import Harness, ShopForTest

EMAIL = "amy.erasable@example.com"
PHONE = "+4915112345678"


@dataclass
class Amy:
    customer_id: str
    merged_id: str
    needles: set[str]  # every value that would betray her if found anywhere
    return_code: str


async def identify(shop: ShopForTest, *identifiers: tuple[str, str], **headers: str) -> Any:
    body = {"identifiers": [{"type": t, "value": v} for t, v in identifiers]}
    response = await shop.request(
        "POST", "/v1/identity/identify", "web", json=body, headers=headers
    )
    assert response.status_code == 200, response.text
    return response.json()


async def amy_everywhere(server: Harness, shop: ShopForTest) -> Amy:
    """Amy with two devices merged, events, consent, a cart, a session, a note and a return."""
    phone = (await identify(shop, ("anonymous", "amy-phone-erasable")))["customer_id"]
    laptop = (await identify(shop, ("anonymous", "amy-laptop-erasable")))["customer_id"]
    for who in (phone, laptop):
        decisions = [
            {"purpose": "analytics", "status": "granted"},
            {"purpose": "marketing:sms", "status": "granted"},
        ]
        answer = await shop.request(
            "POST", f"/v1/consent/{who}", "web", json={"decisions": decisions}
        )
        assert answer.status_code == 200, answer.text
    await shop.request(
        "POST",
        f"/v1/consent/{phone}",
        "app",
        json={"decisions": [{"purpose": "marketing:sms", "status": "withdrawn"}]},
    )
    for who, name in ((phone, "campaign_scanned"), (laptop, "product_viewed")):
        event = {"customer_id": who, "name": name, "properties": {"sku": "TR2"}}
        assert (await shop.request("POST", "/v1/events", "web", json=event)).is_success
    await identify(
        shop,
        ("anonymous", "amy-phone-erasable"),
        ("email", EMAIL),
        ("phone", PHONE),
        ("customer_ref", "CRM-ERASE-1"),
        **{"Idempotency-Key": "identify-amy-1"},
    )
    merged = await identify(shop, ("anonymous", "amy-laptop-erasable"), ("email", EMAIL))
    assert merged["customer_id"] == phone and merged["merged"]
    op = {"op_id": "l:1", "type": "add", "line": {"sku": "TR2"}, "delta": 1}
    assert (
        await shop.request("POST", f"/v1/carts/{phone}/ops", "web", json={"ops": [op]})
    ).is_success
    assert (
        await shop.request("POST", f"/v1/sessions/{phone}", "web", json={"entries": {"p": "/x"}})
    ).is_success
    note = {
        "department": "service",
        "author": "Kim",
        "text": "prefers size 38",
        "visibility": "customer",
    }
    internal = {"department": "finance", "author": "Ola", "text": "chargeback in 2025"}
    assert (
        await shop.request("POST", f"/v1/customers/{phone}/annotations", "web", json=internal)
    ).status_code == 201
    assert (
        await shop.request("POST", f"/v1/customers/{phone}/annotations", "web", json=note)
    ).is_success
    order = {
        "order_ref": "ERASE-1042",
        "customer_id": phone,
        "lines": [{"line_id": "1", "sku": "TR2", "quantity": 1, "unit_price": 89.0}],
    }
    issued = await shop.request("POST", "/v1/returns", "web", json=order)
    assert issued.is_success, issued.text

    async with server.database.transaction(write=False) as conn:
        stored = await conn.execute(
            select(identifiers.c.value).where(
                identifiers.c.tenant_id == shop.id, identifiers.c.customer_id == phone
            )
        )
        values = {row.value for row in stored}
    assert len(values) == 5  # two devices, the e-mail and phone hashes, the CRM ref
    needles = {phone, laptop, EMAIL, PHONE, "4915112345678", *values}
    return Amy(phone, laptop, needles, issued.json()["token"])


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return raw.decode("utf-8", "ignore") + raw.hex()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)


async def traces(server: Harness, shop: ShopForTest, needles: set[str]) -> list[str]:
    """Every (table, column) of the tenant's rows holding one of `needles`: all tables."""
    found = []
    async with server.database.transaction(write=False) as conn:
        for table in metadata.sorted_tables:
            owner = table.c.get("tenant_id", table.c.get("id"))
            rows = await conn.execute(select(table).where(owner == shop.id))
            for row in rows:
                for column, value in row._mapping.items():
                    text = _text(value).lower()
                    found += [f"{table.name}.{column}: {n}" for n in needles if n.lower() in text]
    return found


async def test_export_holds_everything_across_linked_identifiers(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await amy_everywhere(server, shop)
    response = await shop.request("POST", f"/v1/privacy/{amy.merged_id}/export")  # any old id
    assert response.status_code == 200, response.text
    export = response.json()
    assert export["customer_id"] == amy.customer_id
    assert set(export["customer_ids"]) == {amy.customer_id, amy.merged_id}
    assert {e["name"] for e in export["events"]} == {"campaign_scanned", "product_viewed"}
    assert len(export["identifiers"]) == 5
    assert {d["purpose"] for d in export["consent"]} == {"analytics", "marketing:sms"}
    assert export["cart"] is not None and export["session"] is not None
    # Only what departments meant her to see, without who wrote it (issue 19).
    assert [note["text"] for note in export["annotations"]] == ["prefers size 38"]
    assert "author" not in export["annotations"][0]
    assert export["returns"][0]["order_ref"] == "ERASE-1042"
    assert export["returns"][0]["lines"][0]["sku"] == "TR2"
    assert len(export["merges"]) == 1
    assert EMAIL not in response.text  # only its keyed hash is held, so only that is exported


async def test_erasure_leaves_no_trace_and_keeps_legal_records_anonymised(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await amy_everywhere(server, shop)
    bystander = (await identify(shop, ("anonymous", "someone-else"), ("email", "b@example.com")))[
        "customer_id"
    ]
    assert (await shop.request("POST", f"/v1/privacy/{amy.customer_id}/export")).is_success
    assert await traces(server, shop, amy.needles)  # the scan does find her before

    response = await shop.request("POST", f"/v1/privacy/{amy.merged_id}/erase")
    assert response.status_code == 200, response.text
    receipt = response.json()
    assert receipt["customers"] == 2
    assert receipt["kept_anonymised"] == {
        "consent_refusals": 1,
        "return_orders": 1,
        "order_records": 0,
    }

    assert await traces(server, shop, amy.needles) == []
    for kind, value in [
        ("email", EMAIL),
        ("anonymous", "amy-laptop-erasable"),
        ("customer_ref", "CRM-ERASE-1"),
    ]:
        resolved = await shop.request(
            "POST", "/v1/identity/resolve", json={"type": kind, "value": value}
        )
        assert resolved.status_code == 404, resolved.text
    for old in (amy.customer_id, amy.merged_id):
        assert (await shop.request("GET", f"/v1/customers/{old}/profile")).status_code == 404
    # The accounting record stays, for no one; the return code still works at the till.
    status = await shop.request(
        "POST", "/v1/returns/status", "pos", json={"token": amy.return_code}
    )
    assert status.status_code == 200, status.text
    # The proof of her withdrawal stays, under the erasure's id.
    erased = await shop.request("GET", f"/v1/consent/{receipt['erasure_id']}/history")
    assert erased.status_code == 404  # not a customer any more: kept only as a record
    # Others are untouched, and the audit log says what happened without naming her.
    assert (await shop.request("GET", f"/v1/customers/{bystander}/profile")).is_success
    async with server.database.transaction(write=False) as conn:
        actions = [
            (row.action, row.subject)
            for row in await conn.execute(
                select(audit_log).where(audit_log.c.tenant_id == shop.id).order_by(audit_log.c.id)
            )
        ]
    assert actions[-2:] == [
        ("privacy.export", receipt["erasure_id"]),
        ("privacy.erase", receipt["erasure_id"]),
    ]


async def test_erasure_deletes_the_stored_answers_naming_her_and_no_others(
    server: Harness, shop: ShopForTest
) -> None:
    """Answers kept for replaying idempotent requests are found by the customer ids their
    bodies name; one stored by a server older than migration 0031 (no names kept) by its
    body."""
    amy = (await identify(shop, ("anonymous", "amy-kept-1"), **{"Idempotency-Key": "amy-1"}))[
        "customer_id"
    ]
    decisions = {"decisions": [{"purpose": "analytics", "status": "granted"}]}
    answer = await shop.request(
        "POST", f"/v1/consent/{amy}", "web", json=decisions, headers={"Idempotency-Key": "amy-2"}
    )
    assert answer.status_code == 200, answer.text
    other = (await identify(shop, ("anonymous", "bo-kept"), **{"Idempotency-Key": "bo-1"}))[
        "customer_id"
    ]
    records = idempotency_records.c
    async with server.database.transaction(write=True) as conn:
        named = dict((await conn.execute(select(records.idempotency_key, records.subjects))).all())
        await conn.execute(  # as a server older than 0031 stored it
            update(idempotency_records)
            .where(records.tenant_id == shop.id, records.idempotency_key == "amy-2")
            .values(subjects=null())  # SQL NULL, as a server that knew no such column left it
        )
    assert {key: named[key] for key in ("amy-1", "amy-2", "bo-1")} == {
        "amy-1": [amy],
        "amy-2": [amy],
        "bo-1": [other],
    }

    erased = await shop.request("POST", f"/v1/privacy/{amy}/erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["removed"]["stored_answers"] == 2
    async with server.database.transaction(write=False) as conn:
        left = set(
            (
                await conn.execute(
                    select(records.idempotency_key).where(records.tenant_id == shop.id)
                )
            ).scalars()
        )
    assert {"amy-1", "amy-2"}.isdisjoint(left) and "bo-1" in left


async def test_only_admin_keys_export_or_erase_and_never_across_tenants(
    server: Harness, shop: ShopForTest
) -> None:
    amy = (await identify(shop, ("anonymous", "amy-x")))["customer_id"]
    for channel in (Channel.WEB, Channel.APP, Channel.POS):
        for action in ("export", "erase"):
            refused = await shop.request("POST", f"/v1/privacy/{amy}/{action}", channel)
            assert refused.status_code == 403, (channel, action)
    narrow = await server.key_with_scopes(shop, Channel.ADMIN, {Scope.PRIVACY_EXPORT})
    erase = await shop.http.post(
        f"/v1/privacy/{amy}/erase", headers={"Authorization": f"Bearer {narrow}"}
    )
    assert erase.status_code == 403
    other = await server.shop("another shop")
    assert (await other.request("POST", f"/v1/privacy/{amy}/erase")).status_code == 404
    assert (await shop.request("GET", f"/v1/customers/{amy}/profile")).is_success
