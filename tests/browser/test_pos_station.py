"""The POS return station in a real browser, as a clerk with a keyboard-wedge scanner uses it."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from playwright.sync_api import expect

from omnisdk import qr
from omnisdk.core import tokens
from omnisdk.testing import ReferenceServer, ServerProcess, TestTenant, _run
from server_stub.pos import StationConfig, create_station
from server_stub.sealing import Sealer
from server_stub.services.signing_keys import SigningKeys
from server_stub.storage.database import Database
from tests.browser.conftest import ServedApp, accessible, hosting
from tests.e2e.test_till_keys_and_offline_cap import forged_code
from tests.fault_proxy import FaultProxy

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


def issue(shop: TestTenant, order_ref: str, lines: list[dict[str, Any]] = SHOES) -> str:
    with shop.client("web") as web:
        return web.returns.issue(
            order_ref, lines, refund_methods=["card", "voucher"], currency="EUR"
        ).token


def signing_key(server: ReferenceServer | ServerProcess, tenant_id: str) -> Any:
    async def active() -> Any:
        database = Database(server.database_url)
        try:
            async with database.transaction(write=True) as conn:
                sealer = Sealer(base64.b64decode(server.secret_key))
                return await SigningKeys(sealer).active(conn, tenant_id)
        finally:
            await database.dispose()

    return _run(active())


def expired_token(server: ReferenceServer | ServerProcess, tenant_id: str) -> str:
    """A genuine code of the shop whose return period ended ten days ago."""
    key = signing_key(server, tenant_id)
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


def sign_in(browser: Any, base: str, key: str, till: str = "till-3", **options: Any) -> Any:
    page = browser.new_page(viewport={"width": 1024, "height": 900}, **options)
    page.goto(f"{base}/pos/returns")
    assert page.url.endswith("/pos/login")
    page.fill("#api_key", key)
    page.fill("#store_id", "berlin-1")
    page.fill("#till_id", till)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_url("**/pos/returns")
    return page


def scan(page: Any, code: str, field: str = "code") -> None:
    """Type the code into the focused field fast, as a keyboard-wedge scanner does, then Enter."""
    wait_for_focus(page, field)
    page.keyboard.type(code, delay=0)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def wait_for_focus(page: Any, element_id: str) -> None:
    """The page must put the keyboard focus on `element_id` by itself (autofocus)."""
    expect(page.locator(f"#{element_id}")).to_be_focused(timeout=5000)


def remaining(page: Any, line_id: str) -> str:
    return str(page.inner_text(f'td.remaining[data-line="{line_id}"]')).strip()


def review_and_confirm(page: Any, units: dict[str, str], method: str | None = None) -> None:
    """Type units (keyboard only), Enter to the review, then confirm from the keyboard."""
    for line_id, count in units.items():
        page.fill(f"#qty-{line_id}", count)
    if method:
        page.check(f'input[name="refund_method"][value="{method}"]')
    page.focus(f"#qty-{next(iter(units))}")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert page.inner_text("h1").startswith("Review the return")
    page.focus("#confirm")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_url("**/returns/receipt/**")


def test_scan_review_confirm_receipt_then_only_the_rest(
    browser: Any, server: ReferenceServer, shop: TestTenant, shots: Path
) -> None:
    token = issue(shop, "A1042")
    page = sign_in(browser, server.url, shop.key("pos"))
    page.screenshot(path=shots / "1-ready-to-scan.png", full_page=True)

    scan(page, token)
    assert "Order A1042" in page.inner_text("h1")
    assert remaining(page, "1") == "2" and remaining(page, "2") == "1"
    assert "€89.00" in page.inner_text("table")  # prices before anything is decided
    wait_for_focus(page, "qty-1")  # the clerk types the units at once
    page.screenshot(path=shots / "2-order.png", full_page=True)

    page.keyboard.type("1")  # Enter in a units box opens the review, never the refund
    page.check('input[name="refund_method"][value="voucher"]')
    page.focus("#qty-1")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "Review the return of order A1042" in page.inner_text("h1")
    assert page.inner_text("#refund-total") == "€89.00"
    assert "Trail runner, size 38" in page.inner_text("#review-lines")
    with shop.client("pos") as till:
        assert till.returns.status(token).lines[0].remaining == 2  # nothing taken yet
    page.screenshot(path=shots / "3-review.png", full_page=True)
    wait_for_focus(page, "code")  # a scan still works here; one Tab reaches Confirm
    page.keyboard.press("Tab")
    wait_for_focus(page, "confirm")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.wait_for_url("**/returns/receipt/**")
    assert page.inner_text("#receipt-status") == "Confirmed by the shop."
    receipt = page.inner_text("article.receipt")
    assert "A1042" in receipt and "Trail runner, size 38" in receipt and "TR2-38" in receipt
    assert "€89.00 · voucher" in receipt
    assert page.is_visible("#print")
    page.screenshot(path=shots / "4-receipt.png", full_page=True)

    page.click("text=Next return")
    scan(page, token)
    assert remaining(page, "1") == "1"
    history = page.inner_text("ul.history")
    assert "berlin-1" in history and "1 \u00d7 TR2-38" in history
    page.close()


def test_a_resent_confirm_takes_the_units_back_once(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    token = issue(shop, "A1050")
    page = sign_in(browser, server.url, shop.key("pos"))
    scan(page, token)
    page.fill("#qty-1", "1")
    with page.expect_navigation():
        page.click("#review")
    form = {
        "csrf": page.get_attribute('#confirm-form input[name="csrf"]', "value"),
        "transaction": page.get_attribute('input[name="transaction"]', "value"),
    }
    with page.expect_navigation():
        page.click("#confirm")
    receipt_url = page.url
    again = page.request.post(f"{server.url}/pos/returns/confirm", form=form)  # resent form
    assert again.ok and again.url == receipt_url
    with shop.client("pos") as till:
        status = till.returns.status(token)
    assert status.lines[0].remaining == 1 and len(status.redemptions) == 1
    page.close()


def test_a_scan_works_from_the_order_page_and_the_receipt_page(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    first, second, third = (issue(shop, ref) for ref in ("B1", "B2", "B3"))
    page = sign_in(browser, server.url, shop.key("pos"))
    # A wedge that lower-cases and adds spaces around the code.
    scan(page, f"  {first.lower()}  ")
    assert "Order B1" in page.inner_text("h1")
    scan(page, second, field="qty-1")  # the focus is in a units box: the scan still opens
    assert "Order B2" in page.inner_text("h1")
    review_and_confirm(page, {"1": "1"})
    scan(page, third)  # the receipt page keeps the scan field focused
    assert "Order B3" in page.inner_text("h1")
    page.close()


def type_scan(page: Any, code: str) -> None:
    """A wedge scan wherever the focus is (no field asked for), then its Enter."""
    page.keyboard.type(code, delay=0)
    with page.expect_navigation():
        page.keyboard.press("Enter")


def test_a_scan_while_a_button_has_the_focus_opens_the_code_and_presses_nothing(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    first, second, third = (issue(shop, ref) for ref in ("F1", "F2", "F3"))
    page = sign_in(browser, server.url, shop.key("pos"))
    scan(page, first)
    page.fill("#qty-1", "1")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    page.focus("#confirm")  # the clerk tabbed to Confirm, then the next customer came
    type_scan(page, second)
    assert "Order F2" in page.inner_text("h1")
    with shop.client("pos") as till:
        assert till.returns.status(first).redemptions == []  # Confirm was not pressed
    review_and_confirm(page, {"1": "1"})
    page.focus("#print")  # on the receipt, the Print button has the focus
    type_scan(page, f" {third.lower()}")
    assert "Order F3" in page.inner_text("h1")
    page.close()


def test_each_wrong_scan_gets_its_own_answer(
    browser: Any, server: ReferenceServer, shop: TestTenant, shots: Path
) -> None:
    token = issue(shop, "A2001")
    old = expired_token(server, shop.id)
    page = sign_in(browser, server.url, shop.key("pos"))
    position = len(token) - 12
    tampered = token[:position] + ("7" if token[position] != "7" else "8") + token[position + 1 :]
    answers = {
        "4006381333931": "product barcode",
        "https://shop.example/landing?c=9": "web address",
        "RT1:NOT+A+CODE": "damaged",
        tampered: "altered or is not genuine",
        forged_code(shop.id): "forged or was not made by this shop",  # a key it never had
        old: f"expired on {(datetime.now(UTC) - timedelta(days=10)).strftime('%B')}",
    }
    for n, (scanned, words) in enumerate(answers.items()):
        scan(page, scanned)
        problem = page.inner_text("#problem")
        assert words in problem, (scanned, problem)
        assert "cap" not in problem and "{" not in problem
        page.screenshot(path=shots / f"{n}-wrong-scan.png", full_page=True)

    with ReferenceServer(log_level="WARNING") as elsewhere:
        foreign = issue(elsewhere.create_tenant("Another shop"), "X1")
    scan(page, foreign)
    assert "return code of another shop" in page.inner_text("#problem")
    page.close()


def test_a_fully_returned_code_says_where_and_when_and_offers_no_confirm(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    lines = [dict(SHOES[1], line_id=str(n)) for n in (1, 2, 10, 11)]
    token = issue(shop, "A2002", lines)
    page = sign_in(browser, server.url, shop.key("pos"))
    scan(page, token)
    ids = page.eval_on_selector_all("td.remaining", "cells => cells.map(c => c.dataset.line)")
    assert ids == ["1", "2", "10", "11"]  # counted, not sorted as text
    with shop.client("pos") as till:
        till.returns.redeem(token, {i: 1 for i in ids}, "other-till:1", "hamburg-2", "card")
    page.goto(f"{server.url}/pos/returns")
    scan(page, token)
    problem = page.inner_text("#problem")
    assert "already returned, last at store hamburg-2" in problem
    assert page.query_selector("#review") is None and page.query_selector(".ok") is None
    page.close()


def test_crafted_forms_get_words_not_errors(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    token = issue(shop, "A2003")
    page = sign_in(browser, server.url, shop.key("pos"))
    scan(page, token)
    csrf = page.get_attribute('#order-form input[name="csrf"]', "value")
    url = f"{server.url}/pos/returns/review"
    cases = {
        "Choose how the money goes back": {"qty-1": "1"},
        "At most 2 of Trail runner": {"qty-1": "1000", "refund_method": "card"},
        "whole number": {"qty-1": "-1", "refund_method": "card"},
        "at least one": {"qty-1": "0", "refund_method": "card"},
    }
    for words, fields in cases.items():
        answer = page.request.post(url, form={"csrf": csrf, "token": token, **fields})
        assert answer.status == 422 and words in answer.text(), (fields, answer.status)
    page.close()


def test_a_till_signed_in_before_a_key_rotation_takes_the_new_codes(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    page = sign_in(browser, server.url, shop.key("pos"))  # caches the shop's keys
    with shop.client("admin") as admin:
        admin.returns.rotate_keys()
    scan(page, issue(shop, "ROT-9"))
    assert "Order ROT-9" in page.inner_text("h1")
    page.close()


def test_a_photo_of_the_code_gives_the_same_result(
    browser: Any, server: ReferenceServer, shop: TestTenant, tmp_path: Path
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
        page.click("#key-form button")
    assert "not a till key" in page.inner_text("#problem")
    response = page.request.post(
        f"{server.url}/pos/returns/scan", form={"code": "RT1:X", "csrf": "x"}
    )
    assert "/pos/login" in response.url
    page.close()


def docs_images(shots: Path) -> Path:
    """docs/images when `make pos-screenshots` asks for the pictures of docs/pos.md."""
    wanted = os.environ.get("OMNISDK_POS_SCREENSHOTS")
    return Path(wanted) if wanted else shots


def pos_backend(server_url: str, data_dir: Path, **options: Any) -> ServedApp:
    """A shop's POS backend that mounts the station, with a data_dir for offline work."""
    config = StationConfig(server_url=server_url, data_dir=data_dir, **options)
    return ServedApp(hosting(create_station(config)))


