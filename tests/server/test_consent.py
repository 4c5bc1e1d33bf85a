"""The consent ledger over HTTP: recording, the rules, double opt-in, merges, events obeying it."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

from sqlalchemy import select

from omnisdk.core.consent import issue_confirmation
from omnisdk.core.identifiers import hashed_contact_data
from server_stub.services.changes import since
from server_stub.services.consent import CONFIRMATION_CONTEXT
from server_stub.services.tenants import unseal_identifier_secret
from server_stub.storage.tables import consent_decisions, events, tenants
from tests.server.conftest import TEST_SEALER, Harness, ShopForTest

PROBLEMS = "https://omnisdk.dev/problems/"


async def customer(shop: ShopForTest, device: str, **more: str) -> str:
    body = {"identifiers": [{"type": "anonymous", "value": device}]}
    for kind, value in more.items():
        body["identifiers"].append({"type": kind, "value": value})
    response = await shop.request("POST", "/v1/identity/identify", "web", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["customer_id"])


async def decide(
    shop: ShopForTest, customer_id: str, *decisions: dict[str, Any], channel: str = "web"
) -> Any:
    return await shop.request(
        "POST", f"/v1/consent/{customer_id}", channel, json={"decisions": list(decisions)}
    )


async def state(shop: ShopForTest, customer_id: str, device: str | None = None) -> dict[str, Any]:
    params = {"device_id": device} if device else None
    response = await shop.request("GET", f"/v1/consent/{customer_id}", "web", params=params)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def ledger_size(server: Harness, shop: ShopForTest) -> int:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(consent_decisions.c.id).where(consent_decisions.c.tenant_id == shop.id)
        )
        return len(list(rows))


async def test_no_decision_means_not_granted_and_a_grant_shows(shop: ShopForTest) -> None:
    amy = await customer(shop, "laptop-1")
    assert (await state(shop, amy))["purposes"] == {}
    recorded = await decide(
        shop,
        amy,
        {
            "purpose": "personalisation",
            "status": "granted",
            "source": "web_banner",
            "method": "click",
            "notice": {"id": "privacy-notice", "version": 3, "text_sha256": "ab" * 32},
        },
    )
    assert recorded.status_code == 200, recorded.text
    current = await state(shop, amy)
    assert current["purposes"]["personalisation"]["granted"] is True
    assert current["consent_mode"] == {
        "ad_storage": "denied",
        "analytics_storage": "denied",
        "ad_user_data": "denied",
        "ad_personalization": "granted",  # follows personalisation when not decided itself
    }
    history = (await shop.request("GET", f"/v1/consent/{amy}/history", "web")).json()
    (entry,) = history["items"]
    assert entry["notice_version"] == 3 and entry["channel"] == "web"
    assert entry["source"] == "web_banner"


async def test_bad_decisions_are_refused_and_nothing_is_stored(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "laptop-2")
    good = {"purpose": "personalisation", "status": "granted"}
    cases = [
        ({"purpose": "mind_reading", "status": "granted"}, 422, "unknown-purpose"),
        ({"purpose": "analytics", "status": "withdrawn"}, 409, "invalid-consent-transition"),
        ({"purpose": "analytics", "status": "pending"}, 409, "invalid-consent-transition"),
        ({"purpose": "analytics", "status": "maybe"}, 422, "validation-error"),
        ({"purpose": "analytics", "status": "granted", "scope": "device"}, 422, "validation-error"),
    ]
    for bad, status, kind in cases:
        response = await decide(shop, amy, good, bad)  # the good one is not kept either
        assert response.status_code == status, (bad, response.text)
        assert response.json()["type"] == PROBLEMS + kind
    assert await ledger_size(server, shop) == 0
    missing = await decide(shop, "cus_nobody", good)
    assert missing.status_code == 404


async def test_a_tenant_may_declare_its_own_purposes(server: Harness) -> None:
    shop = await server.shop(settings={"consent": {"purposes": ["loyalty:scoring"]}})
    amy = await customer(shop, "laptop-3")
    assert (await decide(shop, amy, {"purpose": "loyalty:scoring", "status": "granted"})).is_success
    assert (await state(shop, amy))["purposes"]["loyalty:scoring"]["granted"]


async def test_a_withdrawal_is_not_undone_by_a_grant_under_an_older_notice(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop, "laptop-4")
    v2 = {"id": "notice", "version": 2}
    await decide(shop, amy, {"purpose": "personalisation", "status": "granted", "notice": v2})
    await decide(shop, amy, {"purpose": "personalisation", "status": "withdrawn", "notice": v2})
    # A stale app still showing version 1 of the notice sends a grant.
    stale = {"purpose": "personalisation", "status": "granted", "notice": {"id": "notice"}}
    assert (await decide(shop, amy, stale, channel="app")).is_success
    assert not (await state(shop, amy))["purposes"]["personalisation"]["granted"]
    fresh = {**stale, "notice": v2}
    await decide(shop, amy, fresh)
    assert (await state(shop, amy))["purposes"]["personalisation"]["granted"]


async def test_device_decisions_apply_to_their_device_only(shop: ShopForTest) -> None:
    amy = await customer(shop, "tablet-1")
    await decide(shop, amy, {"purpose": "personalisation", "status": "granted"})
    await decide(
        shop,
        amy,
        {
            "purpose": "personalisation",
            "status": "denied",
            "scope": "device",
            "device_id": "family-tablet",
        },
    )
    assert (await state(shop, amy))["purposes"]["personalisation"]["granted"]
    assert not (await state(shop, amy, "family-tablet"))["purposes"]["personalisation"]["granted"]


async def test_double_opt_in_stays_pending_until_the_token_comes_back(shop: ShopForTest) -> None:
    amy = await customer(shop, "phone-5")
    response = await decide(shop, amy, {"purpose": "marketing:email", "status": "granted"})
    result = response.json()
    assert result["state"]["purposes"]["marketing:email"]["status"] == "pending"
    assert not result["state"]["purposes"]["marketing:email"]["granted"]
    (confirmation,) = result["confirmations"]

    confirmed = await shop.request(
        "POST", "/v1/consent/confirmations", "web", json={"token": confirmation["token"]}
    )
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["state"]["purposes"]["marketing:email"]["granted"]
    assert confirmed.json()["recorded"][0]["confirms"] == confirmation["decision_id"]

    again = await shop.request(
        "POST", "/v1/consent/confirmations", "web", json={"token": confirmation["token"]}
    )
    assert again.status_code == 409
    assert again.json()["type"] == PROBLEMS + "invalid-consent-transition"


async def test_forged_expired_foreign_and_superseded_tokens_are_refused(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "phone-6")
    pending = (await decide(shop, amy, {"purpose": "marketing:email", "status": "granted"})).json()
    token = pending["confirmations"][0]["token"]
    head, body, signature = token.split(".")
    forged = f"{head}.{body}.{signature[:-2]}AA"
    async with server.database.transaction(write=False) as conn:
        sealed = (
            await conn.execute(select(tenants.c.identifier_secret).where(tenants.c.id == shop.id))
        ).scalar_one()
    secret = unseal_identifier_secret(TEST_SEALER, shop.id, bytes(sealed))
    key = hmac.new(secret, CONFIRMATION_CONTEXT, hashlib.sha256).digest()
    decision_id = pending["confirmations"][0]["decision_id"]
    expired = issue_confirmation(key, {"t": shop.id, "d": decision_id, "exp": int(time.time()) - 1})
    other_shop = await server.shop("another shop")
    for bad, fragment in [
        (forged, "signature"),
        ("oc1.garbage", "not a consent confirmation"),
        (expired, "expired"),
    ]:
        refused = await shop.request("POST", "/v1/consent/confirmations", json={"token": bad})
        assert refused.status_code == 422, refused.text
        assert refused.json()["type"] == PROBLEMS + "confirmation-token-invalid"
        assert fragment in refused.json()["detail"]
    foreign = await other_shop.request("POST", "/v1/consent/confirmations", json={"token": token})
    assert foreign.status_code == 422

    # She unsubscribes before clicking: the old link can no longer opt her in.
    await decide(shop, amy, {"purpose": "marketing:email", "status": "withdrawn"})
    late = await shop.request("POST", "/v1/consent/confirmations", json={"token": token})
    assert late.status_code == 409
    assert not (await state(shop, amy))["purposes"]["marketing:email"]["granted"]


async def test_merging_customers_merges_person_decisions_and_flags_a_close_conflict(
    shop: ShopForTest,
) -> None:
    phone = await customer(shop, "amy-phone-7")
    laptop = await customer(shop, "amy-laptop-7")
    await decide(shop, phone, {"purpose": "personalisation", "status": "granted"})
    await decide(shop, laptop, {"purpose": "personalisation", "status": "denied"})
    await decide(shop, laptop, {"purpose": "analytics", "status": "granted"})
    await decide(
        shop,
        laptop,
        {"purpose": "marketing:sms", "status": "denied", "scope": "device", "device_id": "d7"},
    )
    merged = await customer(shop, "amy-phone-7", email="amy7@example.com")
    assert merged == phone
    linked = await customer(shop, "amy-laptop-7", email="amy7@example.com")
    assert linked == phone  # the older survives
    current = await state(shop, laptop)  # the old id resolves to the survivor
    assert current["customer_id"] == phone
    # Seconds apart on two devices: the clocks cannot tell which came last; deny wins.
    assert current["purposes"]["personalisation"] == {
        **current["purposes"]["personalisation"],
        "granted": False,
        "reprompt": True,
    }
    assert current["purposes"]["analytics"]["granted"]
    assert "marketing:sms" not in current["purposes"]  # a device decision is not the person's
    assert "marketing:sms" in (await state(shop, phone, "d7"))["purposes"]


async def test_a_decision_publishes_the_new_state_on_the_change_feed(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "phone-8")
    await decide(shop, amy, {"purpose": "personalisation", "status": "granted"})
    async with server.database.transaction(write=False) as conn:
        rows = await since(conn, shop.id, amy, 0)
    (change,) = [row for row in rows if row.kind == "consent"]
    assert change.payload["state"]["purposes"]["personalisation"]["granted"]


async def stored(server: Harness, shop: ShopForTest) -> list[tuple[str, str, dict[str, Any]]]:
    """The tenant's events as (name, owner, properties); "" as the owner of an event stored
    without identifiers, which is kept in the anonymous bucket of its day."""
    from server_stub.services.events import anonymous_bucket

    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(events.c.name, events.c.customer_id, events.c.occurred_at, events.c.properties)
            .where(events.c.tenant_id == shop.id)
            .order_by(events.c.seq)
        )
        return [
            (
                row.name,
                "" if row.customer_id == anonymous_bucket(row.occurred_at) else row.customer_id,
                row.properties,
            )
            for row in rows
        ]


async def test_without_analytics_consent_events_keep_no_identifiers(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "phone-9")
    viewed = {
        "customer_id": amy,
        "name": "product_viewed",
        "properties": {"sku": "SHOE-1", "category": "shoes", "email": "amy@example.com"},
    }
    order = {"customer_id": amy, "name": "order_completed", "properties": {"order_id": "o-1"}}
    for event in (viewed, order):
        assert (await shop.request("POST", "/v1/events", "web", json=event)).is_success
    await decide(shop, amy, {"purpose": "analytics", "status": "granted"})
    assert (await shop.request("POST", "/v1/events", "web", json=viewed)).is_success
    await decide(shop, amy, {"purpose": "analytics", "status": "withdrawn"})
    assert (await shop.request("POST", "/v1/events", "web", json=viewed)).is_success

    async with server.database.transaction(write=False) as conn:
        secret = (await server.app.state.runtime.tenants.get(conn, shop.id)).secret
    assert await stored(server, shop) == [
        # No decision yet: counted for no one, and personal properties dropped.
        ("product_viewed", "", {"sku": "SHOE-1", "category": "shoes"}),
        # A purchase is a record of the contract: kept with the customer.
        ("order_completed", amy, {"order_id": "o-1"}),
        # Granted: kept with the customer, the address only as its keyed hash.
        ("product_viewed", amy, hashed_contact_data(viewed["properties"], secret)),
        # Withdrawn: from the next event on, anonymous again.
        ("product_viewed", "", {"sku": "SHOE-1", "category": "shoes"}),
    ]


async def test_legitimate_interest_attributes_events_until_refused(server: Harness) -> None:
    shop = await server.shop(settings={"consent": {"analytics": "legitimate_interest"}})
    amy = await customer(shop, "phone-10")
    viewed = {"customer_id": amy, "name": "product_viewed", "properties": {"sku": "S"}}
    await shop.request("POST", "/v1/events", "web", json=viewed)
    await decide(shop, amy, {"purpose": "analytics", "status": "denied"})
    await shop.request("POST", "/v1/events", "web", json=viewed)
    assert [owner for _, owner, _ in await stored(server, shop)] == [amy, ""]


async def test_consent_needs_the_consent_scopes(server: Harness, shop: ShopForTest) -> None:
    from omnisdk.core.channels import Channel, Scope

    amy = await customer(shop, "phone-11")
    reader = await server.key_with_scopes(shop, Channel.WEB, {Scope.CONSENT_READ})
    headers = {"Authorization": f"Bearer {reader}"}
    assert (await shop.http.get(f"/v1/consent/{amy}", headers=headers)).is_success
    write = await shop.http.post(
        f"/v1/consent/{amy}",
        headers=headers,
        json={"decisions": [{"purpose": "analytics", "status": "granted"}]},
    )
    assert write.status_code == 403
    other = await server.shop("other shop")
    assert (await other.request("GET", f"/v1/consent/{amy}")).status_code == 404


async def test_queued_decisions_are_placed_at_their_time_within_bounds(
    shop: ShopForTest,
) -> None:
    from datetime import UTC, datetime, timedelta

    amy = await customer(shop, "phone-12")
    now = datetime.now(UTC)
    await decide(shop, amy, {"purpose": "analytics", "status": "granted"})
    hour_ago = {
        "purpose": "analytics",
        "status": "withdrawn",
        "queued": True,
        "client_time": (now - timedelta(hours=1)).isoformat(),
    }
    # An hour ago nothing was granted yet: there was nothing to withdraw.
    refused = await decide(shop, amy, hour_ago)
    assert refused.status_code == 409
    future = {**hour_ago, "client_time": (now + timedelta(days=2)).isoformat()}
    placed = (await decide(shop, amy, future)).json()["recorded"][0]
    assert datetime.fromisoformat(placed["recorded_at"]) < now + timedelta(minutes=1)
    ancient = {
        "purpose": "personalisation",
        "status": "granted",
        "queued": True,
        "client_time": (now - timedelta(days=400)).isoformat(),
    }
    placed = (await decide(shop, amy, ancient)).json()["recorded"][0]
    assert datetime.fromisoformat(placed["recorded_at"]) > now - timedelta(days=31)
    assert placed["client_time"].startswith(str((now - timedelta(days=400)).year))


async def test_an_event_is_judged_by_the_consent_that_stood_when_it_happened(
    server: Harness, shop: ShopForTest
) -> None:
    from datetime import UTC, datetime, timedelta

    amy = await customer(shop, "phone-13")
    before = (datetime.now(UTC) - timedelta(minutes=10)).isoformat()
    await decide(shop, amy, {"purpose": "analytics", "status": "granted"})
    viewed = {"customer_id": amy, "name": "product_viewed", "properties": {"sku": "S"}}
    # Sent after her grant, but it happened before it (held offline in an outbox).
    late = {**viewed, "timestamp": before, "event_id": "held-offline"}
    assert (await shop.request("POST", "/v1/events", "web", json=late)).is_success
    assert (await shop.request("POST", "/v1/events", "web", json=viewed)).is_success
    assert [owner for _, owner, _ in await stored(server, shop)] == ["", amy]


async def test_an_event_made_before_a_withdrawal_keeps_her_identity_when_it_arrives_after(
    server: Harness, shop: ShopForTest
) -> None:
    from datetime import UTC, datetime

    amy = await customer(shop, "phone-14")
    await decide(shop, amy, {"purpose": "analytics", "status": "granted"})
    made = datetime.now(UTC).isoformat()
    await decide(shop, amy, {"purpose": "analytics", "status": "withdrawn"})
    viewed = {"customer_id": amy, "name": "product_viewed", "timestamp": made}
    assert (await shop.request("POST", "/v1/events", "web", json=viewed)).is_success
    now = {"customer_id": amy, "name": "product_viewed", "event_id": "after-withdrawal"}
    assert (await shop.request("POST", "/v1/events", "web", json=now)).is_success
    assert [owner for _, owner, _ in await stored(server, shop)] == [amy, ""]


async def test_an_offline_grant_counts_from_the_time_it_was_made(
    server: Harness, shop: ShopForTest
) -> None:
    from datetime import UTC, datetime, timedelta

    amy = await customer(shop, "phone-15")
    now = datetime.now(UTC)
    granted_offline = {
        "purpose": "analytics",
        "status": "granted",
        "queued": True,
        "client_time": (now - timedelta(minutes=30)).isoformat(),
    }
    assert (await decide(shop, amy, granted_offline)).is_success
    viewed = {"customer_id": amy, "name": "product_viewed"}
    events_at = [now - timedelta(minutes=40), now - timedelta(minutes=20)]
    for index, when in enumerate(events_at):
        event = {**viewed, "timestamp": when.isoformat(), "event_id": f"e-{index}"}
        assert (await shop.request("POST", "/v1/events", "web", json=event)).is_success
    assert [owner for _, owner, _ in await stored(server, shop)] == ["", amy]


async def test_an_event_stored_without_identifiers_is_answered_as_no_ones(
    shop: ShopForTest,
) -> None:
    amy = await customer(shop, "phone-16")
    viewed = {"customer_id": amy, "name": "product_viewed", "event_id": "before-consent"}
    answer = await shop.request("POST", "/v1/events", "web", json=viewed)
    assert answer.json()["customer_id"] is None
    order = {"customer_id": amy, "name": "order_completed", "event_id": "a-purchase"}
    answer = await shop.request("POST", "/v1/events", "web", json=order)
    assert answer.json()["customer_id"] == amy
