"""The console's "resend a return code" action, over SQLite and PostgreSQL: the code goes out
once through message delivery (her preferred channel, her consent, the code still valid),
audited and on her timeline; another customer's order is refused.

The delivery loop is driven pass by pass (`run_until_idle`), and a real HTTP receiver checks
each webhook's signature, as in test_alerts.py.
"""

from __future__ import annotations

import re

import httpx
from sqlalchemy import select

from server_stub.alert_delivery import run_until_idle
from server_stub.console import COOKIE
from server_stub.services import staff
from server_stub.services.staff import Role
from server_stub.storage.tables import alert_messages, audit_log
from tests.server import test_alerts
from tests.server.conftest import Harness, ShopForTest
from tests.server.test_alerts import (
    customer,
    grant,
    messages_of,
    shop_with_webhook,
    timeline_names,
    worker_of,
)
from tests.server.test_returns import issue
from tests.webhook_receiver import WebhookReceiver

SAME_SITE = {"Sec-Fetch-Site": "same-origin"}
# The alerts tests' harness (no delivery loop of its own) and webhook receiver.
server = test_alerts.server
receiver = test_alerts.receiver


class Agent:
    """A member of staff signed in to the console (cookie and CSRF token as a browser has)."""

    def __init__(self, http: httpx.AsyncClient, session: str) -> None:
        self.http, self.csrf = http, ""
        self.cookie = {"Cookie": f"{COOKIE}={session}"}

    async def page(self, customer_id: str) -> str:
        answer = await self.http.get(f"/console/customers/{customer_id}", headers=self.cookie)
        assert answer.status_code == 200, answer.text
        found = re.search(r'name="csrf" value="([^"]+)"', answer.text)
        assert found is not None
        self.csrf = found.group(1)
        return answer.text

    async def resend(self, customer_id: str, order_ref: str) -> httpx.Response:
        await self.page(customer_id)
        return await self.http.post(
            f"/console/customers/{customer_id}/return-code",
            data={"csrf": self.csrf, "order_ref": order_ref},
            headers={**SAME_SITE, **self.cookie},
        )


async def agent(server: Harness, shop: ShopForTest) -> Agent:
    async with server.database.transaction(write=True) as conn:
        _, secret = await staff.create(conn, shop.id, "Kim", "service", Role.AGENT)
    signed = await server.http.post("/console/sign-in", data={"key": secret}, headers=SAME_SITE)
    assert signed.status_code == 303, signed.text
    return Agent(server.http, signed.cookies[COOKIE])


async def order_with_code(shop: ShopForTest, customer_id: str, reference: str) -> str:
    sale = {
        "reference": reference,
        "channel": "web",
        "currency": "EUR",
        "customer_id": customer_id,
        "lines": [{"sku": "TR2-38", "quantity": 2, "unit_price": 89.0}],
    }
    recorded = await shop.request("POST", "/v1/orders", "web", json=sale)
    assert recorded.status_code in (200, 201), recorded.text
    return str((await issue(shop, reference, customer_id=customer_id))["token"])


async def test_a_resent_return_code_goes_once_to_her_preferred_channel(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "amy-phone", preferred_channel="sms", first_name="Amy")
    await grant(shop, amy, "marketing:email")
    decision = await grant(shop, amy, "marketing:sms")
    token = await order_with_code(shop, amy, "W-100")
    kim = await agent(server, shop)
    assert "Resend return code of W-100" in await kim.page(amy)
    first = await kim.resend(amy, "W-100")
    again = await kim.resend(amy, "W-100")  # the form sent twice
    assert (first.status_code, again.status_code) == (303, 303)
    await run_until_idle(worker_of(server))
    [payload] = receiver.unique
    assert payload["type"] == "message.return_code"
    data = payload["data"]
    assert (data["customer_id"], data["channel"], data["channel_source"]) == (
        amy,
        "sms",
        "declared",
    )
    assert (data["order_ref"], data["return_code"]) == ("W-100", token)
    assert data["consent_decision_id"] == decision
    [message] = await messages_of(shop, amy)
    assert (message["kind"], message["status"]) == ("return_code", "sent")
    timeline = await timeline_names(shop, amy)
    [asked] = [p for name, p in timeline if name == "return_code_resent"]
    assert (asked["order_id"], asked["requested_by"]) == ("W-100", "Kim")
    assert ("message_sent", message["id"]) in [(n, p.get("message_id")) for n, p in timeline]
    async with server.database.transaction(write=False) as conn:
        audited = (
            await conn.execute(
                select(audit_log.c.subject).where(
                    audit_log.c.tenant_id == shop.id, audit_log.c.action == "return_code.resent"
                )
            )
        ).all()
    assert [row.subject for row in audited] == [amy]