def test_a_self_mounted_station_reads_no_body_before_the_sign_in(tmp_path: Path) -> None:
    station = create_station(StationConfig(server_url="http://127.0.0.1:9", data_dir=tmp_path))
    read = 0

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        async def counted() -> Any:
            nonlocal read
            message = await receive()
            read += len(message.get("body", b""))
            return message

        await station(scope, counted, send)

    app = FastAPI()
    app.mount("/pos", counting)
    with ServedApp(app) as backend, httpx.Client() as http:
        chunks = (b"\0" * (1024 * 1024) for _ in range(64))
        answer = http.post(f"{backend.url}/pos/returns/photo", content=chunks)
        assert answer.status_code == 303 and answer.headers["location"] == "/pos/login"
        assert read == 0  # not a byte of the 64 MiB was read before the answer
        signed_out_form = http.post(f"{backend.url}/pos/returns/scan", data={"code": "RT1:X"})
        assert signed_out_form.status_code == 303 and read == 0


def test_offline_return_with_the_cap_then_confirmed_with_the_shop_price_shown(
    browser: Any, tmp_path: Path, shots: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    server = ServerProcess(database).start()
    shop = server.create_tenant("Shoe Shop Hamburg")
    token = issue(shop, "A4004")  # type: ignore[arg-type]
    address, secret = server.url, server.secret_key
    with pos_backend(address, tmp_path / "tills", offline_cap=100.0) as backend:
        page = sign_in(browser, backend.url, shop.key("pos"), till="till-9")
        server.stop()  # the network is gone
        scan(page, token)
        assert "offline" in page.inner_text("#offline")
        assert remaining(page, "1") == "unknown (offline)"
        accessible(page, "offline order")
        page.screenshot(path=docs_images(shots) / "pos-offline.png", full_page=True)
        page.fill("#qty-1", "1")
        for amount in ("0", "-5", "abc"):
            page.fill("#amount", amount)
            with page.expect_navigation():
                page.click("#review")
            assert "more than 0" in page.inner_text("#problem")
        page.fill("#amount", "200")
        with page.expect_navigation():
            page.click("#review")
        with page.expect_navigation():
            page.click("#confirm")
        assert "limit of 100.00" in page.inner_text("#problem")  # over the till's cap
        page.fill("#qty-1", "1")
        page.fill("#amount", "80")
        with page.expect_navigation():
            page.click("#review")
        with page.expect_navigation():
            page.click("#confirm")
        page.wait_for_url("**/returns/receipt/**")
        assert page.inner_text("#receipt-status").startswith("PENDING")
        accessible(page, "pending receipt")
        page.emulate_media(media="print")
        assert page.is_visible("#receipt-status")  # the pending mark is on paper
        assert not page.is_visible("#code") and not page.is_visible("#print")
        page.screenshot(path=docs_images(shots) / "pos-pending-printed.png", full_page=True)
        page.emulate_media(media="screen")

        port = int(address.rsplit(":", 1)[1])
        with ServerProcess(database, port=port, secret_key=secret):
            with page.expect_navigation():
                page.click("#send-now")
            assert page.inner_text("#receipt-status") == "Confirmed by the shop."
            repriced = page.inner_text("#repriced")
            assert "89.00" in repriced and "80.00" in repriced and "9.00" in repriced
            assert "80.00" in page.inner_text("#refund")  # what was refunded stays
            page.screenshot(path=shots / "3-confirmed-receipt.png", full_page=True)
            with shop.client("pos") as till:
                assert till.returns.status(token).lines[0].remaining == 1
        page.close()


SEES_PROGRESS = """() => {
    sessionStorage.removeItem('progress-shown');
    const note = document.getElementById('progress');
    new MutationObserver(() => {
        if (!note.hidden) sessionStorage.setItem('progress-shown', 'yes');
    }).observe(note, {attributes: true});
}"""


def test_a_silently_dropping_network_shows_progress_then_works_offline(
    browser: Any, tmp_path: Path, shots: Path
) -> None:
    database = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    with ServerProcess(database) as server:
        shop = server.create_tenant("Shoe Shop Leipzig")
        first, second = issue(shop, "D1"), issue(shop, "D2")  # type: ignore[arg-type]
        with FaultProxy(server.url) as proxy:
            with pos_backend(proxy.url, tmp_path / "tills", timeout=2.0) as backend:
                page = sign_in(browser, backend.url, shop.key("pos"))
                proxy.blackhole.set()  # packets vanish: no refusal, no answer
                wait_for_focus(page, "code")
                page.keyboard.type(first)
                # Playwright waits for a page that is navigating away, so the page itself
                # notes (in its sessionStorage, which outlives the navigation) that the
                # progress note became visible while the answer was awaited.
                page.evaluate(SEES_PROGRESS)
                with page.expect_navigation():
                    page.keyboard.press("Enter")
                assert page.evaluate("sessionStorage.getItem('progress-shown')") == "yes"
                assert "offline" in page.inner_text("#offline")
                # Known offline now: the next scan does not wait for the network again.
                page.goto(f"{backend.url}/pos/returns")
                scan(page, second)
                assert "Order D2" in page.inner_text("h1") and page.is_visible("#offline")
                page.keyboard.type("1")
                page.fill("#amount", "89")
                with page.expect_navigation():
                    page.click("#review")
                with page.expect_navigation():
                    page.click("#confirm")  # queued on the till, without waiting again
                assert page.inner_text("#receipt-status").startswith("PENDING")
                proxy.blackhole.clear()  # the network is back
                with page.expect_navigation():
                    page.click("#send-now")
                assert page.inner_text("#receipt-status") == "Confirmed by the shop."
                page.close()


def test_enrolment_by_qr_and_a_restart_keeps_the_till_signed_in(
    browser: Any, tmp_path: Path, shots: Path
) -> None:
    import zxingcpp
    from PIL import Image

    with ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}") as server:
        shop = server.create_tenant("Shoe Shop Kraków")
        token = issue(shop, "E1")  # type: ignore[arg-type]
        context = browser.new_context(viewport={"width": 1024, "height": 900})
        with pos_backend(server.url, tmp_path / "tills") as backend:
            admin = context.new_page()
            admin.goto(f"{backend.url}/pos/enrol")
            admin.fill("#admin_key", shop.key("admin"))
            admin.fill("#store_id", "krakow-1")
            admin.fill("#till_id", "till-2")
            with admin.expect_navigation():
                admin.keyboard.press("Enter")
            accessible(admin, "enrolment code")
            admin.locator("#enrolment-code").screenshot(path=tmp_path / "enrol.png")
            admin.screenshot(path=shots / "1-enrolment-code.png", full_page=True)
            (read,) = zxingcpp.read_barcodes(Image.open(tmp_path / "enrol.png"))
            till = context.new_page()
            till.goto(f"{backend.url}/pos/returns")
            scan(till, read.text, field="enrolment")
            till.wait_for_url("**/pos/returns")
            assert "krakow-1" in till.inner_text("header")
            # Single use: the same code signs nobody else in.
            other = browser.new_page()
            other.goto(f"{backend.url}/pos/login")
            scan(other, read.text, field="enrolment")
            assert "used or has expired" in other.inner_text("#problem")
            other.close()
        with pos_backend(server.url, tmp_path / "tills") as restarted:  # a new process
            till.goto(f"{restarted.url}/pos/returns")
            assert till.url.endswith("/pos/returns")  # still signed in
            scan(till, token)
            assert "Order E1" in till.inner_text("h1")
        context.close()


