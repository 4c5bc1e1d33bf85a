"""The POS return station in a real browser, as a clerk with a keyboard-wedge scanner uses it."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from omnisdk import qr
from omnisdk.core import tokens
from omnisdk.testing import ReferenceServer, ServerProcess, TestTenant, _run
from server_stub.pos import StationConfig, create_station
from server_stub.sealing import Sealer
from server_stub.services.signing_keys import SigningKeys
from server_stub.storage.database import Database
from tests.browser.conftest import ServedApp

SHOES = [
    {
        "line_id": "1",
        "sku": "TR2-38",
        "quantity": 2,
        "unit_price": 89.0,
        "name": "Trail runner, size 38",
    },
    {"line_id": "2", "sku": "SOCK-3P", "quantity": 1, "unit_price": 12.5, "name": "Socks, 3 pairs"},
]


@pytest.fixture(scope="module")
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(log_level="WARNING") as running:
        yield running


@pytest.fixture
def shop(server: ReferenceServer) -> TestTenant:
    return server.create_tenant("Shoe Shop Berlin")


def issue(shop: TestTenant, order_ref: str) -> str:
    with shop.client("web") as web:
        return web.returns.issue(order_ref, SHOES, refund_methods=["card", "voucher"]).token


def expired_token(server: ReferenceServer, tenant_id: str) -> str:
    """A genuine code of the shop whose return period ended ten days ago."""

    async def signing_key() -> Any:
        database = Database(server.database_url)
        try:
            async with database.transaction(write=True) as conn:
                sealer = Sealer(base64.b64decode(server.secret_key))
                return await SigningKeys(sealer).active(conn, tenant_id)
        finally:
            await database.dispose()

    key = _run(signing_key())
    now = datetime.now(UTC).replace(microsecond=0)
    claims = tokens.ReturnClaims(
        issuer=tenant_id,
        issued_at=now - timedelta(days=40),
        expires_at=now - timedelta(days=10),
        token_id=os.urandom(16),
        order_ref="OLD-77",
        lines=(tokens.ReturnLine("1", "TR2-38", 1),),
        refund_methods=("card",),
    )
    return tokens.sign(claims, key.private_key, key.kid)


def sign_in(browser: Any, base: str, key: str, till: str = "till-3") -> Any:
    page = browser.new_page(viewport={"width": 1024, "height": 900})
    page.goto(f"{base}/pos/returns")
    assert page.url.endswith("/pos/login")
    page.fill("#api_key", key)
    page.fill("#store_id", "berlin-1")
    page.fill("#till_id", till)
    page.keyboard.press("Enter")
    page.wait_for_url("**/pos/returns")
    return page


def scan(page: Any, code: str) -> None:
    """Type the code into the focused field as a keyboard-wedge scanner does, then Enter."""
    wait_for_focus(page, "code")
    page.keyboard.type(code)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def wait_for_focus(page: Any, element_id: str) -> None:
    """The page must put the keyboard focus on `element_id` by itself (autofocus)."""
    page.wait_for_function(
        f"document.activeElement && document.activeElement.id === {element_id!r}", timeout=5000
    )


def remaining(page: Any, line_id: str) -> str:
    return str(page.inner_text(f'td.remaining[data-line="{line_id}"]')).strip()


def test_scan_return_one_of_two_see_receipt_then_only_the_rest(
    browser: Any, server: ReferenceServer, shop: TestTenant, shots: Path
) -> None:
    token = issue(shop, "A1042")
    page = sign_in(browser, server.url, shop.key("pos"))
    page.screenshot(path=shots / "1-ready-to-scan.png", full_page=True)

    scan(page, token)
    assert "Order A1042" in page.inner_text("h1")
    assert remaining(page, "1") == "2" and remaining(page, "2") == "1"
    wait_for_focus(page, "qty-1")  # the clerk types the units at once
    page.screenshot(path=shots / "2-order.png", full_page=True)

    page.fill("#qty-1", "1")
    page.check('input[name="refund_method"][value="voucher"]')
    page.focus("#confirm")
    with page.expect_navigation():
        page.keyboard.press("Enter")  # keyboard only
    page.wait_for_url("**/returns/receipt/**")
    assert page.inner_text("#receipt-status") == "Confirmed by the shop."
    receipt = page.inner_text("article.receipt")
    assert "A1042" in receipt and "TR2-38" in receipt and "89.00 by voucher" in receipt
    page.screenshot(path=shots / "3-receipt.png", full_page=True)
    page.emulate_media(media="print")
    page.screenshot(path=shots / "3-receipt-printed.png", full_page=True)
    page.emulate_media(media="screen")

    with page.expect_navigation():
        page.click("text=Next return")
    scan(page, token)
    assert remaining(page, "1") == "1"
    history = page.inner_text("ul.history")
    assert "berlin-1" in history and "1 \u00d7 TR2-38" in history
    page.screenshot(path=shots / "4-second-scan.png", full_page=True)
    page.close()


def test_tampered_and_expired_codes_show_the_reason(
    browser: Any, server: ReferenceServer, shop: TestTenant, shots: Path
) -> None:
    token = issue(shop, "A2001")
    old = expired_token(server, shop.id)
    page = sign_in(browser, server.url, shop.key("pos"))
    position = len(token) - 12
    tampered = token[:position] + ("7" if token[position] != "7" else "8") + token[position + 1 :]
    scan(page, tampered)
    assert "altered or is not genuine" in page.inner_text("#problem")
    wait_for_focus(page, "code")  # ready for the next scan
    page.screenshot(path=shots / "1-tampered.png", full_page=True)

    scan(page, old)
    problem = page.inner_text("#problem")
    expected = (datetime.now(UTC) - timedelta(days=10)).strftime("%d %B %Y")
    assert f"expired on {expected}" in problem
    page.screenshot(path=shots / "2-expired.png", full_page=True)

    with ReferenceServer(log_level="WARNING") as elsewhere:
        other_shop = elsewhere.create_tenant("Another shop")
        foreign = issue(other_shop, "X1")
    scan(page, foreign)
    assert "not a return code of this shop" in page.inner_text("#problem")
    page.screenshot(path=shots / "3-other-shop.png", full_page=True)
    page.close()


def test_a_photo_of_the_code_gives_the_same_result(
    browser: Any, server: ReferenceServer, shop: TestTenant, shots: Path, tmp_path: Path
) -> None:
    token = issue(shop, "A3003")
    photo = tmp_path / "code.png"
    photo.write_bytes(qr.png(token, qr.Medium.PRINT))
    page = sign_in(browser, server.url, shop.key("pos"))
    page.click("summary")
    page.set_input_files("#image", str(photo))
    with page.expect_navigation():
        page.click("text=Read the photo")
    assert "Order A3003" in page.inner_text("h1")
    assert remaining(page, "1") == "2"
    page.screenshot(path=shots / "1-from-photo.png", full_page=True)

    not_a_picture = tmp_path / "notes.png"
    not_a_picture.write_bytes(b"definitely not an image")
    page.goto(f"{server.url}/pos/returns")
    page.click("summary")
    page.set_input_files("#image", str(not_a_picture))
    with page.expect_navigation():
        page.click("text=Read the photo")
    assert "not a picture" in page.inner_text("#problem")
    page.close()


def test_no_page_works_without_signing_in_and_forms_need_their_token(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    page = browser.new_page()
    for path in ("/pos/returns", "/pos/returns/receipt/anything"):
        page.goto(f"{server.url}{path}")
        assert page.url.endswith("/pos/login")
    page.fill("#api_key", shop.key("web"))
    page.fill("#store_id", "berlin-1")
    page.fill("#till_id", "t1")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "not a till key" in page.inner_text("#problem")
    response = page.request.post(
        f"{server.url}/pos/returns/scan", form={"code": "RT1:X", "csrf": "x"}
    )
    assert "/pos/login" in response.url
    page.close()


def pos_backend(server_url: str, data_dir: Path) -> ServedApp:
    """A shop's POS backend that mounts the station, with a data_dir for offline work."""
    app = FastAPI()
    app.mount("/pos", create_station(StationConfig(server_url=server_url, data_dir=data_dir)))
    return ServedApp(app)