async def test_without_consent_the_resent_code_is_not_sent(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "amy-no-consent")
    await order_with_code(shop, amy, "W-200")
    kim = await agent(server, shop)
    assert (await kim.resend(amy, "W-200")).status_code == 303
    await run_until_idle(worker_of(server))
    assert receiver.requests == []
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["reason"]) == ("skipped", "no_consent")


async def test_a_code_revoked_before_it_is_sent_is_not_sent(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "amy-revoked")
    await grant(shop, amy, "marketing:email")
    await order_with_code(shop, amy, "W-300")
    kim = await agent(server, shop)
    assert (await kim.resend(amy, "W-300")).status_code == 303
    revoked = await shop.request("POST", "/v1/returns/orders/W-300/revoke", "admin")
    assert revoked.status_code == 200, revoked.text
    await run_until_idle(worker_of(server))
    assert receiver.requests == []
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["reason"]) == ("skipped", "return_code_void")
    assert "Resend return code of W-300" not in await kim.page(amy)


async def test_another_customers_order_is_refused_and_queues_nothing(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "amy-own")
    bea = await customer(shop, "bea-own")
    await order_with_code(shop, bea, "W-400")
    kim = await agent(server, shop)
    refused = await kim.resend(amy, "W-400")
    assert refused.status_code == 404
    assert "no return code for order" in refused.text
    async with server.database.transaction(write=False) as conn:
        queued = (
            await conn.execute(
                select(alert_messages.c.id).where(alert_messages.c.tenant_id == shop.id)
            )
        ).all()
    assert queued == []


async def test_a_refusal_on_a_console_page_is_its_error_page_not_a_500(
    server: Harness, receiver: WebhookReceiver
) -> None:
    """A service's refusal (here a cursor in the address that is not one the console made)
    reached the console's default handler: a plain 500."""
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "amy-phone", first_name="Amy")
    kim = await agent(server, shop)
    answer = await server.http.get(f"/console/customers/{amy}?cursor=x", headers=kim.cookie)
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("text/html")
    assert "cursor" in answer.text


async def test_the_console_finds_a_customer_only_by_a_posted_form(
    server: Harness, receiver: WebhookReceiver
) -> None:
    """The find bar sent her e-mail address in the address (GET /find?q=...), which browsers
    keep in their history and proxies in their logs."""
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "amy-phone", first_name="Amy")
    linked = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={"anonymous_id": "amy-phone", "email": "amy@x.example"},
    )
    amy = linked.json()["customer_id"]
    kim = await agent(server, shop)
    await kim.page(amy)  # for the CSRF token
    asked = await server.http.get("/console/find?by=email&q=amy@x.example", headers=kim.cookie)
    assert asked.status_code == 405
    found = await server.http.post(
        "/console/find",
        data={"csrf": kim.csrf, "by": "email", "q": "amy@x.example"},
        headers={**SAME_SITE, **kim.cookie},
    )
    assert found.status_code == 303 and found.headers["location"].endswith(f"/customers/{amy}")
    forged = await server.http.post(
        "/console/find",
        data={"csrf": "not-hers", "by": "email", "q": "amy@x.example"},
        headers={**SAME_SITE, **kim.cookie},
    )
    assert forged.status_code == 303 and amy not in forged.headers["location"]
