"""The recommendations rebuild over a million events on PostgreSQL: the job against the rebuild
before it, in peak memory and time; then the job's incremental build after a day of events.

A generated shop (loaded with COPY into the project's schema): EVENTS events over DAYS days,
from CUSTOMERS customers and SKUS products — a third orders of 1 to 6 products, half cart
adds, the rest page views. Each build runs in a process of its own, started fresh, and its
peak resident memory (getrusage) is what it cost, beside the same process's memory before
it began.

The peer is the rebuild before issue 21 (copied here as `_old_rebuild`: every order and cart
add read into one process, then counted). The job reads keyset batches of 5,000 events into
stored counts (services/recommendations.py). Then a day's events (EVENTS / DAYS) arrive and
the job builds again, counting only those.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.bench_cart_history import _drop
from bench.bench_carts import _postgres_database
from bench.report import Figure

EVENTS = 1_000_000
DAYS = 100
CUSTOMERS = 200_000
SKUS = 5_000
COPY_ROWS = 50_000


def _peak_mb() -> float:
    """This process's peak resident memory. Linux: VmHWM, the high-water mark of its own
    memory map. Not getrusage's ru_maxrss, which Linux carries over an exec from the forked
    copy of the parent: a child started by a parent of 800 MB reported 800 MB, whatever the
    child itself used."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _shopper(rng: random.Random) -> str:
    """One of this benchmark's CUSTOMERS (each has a customer row: _prepare)."""
    return f"cus_{rng.randrange(CUSTOMERS):08d}"


@dataclass(frozen=True)
class History:
    """`count` events over `days` from `start`, drawn with `seed`, each of the customer
    `shopper` picks (one with a customer row: a build keeps no basket of one not there)."""

    count: int
    start: datetime
    days: float
    seed: int
    shopper: Callable[[random.Random], str] = _shopper


def _events(tenant_id: str, history: History) -> Any:
    count, start, days, seed = history.count, history.start, history.days, history.seed
    rng = random.Random(seed)
    step = timedelta(days=days) / count
    # A few popular products and a long tail, as in a real catalogue.
    weights = [1 / (n + 1) for n in range(SKUS)]
    skus = [f"SKU-{n:05d}" for n in range(SKUS)]
    for n in range(count):
        customer = history.shopper(rng)
        at = start + step * n
        roll = rng.random()
        if roll < 0.33:
            name = "order_completed"
            basket = rng.choices(skus, weights, k=rng.randint(1, 6))
            properties: dict[str, Any] = {"order_id": f"o-{seed}-{n}", "skus": basket}
        elif roll < 0.83:
            name, properties = "product_added", {"sku": rng.choices(skus, weights)[0]}
        else:
            name, properties = "product_viewed", {"sku": rng.choices(skus, weights)[0]}
        yield (
            tenant_id,
            f"e-{seed}-{n}",
            customer,
            customer,
            name,
            "web",
            at,
            at,
            json.dumps(properties),
        )


async def _load(url: str, tenant_id: str, history: History) -> None:
    """COPY the events of `history` into the tenant's events."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
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
        ]
        batch: list[tuple[Any, ...]] = []
        for record in _events(tenant_id, history):
            batch.append(record)
            if len(batch) == COPY_ROWS:
                await conn.copy_records_to_table("events", records=batch, columns=columns)
                batch = []
        if batch:
            await conn.copy_records_to_table("events", records=batch, columns=columns)
        await conn.execute("ANALYZE events")
    finally:
        await conn.close()


async def _customers(url: str, tenant_id: str, since: datetime) -> None:
    """The rows of the CUSTOMERS customers the events name."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        records = [(tenant_id, f"cus_{n:08d}", since, "{}") for n in range(CUSTOMERS)]
        columns = ["tenant_id", "id", "created_at", "traits"]
        await conn.copy_records_to_table("customers", records=records, columns=columns)
    finally:
        await conn.close()


async def _prepare(url: str) -> str:
    from server_stub.sealing import Sealer
    from server_stub.services import tenants
    from server_stub.storage.database import Database
    from server_stub.storage.migrate import upgrade

    await upgrade(url)
    database = Database(url)
    try:
        async with database.transaction(write=True) as conn:
            tenant = await tenants.create(conn, "scale", sealer=Sealer(b"b" * 32))
    finally:
        await database.dispose()
    now = datetime.now(UTC)
    await _customers(url, tenant.id, now - timedelta(days=DAYS + 2))
    await _load(url, tenant.id, History(EVENTS, now - timedelta(days=DAYS + 1), DAYS, 1))
    return tenant.id


# --- the two rebuilds, each run in a process of its own -----------------------------------------


