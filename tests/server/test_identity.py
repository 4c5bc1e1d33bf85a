"""Identity graph on the server: linking, merging, guards against wrong merges, splitting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from omnisdk.core.problems import ProblemType
from server_stub.storage.tables import customers, identifiers
from tests.server.conftest import Harness, ShopForTest


async def identify(shop: ShopForTest, channel: str = "web", **body: Any) -> dict[str, Any]:
    response = await shop.request("POST", "/v1/identity/identify", channel, json=body)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def resolve(shop: ShopForTest, type: str, value: str) -> str | None:
    response = await shop.request(
        "POST", "/v1/identity/resolve", json={"type": type, "value": value}
    )
    return response.json()["customer_id"] if response.status_code == 200 else None


async def profile(shop: ShopForTest, customer_id: str) -> dict[str, Any]:
    response = await shop.request("GET", f"/v1/customers/{customer_id}/profile")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_first_identify_creates_a_customer_and_repeats_find_it(shop: ShopForTest) -> None:
    first = await identify(shop, anonymous_id="phone-1")
    again = await identify(shop, anonymous_id="phone-1")
    assert first["created"] and not again["created"]
    assert first["customer_id"] == again["customer_id"]
    assert not again["merged"]


async def test_email_is_normalised_and_stored_only_as_a_keyed_hash(
    server: Harness, shop: ShopForTest
) -> None:
    result = await identify(shop, anonymous_id="phone-1", email="  Amy.Doe@Example.COM ")
    assert await resolve(shop, "email", "amy.doe@example.com") == result["customer_id"]
    shown = await profile(shop, result["customer_id"])
    assert "amy" not in str(shown).lower()
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(identifiers.c.value).where(identifiers.c.tenant_id == shop.id)
        )
        stored = [row.value for row in rows]
    assert len(stored) == 2
    assert not any("amy" in value.lower() for value in stored)


async def test_the_same_email_in_two_shops_is_two_different_hashes(server: Harness) -> None:
    a, b = await server.shop("a"), await server.shop("b")
    await identify(a, email="amy@example.com")
    await identify(b, email="amy@example.com")
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(identifiers.c.value).where(
                identifiers.c.tenant_id.in_([a.id, b.id]), identifiers.c.type == "email"
            )
        )
        hashes = [row.value for row in rows]
    assert len(set(hashes)) == 2


async def test_phone_is_normalised_to_e164(shop: ShopForTest) -> None:
    result = await identify(shop, phone="+49 (30) 1234-5678")
    assert await resolve(shop, "phone", "0049 30 12345678") == result["customer_id"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("anonymous_id", "undefined"),
        ("anonymous_id", "0"),
        ("anonymous_id", "-1"),
        ("anonymous_id", " NULL "),
        ("anonymous_id", "anonymous"),
        ("customer_ref", ""),
        ("email", "not-an-address"),
        ("phone", "12345"),
        ("phone", "030 1234567"),
    ],
)
async def test_junk_and_malformed_identifiers_are_refused(
    server: Harness, shop: ShopForTest, field: str, value: str
) -> None:
    response = await shop.request("POST", "/v1/identity/identify", json={field: value})
    assert response.status_code == 422
    assert response.json()["type"] == ProblemType.INVALID_IDENTIFIER
    async with server.database.transaction(write=False) as conn:
        stored = (
            await conn.execute(select(customers).where(customers.c.tenant_id == shop.id))
        ).all()
    assert stored == []


async def test_unknown_identifier_type_is_refused(shop: ShopForTest) -> None:
    response = await shop.request(
        "POST", "/v1/identity/identify", json={"identifiers": [{"type": "passport", "value": "X1"}]}
    )
    assert response.status_code == 422


async def test_tenant_junk_patterns_are_refused(shop: ShopForTest) -> None:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["identity"]["junk_patterns"] = [r"pos-terminal-\d+"]
    assert (await shop.request("PUT", "/v1/tenant/settings", json=settings)).status_code == 200
    response = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "POS-terminal-7"}
    )
    assert response.status_code == 422


async def test_invalid_junk_pattern_is_refused_when_saved(shop: ShopForTest) -> None:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["identity"]["junk_patterns"] = ["(unclosed"]
    response = await shop.request("PUT", "/v1/tenant/settings", json=settings)
    assert response.status_code == 422
    assert "(unclosed" in response.json()["detail"]


async def test_two_devices_become_one_customer_when_they_share_an_email(shop: ShopForTest) -> None:
    phone = await identify(shop, "app", anonymous_id="phone-1", email="amy@example.com")
    laptop = await identify(shop, "web", anonymous_id="laptop-1")
    assert laptop["customer_id"] != phone["customer_id"]
    joined = await identify(shop, "web", anonymous_id="laptop-1", email="amy@example.com")
    assert joined["merged"]
    assert joined["customer_id"] == phone["customer_id"]  # the older customer survives
    assert joined["merged_customer_ids"] == [laptop["customer_id"]]
    assert await resolve(shop, "anonymous", "laptop-1") == phone["customer_id"]
    via_old_id = await profile(shop, laptop["customer_id"])
    assert via_old_id["customer_id"] == phone["customer_id"]
    assert laptop["customer_id"] in via_old_id["previous_ids"]
    merges = (await shop.request("GET", f"/v1/customers/{phone['customer_id']}/merges")).json()
    assert merges["items"][0]["cause"] == "anonymous:laptop-1"
    assert merges["items"][0]["channel"] == "web"


async def test_a_second_customer_ref_is_refused_and_nothing_changes(shop: ShopForTest) -> None:
    alice = await identify(shop, customer_ref="acct-1", email="alice@example.com")
    bob = await identify(shop, customer_ref="acct-2", anonymous_id="bob-phone")
    response = await shop.request(
        "POST",
        "/v1/identity/identify",
        json={"anonymous_id": "bob-phone", "email": "alice@example.com"},
    )
    assert response.status_code == 409
    assert response.json()["type"] == ProblemType.IDENTITY_CONFLICT
    assert await resolve(shop, "anonymous", "bob-phone") == bob["customer_id"]
    assert await resolve(shop, "email", "alice@example.com") == alice["customer_id"]
    again = await shop.request(
        "POST",
        "/v1/identity/identify",
        json={"customer_ref": "acct-9", "email": "alice@example.com"},
    )
    assert again.status_code == 409


async def test_shared_identifiers_never_merge(shop: ShopForTest) -> None:
    marked = await shop.request(
        "POST", "/v1/identity/shared", json={"type": "anonymous", "value": "store-tablet-1"}
    )
    assert marked.status_code == 200
    amy = await identify(shop, anonymous_id="store-tablet-1", email="amy@example.com")
    bob = await identify(shop, anonymous_id="store-tablet-1", email="bob@example.com")
    assert amy["customer_id"] != bob["customer_id"]
    assert not bob["merged"]
    assert await resolve(shop, "anonymous", "store-tablet-1") is None


async def test_identifier_flagged_shared_in_identify_is_not_linked(shop: ShopForTest) -> None:
    body = {
        "email": "amy@example.com",
        "identifiers": [{"type": "anonymous", "value": "kiosk", "shared": True}],
    }
    amy = (await shop.request("POST", "/v1/identity/identify", json=body)).json()
    body["email"] = "bob@example.com"
    bob = (await shop.request("POST", "/v1/identity/identify", json=body)).json()
    assert amy["customer_id"] != bob["customer_id"]


async def test_per_type_limit_drops_the_oldest_link(shop: ShopForTest) -> None:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["identity"]["limits"]["email"] = 2
    await shop.request("PUT", "/v1/tenant/settings", json=settings)
    first = await identify(shop, customer_ref="acct-7", email="one@example.com")
    await identify(shop, customer_ref="acct-7", email="two@example.com")
    third = await identify(shop, customer_ref="acct-7", email="three@example.com")
    assert len(third["dropped_identifiers"]) == 1
    assert third["dropped_identifiers"][0].startswith("email:#")
    assert await resolve(shop, "email", "one@example.com") is None
    assert await resolve(shop, "email", "three@example.com") == first["customer_id"]


async def test_a_lowered_limit_applies_at_her_next_new_link_not_at_every_sign_in(
    shop: ShopForTest,
) -> None:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    emails = ["one@example.com", "two@example.com", "three@example.com"]
    for email in emails:
        await identify(shop, customer_ref="acct-8", email=email)
    settings["identity"]["limits"]["email"] = 2
    await shop.request("PUT", "/v1/tenant/settings", json=settings)
    again = await identify(shop, customer_ref="acct-8", email="two@example.com")
    assert again["dropped_identifiers"] == []  # a sign-in that links nothing changes nothing
    assert [await resolve(shop, "email", email) for email in emails] == [again["customer_id"]] * 3
    linked = await identify(shop, customer_ref="acct-8", email="four@example.com")
    assert len(linked["dropped_identifiers"]) == 2  # back within the limit, oldest first
    held = [await resolve(shop, "email", email) for email in [*emails, "four@example.com"]]
    assert held == [None, None, again["customer_id"], again["customer_id"]]


async def test_traits_may_not_carry_contact_details(shop: ShopForTest) -> None:
    response = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "p", "traits": {"Email": "a@b.co"}}
    )
    assert response.status_code == 422
    assert "identifiers" in response.json()["detail"]


async def test_split_restores_both_customers(shop: ShopForTest) -> None:
    phone = await identify(
        shop, "app", anonymous_id="phone-1", email="amy@example.com", traits={"tier": "gold"}
    )
    laptop = await identify(shop, "web", anonymous_id="laptop-1", traits={"size": 38})
    await shop.request(
        "POST", "/v1/events", "web", json={"anonymous_id": "laptop-1", "name": "product_viewed"}
    )
    before = {c: await profile(shop, c) for c in (phone["customer_id"], laptop["customer_id"])}
    merged = await identify(shop, "web", anonymous_id="laptop-1", email="amy@example.com")
    assert (await profile(shop, phone["customer_id"]))["traits"] == {"tier": "gold", "size": 38}

    split = await shop.request("POST", f"/v1/merges/{merged['merge_ids'][0]}/split")
    assert split.status_code == 200
    assert split.json()["split_at"] is not None
    for customer_id, was in before.items():
        now = await profile(shop, customer_id)
        assert now["customer_id"] == customer_id
        assert now["traits"] == was["traits"]
        assert {(i["type"], i["value"]) for i in now["identifiers"]} == {
            (i["type"], i["value"]) for i in was["identifiers"]
        }
        assert [e["event_id"] for e in now["recent_events"]] == [
            e["event_id"] for e in was["recent_events"]
        ]
    again = await shop.request("POST", f"/v1/merges/{merged['merge_ids'][0]}/split")
    assert again.status_code == 409


async def test_split_needs_an_admin_key(shop: ShopForTest) -> None:
    await identify(shop, anonymous_id="a", email="x@example.com")
    merged = await identify(shop, anonymous_id="b")
    joined = await identify(shop, anonymous_id="b", email="x@example.com")
    assert merged["customer_id"] in joined["merged_customer_ids"]
    response = await shop.request("POST", f"/v1/merges/{joined['merge_ids'][0]}/split", "web")
    assert response.status_code == 403


async def test_split_of_a_merge_whose_survivor_merged_later_is_refused(shop: ShopForTest) -> None:
    a = await identify(shop, anonymous_id="a")
    b = await identify(shop, anonymous_id="b")
    c = await identify(shop, anonymous_id="c")
    first = await identify(shop, anonymous_id="c", email="bc@example.com")
    ab = await identify(shop, anonymous_id="b", email="bc@example.com")  # b absorbs c
    assert ab["customer_id"] == b["customer_id"] and first["customer_id"] == c["customer_id"]
    later = await identify(shop, anonymous_id="a", email="bc@example.com")  # a absorbs b
    assert later["customer_id"] == a["customer_id"]
    refused = await shop.request("POST", f"/v1/merges/{ab['merge_ids'][0]}/split")
    assert refused.status_code == 409
    assert later["merge_ids"][0] in refused.json()["detail"]
    assert (
        await shop.request("POST", f"/v1/merges/{later['merge_ids'][0]}/split")
    ).status_code == 200
    assert (await shop.request("POST", f"/v1/merges/{ab['merge_ids'][0]}/split")).status_code == 200
    assert await resolve(shop, "anonymous", "c") == c["customer_id"]


async def test_concurrent_identify_calls_end_in_one_customer(shop: ShopForTest) -> None:
    bodies = [{"anonymous_id": f"device-{n}", "email": "race@example.com"} for n in range(8)] + [
        {"anonymous_id": f"device-{n}", "customer_ref": "acct-race"} for n in range(8)
    ]
    answers = await asyncio.gather(
        *(
            shop.request("POST", "/v1/identity/identify", "web" if n % 2 else "app", json=body)
            for n, body in enumerate(bodies)
        )
    )
    assert {a.status_code for a in answers} == {200}
    owners = {await resolve(shop, "anonymous", f"device-{n}") for n in range(8)}
    owners |= {
        await resolve(shop, "email", "race@example.com"),
        await resolve(shop, "customer_ref", "acct-race"),
    }
    assert len(owners) == 1


async def test_resolving_another_tenants_identifier_finds_nothing(server: Harness) -> None:
    alice, mallory = await server.shop("alice"), await server.shop("mallory")
    amy = await identify(alice, email="amy@example.com", anonymous_id="amy-phone")
    assert await resolve(mallory, "anonymous", "amy-phone") is None
    response = await mallory.request("GET", f"/v1/customers/{amy['customer_id']}/profile")
    assert response.status_code == 404
