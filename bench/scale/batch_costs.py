"""Where the time of a batch of 50 events goes in a kept shop (`make bench-scale ARGS=--keep`):
its latency over HTTP, then each statement's time, blocks read from outside shared_buffers,
pages dirtied and WAL written, from pg_stat_statements.

    python -m bench.scale.batch_costs --customers 10000000 [--warm] [--batches 100]

`--warm` first reads the shop's hot relations into memory (generate.warm), as the scale run
does before it measures; without it the shop is measured as it is (after a restart of
PostgreSQL: cold). Needs pg_stat_statements in `shared_preload_libraries` and, for the read
times, `track_io_timing = on`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from typing import Any

import asyncpg
import httpx

from bench.scale.generate import warm
from bench.scale.run import _events, _percentiles, reused
from omnisdk.testing import ServerProcess, TestTenant

STATEMENTS = """
SELECT calls, total_exec_time / calls AS mean_ms, max_exec_time AS max_ms,
       shared_blks_read / calls AS read, blk_read_time / calls AS read_ms,
       shared_blks_dirtied / calls AS dirtied, wal_fpi / calls AS full_pages,
       wal_bytes / calls / 1024 AS wal_kb, left(regexp_replace(query, '\\s+', ' ', 'g'), 70) AS q
FROM pg_stat_statements WHERE calls >= $1 AND dbid = (SELECT oid FROM pg_database
WHERE datname = current_database()) ORDER BY total_exec_time DESC LIMIT 6
"""


async def _sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench.scale.batch_costs")
    parser.add_argument("--customers", type=int, required=True)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--warm", action="store_true", help="read the hot relations first")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMNISDK_RATE_LIMIT_PER_SECOND", "0")
    shop = reused(args.customers)
    dsn = shop.url.replace("+asyncpg", "")
    try:
        asyncio.run(_sql(dsn, "CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        asyncio.run(_sql(dsn, "SELECT pg_stat_statements_reset()"))
    except asyncpg.PostgresError as error:
        raise SystemExit(
            f"needs pg_stat_statements in shared_preload_libraries: {error}"
        ) from error
    if args.warm:
        read = asyncio.run(warm({"dsn": dsn}))
        print(f"warmed {read / 2**20:,.0f} MB")
    with ServerProcess(shop.url, secret_key=shop.secret) as server:
        key = TestTenant(id=shop.tenant_id, name="scale", server=server).key("web")
        web = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=server.url, timeout=120) as http:
            for _ in range(5):  # the connections and prepared statements of the server
                http.post(
                    "/v1/events/batch",
                    json={"events": _events(shop.loaded.customers, 50)},
                    headers=web,
                )
            asyncio.run(_sql(dsn, "SELECT pg_stat_statements_reset()"))
            taken = []
            for _ in range(args.batches):
                body = {"events": _events(shop.loaded.customers, 50)}
                started = time.perf_counter()
                answer = http.post("/v1/events/batch", json=body, headers=web)
                taken.append(time.perf_counter() - started)
                answer.raise_for_status()
    timing = _percentiles("batch ingest, 50 events", taken)
    print(f"{timing.name}: p50 {timing.p50_ms:.1f} ms, p99 {timing.p99_ms:.1f} ms")
    print(
        "per batch: mean ms | max ms | blocks read (ms) | dirtied | full pages | WAL kB | statement"
    )
    for row in asyncio.run(_sql(dsn, STATEMENTS, args.batches)):
        print(
            f"{row['mean_ms']:7.2f} | {row['max_ms']:7.1f} | {row['read']:5} "
            f"({row['read_ms']:.1f}) | {row['dirtied']:4} | {row['full_pages']:4} | "
            f"{row['wal_kb']:6.0f} | {row['q']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
