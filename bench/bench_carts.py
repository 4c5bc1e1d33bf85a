"""Cart adds through the whole stack and the change feed's delay.

Cart add: 50 concurrent shoppers (each an AsyncClient, one customer each) add to their carts
through SDK → HTTP → server → database; the ceiling is the bare FastAPI endpoint with a
pydantic body driven by the same 50 httpx clients, in the same run. SQLite with one worker;
PostgreSQL with two workers (when it is reachable). Change feed: a watcher connected to one
server process, writes made through another (PostgreSQL, LISTEN/NOTIFY); the delay is counted
from the moment the write is sent (an upper bound) to the event in the watcher.
"""

from __future__ import annotations

import asyncio
import os
import queue
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

import omnisdk
from bench.report import Figure
from omnisdk.testing import ServerProcess, free_port

SHOPPERS = 50
ADDS_EACH = 40
POSTGRES = os.environ.get("OMNISDK_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


async def _shoppers(url: str, key: str, customers: list[str]) -> tuple[float, list[float]]:
    latencies: list[float] = []

    async def shopper(customer: str) -> None:
        async with omnisdk.AsyncClient(url, key, channel="web") as client:
            for n in range(ADDS_EACH):
                started = time.perf_counter()
                await client.carts.add(customer, f"SKU-{n % 7}", 1, unit_price=9.5)
                latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(shopper(c) for c in customers))
    return len(latencies) / (time.perf_counter() - started), latencies


async def _ceiling(url: str) -> float:
    body = {"message": "ping", "sequence": 1}

    async def client() -> int:
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(ADDS_EACH):
                (await http.post("/v1/system/ping", json=body)).raise_for_status()
        return ADDS_EACH

    started = time.perf_counter()
    done = sum(await asyncio.gather(*(client() for _ in range(SHOPPERS))))
    return done / (time.perf_counter() - started)


def _bare_ceiling() -> float:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.peers.bare_fastapi", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.post(f"{url}/v1/system/ping", json={}, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        return asyncio.run(_ceiling(url))
    finally:
        process.terminate()
        process.wait()


def _cart_run(database_url: str, workers: int) -> tuple[float, float]:
    with ServerProcess(database_url, workers=workers) as server:
        shop = server.create_tenant("bench")
        with shop.client("web") as web:
            customers = [
                web.identity.identify(anonymous_id=f"shopper-{n}").customer_id
                for n in range(SHOPPERS)
            ]
        rate, latencies = asyncio.run(_shoppers(server.url, shop.key("web"), customers))
    return rate, sorted(latencies)[int(0.99 * len(latencies))] * 1000


def _postgres_database() -> str | None:
    import asyncpg
    from sqlalchemy.engine import make_url

    url = make_url(POSTGRES)
    name = f"omnisdk_bench_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(
            host=url.host, port=url.port, user=url.username, database=url.database
        )
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()

    try:
        asyncio.run(create())
    except (OSError, asyncpg.PostgresError):
        return None
    return url.set(drivername="postgresql+asyncpg", database=name).render_as_string(
        hide_password=False
    )


def _feed_delay(database_url: str) -> float:
    delays: list[float] = []
    with ServerProcess(database_url) as writer_side:
        shop = writer_side.create_tenant("feed")
        with ServerProcess(database_url, secret_key=writer_side.secret_key) as watcher_side:
            with shop.client("web") as web:
                amy = web.identity.identify(anonymous_id="amy").customer_id
                arrivals: queue.Queue[tuple[int, float]] = queue.Queue()

                def watch() -> None:
                    with omnisdk.Client(watcher_side.url, shop.key("app"), channel="app") as app:
                        for change in app.changes.watch(amy):
                            arrivals.put((change.raw["version"], time.perf_counter()))

                threading.Thread(target=watch, daemon=True).start()
                for _ in range(100):  # until the watcher is connected
                    web.carts.add(amy, "PROBE", 1)
                    try:
                        arrivals.get(timeout=0.2)
                        break
                    except queue.Empty:
                        continue
                while not arrivals.empty():
                    arrivals.get_nowait()
                for n in range(200):
                    sent = time.perf_counter()
                    version = web.carts.add(amy, f"SKU-{n % 5}", 1).version
                    got_version, arrived = arrivals.get(timeout=10)
                    assert got_version == version
                    delays.append(arrived - sent)
    return sorted(delays)[int(0.99 * len(delays))] * 1000


def run() -> list[Figure]:
    ceiling = _bare_ceiling()
    with tempfile.TemporaryDirectory() as directory:
        sqlite_url = f"sqlite+aiosqlite:///{Path(directory) / 'carts.sqlite3'}"
        sqlite_rate, sqlite_p99 = _cart_run(sqlite_url, 1)
    figures = [
        Figure(
            "cart add, SDK → HTTP → server → SQLite, 1 worker, 50 shoppers",
            sqlite_rate,
            ceiling,
            "bare FastAPI pydantic POST, same 50 clients",
            "ops/s",
            sqlite_rate / ceiling,
            "≥ 0.50",
            sqlite_rate / ceiling >= 0.5,
            f"p99 latency {sqlite_p99:.1f} ms at 50 concurrent shoppers",
        ),
    ]
    postgres_url = _postgres_database()
    if postgres_url is None:
        figures.append(
            Figure(
                "cart add on PostgreSQL, 2 workers",
                0,
                ceiling,
                "not measured",
                "ops/s",
                0,
                "—",
                None,
                f"PostgreSQL at {POSTGRES} unreachable",
            )
        )
        return figures
    pg_rate, pg_p99 = _cart_run(postgres_url, 2)
    delay = _feed_delay(postgres_url)
    figures += [
        Figure(
            "cart add, SDK → HTTP → server → PostgreSQL, 2 workers, 50 shoppers",
            pg_rate,
            ceiling,
            "bare FastAPI pydantic POST (1 worker)",
            "ops/s",
            pg_rate / ceiling,
            "≥ 0.50",
            pg_rate / ceiling >= 0.5,
            f"p99 latency {pg_p99:.1f} ms",
        ),
        Figure(
            "change feed: write via one process → event in a watcher on another (p99)",
            delay,
            50.0,
            "goal",
            "ms",
            delay / 50.0,
            "< 50 ms",
            delay < 50,
            "PostgreSQL LISTEN/NOTIFY; counted from sending the write (includes its round trip)",
        ),
    ]
    return figures
