"""A till's keys after a rotation, forged codes online, and the offline cap under pressure:
the sync and the async client alike, against `omnisdk-server serve`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import omnisdk
from omnisdk.core import tokens
from omnisdk.testing import ServerProcess, TestTenant

SHOES = [
    {"line_id": "1", "sku": "TR2-38", "quantity": 10, "unit_price": 89.0},
    {"line_id": "2", "sku": "SOCK-3P", "quantity": 1, "unit_price": 12.5},
]
OFFLINE = omnisdk.RetryPolicy(max_retries=0)


def verify_with(
    kind: str, shop: TestTenant, data_dir: Path, codes: list[str]
) -> list[tokens.Verification]:
    """Verify `codes` in order with one long-lived till client of `kind` (sync or async)."""
    if kind == "sync":
        with shop.client("pos", data_dir=data_dir) as till:
            return [till.returns.verify(code) for code in codes]

    async def run() -> list[tokens.Verification]:
        async with shop.async_client("pos", data_dir=data_dir) as till:
            return [await till.returns.verify(code) for code in codes]

    return asyncio.run(run())


def forged_code(issuer: str) -> str:
    """A well-formed code of this shop signed with a key the shop never had."""
    now = datetime.now(UTC).replace(microsecond=0)
    claims = tokens.ReturnClaims(
        issuer=issuer,
        issued_at=now,
        expires_at=now + timedelta(days=30),
        token_id=os.urandom(16),
        order_ref="FORGED-1",
        lines=(tokens.ReturnLine("1", "TR2-38", 1),),
        refund_methods=("cash",),
    )
    return tokens.sign(claims, Ed25519PrivateKey.generate(), os.urandom(8))


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_signed_in_till_verifies_codes_signed_after_a_key_rotation(
    kind: str, server_process: ServerProcess, tmp_path: Path
) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as web, shop.client("admin") as admin:
        before = web.returns.issue("ROT-1", SHOES).token
        # The till's client caches the keys with its first verify, then the shop rotates.
        if kind == "sync":
            with shop.client("pos", data_dir=tmp_path) as till:
                assert till.returns.verify(before).valid
                admin.returns.rotate_keys()
                after = web.returns.issue("ROT-2", SHOES).token
                assert till.returns.verify(after).valid
            return

        async def run() -> None:
            async with shop.async_client("pos", data_dir=tmp_path) as till:
                assert (await till.returns.verify(before)).valid
                admin.returns.rotate_keys()
                after = web.returns.issue("ROT-2", SHOES).token
                assert (await till.returns.verify(after)).valid

        asyncio.run(run())


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_code_signed_with_a_key_the_shop_never_had_is_not_genuine_online(
    kind: str, server_process: ServerProcess, tmp_path: Path
) -> None:
    shop = server_process.create_tenant()
    (outcome,) = verify_with(kind, shop, tmp_path, [forged_code(shop.id)])
    assert outcome.status is tokens.Status.BAD_SIGNATURE
    assert "network" not in outcome.message


@pytest.fixture
def offline_till(tmp_path: Path) -> Iterator[tuple[str, Path, str, str]]:
    """A shop's code and a till whose keys are cached, with the server then gone."""
    server = ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}").start()
    shop = server.create_tenant()
    with shop.client("web") as web:
        token = web.returns.issue("CAP-1", SHOES, refund_methods=["cash"]).token
    till_dir, key, url = tmp_path / "till", shop.key("pos"), server.url
    with shop.client("pos", data_dir=till_dir) as till:
        till.returns.keys()
    server.stop()
    yield url, till_dir, key, token


@pytest.mark.parametrize("amount", [None, 0.0, -5.0, float("nan")])
def test_an_offline_return_needs_an_amount_above_zero(
    offline_till: tuple[str, Path, str, str], amount: float | None
) -> None:
    url, till_dir, key, token = offline_till
    with omnisdk.Client(
        url, key, channel="pos", data_dir=till_dir, offline_cap=100.0, retry_policy=OFFLINE
    ) as till:
        with pytest.raises(omnisdk.OfflineLimitReached, match="more than 0"):
            till.returns.redeem(
                token, {"1": 1}, "t:1", "s-1", "cash", queue_if_offline=True, value=amount
            )
        assert till.returns.pending() == []


def test_simultaneous_offline_returns_never_pass_the_cap_together(
    offline_till: tuple[str, Path, str, str],
) -> None:
    url, till_dir, key, token = offline_till

    async def one(till: omnisdk.AsyncClient, n: int) -> bool:
        try:
            await till.returns.redeem(
                token, {"1": 1}, f"t:{n}", "s-1", "cash", queue_if_offline=True, value=40.0
            )
        except omnisdk.OfflineLimitReached:
            return False
        return True

    async def run() -> list[bool]:
        async with omnisdk.AsyncClient(
            url, key, channel="pos", data_dir=till_dir, offline_cap=100.0, retry_policy=OFFLINE
        ) as till:
            return await asyncio.gather(*(one(till, n) for n in range(8)))

    taken = asyncio.run(run())
    assert sum(taken) == 2
    with omnisdk.Client(url, key, channel="pos", data_dir=till_dir, retry_policy=OFFLINE) as till:
        assert sum(item["value"] for item in till.returns.pending()) == 80.0


def test_settling_reports_an_offline_amount_the_shop_prices_differently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    server = ServerProcess(url).start()
    shop = server.create_tenant()
    with shop.client("web") as web:
        token = web.returns.issue("PRICE-1", SHOES, refund_methods=["cash"]).token
    key, address, secret = shop.key("pos"), server.url, server.secret_key
    till_dir = tmp_path / "till"
    with omnisdk.Client(
        address, key, channel="pos", data_dir=till_dir, retry_policy=OFFLINE
    ) as till:
        till.returns.keys()
        server.stop()
        till.returns.redeem(
            token, {"1": 1}, "t:9", "s-1", "cash", queue_if_offline=True, value=80.0
        )
    port = int(address.rsplit(":", 1)[1])
    with ServerProcess(url, port=port, secret_key=secret):
        with omnisdk.Client(address, key, channel="pos", data_dir=till_dir) as till:
            outcome = till.returns.sync_pending()
    (repriced,) = outcome["repriced"]
    assert (repriced.till_transaction_id, repriced.refunded, repriced.shop_value) == (
        "t:9",
        80.0,
        89.0,
    )
    assert repriced.difference == 9.0


def test_one_till_transaction_sent_twice_offline_is_queued_once(
    offline_till: tuple[str, Path, str, str],
) -> None:
    """A confirm resent through two station processes at once: one pending return, counted
    once against the cap."""
    url, till_dir, key, token = offline_till

    async def confirm(till: omnisdk.AsyncClient) -> omnisdk.models.Redemption:
        return await till.returns.redeem(
            token, {"1": 1}, "t:twice", "s-1", "cash", queue_if_offline=True, value=60.0
        )

    async def run() -> list[omnisdk.models.Redemption]:
        async with omnisdk.AsyncClient(
            url, key, channel="pos", data_dir=till_dir, offline_cap=100.0, retry_policy=OFFLINE
        ) as till:
            return await asyncio.gather(*(confirm(till) for _ in range(4)))

    answers = asyncio.run(run())
    assert {(a.status, a.till_transaction_id, a.value) for a in answers} == {
        ("pending", "t:twice", 60.0)
    }
    with omnisdk.Client(url, key, channel="pos", data_dir=till_dir, retry_policy=OFFLINE) as till:
        assert [item["value"] for item in till.returns.pending()] == [60.0]
