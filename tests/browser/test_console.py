"""The customer-service console in Debian's Chromium: every task an agent does, checked by
axe-core, in the Amy journey (issue 19).

With OMNISDK_CONSOLE_SCREENSHOTS set (e.g. to docs/images), the screenshots for
docs/console.md are written there; otherwise to test-output/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess, TestTenant
from server_stub.services import staff
from server_stub.services.staff import Role
from tests.browser.conftest import accessible

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 "
    "Version/17.2 Mobile/15E148 Safari/604.1"
)
WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537"
EMAIL = "amy@example.com"


@dataclass
class Shop:
    server: ServerProcess
    tenant: TestTenant
    amy: str
    laptop: str
    agent: str  # Kim, customer service, agent
    colleague: str  # Lou, customer service, agent
    clerk: str  # Sam, stores, agent
    admin: str  # Ada, admin


def _post(shop_url: str, key: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(
        f"{shop_url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    assert response.status_code in (200, 201), response.text
    return response.json()  # type: ignore[no-any-return]


def _staff(server: ServerProcess, tenant_id: str, name: str, department: str, role: Role) -> str:
    async def work(conn: Any) -> str:
        return (await staff.create(conn, tenant_id, name, department, role))[1]

    return server._write(work)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    directory = tmp_path_factory.mktemp("console")
    with ServerProcess(f"sqlite:///{directory / 'shop.sqlite3'}") as server:
        tenant = server.create_tenant("Shoes & Co", ATTRIBUTED_EVENTS)
        web, pos = tenant.key("web"), tenant.key("pos")
        url = server.url

        def event(device: str, agent: str, name: str, **properties: Any) -> None:
            properties |= {"device_id": device, "user_agent": agent}
            _post(
                url,
                web,
                "/v1/events",
                {"anonymous_id": device, "name": name, "properties": properties},
            )

        # Amy's journey: the billboard on her phone, her e-mail in the chat, her laptop.
        event("amy-phone", IPHONE, "campaign_scanned", campaign="billboard-7")
        amy = _post(
            url,
            web,
            "/v1/identity/identify",
            {"anonymous_id": "amy-phone", "email": EMAIL, "traits": {"name": "Amy"}},
        )["customer_id"]
        event("amy-laptop", WINDOWS, "product_viewed", sku="TR2-38", category="running")
        laptop = _post(url, web, "/v1/identity/identify", {"anonymous_id": "amy-laptop"})[
            "customer_id"
        ]
        _post(url, web, "/v1/identity/identify", {"anonymous_id": "amy-laptop", "email": EMAIL})
        # She buys online, then in a store; she returns one pair of the online order there.
        online = {"sku": "TR2-38", "quantity": 2, "unit_price": 89.0}
        _post(
            url,
            web,
            "/v1/orders",
            {"reference": "W-1001", "currency": "EUR", "customer_id": amy, "lines": [online]},
        )
        store = {"sku": "SOCK-3", "quantity": 1, "unit_price": 12.0}
        _post(
            url,
            pos,
            "/v1/orders",
            {
                "reference": "POS-7-0001",
                "channel": "pos",
                "store_id": "warsaw-1",
                "currency": "EUR",
                "email": EMAIL,
                "lines": [store],
            },
        )
        issued = _post(
            url,
            web,
            "/v1/returns",
            {
                "order_ref": "W-1001",
                "customer_id": amy,
                "currency": "EUR",
                "lines": [{"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0}],
            },
        )
        _post(
            url,
            pos,
            "/v1/returns/redeem",
            {
                "token": issued["token"],
                "lines": [{"line_id": "1", "quantity": 1}],
                "till_transaction_id": "warsaw-1-0042",
                "store_id": "warsaw-1",
                "refund_method": "original_payment",
            },
        )
        yield Shop(
            server,
            tenant,
            amy,
            laptop,
            _staff(server, tenant.id, "Kim", "service", Role.AGENT),
            _staff(server, tenant.id, "Lou", "service", Role.AGENT),
            _staff(server, tenant.id, "Sam", "stores", Role.AGENT),
            _staff(server, tenant.id, "Ada", "it", Role.ADMIN),
        )


@pytest.fixture
def out(shots: Path) -> Path:
    wanted = os.environ.get("OMNISDK_CONSOLE_SCREENSHOTS")
    return Path(wanted) if wanted else shots


def sign_in(browser: Any, shop: Shop, key: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{shop.server.url}/console/")
    page.fill("#key", key)
    with page.expect_navigation():
        page.click("form.card button")
    expect(page.locator(".who")).to_be_visible()
    return page


def find_amy(page: Any) -> None:
    page.select_option("#by", "email")
    page.fill("#q", EMAIL)
    with page.expect_navigation():
        page.press("#q", "Enter")
    # Posted, not in the address: it stays out of the history and proxies' logs.
    assert "@" not in page.url and "q=" not in page.url, page.url


def test_a_wrong_key_is_refused_and_the_sign_in_page_is_accessible(
    browser: Any, shop: Shop, out: Path
) -> None:
    page = browser.new_page()
    page.goto(f"{shop.server.url}/console/")
    accessible(page, "sign in")
    page.screenshot(path=out / "console-sign-in.png")
    page.fill("#key", shop.tenant.key("web"))  # a shop backend's key is no console key
    with page.expect_navigation():
        page.click("form.card button")
    expect(page.locator(".error")).to_contain_text("not a console key")
    expect(page.locator(".who")).to_have_count(0)


def test_the_agent_finds_amy_by_e_mail_and_sees_her_devices_purchases_and_return(
    browser: Any, shop: Shop, out: Path
) -> None:
    page = sign_in(browser, shop, shop.agent)
    accessible(page, "find")
    find_amy(page)
    expect(page.locator("h1")).to_contain_text("Amy")
    devices = page.locator("section[aria-labelledby=identity-title] tbody tr")
    expect(devices).to_have_count(2)
    expect(devices.nth(0)).to_contain_text("Phone (iPhone, Safari)")
    expect(devices.nth(1)).to_contain_text("Computer (Windows, Chrome)")
    orders = page.locator("section[aria-labelledby=orders-title]")
    expect(orders).to_contain_text("POS-7-0001 · pos · store warsaw-1")
    expect(orders).to_contain_text("W-1001 · web")
    expect(orders).to_contain_text("refunded 89.00 · net 89.00")
    expect(page.locator("section[aria-labelledby=timeline-title]")).to_contain_text(
        "campaign_scanned"
    )
    assert EMAIL not in page.content()  # e-mail only as its keyed hash
    accessible(page, "customer")
    page.screenshot(path=out / "console-customer.png", full_page=True)


def test_the_timeline_filters_by_channel_and_event(browser: Any, shop: Shop) -> None:
    page = sign_in(browser, shop, shop.agent)
    page.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    page.fill("#filter-name", "product")
    with page.expect_navigation():
        page.click(".filters button")
    rows = page.locator("section[aria-labelledby=timeline-title] tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text("product_viewed")


def test_a_note_by_customer_service_is_seen_by_the_store_clerk_but_not_a_department_one(
    browser: Any, shop: Shop, out: Path
) -> None:
    page = sign_in(browser, shop, shop.agent)
    page.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    page.fill("#note-text", "Promised a free size exchange in any store.")
    page.select_option("#note-kind", "promise")
    page.check("#note-pinned")
    with page.expect_navigation():
        page.click("#notes form button")
    expect(page.locator(".notice")).to_have_text("Note added.")
    page.fill("#note-text", "Escalated to the service lead.")
    page.select_option("#note-visibility", "department")
    with page.expect_navigation():
        page.click("#notes form button")
    page.screenshot(path=out / "console-notes.png", full_page=True)

    clerk = sign_in(browser, shop, shop.clerk)
    clerk.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    notes = clerk.locator(".notes .note")
    expect(notes.first).to_contain_text("Promised a free size exchange in any store.")
    expect(notes.first).to_contain_text("Pinned · Promise · Kim (service)")
    expect(clerk.locator(".notes")).not_to_contain_text("Escalated to the service lead.")
    accessible(clerk, "customer, as a store clerk")


def test_the_author_edits_and_deletes_her_note_with_a_reason(
    browser: Any, shop: Shop, out: Path
) -> None:
    page = sign_in(browser, shop, shop.agent)
    page.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    page.fill("#note-text", "Call back on Monday.")
    with page.expect_navigation():
        page.click("#notes form button")
    page.locator(".note", has_text="Call back on Monday.").get_by_role("link").click()
    page.fill("#text", "Call back on Tuesday after 6 pm.")
    with page.expect_navigation():
        page.click("form.card:not(.danger) button")
    expect(page.locator(".notice")).to_have_text("Note saved (revision 2).")
    page.locator(".note", has_text="Tuesday").get_by_role("link").click()
    accessible(page, "note")
    expect(page.locator("tbody tr")).to_have_count(2)
    page.screenshot(path=out / "console-note-revisions.png", full_page=True)
    page.fill("#reason", "She called back herself.")
    with page.expect_navigation():
        page.click("form.danger button")
    expect(page.locator(".notice")).to_have_text("Note deleted: She called back herself.")
    expect(page.locator(".notes")).not_to_contain_text("Tuesday")


def test_another_department_may_read_but_not_change_her_note(browser: Any, shop: Shop) -> None:
    page = sign_in(browser, shop, shop.agent)
    page.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    page.fill("#note-text", "Prefers the Warsaw store.")
    with page.expect_navigation():
        page.click("#notes form button")
    clerk = sign_in(browser, shop, shop.clerk)
    clerk.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    clerk.locator(".note", has_text="Prefers the Warsaw store.").get_by_role("link").click()
    expect(clerk.locator(".hint")).to_contain_text("You may read this note but not change it")
    expect(clerk.locator("#text")).to_have_count(0)
    # Even a forged post (the form from her own page) is refused by the server.
    note_id = clerk.url.rstrip("/").split("/")[-2]
    csrf = clerk.locator("input[name=csrf]").first.get_attribute("value")
    answer = clerk.request.post(
        f"{shop.server.url}/console/notes/{note_id}/edit",
        form={"csrf": csrf or "", "text": "mine now", "kind": "note", "visibility": "staff"},
        headers={"Sec-Fetch-Site": "same-origin"},
    )
    assert answer.status == 403
    assert "may not edit this service note" in answer.text()
    lou = sign_in(browser, shop, shop.colleague)  # same department, not the author, no lead
    lou.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    lou.locator(".note", has_text="Prefers the Warsaw store.").get_by_role("link").click()
    expect(lou.locator("#text")).to_have_count(0)


def test_the_agent_records_her_declared_preferred_channel(browser: Any, shop: Shop) -> None:
    page = sign_in(browser, shop, shop.agent)
    page.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    page.select_option("#channel", "sms")
    with page.expect_navigation():
        page.click("section[aria-labelledby=preference-title] button")
    expect(page.locator("#preferred")).to_have_text("sms")
    expect(page.locator("section[aria-labelledby=preference-title]")).to_contain_text(
        "She declared sms via console (Kim"
    )
    with shop.tenant.client("web") as web:
        assert web.identity.preferred_channel(shop.amy).channel == "sms"


def test_the_agent_resends_the_return_code_of_her_online_order(
    browser: Any, shop: Shop, out: Path
) -> None:
    page = sign_in(browser, shop, shop.agent)
    page.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    orders = page.locator("section[aria-labelledby=orders-title]")
    expect(orders.get_by_role("button", name="Resend return code of W-1001")).to_be_visible()
    expect(orders.get_by_role("button", name="Resend return code of POS-7-0001")).to_have_count(0)
    with page.expect_navigation():
        orders.get_by_role("button", name="Resend return code of W-1001").click()
    expect(page.locator(".notice")).to_contain_text("The return code of order W-1001 will be sent")
    timeline = page.locator("section[aria-labelledby=timeline-title]")
    expect(timeline).to_contain_text("return_code_resent")
    expect(timeline).to_contain_text("requested_by=Kim")
    accessible(page, "customer, after a resend")
    page.screenshot(path=out / "console-return-code.png", full_page=True)
    listed = httpx.get(
        f"{shop.server.url}/v1/alerts/{shop.amy}/messages",
        headers={"Authorization": f"Bearer {shop.tenant.key('web')}"},
        timeout=10,
    )
    assert listed.status_code == 200, listed.text
    assert [m["kind"] for m in listed.json()["items"]] == ["return_code"]


def test_an_admin_undoes_a_wrong_merge_after_seeing_what_moves_where(
    browser: Any, shop: Shop, out: Path
) -> None:
    agent = sign_in(browser, shop, shop.agent)
    agent.goto(f"{shop.server.url}/console/customers/{shop.amy}")
    agent.get_by_role("link", name="Wrong merge? Undo it").click()
    expect(agent.locator(".hint")).to_contain_text("Only an admin may undo a merge.")
    admin = sign_in(browser, shop, shop.admin)
    admin.goto(agent.url)
    moves = admin.locator(".moves")
    expect(moves).to_contain_text("anonymous:amy-laptop")
    expect(moves).to_contain_text("Events: 1")
    accessible(admin, "split")
    admin.screenshot(path=out / "console-split.png", full_page=True)
    with admin.expect_navigation():
        admin.click(".danger-button")
    expect(admin.locator(".notice")).to_contain_text(f"{shop.laptop} is a customer of her own")
    devices = admin.locator("section[aria-labelledby=identity-title] tbody tr")
    expect(devices).to_have_count(1)
    admin.goto(f"{shop.server.url}/console/customers/{shop.laptop}")
    expect(admin.locator("section[aria-labelledby=identity-title] tbody tr")).to_contain_text(
        "Computer (Windows, Chrome)"
    )
