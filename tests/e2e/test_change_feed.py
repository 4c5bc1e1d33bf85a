"""The change feed: a change made through one channel reaches another channel's watcher live."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import pytest

from omnisdk.resources.changes import Change
from omnisdk.testing import ServerProcess, TestTenant
from tests.conftest import PostgresDatabases


def watch_in_background(
    shop: TestTenant, channel: str, customer_id: str, seen: queue.Queue[Change]
) -> None:
    def run() -> None:
        with shop.client(channel) as client:
            for change in client.changes.watch(customer_id):
                seen.put(change)

    threading.Thread(target=run, daemon=True).start()


def wait_until_watching(shop: TestTenant, customer_id: str, seen: queue.Queue[Change]) -> None:
    """Poke the cart until the watcher reports a change (it may connect a moment late)."""
    with shop.client("web") as web:
        for attempt in range(50):
            web.carts.add(customer_id, f"PROBE-{attempt}", 1)
            try:
                seen.get(timeout=0.2)
                break
            except queue.Empty:
                continue
        while not seen.empty():
            seen.get_nowait()


def test_the_phone_sees_the_shoes_the_laptop_adds(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as laptop:
        amy = laptop.identity.identify(anonymous_id="laptop", email="amy@example.com").customer_id
        seen: queue.Queue[Change] = queue.Queue()
        watch_in_background(shop, "app", amy, seen)
        wait_until_watching(shop, amy, seen)
        laptop.carts.add(amy, "TR2", 1, {"size": "38"}, name="Trail runner", unit_price=89.0)
        change = seen.get(timeout=10)
    assert change.kind == "cart"
    assert any(line.sku == "TR2" and line.quantity == 1 for line in change.data.lines)


def test_a_change_through_one_process_reaches_a_watcher_on_another(
    postgres_databases: PostgresDatabases | None, tmp_path: Path
) -> None:
    if postgres_databases is None:
        pytest.skip("needs PostgreSQL (several server processes share it)")
    url = postgres_databases.new()
    with ServerProcess(url) as first:
        shop = first.create_tenant()
        with ServerProcess(url, secret_key=first.secret_key) as second:
            with shop.client("web") as web:
                amy = web.identity.identify(anonymous_id="laptop").customer_id
            seen: queue.Queue[Change] = queue.Queue()
            watcher = TestTenant(shop.id, shop.name, second)  # same tenant, the other process
            watch_in_background(watcher, "app", amy, seen)
            wait_until_watching(shop, amy, seen)  # writes go through the first process
            with shop.client("web") as web:
                web.carts.add(amy, "TR2", 2)
            change = seen.get(timeout=10)
    assert any(line.sku == "TR2" and line.quantity == 2 for line in change.data.lines)
