"""Return codes the server must refuse to make, a till transaction id used twice at once, and
a server whose secret key cannot open its sealed signing keys (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path

import pytest

from omnisdk import qr
from omnisdk.core import tokens
from omnisdk.core.problems import ProblemType
from omnisdk.testing import ServerProcess
from server_stub.sealing import SecretKeyMissing
from server_stub.services.signing_keys import SecretKeyMismatch
from tests.server.conftest import ShopForTest, start_harness
from tests.server.test_returns import issue, redeem


def long_lines(count: int, sku_chars: int) -> list[dict[str, object]]:
    return [
        {"line_id": str(n), "sku": f"{n:0{sku_chars}d}", "quantity": 1, "unit_price": 1.0}
        for n in range(1, count + 1)
    ]


def test_the_scannable_limit_is_the_capacity_of_its_qr_version() -> None:
    at_limit = "A" * tokens.MAX_SCANNABLE_CHARS
    assert qr.version(at_limit, qr.Medium.PRINT) == tokens.SCANNABLE_QR_VERSION
    assert qr.version(at_limit + "A", qr.Medium.PRINT) == tokens.SCANNABLE_QR_VERSION + 1


@pytest.mark.parametrize(("count", "sku_chars"), [(45, 30), (50, 64)])
async def test_an_order_whose_code_would_not_scan_is_refused_with_how_to_split_it(
    shop: ShopForTest, count: int, sku_chars: int
) -> None:
    body = {"order_ref": f"BIG-{count}", "lines": long_lines(count, sku_chars)}
    refused = await shop.request("POST", "/v1/returns", "web", json=body)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["type"] == ProblemType.VALIDATION_ERROR
    assert problem["max_code_chars"] == tokens.MAX_SCANNABLE_CHARS < problem["code_chars"]
    assert "Split the order" in problem["detail"]
    # The advice works: a part of that many lines is issued, and nothing of the refused
    # order was registered (its order_ref takes other lines).
    part = long_lines(problem["lines_per_code"], sku_chars)
    fits = await shop.request(
        "POST", "/v1/returns", "web", json={"order_ref": f"BIG-{count}", "lines": part}
    )
    assert fits.status_code == 201, fits.text
    token = fits.json()["token"]
    assert len(token) <= tokens.MAX_SCANNABLE_CHARS
    image = await shop.request("GET", fits.json()["qr_png_path"], "web")
    assert image.status_code == 200
    status = await shop.request("POST", "/v1/returns/status", "pos", json={"token": token})
    assert status.status_code == 200


async def test_one_till_transaction_on_two_codes_at_once_is_a_conflict_not_an_error(
    shop: ShopForTest,
) -> None:
    for run in range(20):  # main answered 500 in 11 of 20 such runs on PostgreSQL
        first = (await issue(shop, order_ref=f"twin-a-{run}"))["token"]
        second = (await issue(shop, order_ref=f"twin-b-{run}"))["token"]
        answers = await asyncio.gather(
            redeem(shop, first, {"1": 1}, f"till-9:{run}"),
            redeem(shop, second, {"1": 1}, f"till-9:{run}"),
        )
        assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
        loser = next(a for a in answers if a.status_code == 409)
        assert loser.json()["type"] == ProblemType.CONFLICT
        taken = [
            (await shop.request("POST", "/v1/returns/status", "pos", json={"token": t})).json()
            for t in (first, second)
        ]
        # The loser's units were not taken: exactly one unit left one order.
        assert sorted(s["lines"][0]["returned"] for s in taken) == [0, 1]


async def test_a_server_refuses_to_start_with_a_secret_that_cannot_open_its_keys(
    migrated_database_url: str, shop: ShopForTest
) -> None:
    await issue(shop, order_ref="sealed-1")
    wrong = base64.b64encode(os.urandom(32)).decode()
    with pytest.raises(SecretKeyMismatch, match="cannot open the signing keys"):
        async for _ in start_harness(migrated_database_url, secret_key=wrong):
            pass


async def test_a_lost_secret_key_file_is_not_replaced_silently(
    migrated_database_url: str, shop: ShopForTest, tmp_path: Path
) -> None:
    await issue(shop, order_ref="sealed-2")
    missing = tmp_path / "omnisdk-secret.key"
    with pytest.raises(SecretKeyMissing, match="restore the file"):
        async for _ in start_harness(
            migrated_database_url, secret_key=None, secret_key_file=str(missing)
        ):
            pass
    assert not missing.exists()


def test_serve_exits_with_a_clear_message_when_its_secret_cannot_open_the_keys(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    with ServerProcess(url) as first:
        shop = first.create_tenant()
        with shop.client("web") as web:
            web.returns.issue("SEALED-3", [{"line_id": "1", "sku": "A", "quantity": 1}])
    wrong = base64.b64encode(os.urandom(32)).decode()
    log = tmp_path / "second.log"
    with pytest.raises(RuntimeError, match="exited"):
        ServerProcess(url, secret_key=wrong, log_path=log).start()
    assert "cannot open the signing keys" in log.read_text()
