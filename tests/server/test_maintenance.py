"""History with a lifecycle: retention, anonymous buckets, pruning in batches, partitions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, text

from server_stub.ids import utcnow
from server_stub.services import maintenance
from server_stub.services.events import ANONYMOUS_PREFIX
from server_stub.settings import Settings
from server_stub.storage import partitions
from server_stub.storage.migrate import upgrade
from server_stub.storage.tables import change_positions, changes, events, idempotency_records
from tests.conftest import PostgresDatabases, new_database_url
from tests.server.conftest import Harness, ShopForTest, start_harness

BATCH = 3  # small, so every step needs several transactions
ATTRIBUTED = {"consent": {"analytics": "legitimate_interest"}}


def batched(server: Harness, **changes_: Any) -> Settings:
    settings: Settings = server.app.state.runtime.settings
    return settings.model_copy(update={"maintenance_batch_rows": BATCH, **changes_})


async def send(shop: ShopForTest, customer: str, ages_in_days: list[int], tag: str) -> None:
    now = utcnow()
    batch = [
        {
            "anonymous_id": customer,
            "name": "product_viewed",
            "event_id": f"{tag}-{n}",
            "timestamp": (now - timedelta(days=age)).isoformat(),
            "properties": {"sku": "TR2"},
        }
        for n, age in enumerate(ages_in_days)
    ]
    response = await shop.request("POST", "/v1/events/batch", "web", json={"events": batch})
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == len(batch)


async def held(server: Harness, shop: ShopForTest, *, anonymous: bool | None = None) -> int:
    query = select(func.count()).select_from(events).where(events.c.tenant_id == shop.id)
    if anonymous is not None:
        bucket = events.c.customer_id.startswith(ANONYMOUS_PREFIX)
        query = query.where(bucket if anonymous else ~bucket)
    async with server.database.transaction(write=False) as conn:
        return int((await conn.execute(query)).scalar_one())


async def test_a_tenants_retention_deletes_only_its_own_older_events(server: Harness) -> None:
    short = await server.shop(settings={**ATTRIBUTED, "retention": {"events_days": 30}})
    forever = await server.shop(settings=ATTRIBUTED)
    await send(short, "amy", [40, 41, 45, 50, 60, 70, 80, 10, 1], "s")
    await send(forever, "bob", [40, 400, 900], "f")

    report = await maintenance.run(server.database, batched(server))

    assert report is not None
    assert await held(server, short) == 2  # the 10- and 1-day-old events
    assert await held(server, forever) == 3
    assert report.counts["events deleted (retention)"] >= 7


async def test_anonymous_events_go_in_day_buckets_pruned_on_their_own_retention(
    server: Harness,
) -> None:
    # No analytics consent (opt-in by default): events are kept without identifiers.
    shop = await server.shop(settings={"retention": {"anonymous_events_days": 20}})
    await send(shop, "visitor", [30, 25, 21, 5, 0], "a")
    async with server.database.transaction(write=False) as conn:
        owners = {
            row[0]
            for row in await conn.execute(
                select(events.c.customer_id).where(events.c.tenant_id == shop.id)
            )
        }
    today = utcnow()
    assert f"{ANONYMOUS_PREFIX}{today:%Y-%m-%d}" in owners
    assert f"{ANONYMOUS_PREFIX}{today - timedelta(days=30):%Y-%m-%d}" in owners

    await maintenance.run(server.database, batched(server))

    assert await held(server, shop, anonymous=True) == 2


async def test_the_change_feed_is_pruned_by_age_in_batches(server: Harness) -> None:
    shop = await server.shop()
    signed = await shop.request(
        "POST", "/v1/identity/identify", "web", json={"anonymous_id": "device-1"}
    )
    customer = signed.json()["customer_id"]
    for n in range(8):
        response = await shop.request(
            "POST", f"/v1/sessions/{customer}", "web", json={"entries": {"page": n}}
        )
        assert response.status_code == 200, response.text
    async with server.database.transaction(write=True) as conn:
        newest = (
            await conn.execute(
                select(change_positions.c.position).where(change_positions.c.tenant_id == shop.id)
            )
        ).scalar_one()
        # Age the first five of them past the retention.
        await conn.execute(
            changes.update()
            .where(changes.c.tenant_id == shop.id, changes.c.position <= newest - 3)
            .values(created_at=utcnow() - timedelta(days=30))
        )
    told: list[int] = []
    removed = await maintenance.prune_changes(
        server.database, 7 * 86_400, utcnow(), BATCH, told.append
    )
    async with server.database.transaction(write=False) as conn:
        left = [
            row[0]
            for row in await conn.execute(
                select(changes.c.position).where(changes.c.tenant_id == shop.id)
            )
        ]
        pruned = (
            await conn.execute(
                select(change_positions.c.pruned_through).where(
                    change_positions.c.tenant_id == shop.id
                )
            )
        ).scalar_one()
    assert sorted(left) == [newest - 2, newest - 1, newest]
    assert pruned == newest - 3
    assert removed >= newest - 3
    assert max(told) <= BATCH and len(told) >= 2


async def test_expired_idempotency_records_are_purged_oldest_first_in_batches(
    server: Harness,
) -> None:
    shop = await server.shop()
    long_ago = utcnow() - timedelta(days=3)
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            idempotency_records.insert(),
            [
                {
                    "tenant_id": shop.id,
                    "idempotency_key": f"k{n}",
                    "fingerprint": "f",
                    "status_code": 200,
                    "headers": {},
                    "body": b"{}",
                    "created_at": long_ago if n < 7 else utcnow(),
                }
                for n in range(9)
            ],
        )
    told: list[int] = []
    await maintenance.purge_idempotency(server.database, 86_400, utcnow(), BATCH, told.append)
    async with server.database.transaction(write=False) as conn:
        left = {
            row[0]
            for row in await conn.execute(
                select(idempotency_records.c.idempotency_key).where(
                    idempotency_records.c.tenant_id == shop.id
                )
            )
        }
    assert left == {"k7", "k8"}
    assert max(told) <= BATCH


# --- PostgreSQL partitions ---------------------------------------------------------------------


@pytest.fixture
def fresh_postgres_url(tmp_path: Path, postgres_databases: PostgresDatabases | None) -> str:
    """A migrated PostgreSQL database of its own (partitions are shared by its tenants)."""
    url = new_database_url("postgres", tmp_path, postgres_databases)
    asyncio.run(upgrade(url))
    return url


@pytest.fixture
async def fresh_postgres(fresh_postgres_url: str) -> AsyncIterator[Harness]:
    async for harness in start_harness(fresh_postgres_url):
        yield harness


async def partition_names(server: Harness) -> set[str]:
    async with server.database.transaction(write=False) as conn:
        return {row[0] for row in await conn.execute(text(partitions.LIST_PARTITIONS_SQL))}


@pytest.mark.postgres
async def test_events_of_a_month_without_partition_move_to_its_partition_when_made(
    fresh_postgres: Harness,
) -> None:
    server = fresh_postgres
    shop = await server.shop(settings=ATTRIBUTED)
    await send(shop, "amy", [500, 501, 3], "old")
    old_month = partitions.month_start(utcnow() - timedelta(days=500))
    assert partitions.partition_name(old_month) not in await partition_names(server)

    report = await maintenance.run(server.database, batched(server))

    assert report is not None and report.counts["event partitions created"] >= 1
    assert partitions.partition_name(old_month) in await partition_names(server)
    async with server.database.transaction(write=False) as conn:
        stray = (
            await conn.execute(
                text(f"SELECT count(*) FROM {partitions.SCHEMA}.{partitions.DEFAULT_PARTITION}")
            )
        ).scalar_one()
    assert stray == 0
    assert await held(server, shop) == 3


@pytest.mark.postgres
async def test_a_months_partition_is_dropped_only_when_every_tenants_retention_allows(
    fresh_postgres: Harness,
) -> None:
    server = fresh_postgres
    short = await server.shop(settings={**ATTRIBUTED, "retention": {"events_days": 60}})
    longer = await server.shop(settings={**ATTRIBUTED, "retention": {"events_days": 400}})
    await send(short, "amy", [200, 201, 1], "s")
    await send(longer, "bob", [200, 1], "l")
    old_month = partitions.month_start(utcnow() - timedelta(days=200))
    await maintenance.run(server.database, batched(server))  # makes the old month's partition

    # `longer` still keeps that month: the partition stays, `short`'s rows go one by one.
    assert partitions.partition_name(old_month) in await partition_names(server)
    assert await held(server, short) == 1
    assert await held(server, longer) == 2

    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            text("UPDATE tenants SET settings = CAST(:s AS json) WHERE id = :t"),
            {"s": '{"retention": {"events_days": 60}}', "t": longer.id},
        )
    report = await maintenance.run(server.database, batched(server))

    assert report is not None and report.counts["event partitions dropped"] >= 1
    assert partitions.partition_name(old_month) not in await partition_names(server)
    assert await held(server, longer) == 1
    assert partitions.partition_name(partitions.month_start(utcnow())) in await partition_names(
        server
    )


@pytest.mark.postgres
async def test_one_process_runs_maintenance_at_a_time(fresh_postgres: Harness) -> None:
    import asyncpg
    from sqlalchemy.engine import make_url

    server = fresh_postgres
    url = make_url(server.database.url)
    holder = await asyncpg.connect(
        host=url.host, port=url.port, user=url.username, database=url.database
    )
    try:
        assert await holder.fetchval(
            "SELECT pg_try_advisory_lock($1)", maintenance.MAINTENANCE_LOCK
        )
        assert await maintenance.run(server.database, batched(server)) is None
    finally:
        await holder.close()
    assert await maintenance.run(server.database, batched(server)) is not None


def test_the_cli_runs_maintenance_and_reports_each_step(
    migrated_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from server_stub.cli import main

    assert main(["maintenance", "run", "--database-url", migrated_database_url]) == 0
    out = capsys.readouterr().out
    for step in maintenance.STEPS:
        assert f"{step}: " in out


def test_partition_months_are_utc_calendar_months() -> None:
    start = partitions.month_start(datetime(2026, 12, 31, 23, 30, tzinfo=UTC))
    assert start == datetime(2026, 12, 1, tzinfo=UTC)
    assert partitions.add_months(start, 1) == datetime(2027, 1, 1, tzinfo=UTC)
    assert partitions.add_months(start, -12) == datetime(2025, 12, 1, tzinfo=UTC)
    assert partitions.month_of(partitions.partition_name(start)) == start
    assert partitions.month_of(partitions.DEFAULT_PARTITION) is None
