"""`omnisdk-server alerts ...`, as an operator types them, against a real receiver."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from server_stub.cli import main
from server_stub.settings import settings_from_environment
from tests.server.conftest import TEST_SECRET_KEY, ShopForTest, start_harness
from tests.server.test_alerts import customer, grant, level, stock, subscribe
from tests.webhook_receiver import WebhookReceiver


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("OMNISDK_SECRET_KEY", TEST_SECRET_KEY)
    settings_from_environment.cache_clear()
    yield f"sqlite+aiosqlite:///{tmp_path / 'alerts-cli.sqlite3'}"
    settings_from_environment.cache_clear()


async def _shop(url: str) -> ShopForTest:
    async for server in start_harness(url, alerts_delivery=False):
        return await server.shop()
    raise AssertionError("no harness")


async def _amy_waits_for_shoes_that_arrive(url: str, known: ShopForTest) -> str:
    async for server in start_harness(url, alerts_delivery=False):
        shop = ShopForTest(known.id, server.http, known.keys)
        amy = await customer(shop, "phone")
        await grant(shop, amy, "marketing:push")
        await subscribe(shop, amy)
        await stock(shop, levels=[level(2)])
        return amy
    raise AssertionError("no harness")


def test_an_operator_adds_a_webhook_delivers_reads_metrics_and_replays(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--database-url", url]
    assert main(["migrate", *args]) == 0
    shop = asyncio.run(_shop(url))
    with WebhookReceiver() as receiver:
        capsys.readouterr()
        add = ["alerts", "webhook-add", "--tenant", shop.id, "--url", receiver.url, *args]
        assert main(add) == 0
        out = capsys.readouterr()
        receiver.secret = out.out.strip()
        assert receiver.secret.startswith("whsec_") and "shown this once" in out.err
        assert main(["alerts", "webhooks", "--tenant", shop.id, *args]) == 0
        listing = capsys.readouterr().out
        assert receiver.url in listing and receiver.secret not in listing
        amy = asyncio.run(_amy_waits_for_shoes_that_arrive(url, shop))
        assert main(["alerts", "deliver", "--tenant", shop.id, *args]) == 0
        [payload] = receiver.unique
        assert payload["data"]["customer_id"] == amy
        capsys.readouterr()
        assert main(["alerts", "metrics", "--tenant", shop.id, *args]) == 0
        metrics = json.loads(capsys.readouterr().out)
        assert metrics["kinds"]["back_in_stock"]["sent"] == 1
        assert main(["alerts", "messages", "--tenant", shop.id, "--status", "sent", *args]) == 0
        assert payload["data"]["message_id"] in capsys.readouterr().out
        assert main(["alerts", "replay", "--tenant", shop.id, *args]) == 0
        assert "0 messages" in capsys.readouterr().out  # nothing was dead-lettered


def test_an_unknown_tenant_is_a_clear_error(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "metrics", "--tenant", "ten_nobody", "--database-url", url]) == 2
    assert "no tenant 'ten_nobody'" in capsys.readouterr().err
