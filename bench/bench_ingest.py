"""Server ingestion through the batch endpoint, and identify with a merge, on SQLite.

Ingestion: 40 batches of 500 events (20,000, each with its own id, 100 known customers) sent
by 4 concurrent senders to one worker; the figure is events stored per second, checked by
counting them in the database afterwards. The ceiling is SQLite itself inserting the same rows
(same columns and indexes, 500 per transaction) with the standard library's sqlite3.

Merge: two customers holding 1,000 events each; `identify` names an identifier of each, so
one absorbs the other (identifiers, events and traits move; the merge is recorded). Timed
through the SDK over HTTP, ten times; the ceiling is SQLite moving the same 1,000 events with
one UPDATE.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

import omnisdk
from bench.report import Figure
from omnisdk.testing import ServerProcess

BATCHES = 40
BATCH = 500
SENDERS = 4
CUSTOMERS = 100
MERGES = 10


def _batch(number: int) -> list[dict[str, Any]]:
    return [
        {
            "anonymous_id": f"visitor-{n % CUSTOMERS}",
            "name": "product_viewed",
            "event_id": f"b{number}-{n}",
            "properties": {"sku": f"sku-{n % 37}", "category": "running", "price": 99.5},
        }
        for n in range(BATCH)
    ]


async def _send_all(url: str, key: str, batches: list[list[dict[str, Any]]]) -> float:
    headers = {"Authorization": f"Bearer {key}"}
    work = iter(batches)

    async def sender(http: httpx.AsyncClient) -> None:
        for batch in work:
            response = await http.post("/v1/events/batch", json={"events": batch}, headers=headers)
            response.raise_for_status()
            assert response.json()["accepted"] == len(batch), response.text

    async with httpx.AsyncClient(base_url=url, timeout=60) as http:
        started = time.perf_counter()
        await asyncio.gather(*(sender(http) for _ in range(SENDERS)))
        return time.perf_counter() - started


def _ceiling(rows: list[list[dict[str, Any]]], directory: Path) -> float:
    """SQLite alone storing the same rows into a table like ours, 500 per transaction."""
    db = sqlite3.connect(directory / "ceiling.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY, tenant_id TEXT, event_id TEXT, "
        "customer_id TEXT, origin_customer_id TEXT, name TEXT, channel TEXT, "
        "occurred_at TEXT, received_at TEXT, properties TEXT, category TEXT, value REAL, "
        "UNIQUE (tenant_id, event_id, occurred_at))"
    )
    # The indexes the server's events table has on SQLite (storage/tables.py).
    db.execute("CREATE INDEX ix_customer_time ON events (tenant_id, customer_id, occurred_at)")
    db.execute("CREATE INDEX ix_occurred_at ON events (occurred_at)")
    db.execute("CREATE INDEX ix_origin ON events (tenant_id, origin_customer_id)")
    import json

    started = time.perf_counter()
    for batch in rows:
        db.execute("BEGIN IMMEDIATE")
        db.executemany(
            "INSERT INTO events (tenant_id, event_id, customer_id, origin_customer_id, name, "
            "channel, occurred_at, received_at, properties, category, value) "
            "VALUES ('t', ?, ?, ?, ?, 'web', datetime('now'), datetime('now'), ?, ?, NULL)",
            [
                (
                    e["event_id"],
                    e["anonymous_id"],
                    e["anonymous_id"],
                    e["name"],
                    json.dumps(e["properties"]),
                    e["properties"]["category"],
                )
                for e in batch
            ],
        )
        db.execute("COMMIT")
    elapsed = time.perf_counter() - started
    db.close()
    return sum(len(b) for b in rows) / elapsed


def _ingestion(directory: Path) -> Figure:
    path = directory / "ingest.sqlite3"
    batches = [_batch(n) for n in range(BATCHES)]
    with ServerProcess(f"sqlite+aiosqlite:///{path}") as server:
        key = server.create_tenant("bench").key("web")
        warm = [dict(e, event_id=f"warm-{n}") for n, e in enumerate(_batch(0)[:CUSTOMERS])]
        asyncio.run(_send_all(server.url, key, [warm]))
        elapsed = asyncio.run(_send_all(server.url, key, batches))
    with sqlite3.connect(path) as db:
        stored = db.execute("SELECT count(*) FROM events WHERE event_id LIKE 'b%'").fetchone()[0]
    if stored != BATCHES * BATCH:
        raise RuntimeError(f"only {stored} of {BATCHES * BATCH} events were stored")
    ours = stored / elapsed
    ceiling = _ceiling(batches, directory)
    return Figure(
        name="events stored through POST /v1/events/batch, SQLite, 1 worker",
        ours=ours,
        peer=ceiling,
        peer_name="sqlite3 inserting the same rows",
        unit="events/s",
        ratio=ours / ceiling,
        goal="≥ 10,000 events/s and ≥ 0.30 (issue 22)",
        met=ours >= 10_000 and ours / ceiling >= 0.30,
        note=f"{BATCHES} batches of {BATCH} from {SENDERS} concurrent senders; "
        f"all {stored:,} counted in the database afterwards",
    )


PG_BATCHES = 120
PG_SENDERS = 8
PG_CUSTOMERS = 1_000


def _pg_batch(number: int) -> list[dict[str, Any]]:
    # With their time, as the SDK sends every event (services/events.py, "Event ids").
    when = datetime.now(UTC).isoformat()
    return [
        {
            "anonymous_id": f"visitor-{(number * BATCH + n) % PG_CUSTOMERS}",
            "name": "product_viewed",
            "event_id": f"p{number}-{n}",
            "timestamp": when,
            "properties": {"sku": f"sku-{n % 37}", "category": "running", "price": 99.5},
        }
        for n in range(BATCH)
    ]


async def _send_spread(urls: list[str], key: str, batches: list[list[dict[str, Any]]]) -> float:
    """`_send_all` with the senders spread over several server processes."""
    headers = {"Authorization": f"Bearer {key}"}
    work = iter(batches)

    async def sender(http: httpx.AsyncClient) -> None:
        for batch in work:
            response = await http.post("/v1/events/batch", json={"events": batch}, headers=headers)
            response.raise_for_status()
            assert response.json()["accepted"] == len(batch), response.text

    clients = [
        httpx.AsyncClient(base_url=urls[n % len(urls)], timeout=60) for n in range(PG_SENDERS)
    ]
    try:
        started = time.perf_counter()
        await asyncio.gather(*(sender(http) for http in clients))
        return time.perf_counter() - started
    finally:
        for http in clients:
            await http.aclose()


async def _pg_count(url: str, prefix: str) -> int:
    import asyncpg
    from sqlalchemy.engine import make_url

    where = make_url(url)
    conn = await asyncpg.connect(
        host=where.host, port=where.port, user=where.username, database=where.database
    )
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM events WHERE event_id LIKE $1", prefix + "%")
        )
    finally:
        await conn.close()


async def _pg_ceiling(url: str, batches: list[list[dict[str, Any]]]) -> float:
    """asyncpg alone copying the same rows into the same (partitioned) events table, one COPY
    per batch of 500 (`copy_records_to_table`) on 2 connections at once."""
    import json

    import asyncpg
    from sqlalchemy.engine import make_url

    where = make_url(url)
    columns = [
        "tenant_id",
        "event_id",
        "customer_id",
        "origin_customer_id",
        "name",
        "channel",
        "occurred_at",
        "received_at",
        "properties",
        "category",
        "value",
    ]
    now = datetime.now(UTC)
    work = iter(batches)

    async def copier() -> None:
        conn = await asyncpg.connect(
            host=where.host, port=where.port, user=where.username, database=where.database
        )
        try:
            for batch in work:
                rows = [
                    (
                        "ceiling",
                        "c" + e["event_id"],
                        e["anonymous_id"],
                        e["anonymous_id"],
                        e["name"],
                        "web",
                        now,
                        now,
                        json.dumps(e["properties"]),
                        "running",
                        None,
                    )
                    for e in batch
                ]
                async with conn.transaction():
                    await conn.copy_records_to_table("events", records=rows, columns=columns)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(copier(), copier())
    return sum(len(b) for b in batches) / (time.perf_counter() - started)


def _ingestion_postgres() -> Figure | None:
    from bench.bench_cart_history import _drop
    from bench.bench_carts import _postgres_database

    url = _postgres_database()
    if url is None:
        return None
    batches = [_pg_batch(n) for n in range(PG_BATCHES)]
    try:
        with ServerProcess(url) as first, ServerProcess(url, secret_key=first.secret_key) as second:
            key = first.create_tenant("bench").key("web")
            warm = [
                [
                    {"anonymous_id": f"visitor-{c}", "name": "page_viewed", "event_id": f"w{c}"}
                    for c in range(start, start + BATCH)
                ]
                for start in range(0, PG_CUSTOMERS, BATCH)
            ]
            asyncio.run(_send_spread([first.url], key, warm))
            elapsed = asyncio.run(_send_spread([first.url, second.url], key, batches))
        stored = asyncio.run(_pg_count(url, "p"))
        if stored != PG_BATCHES * BATCH:
            raise RuntimeError(f"only {stored} of {PG_BATCHES * BATCH} events were stored")
        ceiling = asyncio.run(_pg_ceiling(url, batches))
    finally:
        _drop(url)
    ours = stored / elapsed
    return Figure(
        name="events stored through POST /v1/events/batch, PostgreSQL, 2 server processes",
        ours=ours,
        peer=ceiling,
        peer_name="asyncpg COPY of the same rows into the same table, 2 connections",
        unit="events/s",
        ratio=ours / ceiling,
        goal="≥ 10,000 events/s (issue 22)",
        met=ours >= 10_000,
        note=f"{PG_BATCHES} batches of {BATCH} from {PG_SENDERS} concurrent senders over 2 "
        f"processes, {PG_CUSTOMERS:,} known visitors (identifier lookups and consent at event "
        f"time per batch); all {stored:,} counted in the database afterwards",
    )


def _merges(directory: Path) -> Figure:
    path = directory / "merge.sqlite3"
    timings: list[float] = []
    with ServerProcess(f"sqlite+aiosqlite:///{path}") as server:
        shop = server.create_tenant("bench")
        with shop.client("web") as client:
            for round_ in range(MERGES):
                tag = uuid.uuid4().hex[:8]
                for side in ("a", "b"):
                    client.identity.identify(anonymous_id=f"{side}-{tag}")
                    for start in range(0, 1000, 500):
                        client.events.send_batch(
                            [
                                {
                                    "anonymous_id": f"{side}-{tag}",
                                    "name": "product_viewed",
                                    "event_id": f"{side}-{tag}-{n}",
                                }
                                for n in range(start, start + 500)
                            ]
                        )
                started = time.perf_counter()
                result = client.identity.identify(
                    identifiers=[
                        omnisdk.models.IdentifierIn(type="anonymous", value=f"a-{tag}"),
                        omnisdk.models.IdentifierIn(type="anonymous", value=f"b-{tag}"),
                    ]
                )
                timings.append(time.perf_counter() - started)
                assert result.merged, round_
    ours = statistics.median(timings) * 1000
    ceiling = _raw_update(directory) * 1000
    return Figure(
        name="identify merging two customers of 1,000 events each (SDK → HTTP → SQLite)",
        ours=ours,
        peer=ceiling,
        peer_name="sqlite3 moving the 1,000 events with one UPDATE",
        unit="ms",
        ratio=ours / ceiling,
        goal="< 50 ms",
        met=ours < 50,
        note=f"median of {MERGES} merges (slowest {max(timings) * 1000:.1f} ms); ratio here is "
        "time over the ceiling's time (lower is better)",
    )


def _raw_update(directory: Path) -> float:
    db = sqlite3.connect(directory / "update.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, customer_id TEXT, name TEXT)")
    db.execute("CREATE INDEX ix ON events (customer_id)")
    counter = itertools.count()
    db.executemany(
        "INSERT INTO events (customer_id, name) VALUES (?, 'x')",
        [(f"c{n % 2}",) for n in range(2000)],
    )
    timings = []
    for _ in range(MERGES):
        source, target = (f"c{next(counter) % 2}", "moved")
        started = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE events SET customer_id = ? WHERE customer_id = ?", (target, source))
        db.execute("COMMIT")
        timings.append(time.perf_counter() - started)
        db.execute("UPDATE events SET customer_id = ? WHERE customer_id = ?", (source, target))
    db.close()
    return statistics.median(timings)


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as directory:
        figures = [_ingestion(Path(directory))]
        postgres = _ingestion_postgres()
        if postgres is not None:
            figures.append(postgres)
        return [*figures, _merges(Path(directory))]