async def _old_rebuild(url: str, tenant_id: str) -> dict[str, Any]:
    """The rebuild before issue 21 (server_stub/services/content.py at 0d68a7a)."""
    from sqlalchemy import select

    from omnisdk.core import recs
    from server_stub.storage.database import Database
    from server_stub.storage.tables import events

    database = Database(url)
    try:
        async with database.transaction(write=False) as conn:
            rows = await conn.execute(
                select(events.c.name, events.c.customer_id, events.c.properties).where(
                    events.c.tenant_id == tenant_id,
                    events.c.name.in_(("order_completed", "product_added")),
                )
            )
            found: list[list[str]] = []
            added: dict[str, list[str]] = {}
            for row in rows:
                properties = row.properties or {}
                if row.name == "order_completed":
                    skus = properties.get("skus")
                    if isinstance(skus, list):
                        found.append([str(sku) for sku in skus if isinstance(sku, str | int)])
                elif row.customer_id and isinstance(properties.get("sku"), str):
                    added.setdefault(row.customer_id, []).append(properties["sku"])
        document = recs.build(found + list(added.values()))
    finally:
        await database.dispose()
    return {"baskets": document["baskets"], "products": len(document["together"])}


async def _job_rebuild(url: str, tenant_id: str, full: bool = False) -> dict[str, Any]:
    from server_stub.services import jobs, recommendations
    from server_stub.storage.database import Database

    database = Database(url)
    try:
        claim = await jobs.start(database, tenant_id, recommendations.KIND, {"full": full})
        job = await jobs.execute(database, claim)
    finally:
        await database.dispose()
    if job.state != "done":
        raise RuntimeError(f"the rebuild job failed: {job.error}")
    assert job.result is not None
    return job.result


def _child(which: str, url: str, tenant_id: str) -> None:
    # Import what both need first: the figure is what the build itself adds.
    import server_stub.services.recommendations
    import server_stub.storage.database  # noqa: F401

    before = _peak_mb()
    started = time.perf_counter()
    if which == "old":
        result = asyncio.run(_old_rebuild(url, tenant_id))
    else:  # "new" builds from where the last build stopped, "full" from nothing
        result = asyncio.run(_job_rebuild(url, tenant_id, full=which == "full"))
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "peak_mb": _peak_mb(),
                "before_mb": before,
                **result,
            }
        )
    )


def _run_child(which: str, url: str, tenant_id: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_scale_jobs", which, url, tenant_id],
        capture_output=True,
        text=True,
        check=True,
    )
    measured: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return measured


def run() -> list[Figure]:
    url = _postgres_database()
    if url is None:
        return []
    try:
        started = time.perf_counter()
        tenant_id = asyncio.run(_prepare(url))
        load_seconds = time.perf_counter() - started
        old = _run_child("old", url, tenant_id)
        new = _run_child("new", url, tenant_id)
        if (old["baskets"], old["products"]) != (new["baskets"], new["products"]):
            raise RuntimeError(f"the job's model differs from the old rebuild's: {old} {new}")
        day = EVENTS // DAYS
        yesterday = datetime.now(UTC) - timedelta(days=1)
        asyncio.run(_load(url, tenant_id, History(day, yesterday, 1, 2)))
        incremental = _run_child("new", url, tenant_id)
    finally:
        _drop(url)
    added_old = old["peak_mb"] - old["before_mb"]
    added_new = new["peak_mb"] - new["before_mb"]
    scale = (
        f"{EVENTS:,} events, {CUSTOMERS:,} customers, {SKUS:,} products "
        f"(loaded in {load_seconds:.0f} s)"
    )
    return [
        Figure(
            f"recommendations rebuild, process peak memory, {scale}",
            new["peak_mb"],
            old["peak_mb"],
            "the rebuild before issue 21 (all rows in one process)",
            "MB",
            new["peak_mb"] / old["peak_mb"],
            "< 500 MB at 10 M customers",
            new["peak_mb"] < 500,
            f"peak RSS of a fresh process; added by the build itself: {added_new:.0f} MB vs "
            f"{added_old:.0f} MB; {new['baskets']:,} baskets; the job's memory does not grow "
            f"with the history (batches of 5,000 events)",
        ),
        Figure(
            "recommendations rebuild, full build time",
            new["seconds"],
            old["seconds"],
            "the rebuild before issue 21",
            "s",
            new["seconds"] / old["seconds"],
            "—",
            None,
            "the job also stores its counts, so that the next build counts only new events",
        ),
        Figure(
            f"recommendations rebuild after a day's events ({day:,} new events)",
            incremental["seconds"],
            new["seconds"],
            "the full build of the job",
            "s",
            incremental["seconds"] / new["seconds"],
            "< 60 s",
            incremental["seconds"] < 60,
            f"{incremental['events_counted']:,} events counted",
        ),
    ]


if __name__ == "__main__":
    if len(sys.argv) == 4:
        _child(sys.argv[1], sys.argv[2], sys.argv[3])
    else:
        for figure in run():
            print(figure.row())