def test_offline_till_verifies_queues_shows_pending_then_confirmed(
    browser: Any, tmp_path: Path, shots: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    server = ServerProcess(database).start()
    shop = server.create_tenant("Shoe Shop Hamburg")
    token = issue(shop, "A4004")  # type: ignore[arg-type]
    address, secret = server.url, server.secret_key
    with pos_backend(address, tmp_path / "tills") as backend:
        page = sign_in(browser, backend.url, shop.key("pos"), till="till-9")
        server.stop()  # the network is gone
        scan(page, token)
        assert "offline" in page.inner_text("#offline")
        assert remaining(page, "1") == "unknown (offline)"
        page.screenshot(path=shots / "1-offline-order.png", full_page=True)
        page.fill("#qty-1", "1")
        page.fill("#amount", "89.00")
        page.click("#confirm")
        page.wait_for_url("**/returns/receipt/**")
        assert page.inner_text("#receipt-status").startswith("Pending")
        page.screenshot(path=shots / "2-pending-receipt.png", full_page=True)

        port = int(address.rsplit(":", 1)[1])
        with ServerProcess(database, port=port, secret_key=secret):
            page.reload()
            assert page.inner_text("#receipt-status") == "Confirmed by the shop."
            page.screenshot(path=shots / "3-confirmed-receipt.png", full_page=True)
            with shop.client("pos") as till:
                assert till.returns.status(token).lines[0].remaining == 1
        page.close()