def test_a_till_whose_key_the_shop_revokes_is_signed_out(
    browser: Any, server: ReferenceServer, shop: TestTenant
) -> None:
    with shop.client("admin") as admin:
        created = admin.keys.create("pos", "till to revoke")
        page = sign_in(browser, server.url, created.secret)
        admin.keys.revoke(created.key_id)
    scan(page, issue(shop, "REV-1"))
    assert page.url.endswith("/pos/returns/scan")
    assert "revoked" in page.inner_text("#problem")
    page.goto(f"{server.url}/pos/returns")
    assert page.url.endswith("/pos/login")
    page.close()


def test_a_till_signs_in_again_offline_with_the_key_that_signed_it_in_before(
    browser: Any, tmp_path: Path
) -> None:
    server = ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}").start()
    shop = server.create_tenant("Shoe Shop Gdańsk")
    token = issue(shop, "F1")  # type: ignore[arg-type]
    key = shop.key("pos")
    with pos_backend(server.url, tmp_path / "tills") as backend:
        page = sign_in(browser, backend.url, key, till="till-4")
        with page.expect_navigation():
            page.click("text=Sign out")
        server.stop()  # the network is gone
        for wrong in ("omk_pos_not-the-key", shop.key("web")):
            page.fill("#api_key", wrong)
            page.fill("#store_id", "berlin-1")
            page.fill("#till_id", "till-4")
            with page.expect_navigation():
                page.click("#key-form button")
            assert "cannot be reached" in page.inner_text("#problem")
        page.fill("#api_key", key)
        page.fill("#store_id", "berlin-1")
        page.fill("#till_id", "till-4")
        with page.expect_navigation():
            page.click("#key-form button")
        assert page.url.endswith("/pos/returns")
        scan(page, token)
        assert "Order F1" in page.inner_text("h1") and page.is_visible("#offline")
        page.close()


