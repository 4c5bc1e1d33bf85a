"""Orders: reading every order for analytics, and recording orders over HTTP, on SQLite.

Reading: `services.orders.stream_orders` (keyset pages of 1,000, each order netted of its
refunds) over 200,000 stored orders of one tenant; the figure is orders read per second. The
ceiling is SQLite itself returning the same columns of the same table in the same order with
the standard library's sqlite3, in one query.

Recording: 1,000 sales recorded one after another through `client.orders.record` (two lines
each, a customer id resolved and locked, the order and its lines stored once per reference);
the peer is the stack's cheapest write, `client.system.ping`, on the same server and client.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

from sqlalchemy import insert

import omnisdk
from bench.report import Figure
from omnisdk.testing import ServerProcess
from server_stub.services import orders
from server_stub.storage.database import Database
from server_stub.storage.migrate import upgrade
from server_stub.storage.tables import order_lines
from server_stub.storage.tables import orders as orders_table

STORED = 200_000
RECORDED = 1_000
TENANT = "ten_bench"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _rows(start: int, count: int) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    heads, lines = [], []
    for n in range(start, start + count):
        order_id = f"ord_{n:012d}"
        heads.append(
            {
                "tenant_id": TENANT,
                "id": order_id,
                "reference": f"R-{n}",
                "customer_id": f"cus_{n % 20_000}" if n % 5 else None,
                "origin_customer_id": f"cus_{n % 20_000}" if n % 5 else None,
                "channel": ("web", "app", "pos")[n % 3],
                "store_id": "store-1" if n % 3 == 2 else None,
                "currency": "EUR",
                "total": Decimal("59.90"),
                "refunded": Decimal("10.00") if n % 7 == 0 else Decimal(0),
                "placed_at": T0 + timedelta(minutes=n),
                "link_method": "checkout" if n % 5 else "none",
                "link_confidence": 1.0 if n % 5 else 0.0,
                "created_at": T0,
            }
        )
        lines.append(
            {
                "tenant_id": TENANT,
                "order_id": order_id,
                "line_no": 1,
                "sku": f"SKU-{n % 97}",
                "quantity": 1,
                "unit_price": Decimal("59.90"),
                "gift": False,
                "gift_confidence": None,
                "returned_quantity": 0,
            }
        )
    return heads, lines


async def _fill_and_stream(path: Path) -> tuple[float, int]:
    url = f"sqlite:///{path}"
    await upgrade(url)
    database = Database(url)
    try:
        for start in range(0, STORED, 10_000):
            heads, lines = _rows(start, 10_000)
            async with database.transaction(write=True) as conn:
                await conn.execute(insert(orders_table), heads)
                await conn.execute(insert(order_lines), lines)
        async with database.transaction(write=False) as conn:
            started = time.perf_counter()
            read = 0
            net = 0.0
            async for page in orders.stream_orders(conn, TENANT, batch=1000):
                read += len(page)
                net += sum(fact.net_value for fact in page)
            elapsed = time.perf_counter() - started
        assert read == STORED, read
        return elapsed, read
    finally:
        await database.dispose()


def _ceiling(path: Path) -> float:
    db = sqlite3.connect(path)
    started = time.perf_counter()
    rows = db.execute(
        "SELECT id, customer_id, channel, store_id, placed_at, total, refunded, currency, "
        "link_method FROM orders WHERE tenant_id = ? ORDER BY placed_at, id",
        (TENANT,),
    ).fetchall()
    elapsed = time.perf_counter() - started
    assert len(rows) == STORED
    db.close()
    return elapsed


def _recording(directory: Path) -> tuple[float, float]:
    with ServerProcess(f"sqlite:///{directory / 'http.sqlite3'}") as server:
        shop = server.create_tenant("bench orders")
        with omnisdk.Client(server.url, shop.key("pos"), channel="pos") as till:
            amy = till.identity.identify(anonymous_id="bench-amy").customer_id
            lines = [
                {"sku": "TR2-38", "quantity": 1, "unit_price": 89.9},
                {"sku": "SOCK", "quantity": 2, "unit_price": 4.99},
            ]
            till.orders.record("warm", lines, currency="EUR", store_id="s1", customer_id=amy)
            till.system.ping("warm")
            started = time.perf_counter()
            for n in range(RECORDED):
                till.orders.record(f"B-{n}", lines, currency="EUR", store_id="s1", customer_id=amy)
            recording = time.perf_counter() - started
            started = time.perf_counter()
            for n in range(RECORDED):
                till.system.ping(f"p{n}")
            pinging = time.perf_counter() - started
            assert till.orders.get(f"B-{RECORDED - 1}").total == 99.88
    return RECORDED / recording, RECORDED / pinging


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        path = directory / "orders.sqlite3"
        streamed, read = asyncio.run(_fill_and_stream(path))
        ceiling = _ceiling(path)
        ours_rate, ceiling_rate = read / streamed, read / ceiling
        recorded, pinged = _recording(directory)
    return [
        Figure(
            "stream_orders over 200,000 orders (keyset pages of 1,000)",
            ours_rate,
            ceiling_rate,
            "sqlite3 one SELECT",
            "orders/s",
            ours_rate / ceiling_rate,
            "information (feeds attribution and LTV)",
            None,
            "noisy: taken on the shared 2-core machine while other work ran",
        ),
        Figure(
            "orders.record over HTTP, one after another",
            recorded,
            pinged,
            "system.ping (cheapest write)",
            "orders/s",
            recorded / pinged,
            "information",
            None,
            "noisy: taken on the shared 2-core machine while other work ran",
        ),
    ]
