"""E-mail addresses and phone numbers sent outside identifiers (event properties, traits,
session entries), by name or by shape, are kept only as keyed hashes, never shown."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from omnisdk.core.identifiers import IdentifierType, hashed_contact_data, keyed_hash
from omnisdk.testing import ATTRIBUTED_EVENTS
from server_stub.storage.tables import customers, events, sessions
from tests.server.conftest import Harness, ShopForTest

ADDRESS = "Amy.Example@Example.com"
NUMBER = "+49 151 1234 5678"


@pytest.fixture
async def shop(server: Harness) -> ShopForTest:
    """Analytics allowed: events keep their identifiers, which is where addresses leaked."""
    return await server.shop(settings=ATTRIBUTED_EVENTS)


async def _customer(shop: ShopForTest) -> str:
    answer = await shop.request("POST", "/v1/identity/identify", json={"anonymous_id": "amy"})
    return str(answer.json()["customer_id"])


async def _stored(server: Harness, table: object, column: object, tenant: str) -> str:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(select(column).where(table.c.tenant_id == tenant))  # type: ignore[attr-defined]
        return json.dumps([row[0] for row in rows])


def _assert_hidden(text: str) -> None:
    for clear in (ADDRESS, ADDRESS.lower(), "1234 5678", "4915112345678"):
        assert clear not in text


async def test_event_properties_keep_addresses_and_numbers_only_as_keyed_hashes(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await _customer(shop)
    properties = {
        "email": ADDRESS,
        "Phone": NUMBER,
        "note": f"reply to {ADDRESS}",  # not an address as a whole: free text stays
        "contact": {"backup": ADDRESS, "sms": NUMBER},
        "order_id": "00123",
    }
    tracked = await shop.request(
        "POST",
        "/v1/events",
        json={"customer_id": amy, "name": "chat_started", "properties": properties},
    )
    assert tracked.status_code == 200, tracked.text
    timeline = await shop.request("GET", f"/v1/customers/{amy}/timeline")
    shown = timeline.json()["items"][0]["properties"]
    hashed_email = shown["email"]
    assert hashed_email.startswith("email#") and len(hashed_email) == len("email#") + 64
    assert shown["contact"]["backup"] == hashed_email  # same address, same hash
    assert shown["Phone"].startswith("phone#")
    assert shown["contact"]["sms"] == shown["Phone"]
    assert shown["order_id"] == "00123"
    assert shown["note"] == f"reply to {ADDRESS}"
    stored = await _stored(server, events, events.c.properties, shop.id)
    assert ADDRESS not in stored.replace(f"reply to {ADDRESS}", "")
    assert "1234 5678" not in stored


async def test_the_hash_is_the_identifier_hash_so_the_shop_can_match_it(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await _customer(shop)
    await shop.request(
        "POST",
        "/v1/events",
        json={"customer_id": amy, "name": "x", "properties": {"email": ADDRESS}},
    )
    async with server.database.transaction(write=False) as conn:
        context = await server.app.state.runtime.tenants.get(conn, shop.id)
    expected = keyed_hash(context.secret, IdentifierType.EMAIL, ADDRESS.lower())
    timeline = (await shop.request("GET", f"/v1/customers/{amy}/timeline")).json()
    assert timeline["items"][0]["properties"]["email"] == f"email#{expected}"


async def test_trait_values_shaped_like_contact_data_are_hashed(
    server: Harness, shop: ShopForTest
) -> None:
    answer = await shop.request(
        "POST",
        "/v1/identity/identify",
        json={"anonymous_id": "amy", "traits": {"contact": ADDRESS, "mobile_backup": NUMBER}},
    )
    assert answer.status_code == 200, answer.text
    profile = await shop.request("GET", f"/v1/customers/{answer.json()['customer_id']}/profile")
    _assert_hidden(profile.text)
    _assert_hidden(await _stored(server, customers, customers.c.traits, shop.id))
    assert profile.json()["traits"]["contact"].startswith("email#")


async def test_session_entries_shaped_like_contact_data_are_hashed(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await _customer(shop)
    written = await shop.request(
        "POST",
        f"/v1/sessions/{amy}",
        "web",
        json={"entries": {"chat": {"email": ADDRESS, "topic": "sizes"}, "callback": NUMBER}},
    )
    assert written.status_code == 200, written.text
    _assert_hidden(written.text)
    _assert_hidden(await _stored(server, sessions, sessions.c.document, shop.id))
    entries = written.json()["entries"]
    assert entries["chat"]["value"]["topic"] == "sizes"
    assert entries["callback"]["value"].startswith("phone#")


def test_hashing_is_stable_and_leaves_other_values_alone() -> None:
    secret = b"k" * 32
    value = {"a": [ADDRESS, 5, None, True], "email": None, "b": "+1", "c": "0049 151 12345678"}
    once = hashed_contact_data(value, secret)
    assert hashed_contact_data(once, secret) == once
    assert once["a"][1:] == [5, None, True] and once["email"] is None and once["b"] == "+1"
    assert once["a"][0].startswith("email#") and once["c"].startswith("phone#")
