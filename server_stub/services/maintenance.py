"""Maintenance: history with a lifecycle (docs/scaling.md, "History").

One run, in this order, each step in short transactions of at most `batch` rows:

1. PostgreSQL: event partitions for last month, this month and three ahead, and for any month
   whose events fell into the default partition (storage/partitions.py).
2. Event retention (tenant settings `retention.events_days`, `retention.anonymous_events_days`).
   Partitions are shared by every tenant: a month's partition is dropped whole only when every
   tenant's retention has passed its end; until then each tenant whose retention has passed
   deletes its own rows, `batch` at a time. SQLite deletes in batches only.
3. Events stored without identifiers (the `~anon-` day buckets) on their own retention.
4. The change feed, by age (`change_retention_seconds`), `batch` positions at a time.
5. Idempotency records past their lifetime, oldest first, `batch` at a time.
6. Claims of event ids sent without a time, once past the dedupe window (services/events.py).

The server runs it every `maintenance_interval_seconds`, one process at a time (on PostgreSQL
a session advisory lock on a direct connection decides which; on SQLite, with one writer at a
time, a second run only finds nothing left to do); `omnisdk-server maintenance run` runs it
at once with a progress bar.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, select, text, tuple_
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.models import TenantSettings
from server_stub.ids import utcnow
from server_stub.services import changes, idempotency
from server_stub.services.events import ANONYMOUS_PREFIX, DEDUPE_WINDOW, anonymous_bucket
from server_stub.settings import Settings
from server_stub.storage import partitions
from server_stub.storage.database import Database
from server_stub.storage.tables import event_receipts, events, tenants

# Any constant works; it only has to be the same for every server process.
MAINTENANCE_LOCK = 7_470_021

# Told after every batch: the step's name and the rows it has handled so far.
Progress = Callable[[str, int], None]

STEPS = (
    "event partitions created",
    "event partitions dropped",
    "events deleted (retention)",
    "anonymous events deleted",
    "changes pruned",
    "idempotency records pruned",
    "event receipts pruned",
)


@dataclass
class Report:
    """What one run did, per step."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STEPS, 0))

    def add(self, step: str, rows: int, progress: Progress | None) -> None:
        self.counts[step] += rows
        if progress is not None:
            progress(step, self.counts[step])


@dataclass(frozen=True)
class _Retention:
    tenant_id: str
    events_before: datetime | None  # None: kept for good
    anonymous_before: datetime | None


async def run(
    database: Database,
    settings: Settings,
    *,
    now: datetime | None = None,
    progress: Progress | None = None,
) -> Report | None:
    """One maintenance run; None when another process is running one."""
    async with _exclusive(database) as mine:
        if not mine:
            return None
        return await _run(database, settings, now or utcnow(), progress)


async def _run(
    database: Database, settings: Settings, now: datetime, progress: Progress | None
) -> Report:
    report = Report()
    batch = settings.maintenance_batch_rows
    if not database.sqlite:
        await _ensure_partitions(database, now, report, progress)
    async with database.transaction(write=False) as conn:
        retention = await _retention(conn, now)
    if not database.sqlite:
        await _drop_partitions(database, retention, now, report, progress)
    for tenant in retention:
        if tenant.events_before is not None:
            owned = and_(
                events.c.occurred_at < tenant.events_before,
                events.c.customer_id.not_like(f"{ANONYMOUS_PREFIX}%"),
            )
            await _delete_events(database, tenant.tenant_id, owned, batch, report, progress, 2)
        if tenant.anonymous_before is not None:
            # The day buckets sort by date: one index range of the customer index.
            anonymous = and_(
                events.c.customer_id >= ANONYMOUS_PREFIX,
                events.c.customer_id < anonymous_bucket(tenant.anonymous_before),
            )
            await _delete_events(database, tenant.tenant_id, anonymous, batch, report, progress, 3)
    await prune_changes(
        database, settings.change_retention_seconds, now, batch, _told(report, 4, progress)
    )
    await purge_idempotency(
        database, settings.idempotency_ttl_seconds, now, batch, _told(report, 5, progress)
    )
    await _prune_receipts(database, now, batch, _told(report, 6, progress))
    return report


async def _prune_receipts(
    database: Database, now: datetime, batch: int, told: Callable[[int], None]
) -> None:
    """Forget claims of event ids older than the dedupe window (services/events.py)."""
    key = tuple_(event_receipts.c.tenant_id, event_receipts.c.event_id)
    while True:
        oldest = (
            select(event_receipts.c.tenant_id, event_receipts.c.event_id)
            .where(event_receipts.c.received_at < now - DEDUPE_WINDOW)
            .limit(batch)
        )
        async with database.transaction(write=True) as conn:
            result = await conn.execute(delete(event_receipts).where(key.in_(oldest)))
        removed = int(result.rowcount or 0)
        told(removed)
        if removed < batch:
            return


def _told(report: Report, step: int, progress: Progress | None) -> Callable[[int], None]:
    return lambda rows: report.add(STEPS[step], rows, progress)