def test_a_lost_answer_shows_the_review_again_and_its_second_confirm_refunds_once(
    browser: Any, tmp_path: Path
) -> None:
    """The shop took the return but its answer was lost. The till said the server could not
    be reached and sent the clerk back to the order, whose new review was a new transaction:
    confirmed again, the unit was refunded twice."""
    lost: list[str] = []

    def first_redeem(method: str, path: str) -> bool:
        if method == "POST" and path.startswith("/v1/returns/redeem") and not lost:
            lost.append(path)
            return True
        return False

    with ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}") as server:
        shop = server.create_tenant("Shoe Shop Leipzig")
        token = issue(shop, "L1")  # type: ignore[arg-type]
        with (
            FaultProxy(server.url, first_redeem) as proxy,
            pos_backend(proxy.url, None, timeout=5.0) as backend,  # type: ignore[arg-type]
        ):
            page = sign_in(browser, backend.url, shop.key("pos"))
            scan(page, token)
            page.fill("#qty-1", "1")
            with page.expect_navigation():
                page.click("#review")
            transaction = page.input_value('input[name="transaction"]')
            with page.expect_navigation():
                page.click("#confirm")
            assert lost, "the proxy lost no answer"
            assert page.inner_text("h1").startswith("Review the return")
            assert "may already be recorded" in page.inner_text("#problem")
            assert page.input_value('input[name="transaction"]') == transaction
            accessible(page, "review after a lost answer")
            with page.expect_navigation():
                page.click("#confirm")
            page.wait_for_url(f"**/returns/receipt/{transaction}")
            assert page.inner_text("#receipt-status") == "Confirmed by the shop."
            page.close()
        with shop.client("pos") as till:
            status = till.returns.status(token)
        assert [r.till_transaction_id for r in status.redemptions] == [transaction]
        assert status.lines[0].remaining == 1


