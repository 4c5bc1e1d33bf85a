"""Cart adds through the whole stack under load, against bare FastAPI's pydantic POST.

The load generator (bench/loadgen.py: raw keep-alive HTTP/1.1 on asyncio streams, no client
library) keeps 50 connections busy, as 50 shoppers would: each request adds one unit to one of
50 carts, with a new operation id (each shopper's operations numbered 1, 2, 3, …). The ceiling
is a bare FastAPI endpoint taking a pydantic body, driven the same way, with as many uvicorn
workers: SQLite with one worker; PostgreSQL with two. The load generator is not the
bottleneck: it drives the bare endpoint several times faster than our cart add.

Beside the ceiling, the floor (bench/peers/durable_floor.py): the least a durable add that is
ordered on a change feed can do, written by hand on the driver, in the same FastAPI. Its ratio
to the ceiling is as close to the 0.5 goal as any implementation of a shared cart could come
on this machine.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.bench_cart_history import _drop
from bench.bench_carts import _postgres_database
from bench.loadgen import LoadResult, http_request, run_load
from bench.report import Figure
from omnisdk.testing import ServerProcess, free_port

SHOPPERS = 50
SECONDS = 5.0
PING = b'{"message":"ping","sequence":1}'


def _serve(app: str, workers: int, env: dict[str, str] | None = None) -> tuple[Any, str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", app]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.get(f"{url}/docs", timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{app} did not start")


def _driven(app: str, workers: int, make: Any, env: dict[str, str] | None = None) -> LoadResult:
    process, url = _serve(app, workers, env)
    try:
        return run_load(url, make, concurrency=SHOPPERS, seconds=SECONDS)
    finally:
        process.terminate()
        process.wait()


def _ceiling(workers: int) -> LoadResult:
    request = http_request("POST", "/v1/system/ping", {"Content-Type": "application/json"}, PING)
    return _driven("bench.peers.bare_fastapi:app", workers, lambda: request)


def _floor(database: str, workers: int) -> LoadResult:
    """The least a durable, feed-ordered add can cost (bench/peers/durable_floor.py)."""
    customers = [f"floor-{n}" for n in range(SHOPPERS)]
    make = _shoppers(customers, {"Content-Type": "application/json"})
    return _driven("bench.peers.durable_floor:app", workers, make, {"PEER_DATABASE": database})


def _shoppers(customers: list[str], headers: dict[str, str]) -> Any:
    """Requests as 50 shoppers make them: each adds to (or takes one from) their own cart,
    with a new operation id each time."""
    turn = itertools.cycle(range(len(customers)))
    counters = [itertools.count(1) for _ in customers]
    lock = threading.Lock()

    def make() -> bytes:
        with lock:
            n = next(turn)
            seq = next(counters[n])
        op = {"op_id": f"load{n}:{seq}", "type": "add", "line": {"sku": f"S{seq % 7}"}}
        body = json.dumps({"ops": [{**op, "delta": 1 if seq % 2 else -1}]}).encode()
        return http_request("POST", f"/v1/carts/{customers[n]}/ops", headers, body)

    return make


def _cart_adds(database_url: str, workers: int) -> LoadResult:
    with ServerProcess(database_url, workers=workers) as server:
        shop = server.create_tenant("load")
        with shop.client("web") as web:
            customers = [
                web.identity.identify(anonymous_id=f"load-{n}").customer_id for n in range(SHOPPERS)
            ]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {shop.key('web')}"}
        return run_load(
            server.url, _shoppers(customers, headers), concurrency=SHOPPERS, seconds=SECONDS
        )


def _figure(
    database: str, workers: int, ours: LoadResult, ceiling: LoadResult, floor: LoadResult
) -> list[Figure]:
    if ours.errors or ceiling.errors or floor.errors:
        raise RuntimeError(
            f"{ours.errors + ceiling.errors + floor.errors} requests failed during the benchmark"
        )
    name = f"cart add under load, {database}, {workers} worker(s), {SHOPPERS} connections"
    ratio = ours.per_second / ceiling.per_second
    p99 = f"p99 {ours.percentile(99) * 1000:.1f} ms"
    return [
        Figure(
            name,
            ours.per_second,
            ceiling.per_second,
            f"bare FastAPI pydantic POST, {workers} worker(s)",
            "req/s",
            ratio,
            "≥ 0.50",
            ratio >= 0.5,
            f"{p99} (bare: {ceiling.percentile(99) * 1000:.1f} ms); raw HTTP load generator",
        ),
        Figure(
            f"{name}, against the floor",
            ours.per_second,
            floor.per_second,
            f"the least durable add, by hand ({database}, {workers} worker(s))",
            "req/s",
            ours.per_second / floor.per_second,
            "—",
            None,
            f"floor/bare = {floor.per_second / ceiling.per_second:.2f}: the most any durable, "
            f"feed-ordered add could reach against the 0.5 goal; floor p99 "
            f"{floor.percentile(99) * 1000:.1f} ms",
        ),
    ]


def run() -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as directory:
        sqlite = _cart_adds(f"sqlite+aiosqlite:///{Path(directory) / 'load.sqlite3'}", 1)
        floor = _floor(str(Path(directory) / "floor.sqlite3"), 1)
    figures += _figure("SQLite", 1, sqlite, _ceiling(1), floor)
    postgres_url = _postgres_database()
    if postgres_url is not None:
        try:
            ours = _cart_adds(postgres_url, 2)
            floor = _floor(postgres_url.replace("+asyncpg", ""), 2)
            figures += _figure("PostgreSQL", 2, ours, _ceiling(2), floor)
        finally:
            _drop(postgres_url)
    return figures
