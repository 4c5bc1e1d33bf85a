"""Stock alerts and messages (issue 20).

- Trigger → messages enqueued, with 100,000 subscriptions waiting on one SKU, on PostgreSQL
  (SQLite when no PostgreSQL answers): a real `omnisdk-server serve` process; each trial sets
  the SKU's stock to 0 and then to 500 units through the inventory API, and the restock's
  first paced batch (k x units = 1,000 subscribers, first come first served) is enqueued in the
  same transaction, so the request's round trip is the time from trigger to messages enqueued.
  p95 over the trials; side by side with the same restock of a SKU nobody waits for (the
  ceiling: the inventory write alone). Goal p95 < 5 s.
- Webhook delivery throughput: 2,000 due messages decided at send time (customer lock,
  stock, orders, cart, consent ledger, preferred channel, quiet hours, caps), signed (Standard
  Webhooks) and posted to a local receiver by the delivery loop, and their outcome recorded;
  side by side with a bare httpx client posting the same payloads to the same receiver with
  the same concurrency. Goal ≥ 0.5x.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import statistics
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from bench.bench_carts import _postgres_database
from bench.report import Figure
from omnisdk.testing import ServerProcess

SUBSCRIBERS = 100_000
UNITS = 500
TRIALS = 12
MESSAGES = 2_000
CUSTOMERS = 200
CONCURRENCY = 50


# --- trigger → enqueued ---------------------------------------------------------------------


def _insert_subscriptions(server: ServerProcess, tenant_id: str, item: str) -> None:
    from sqlalchemy import insert

    from server_stub.storage.tables import alert_subscriptions

    start = datetime.now(UTC) - timedelta(days=2)

    async def work(conn: Any) -> None:
        for offset in range(0, SUBSCRIBERS, 10_000):
            rows = [
                {
                    "tenant_id": tenant_id,
                    "id": f"sub_{n:08d}",
                    "customer_id": f"cus_fan{n:08d}",
                    "origin_customer_id": f"cus_fan{n:08d}",
                    "kind": "back_in_stock",
                    "item": item,
                    "sku": item.split("|")[0],
                    "store_id": None,
                    "min_quantity": 1,
                    "status": "waiting",
                    "consent_decision_id": None,
                    "channel": "app",
                    "price_seen": None,
                    "created_at": start + timedelta(milliseconds=n),
                    "notified_at": None,
                }
                for n in range(offset, offset + 10_000)
            ]
            await conn.execute(insert(alert_subscriptions), rows)

    server._write(work)


def _restock_times(url: str, key: str, sku: str) -> list[float]:
    times = []
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}) as http:
        for _ in range(TRIALS + 1):
            for quantity in (0, UNITS):
                body = {"levels": [{"sku": sku, "location": "online", "quantity": quantity}]}
                started = time.perf_counter()
                answer = http.post("/v1/inventory", json=body)
                elapsed = time.perf_counter() - started
                answer.raise_for_status()
            times.append(elapsed)
    return times[1:]  # the first trial warms the process up


def _p95(values: list[float]) -> float:
    return sorted(values)[round(0.95 * (len(values) - 1))]


def trigger_to_enqueued(database_url: str, kind: str) -> Figure:
    env = {"OMNISDK_ALERTS_DELIVERY": "false", "OMNISDK_RATE_LIMIT_PER_SECOND": "0"}
    with ServerProcess(database_url, env=env) as server:
        shop = server.create_tenant("bench alerts", {"notifications": {"pacing_factor": 2.0}})
        _insert_subscriptions(server, shop.id, "WAITED")
        key = shop.key("admin")
        ours = _restock_times(server.url, key, "WAITED")
        ceiling = _restock_times(server.url, key, "NOBODY")
    p95, bare = _p95(ours) * 1000, _p95(ceiling) * 1000
    return Figure(
        name=f"trigger → {2 * UNITS:,} messages enqueued, {SUBSCRIBERS:,} waiting ({kind}), p95",
        ours=p95,
        peer=bare,
        peer_name="the same restock with nobody waiting",
        unit="ms",
        ratio=p95 / bare,
        goal="p95 < 5,000 ms",
        met=p95 < 5000,
        note=f"{TRIALS} restocks of {UNITS} units (0 → {UNITS}), each enqueueing the paced first "
        f"batch of 2 x {UNITS} subscribers; median {statistics.median(ours) * 1000:,.0f} ms. "
        "Ratio: ours / ceiling (lower is better).",
    )


# --- delivery throughput --------------------------------------------------------------------


class _Receiver:
    """A local webhook receiver that answers 204 to everything (both sides post to it)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver.lock:
                    receiver.count += 1
                self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # both sides open 50 connections at once
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def _seed(database: Any, sealer: Any, receiver_url: str) -> tuple[str, list[dict[str, Any]]]:
    from sqlalchemy import insert

    from omnisdk.notification_models import WebhookEndpointIn
    from server_stub.services import alerts, tenants, webhooks
    from server_stub.storage.tables import consent_decisions, customers, inventory_levels

    now = datetime.now(UTC)
    caps = {"notifications": {"max_per_day": 0, "max_per_week": 0}}
    async with database.transaction(write=True) as conn:
        tenant = await tenants.create(conn, "bench delivery", caps, sealer=sealer)
        endpoint = WebhookEndpointIn(url=receiver_url)  # on this machine: a private address
        await webhooks.create(conn, sealer, tenant.id, endpoint, now, allow_private_networks=True)
        people = [f"cus_bench{n:05d}" for n in range(CUSTOMERS)]
        await conn.execute(
            insert(customers),
            [{"tenant_id": tenant.id, "id": p, "created_at": now, "traits": {}} for p in people],
        )
        await conn.execute(
            insert(consent_decisions),
            [
                {
                    "tenant_id": tenant.id,
                    "id": f"cd_{p}",
                    "customer_id": p,
                    "origin_customer_id": p,
                    "purpose": "marketing:push",
                    "status": "granted",
                    "scope": "person",
                    "channel": "app",
                    "source": "app_settings",
                    "method": "toggle",
                    "notice_version": 0,
                    "recorded_at": now - timedelta(days=1),
                }
                for p in people
            ],
        )
        await conn.execute(
            insert(inventory_levels),
            [
                {
                    "tenant_id": tenant.id,
                    "item": f"SKU-{n}",
                    "location": "online",
                    "kind": "online",
                    "quantity": 10,
                    "updated_at": now,
                }
                for n in range(MESSAGES // CUSTOMERS)
            ],
        )
        rows = [
            alerts._message(
                tenant.id,
                alerts.Kind.BACK_IN_STOCK,
                people[n % CUSTOMERS],
                f"SKU-{n // CUSTOMERS}",
                "bench",
                now - timedelta(seconds=1),
                data={"since": (now - timedelta(days=1)).isoformat()},
            )
            for n in range(MESSAGES)
        ]
        await alerts.enqueue(conn, rows)
    return tenant.id, rows


def _payloads(rows: list[dict[str, Any]]) -> list[bytes]:
    """What the delivery loop posts, as a bare client would post it (no signature)."""
    now = datetime.now(UTC).isoformat()
    return [
        json.dumps(
            {
                "type": "message.back_in_stock",
                "timestamp": now,
                "data": {
                    "message_id": row["id"],
                    "kind": "back_in_stock",
                    "customer_id": row["customer_id"],
                    "channel": "push",
                    "sku": row["sku"],
                    "item": row["item"],
                },
            }
        ).encode()
        for row in rows
    ]


async def _bare(url: str, payloads: list[bytes]) -> float:
    queue = list(payloads)
    async with httpx.AsyncClient() as http:

        async def poster() -> None:
            while queue:
                body = queue.pop()
                answer = await http.post(
                    url, content=body, headers={"content-type": "application/json"}
                )
                answer.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(poster() for _ in range(CONCURRENCY)))
        return len(payloads) / (time.perf_counter() - started)