def test_an_offline_return_the_shop_then_refuses_says_so_on_its_receipt_and_the_scan_page(
    browser: Any, tmp_path: Path
) -> None:
    """Sent once the network was back and refused (the code withdrawn meanwhile), it stayed
    PENDING on the receipt for good and vanished from the scan page: the refund given at the
    till was never shown to anyone."""
    with ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}") as server:
        shop = server.create_tenant("Shoe Shop Leipzig")
        token = issue(shop, "W2")  # type: ignore[arg-type]
        with (
            FaultProxy(server.url) as proxy,
            pos_backend(proxy.url, tmp_path / "tills", timeout=2.0) as backend,
        ):
            page = sign_in(browser, backend.url, shop.key("pos"))
            proxy.blackhole.set()
            scan(page, token)
            assert page.is_visible("#offline")
            page.fill("#qty-1", "1")
            page.fill("#amount", "89")
            with page.expect_navigation():
                page.click("#review")
            with page.expect_navigation():
                page.click("#confirm")
            assert page.inner_text("#receipt-status").startswith("PENDING")
            with shop.client("admin") as admin:
                admin.returns.revoke_order("W2")
            proxy.blackhole.clear()
            with page.expect_navigation():
                page.click("#send-now")
            status = page.inner_text("#receipt-status")
            assert status.startswith("REFUSED") and "withdrawn" in status, status
            assert not page.is_visible("#send-now")
            page.goto(f"{backend.url}/pos/returns")
            assert "Refused by the shop (1)" in page.inner_text("#refused-title")
            assert "W2" in page.inner_text("section.refused")
            accessible(page, "scan page with a refused return")
            page.close()
