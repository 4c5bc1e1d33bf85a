"""The till page answers odd input with a message for the clerk, never a server error."""

from __future__ import annotations

import re
import struct
import zlib
from collections.abc import Iterator

import httpx
import pytest

from omnisdk.testing import ReferenceServer, TestTenant

SHOES = [{"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0, "name": "Shoes"}]


@pytest.fixture(scope="module")
def server() -> Iterator[ReferenceServer]:
    with ReferenceServer(log_level="WARNING") as running:
        yield running


@pytest.fixture
def till(server: ReferenceServer) -> Iterator[tuple[httpx.Client, str, str]]:
    """A signed-in till: the HTTP client (with its session cookie), the CSRF token, a code."""
    shop: TestTenant = server.create_tenant("Shoe Shop")
    with shop.client("web") as web:
        token = web.returns.issue("order-1", SHOES).token
    with httpx.Client(base_url=f"{server.url}/pos", follow_redirects=True) as http:
        signed_in = http.post(
            "/login", data={"api_key": shop.key("pos"), "store_id": "s1", "till_id": "t1"}
        )
        assert signed_in.status_code == 200, signed_in.text
        match = re.search(r'name="csrf" value="([^"]+)"', signed_in.text)
        assert match is not None
        yield http, match.group(1), token


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_a_tiny_picture_claiming_huge_dimensions_is_refused_plainly(
    till: tuple[httpx.Client, str, str],
) -> None:
    http, csrf, _ = till
    bomb = _png_claiming(30_000, 30_000)
    assert len(bomb) < 100
    answer = http.post(
        "/returns/photo", data={"csrf": csrf}, files={"image": ("qr.png", bomb, "image/png")}
    )
    assert answer.status_code == 422
    assert "The picture is too large" in answer.text


@pytest.mark.parametrize("quantity", ["²", "1" + "0" * 30, "-1", "٣"])
def test_a_quantity_that_is_not_a_plain_count_takes_nothing_back(
    till: tuple[httpx.Client, str, str], quantity: str
) -> None:
    http, csrf, token = till
    form = {"csrf": csrf, "token": token, "qty-1": quantity, "refund_method": "card"}
    answer = http.post("/returns/review", data=form)
    # The clerk is told what to correct on the order page; no review, so nothing to confirm.
    assert answer.status_code == 422
    assert 'name="transaction"' not in answer.text
    status = http.post("/returns/scan", data={"csrf": csrf, "code": token})
    assert status.status_code == 200
    assert 'name="qty-1"' in status.text  # the code still returns both pairs
