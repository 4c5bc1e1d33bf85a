"""The journey refresh as a job (issue 21): what computing each stored day on its own costs.

A range refresh used to compute its days in one pass over the customers (touches read from two
lookbacks before its first day); that made what a day stores depend on which days were
refreshed with it (tests/server/test_analytics_jobs.py). Each day is now computed on its own,
reading its own two lookbacks of touches: the peer is that one pass over the same 30 days
(collect_journeys over the whole period, what the range refresh computed before, without its
inserts). A generated shop on SQLite: CUSTOMERS customers with TOUCHES touches each over
DAYS days, and an order for every third.
"""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.report import Figure

CUSTOMERS = 2_000
TOUCHES = 12
DAYS = 90
REFRESHED = 30
KINDS = ("email_clicked", "campaign_scanned", "product_viewed", "store_visit")


async def _prepare(url: str, today: datetime) -> str:
    from sqlalchemy import insert

    from server_stub.sealing import Sealer
    from server_stub.services import identity, tenants
    from server_stub.storage.database import Database
    from server_stub.storage.migrate import upgrade
    from server_stub.storage.tables import events

    await upgrade(url)
    database = Database(url)
    rng = random.Random(21)
    try:
        async with database.transaction(write=True) as conn:
            tenant = await tenants.create(conn, "bench", sealer=Sealer(b"b" * 32))
            rows: list[dict[str, Any]] = []
            for n in range(CUSTOMERS):
                who = await identity.create_customer(conn, tenant.id, today)
                for k in range(TOUCHES):
                    at = today - timedelta(days=rng.uniform(0, DAYS))
                    rows.append(
                        {
                            "tenant_id": tenant.id,
                            "event_id": f"ev-{n}-{k}",
                            "customer_id": who,
                            "origin_customer_id": who,
                            "name": rng.choice(KINDS),
                            "channel": "web",
                            "occurred_at": at,
                            "received_at": at,
                            "properties": {"campaign": f"c{rng.randrange(5)}"},
                        }
                    )
                if n % 3 == 0:
                    rows.append(
                        {
                            "tenant_id": tenant.id,
                            "event_id": f"ev-{n}-order",
                            "customer_id": who,
                            "origin_customer_id": who,
                            "name": "order_completed",
                            "channel": "web",
                            "occurred_at": today - timedelta(days=rng.uniform(0, DAYS)),
                            "received_at": today,
                            "properties": {},
                        }
                    )
            for start in range(0, len(rows), 5_000):
                await conn.execute(insert(events), rows[start : start + 5_000])
    finally:
        await database.dispose()
    return str(tenant.id)


async def _measure(url: str) -> tuple[float, float]:
    from server_stub.services import analytics
    from server_stub.storage.database import Database

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    tenant_id = await _prepare(url, today)
    since = today - timedelta(days=REFRESHED)
    database = Database(url)
    try:
        async with database.transaction(write=False) as conn:
            start = time.perf_counter()
            await analytics.collect_journeys(conn, tenant_id, since=since, until=today)
            one_pass = time.perf_counter() - start
        async with database.transaction(write=True) as conn:
            start = time.perf_counter()
            written = await analytics.refresh_days(conn, tenant_id, since=since, until=today)
            day_by_day = time.perf_counter() - start
        assert len(written) == REFRESHED
    finally:
        await database.dispose()
    return day_by_day, one_pass


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'bench.sqlite3'}"
        day_by_day, one_pass = asyncio.run(_measure(url))
    return [
        Figure(
            f"Journey refresh of {REFRESHED} days, each day on its own "
            f"({CUSTOMERS:,} customers, {CUSTOMERS * TOUCHES:,} touches, SQLite)",
            day_by_day,
            one_pass,
            "one pass over the 30 days (the range refresh before)",
            "s",
            one_pass / day_by_day,
            "reported: the cost of days that do not depend on their neighbours",
            None,
            note="a daily run refreshes 1-2 days, where both cost about the same; noisy: "
            f"shared 2-core machine under other helpers' load (load average {_load()})",
        )
    ]