async def _delivered(database_url: str, receiver: _Receiver) -> tuple[float, float]:
    import base64
    import os

    from server_stub.alert_delivery import AlertWorker
    from server_stub.sealing import Sealer
    from server_stub.services.tenant_context import TenantContexts
    from server_stub.storage.database import Database
    from server_stub.storage.migrate import upgrade

    await upgrade(database_url)
    database = Database(database_url, pool_size=CONCURRENCY + 5)
    sealer = Sealer(base64.b64decode(base64.b64encode(os.urandom(32))))
    try:
        _, rows = await _seed(database, sealer, receiver.url)
        worker = AlertWorker(
            database,
            TenantContexts(60, sealer),
            sealer,
            poll_seconds=1.0,
            batch=CONCURRENCY,
            timeout=10.0,
            abandoned_scan_seconds=3600,
            allow_private_networks=True,
        )
        worker._last_scan = time.monotonic()
        before = receiver.count
        started = time.perf_counter()
        while await worker.tick():
            pass
        ours = MESSAGES / (time.perf_counter() - started)
        await worker.close()
        assert receiver.count - before == MESSAGES, (receiver.count - before, MESSAGES)
        bare = await _bare(receiver.url, _payloads(rows))
    finally:
        await database.dispose()
    return ours, bare


def delivery_throughput(database_url: str, kind: str) -> Figure:
    receiver = _Receiver()
    try:
        ours, bare = asyncio.run(_delivered(database_url, receiver))
    finally:
        receiver.close()
    return Figure(
        name=f"webhook delivery, decided and signed ({kind})",
        ours=ours,
        peer=bare,
        peer_name="bare httpx posting the same payloads",
        unit="msg/s",
        ratio=ours / bare,
        goal="≥ 0.5x",
        met=ours / bare >= 0.5,
        note=f"{MESSAGES:,} messages to {CUSTOMERS} customers, {CONCURRENCY} at a time on both "
        "sides, one local receiver (http.server, a thread per connection).",
    )


@contextlib.contextmanager
def _database() -> Iterator[tuple[str, str]]:
    url = _postgres_database()
    if url is not None:
        yield url, "PostgreSQL"
        return
    with tempfile.TemporaryDirectory() as directory:
        yield f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}", "SQLite"


def run() -> list[Figure]:
    figures = []
    with _database() as (url, kind):
        figures.append(trigger_to_enqueued(url, kind))
    with _database() as (url, kind):
        figures.append(delivery_throughput(url, kind))
    return figures


if __name__ == "__main__":
    for figure in run():
        print(figure.row())
