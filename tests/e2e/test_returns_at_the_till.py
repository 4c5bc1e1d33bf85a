"""A return at a till, through the SDK against `omnisdk-server serve`: online and offline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import omnisdk
from omnisdk.core.tokens import Status
from omnisdk.testing import ServerProcess
from tests.core.test_qr import read_png

SHOES = [
    {"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0},
    {"line_id": "2", "sku": "SOCK-3P", "quantity": 1, "unit_price": 12.5},
]


def test_issue_verify_offline_and_redeem_one_of_two(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as web, shop.client("pos") as till:
        issued = web.returns.issue("1042", SHOES, refund_methods=["card"], currency="EUR")
        (scanned,) = read_png(web.returns.qr_png(issued.token_id))
        assert scanned == issued.token
        check = till.returns.verify(scanned + "\n")
        assert check.valid and check.claims is not None and check.claims.order_ref == "1042"
        done = till.returns.redeem(scanned, {"1": 1}, "till-3:0001", "berlin-1", "card")
        assert done.status == "confirmed" and done.value == 89.0
        status = till.returns.status(scanned)
        assert [(line.line_id, line.remaining) for line in status.lines] == [("1", 1), ("2", 1)]
        with pytest.raises(omnisdk.ConflictError) as twice:
            till.returns.redeem(scanned, {"1": 2}, "till-3:0002", "berlin-1", "card")
        assert twice.value.type.endswith("already-returned")
        with pytest.raises(omnisdk.ValidationError) as tampered:
            till.returns.redeem(scanned[:-3] + "AAA", {"1": 1}, "till-3:0003", "berlin-1", "card")
        assert tampered.value.problem["reason"] in {"bad_signature", "malformed"}


def test_a_till_verifies_with_cached_keys_when_the_network_is_gone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    server = ServerProcess(url).start()
    shop = server.create_tenant()
    with shop.client("web") as web:
        token = web.returns.issue("77", SHOES).token
    pos_key = shop.key("pos")
    with omnisdk.Client(server.url, pos_key, channel="pos", data_dir=tmp_path / "till") as till:
        till.returns.keys()
    secret, address = server.secret_key, server.url
    server.stop()
    # A new process on the same till, network down: the keys come from its data_dir.
    retry = omnisdk.RetryPolicy(max_retries=0)
    with omnisdk.Client(
        address, pos_key, channel="pos", data_dir=tmp_path / "till", retry_policy=retry
    ) as till:
        assert till.returns.verify(token).valid
        late = till.returns.verify(token, now=datetime.now(UTC) + timedelta(days=40))
        assert late.status is Status.EXPIRED and "expired on" in late.message
    assert secret


def test_offline_return_is_queued_within_the_cap_and_confirmed_later(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    server = ServerProcess(url).start()
    shop = server.create_tenant()
    with shop.client("web") as web:
        token = web.returns.issue("88", SHOES, refund_methods=["card", "cash"]).token
    pos_key, address, secret = shop.key("pos"), server.url, server.secret_key
    till_dir = tmp_path / "till"
    retry = omnisdk.RetryPolicy(max_retries=0)
    with omnisdk.Client(
        address, pos_key, channel="pos", data_dir=till_dir, offline_cap=100.0, retry_policy=retry
    ) as till:
        till.returns.keys()
        server.stop()
        queued = till.returns.redeem(
            token, {"1": 1}, "till-5:0001", "hamburg-2", "cash", queue_if_offline=True, value=89.0
        )
        assert queued.status == "pending"
        with pytest.raises(omnisdk.OfflineLimitReached):
            till.returns.redeem(
                token,
                {"2": 1},
                "till-5:0002",
                "hamburg-2",
                "cash",
                queue_if_offline=True,
                value=12.5,
            )
        with pytest.raises(omnisdk.ReturnRefused):
            till.returns.redeem(
                token[:-2] + "ZZ",
                {"1": 1},
                "till-5:0003",
                "hamburg-2",
                "cash",
                queue_if_offline=True,
                value=1.0,
            )
        assert [p["request"]["till_transaction_id"] for p in till.returns.pending()] == [
            "till-5:0001"
        ]

    port = int(address.rsplit(":", 1)[1])
    with ServerProcess(url, port=port, secret_key=secret):
        with omnisdk.Client(address, pos_key, channel="pos", data_dir=till_dir) as till:
            outcome = till.returns.sync_pending()
            assert [r.till_transaction_id for r in outcome["confirmed"]] == ["till-5:0001"]
            assert outcome["left"] == 0 and till.returns.pending() == []
            status = till.returns.status(token)
            assert status.redemptions[0].store_id == "hamburg-2"
            assert status.lines[0].remaining == 1
