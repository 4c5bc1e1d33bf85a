"""The return station in Polish and in English, checked by axe-core on every page a clerk sees.

With OMNISDK_POS_SCREENSHOTS set (`make pos-screenshots`), the screenshots are written there
(docs/images) for docs/pos.md; otherwise to test-output/.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from omnisdk.testing import ServerProcess, TestTenant
from server_stub.pos import StationConfig, Store, create_station
from tests.browser.conftest import ServedApp, accessible, hosting
from tests.browser.test_pos_station import SHOES, expired_token

STORES = {
    "krakow-1": Store("Kraków, Rynek Główny 1", "pl", "Europe/Warsaw"),
    "london-1": Store("London, Regent Street", "en", "Europe/London"),
    "poznan-2": Store("Poznań, Półwiejska 2"),  # the browser's language
}


@pytest.fixture(scope="module")
def shop_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("languages")
    with ServerProcess(f"sqlite:///{directory / 'shop.sqlite3'}") as server:
        yield server


@pytest.fixture(scope="module")
def backend(
    shop_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedApp]:
    config = StationConfig(
        server_url=shop_server.url,
        data_dir=tmp_path_factory.mktemp("tills"),
        shop_name="Obuwie Kowalski",
        stores=STORES,
    )
    with ServedApp(hosting(create_station(config))) as served:
        yield served


def screenshots(shots: Path) -> Path:
    wanted = os.environ.get("OMNISDK_POS_SCREENSHOTS")
    return Path(wanted) if wanted else shots


def touch_targets_are_large(page: Any, where: str) -> None:
    """Every visible control is at least 44 x 44 CSS pixels (WCAG 2.5.5); a radio button's
    target is its whole label."""
    small = page.eval_on_selector_all(
        "button, a, input:not([type=hidden]), summary, label.choice",
        """elements => elements
            .filter(e => e.offsetParent !== null && !e.closest('.visually-hidden'))
            .map(e => [e, (e.type === 'radio' && e.closest('label')) || e])
            .map(([e, t]) => [e.id || e.textContent.trim().slice(0, 30), t.getBoundingClientRect()])
            .filter(([, r]) => r.width < 44 || r.height < 44)
            .map(([name, r]) => [name, Math.round(r.width), Math.round(r.height)])""",
    )
    assert small == [], (where, small)


def walk(
    browser: Any,
    backend: ServedApp,
    shop: TestTenant,
    store: str,
    locale: str,
    order_ref: str,
    out: Path,
    suffix: str,
    currency: str = "PLN",
) -> Any:
    """Sign in, scan, review, confirm, with the keyboard; check and photograph each page."""
    page = browser.new_page(viewport={"width": 1024, "height": 860}, locale=locale)
    with shop.client("web") as web:
        token = web.returns.issue(
            order_ref, SHOES, refund_methods=["card", "voucher"], currency=currency
        ).token
    page.goto(f"{backend.url}/pos/login")
    accessible(page, "login")
    page.fill("#api_key", shop.key("pos"))
    page.fill("#store_id", store)
    page.fill("#till_id", "till-1")
    with page.expect_navigation():
        page.click("#key-form button")
    expect(page.locator("#code")).to_be_focused()
    accessible(page, "scan")
    touch_targets_are_large(page, "scan")
    page.keyboard.type(token)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    expect(page.locator("#qty-1")).to_be_focused()
    accessible(page, "order")
    touch_targets_are_large(page, "order")
    page.screenshot(path=out / f"pos-order{suffix}.png", full_page=True)
    page.keyboard.type("1")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    accessible(page, "review")
    touch_targets_are_large(page, "review")
    page.screenshot(path=out / f"pos-review{suffix}.png", full_page=True)
    page.focus("#confirm")
    with page.expect_navigation():
        page.keyboard.press("Enter")
    accessible(page, "receipt")
    touch_targets_are_large(page, "receipt")
    page.screenshot(path=out / f"pos-receipt{suffix}.png", full_page=True)
    return page


def test_a_polish_store_speaks_polish_with_zloty_and_warsaw_time(
    browser: Any, backend: ServedApp, shop_server: ServerProcess, shots: Path
) -> None:
    shop = shop_server.create_tenant("Obuwie Kowalski")
    out = screenshots(shots)
    page = walk(browser, backend, shop, "krakow-1", "en-GB", "PL-1042", out, "-pl")
    assert page.get_attribute("html", "lang") == "pl"  # the store's language wins
    receipt = page.inner_text("article.receipt")
    assert "Potwierdzenie zwrotu" in receipt and "89,00\xa0zł" in receipt
    assert "Kraków, Rynek Główny 1" in receipt and "Obuwie Kowalski" in receipt
    assert "CET" in receipt or "CEST" in receipt
    page.goto(f"{backend.url}/pos/returns")
    page.keyboard.type("5901234123457")  # a product's barcode
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "kod kreskowy produktu" in page.inner_text("#problem")
    accessible(page, "problem")
    page.screenshot(path=out / "pos-not-a-return-code-pl.png", full_page=True)
    page.close()


def test_an_english_store_speaks_english_and_a_store_without_a_language_follows_the_browser(
    browser: Any, backend: ServedApp, shop_server: ServerProcess, shots: Path
) -> None:
    shop = shop_server.create_tenant("Kowalski Shoes")
    out = screenshots(shots)
    page = walk(browser, backend, shop, "london-1", "pl-PL", "EN-1042", out, "", "GBP")
    assert page.get_attribute("html", "lang") == "en"
    assert "Return receipt" in page.inner_text("article.receipt")
    assert "£89.00" in page.inner_text("#refund")
    page.goto(f"{backend.url}/pos/returns")
    old = expired_token(shop_server, shop.id)  # type: ignore[arg-type]
    page.keyboard.type(old)
    with page.expect_navigation():
        page.keyboard.press("Enter")
    assert "expired on" in page.inner_text("#problem")
    page.screenshot(path=out / "pos-expired.png", full_page=True)
    page.close()

    polish_browser = walk(browser, backend, shop, "poznan-2", "pl-PL", "EN-1043", shots, "-x")
    assert polish_browser.get_attribute("html", "lang") == "pl"
    polish_browser.close()
