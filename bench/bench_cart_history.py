"""The cost of a cart add does not grow with the cart's history (issue 13).

Three carts of one shop are given 10, 1,000 and 10,000 past operations (adds of +1 and -1 on
seven lines, 100 operations a request); then single adds through the whole stack (SDK → HTTP
→ server → database) go to the three carts in turn, so that every cart is measured under the
same conditions of the machine. The figure is the median latency of each cart's adds; the
ratio compares the longest history with the shortest (goal: ≤ 1.2). SQLite, and PostgreSQL
when it is reachable (a database created for the run and dropped after it).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import omnisdk
from bench.bench_carts import POSTGRES, _postgres_database
from bench.report import Figure
from omnisdk.models import CartOpIn, LineRef
from omnisdk.testing import ServerProcess

HISTORIES = (10, 1_000, 10_000)
SAMPLES = 150  # measured adds per cart
BATCH = 100  # operations per request while building a history


def _history(client: omnisdk.Client, customer: str, operations: int) -> None:
    replica = f"history-{customer}"  # one replica's history, sent in order
    ops = [
        CartOpIn(
            op_id=f"{replica}:{n + 1}",
            type="add",
            line=LineRef(sku=f"SKU-{n % 7}"),
            delta=1 if (n // 7) % 2 == 0 else -1,
        )
        for n in range(operations)
    ]
    for start in range(0, len(ops), BATCH):
        client.carts.apply(customer, ops[start : start + BATCH])


def _latencies(database_url: str) -> dict[int, float]:
    """Median milliseconds of an add, by the number of past operations on the cart."""
    with ServerProcess(database_url) as server:
        shop = server.create_tenant("history")
        with shop.client("web") as web:
            carts = {n: web.identity.identify(anonymous_id=f"h{n}").customer_id for n in HISTORIES}
            for n, customer in carts.items():
                _history(web, customer, n)
            samples: dict[int, list[float]] = {n: [] for n in HISTORIES}
            for step in range(SAMPLES):
                for n, customer in carts.items():
                    started = time.perf_counter()
                    web.carts.add(customer, f"SKU-{step % 7}", 1 if step % 2 == 0 else -1)
                    samples[n].append(time.perf_counter() - started)
    return {n: statistics.median(times) * 1000 for n, times in samples.items()}


def _figures(database: str, medians: dict[int, float]) -> list[Figure]:
    first, last = medians[HISTORIES[0]], medians[HISTORIES[-1]]
    rows = [
        Figure(
            f"cart add on {database} after {n:,} past operations on the cart",
            medians[n],
            first,
            f"after {HISTORIES[0]} past operations",
            "ms",
            medians[n] / first,
            "≤ 1.20" if n == HISTORIES[-1] else "—",
            medians[n] / first <= 1.2 if n == HISTORIES[-1] else None,
            f"median of {SAMPLES} adds, interleaved across the three carts",
        )
        for n in HISTORIES[1:]
    ]
    rows[-1] = Figure(
        **{**rows[-1].__dict__, "note": rows[-1].note + f"; ratio {last / first:.2f}"}
    )
    return rows


def _drop(database_url: str) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    admin, name = make_url(POSTGRES), make_url(database_url).database

    async def drop() -> None:
        conn = await asyncpg.connect(
            host=admin.host, port=admin.port, user=admin.username, database=admin.database
        )
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()

    asyncio.run(drop())


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as directory:
        figures = _figures(
            "SQLite", _latencies(f"sqlite+aiosqlite:///{Path(directory) / 'history.sqlite3'}")
        )
    postgres_url = _postgres_database()
    if postgres_url is not None:
        try:
            figures += _figures("PostgreSQL", _latencies(postgres_url))
        finally:
            _drop(postgres_url)
    return figures
