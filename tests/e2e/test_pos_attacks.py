"""The till page under attack, against `omnisdk-server serve`: crafted forms, pictures that
claim billions of pixels, posts from other sites, and codes of another shop never get a 5xx,
nor anything taken back."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest

from omnisdk.testing import ServerProcess, TestTenant
from tests.server.test_pos_scans import png_claiming

SHOES = [
    {"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0},
    {"line_id": "10", "sku": "SOCK-3P", "quantity": 1, "unit_price": 12.5},
]


def issue(shop: TestTenant, order_ref: str) -> str:
    with shop.client("web") as web:
        return web.returns.issue(order_ref, SHOES, refund_methods=["card", "cash"]).token


@pytest.fixture
def till(server_process: ServerProcess) -> Iterator[tuple[httpx.Client, str, TestTenant]]:
    shop = server_process.create_tenant()
    with httpx.Client(base_url=server_process.url) as http:
        form = {"api_key": shop.key("pos"), "store_id": "s-1", "till_id": "t-1"}
        assert http.post("/pos/login", data=form).status_code == 303
        page = http.get("/pos/returns").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is not None
        yield http, csrf.group(1), shop


def problem(page: httpx.Response) -> str:
    found = re.search(r'id="problem"[^>]*>(.*?)</', page.text, re.S)
    return found.group(1).strip() if found else ""


def test_crafted_order_forms_are_answered_in_words_and_take_nothing_back(
    till: tuple[httpx.Client, str, TestTenant],
) -> None:
    http, csrf, shop = till
    token = issue(shop, "A1")
    crafted = [
        {"qty-1": "1"},  # no refund method
        {"qty-1": "1000", "refund_method": "card"},
        {"qty-1": "-1", "refund_method": "card"},
        {"qty-1": "\u0661", "refund_method": "card"},  # an Arabic-Indic digit one
        {"qty-1": "9" * 5000, "refund_method": "card"},
        {"qty-999": "1", "refund_method": "card"},  # no such line
        {"qty-1": "1", "refund_method": "bitcoin"},
    ]
    for form in crafted:
        page = http.post("/pos/returns/review", data={"csrf": csrf, "token": token, **form})
        assert page.status_code == 422 and problem(page), form
    for transaction in ("", "x", "t-1-" + "a" * 5000):
        page = http.post("/pos/returns/confirm", data={"csrf": csrf, "transaction": transaction})
        assert page.status_code == 422 and "reviewed" in problem(page)
    with shop.client("pos") as pos:
        assert all(line.remaining == line.quantity for line in pos.returns.status(token).lines)


def test_a_picture_claiming_billions_of_pixels_is_refused_in_words(
    till: tuple[httpx.Client, str, TestTenant],
) -> None:
    http, csrf, _ = till
    bomb = png_claiming(30_000, 30_000)  # 900 million pixels in about 60 bytes
    page = http.post("/pos/returns/photo", data={"csrf": csrf}, files={"image": ("code.png", bomb)})
    assert page.status_code == 422 and "too large" in problem(page)


def test_another_shops_code_is_named_so(
    till: tuple[httpx.Client, str, TestTenant], server_process: ServerProcess
) -> None:
    http, csrf, _ = till
    foreign = issue(server_process.create_tenant(), "B1")
    page = http.post("/pos/returns/scan", data={"csrf": csrf, "code": foreign})
    assert page.status_code == 422 and "another shop" in problem(page)


def test_a_sign_in_posted_from_another_site_is_refused(
    server_process: ServerProcess,
) -> None:
    shop = server_process.create_tenant()
    form = {"api_key": shop.key("pos"), "store_id": "s-1", "till_id": "t-1"}
    with httpx.Client(base_url=server_process.url) as http:
        refused = http.post("/pos/login", data=form, headers={"origin": "https://evil.example"})
        assert refused.status_code == 403 and "omnisdk_till" not in http.cookies
        own = http.post("/pos/login", data=form, headers={"origin": server_process.url})
        assert own.status_code == 303 and "omnisdk_till" in http.cookies


def test_an_unknown_address_and_an_unreadable_form_get_a_page_not_json(
    till: tuple[httpx.Client, str, TestTenant],
) -> None:
    http, csrf, _ = till
    unknown = http.get("/pos/returns/nothing-here", headers={"accept-language": "pl"})
    assert unknown.status_code == 404 and unknown.headers["content-type"].startswith("text/html")
    assert "nie ma takiej strony" in problem(unknown) and 'id="code"' in unknown.text
    two_files = [("image", ("a.png", b"x")), ("image", ("b.png", b"y"))]
    crafted = http.post("/pos/returns/photo", data={"csrf": csrf}, files=two_files)
    assert crafted.status_code == 400 and "could not be read" in problem(crafted)
    with httpx.Client(base_url=str(http.base_url)) as stranger:
        lost = stranger.get("/pos/nowhere")
        assert lost.status_code == 404 and "no such page" in problem(lost)
