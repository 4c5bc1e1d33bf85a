"""Cart adds through the whole stack under load, against bare FastAPI's pydantic POST.

The load generator (bench/loadgen.py: raw keep-alive HTTP/1.1 on asyncio streams, no client
library) keeps 50 connections busy, as 50 shoppers would: each request adds one unit to one of
50 carts, with a new operation id (each shopper's operations numbered 1, 2, 3, …). The ceiling
is a bare FastAPI endpoint taking a pydantic body, driven the same way, with as many uvicorn
workers: SQLite with one worker; PostgreSQL with two. The load generator is not the
bottleneck: it drives the bare endpoint several times faster than our cart add.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench.bench_cart_history import _drop
from bench.bench_carts import _postgres_database
from bench.loadgen import LoadResult, http_request, run_load
from bench.report import Figure
from omnisdk.testing import ServerProcess, free_port

SHOPPERS = 50
SECONDS = 5.0
PING = b'{"message":"ping","sequence":1}'


def _bare(workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "bench.peers.bare_fastapi:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    command += ["--no-access-log", "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.post(f"{url}/v1/system/ping", content=PING, timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("the bare FastAPI server did not start")


def _ceiling(workers: int) -> LoadResult:
    process, url = _bare(workers)
    try:
        request = http_request(
            "POST", "/v1/system/ping", {"Content-Type": "application/json"}, PING
        )
        return run_load(url, lambda: request, concurrency=SHOPPERS, seconds=SECONDS)
    finally:
        process.terminate()
        process.wait()


def _cart_adds(database_url: str, workers: int) -> LoadResult:
    with ServerProcess(database_url, workers=workers) as server:
        shop = server.create_tenant("load")
        with shop.client("web") as web:
            customers = [
                web.identity.identify(anonymous_id=f"load-{n}").customer_id for n in range(SHOPPERS)
            ]
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {shop.key('web')}"}
        turn = itertools.cycle(range(SHOPPERS))
        counters = [itertools.count(1) for _ in range(SHOPPERS)]
        lock = threading.Lock()

        def make() -> bytes:
            with lock:
                n = next(turn)
                seq = next(counters[n])
            op = {"op_id": f"load{n}:{seq}", "type": "add", "line": {"sku": f"S{seq % 7}"}}
            body = json.dumps({"ops": [{**op, "delta": 1 if seq % 2 else -1}]}).encode()
            return http_request("POST", f"/v1/carts/{customers[n]}/ops", headers, body)

        return run_load(server.url, make, concurrency=SHOPPERS, seconds=SECONDS)


def _figure(database: str, workers: int, ours: LoadResult, ceiling: LoadResult) -> Figure:
    if ours.errors or ceiling.errors:
        raise RuntimeError(f"{ours.errors + ceiling.errors} requests failed during the benchmark")
    ratio = ours.per_second / ceiling.per_second
    return Figure(
        f"cart add under load, {database}, {workers} worker(s), {SHOPPERS} connections",
        ours.per_second,
        ceiling.per_second,
        f"bare FastAPI pydantic POST, {workers} worker(s)",
        "req/s",
        ratio,
        "≥ 0.50",
        ratio >= 0.5,
        f"p99 {ours.percentile(99) * 1000:.1f} ms (bare: {ceiling.percentile(99) * 1000:.1f} ms);"
        " raw HTTP load generator",
    )


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as directory:
        sqlite = _cart_adds(f"sqlite+aiosqlite:///{Path(directory) / 'load.sqlite3'}", 1)
    figures = [_figure("SQLite", 1, sqlite, _ceiling(1))]
    postgres_url = _postgres_database()
    if postgres_url is not None:
        try:
            figures.append(_figure("PostgreSQL", 2, _cart_adds(postgres_url, 2), _ceiling(2)))
        finally:
            _drop(postgres_url)
    return figures