async def prune_changes(
    database: Database,
    retention_seconds: float,
    now: datetime,
    batch: int,
    told: Callable[[int], None] | None = None,
) -> int:
    """Prune the change feed by age, at most `batch` changes per transaction."""
    async with database.transaction(write=False) as conn:
        expired = await changes.expired(conn, retention_seconds, now)
    total = 0
    for tenant_id, through in expired.items():
        while True:
            async with database.transaction(write=True) as conn:
                removed = await changes.prune_through(conn, tenant_id, through, limit=batch)
                done = (await changes.horizon(conn, tenant_id)).pruned_through >= through
            total += removed
            if told is not None:
                told(removed)
            if done:
                break
    return total


async def purge_idempotency(
    database: Database,
    ttl_seconds: int,
    now: datetime,
    batch: int,
    told: Callable[[int], None] | None = None,
) -> int:
    """Delete expired idempotency records, the oldest first, `batch` per transaction."""
    total = 0
    while True:
        async with database.transaction(write=True) as conn:
            removed = await idempotency.purge_expired(conn, ttl_seconds, now, limit=batch)
        total += removed
        if told is not None:
            told(removed)
        if removed < batch:
            return total


@contextlib.asynccontextmanager
async def _exclusive(database: Database) -> AsyncIterator[bool]:
    """True for the one process that may run maintenance now. PostgreSQL: a session advisory
    lock on a direct connection (a transaction pooler would not keep a session's lock)."""
    if database.sqlite:
        yield True
        return
    import asyncpg

    url = make_url(database.listen_url)
    connection = await asyncpg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        database=url.database,
        statement_cache_size=0,
    )
    try:
        mine = bool(await connection.fetchval("SELECT pg_try_advisory_lock($1)", MAINTENANCE_LOCK))
        try:
            yield mine
        finally:
            if mine:
                await connection.execute("SELECT pg_advisory_unlock($1)", MAINTENANCE_LOCK)
    finally:
        await connection.close()


async def _ensure_partitions(
    database: Database, now: datetime, report: Report, progress: Progress | None
) -> None:
    async with database.transaction(write=False) as conn:
        existing = await _partition_months(conn)
        stray = {
            partitions.month_start(row[0].replace(tzinfo=now.tzinfo))
            for row in await conn.execute(text(partitions.DEFAULT_MONTHS_SQL))
        }
    for month in sorted((set(partitions.months_wanted(now)) | stray) - existing):
        async with database.transaction(write=True) as conn:
            for statement in partitions.create_partition_sql(month):
                await conn.execute(text(statement))
        report.add(STEPS[0], 1, progress)


async def _partition_months(conn: AsyncConnection) -> set[datetime]:
    names = [row[0] for row in await conn.execute(text(partitions.LIST_PARTITIONS_SQL))]
    return {month for month in map(partitions.month_of, names) if month is not None}


async def _retention(conn: AsyncConnection, now: datetime) -> list[_Retention]:
    found = []
    for tenant_id, stored in await conn.execute(select(tenants.c.id, tenants.c.settings)):
        kept = TenantSettings.model_validate(stored or {}).retention
        anonymous_days = kept.anonymous_events_days or kept.events_days
        found.append(
            _Retention(
                tenant_id,
                None if kept.events_days is None else now - timedelta(days=kept.events_days),
                None if anonymous_days is None else now - timedelta(days=anonymous_days),
            )
        )
    return found


async def _drop_partitions(
    database: Database,
    retention: list[_Retention],
    now: datetime,
    report: Report,
    progress: Progress | None,
) -> None:
    """Drop each month's partition that every tenant's retention has passed the end of."""
    cutoffs = [t.events_before for t in retention] + [t.anonymous_before for t in retention]
    if not retention or any(cutoff is None for cutoff in cutoffs):
        return
    everyone_before = min(cutoff for cutoff in cutoffs if cutoff is not None)
    async with database.transaction(write=False) as conn:
        months = await _partition_months(conn)
    for month in sorted(months):
        if partitions.add_months(month, 1) > everyone_before:
            break
        async with database.transaction(write=True) as conn:
            await conn.execute(text(partitions.drop_partition_sql(month)))
        report.add(STEPS[1], 1, progress)


async def _delete_events(
    database: Database,
    tenant_id: str,
    condition: Any,
    batch: int,
    report: Report,
    progress: Progress | None,
    step: int,
) -> None:
    """Delete the tenant's events matching `condition`, `batch` rows per transaction."""
    while True:
        chosen = (
            select(events.c.seq, events.c.occurred_at)
            .where(events.c.tenant_id == tenant_id, condition)
            .limit(batch)
        )
        key = tuple_(events.c.seq, events.c.occurred_at)
        async with database.transaction(write=True) as conn:
            result = await conn.execute(
                delete(events).where(events.c.tenant_id == tenant_id, key.in_(chosen))
            )
        removed = int(result.rowcount or 0)
        report.add(STEPS[step], removed, progress)
        if removed < batch:
            return
