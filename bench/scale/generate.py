"""Load a shop of N customers into the project's own schema on PostgreSQL, through COPY.

Per N customers: N customers; 3N identifiers (two devices each, and a shop account id or a
loyalty card);
events with skew (HEAVY customers with 10,000 each, 5 % with 20, the rest 5; one in ten an
order: 5.75 N events, so more than 50 M at 10 M); carts for one in ten; an analytics grant for
every other one and a personalisation grant for every fourth; CHANGES_PER_CUSTOMER change-feed
entries per customer, in rounds over all customers (carts and sessions, one in CONSENT_EVERY
customers a consent change: a rare kind for a watcher to look for). Rows go in chunks, so
memory stays bounded whatever N.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from omnisdk.core.cart import Cart
from server_stub.storage import partitions

HEAVY = 11  # customers with HEAVY_EVENTS events: s0 (profile; its copies erased), s1 (export)
HEAVY_EVENTS = 10_000
CHUNK = 50_000
CHANGES_PER_CUSTOMER = 5
HISTORY = timedelta(days=60)  # events spread over the last 60 days
HISTORY_MINUTES = int(HISTORY.total_seconds() // 60)
CONSENT_EVERY = 50


@dataclass(frozen=True)
class Loaded:
    customers: int
    identifiers: int
    events: int
    carts: int
    decisions: int
    changes: int
    seconds: float
    bytes: int
    vacuum_seconds: float | None = None  # settle(): None for a shop loaded before it existed


async def settle(dsn: dict[str, Any]) -> float:
    """Bring a freshly loaded database to the steady state of one in service: VACUUM sets the
    visibility map and hint bits that COPY left unset (otherwise autovacuum reads the whole
    load again while it is being measured, and every first read of a row writes its page),
    ANALYZE gives the planner the tables' sizes, CHECKPOINT writes what that dirtied.
    Returns the seconds it took."""
    started = time.perf_counter()
    conn = await asyncpg.connect(**dsn)
    try:
        await conn.execute("VACUUM (ANALYZE)")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()
    return time.perf_counter() - started


# What requests read at random (a customer's row, identifiers, consent, cart, and this
# month's events and their indexes), in the order `warm` reads it: ingestion's relations last,
# so that they stay in shared_buffers; those read before it and larger than what is left of
# it stay in the operating system's cache. Tables are read with all their indexes.
HOT = ("identifiers", "carts", "{month}", "consent_decisions", "customers")


async def warm(dsn: dict[str, Any], now: datetime | None = None) -> int:
    """Read the HOT relations into memory (pg_prewarm), as hours of random requests leave
    them in a database in service (or pg_prewarm's autoprewarm after a restart:
    docs/scaling.md). Returns the bytes read; 0 where the extension is not installed."""
    month = partitions.partition_name(partitions.month_start(now or datetime.now(UTC)))
    conn = await asyncpg.connect(**dsn)
    try:
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
        except asyncpg.PostgresError as error:
            print(f"  not warmed: {error}", flush=True)
            return 0
        read = 0
        for name in HOT:
            table = name.format(month=f"{partitions.SCHEMA}.{month}")
            read += await conn.fetchval(
                "SELECT sum(pg_prewarm(r) * current_setting('block_size')::bigint) FROM "
                "(SELECT CAST($1 AS regclass) AS r UNION ALL SELECT CAST(indexrelid AS regclass) "
                "FROM pg_index WHERE indrelid = CAST($1 AS regclass)) AS relations",
                table,
            )
        return read
    finally:
        await conn.close()


def customer_id(n: int) -> str:
    return f"cus_s{n}"


def events_of(n: int, customers: int) -> int:
    if n < HEAVY:
        return HEAVY_EVENTS
    return 20 if n % 20 == 0 else 5


def _chunks(rows: Iterator[tuple[Any, ...]]) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


async def _copy(
    conn: asyncpg.Connection, table: str, columns: list[str], rows: Iterator[tuple[Any, ...]]
) -> int:
    count = 0
    for chunk in _chunks(rows):
        await conn.copy_records_to_table(table, records=chunk, columns=columns)
        count += len(chunk)
    return count


async def _partitions_for(conn: asyncpg.Connection, first: datetime, last: datetime) -> None:
    """Give every month of the history its partition before loading (a server makes months
    ahead; a shop's past is older than the server's first start)."""
    names = [row[0] for row in await conn.fetch(partitions.LIST_PARTITIONS_SQL)]
    existing = {partitions.month_of(name) for name in names}
    month = partitions.month_start(first)
    while month <= last:
        if month not in existing:
            async with conn.transaction():
                for statement in partitions.create_partition_sql(month):
                    await conn.execute(statement)
        month = partitions.add_months(month, 1)


async def load(dsn: dict[str, Any], tenant_id: str, customers: int) -> Loaded:
    """Load the shop into tenant `tenant_id` of the migrated database at `dsn`."""
    now = datetime.now(UTC)
    started = time.perf_counter()
    conn = await asyncpg.connect(**dsn)
    try:
        before = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
        loaded_customers = await _copy(
            conn,
            "customers",
            ["tenant_id", "id", "created_at", "traits"],
            ((tenant_id, customer_id(n), now, "{}") for n in range(customers)),
        )
        identifiers = await _copy(
            conn,
            "identifiers",
            ["tenant_id", "type", "value", "customer_id", "shared", "linked_at"],
            (
                (tenant_id, kind, value.format(n), customer_id(n), False, now)
                for n in range(customers)
                for kind, value in (
                    ("anonymous", "dev-{}-a"),
                    ("anonymous", "dev-{}-b"),
                    # Even customers have a shop account; odd ones a loyalty card (so that
                    # two odd ones may merge: a customer holds one customer_ref).
                    ("customer_ref", "ref-{}") if n % 2 == 0 else ("loyalty_card", "CARD{}"),
                )
            ),
        )
        await _partitions_for(conn, now - HISTORY, now)
        events = await _copy(conn, "events", _EVENT_COLUMNS, _events(tenant_id, customers, now))
        cart = json.dumps(Cart().to_dict())
        carts = await _copy(
            conn,
            "carts",
            ["tenant_id", "customer_id", "state", "version", "updated_at"],
            ((tenant_id, customer_id(n), cart, 1, now) for n in range(0, customers, 10)),
        )
        decisions = await _copy(
            conn, "consent_decisions", _DECISION_COLUMNS, _decisions(tenant_id, customers, now)
        )
        changes = await _copy(conn, "changes", _CHANGE_COLUMNS, _changes(tenant_id, customers, now))
        await conn.execute(
            "INSERT INTO change_positions (tenant_id, position, pruned_through) "
            "VALUES ($1, $2, 0) ON CONFLICT (tenant_id) DO UPDATE SET position = $2",
            tenant_id,
            changes,
        )
        await conn.execute("ANALYZE")
        after = int(await conn.fetchval("SELECT pg_database_size(current_database())"))
    finally:
        await conn.close()
    return Loaded(
        loaded_customers,
        identifiers,
        events,
        carts,
        decisions,
        changes,
        time.perf_counter() - started,
        after - before,
    )


_EVENT_COLUMNS = [
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
_DECISION_COLUMNS = [
    "tenant_id",
    "id",
    "customer_id",
    "origin_customer_id",
    "purpose",
    "status",
    "scope",
    "channel",
    "source",
    "method",
    "notice_version",
    "recorded_at",
]


_CHANGE_COLUMNS = ["tenant_id", "position", "customer_id", "kind", "payload", "created_at"]


def _decisions(tenant_id: str, customers: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    granted = now - timedelta(days=90)
    for n in range(0, customers, 2):
        purposes = ("analytics", "personalisation") if n % 4 == 0 else ("analytics",)
        for purpose in purposes:
            owner = customer_id(n)
            yield (
                tenant_id,
                f"cns_s{n}_{purpose}",
                owner,
                owner,
                purpose,
                "granted",
                "person",
                "web",
                "banner",
                "click",
                1,
                granted,
            )


def _changes(tenant_id: str, customers: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    """In rounds over every customer, in position order: a customer's changes lie far apart
    in the log, as changes made days apart do (one heap page each), not side by side; within
    a round, carts and sessions alternate, so any stretch of the log mixes kinds as a real
    one does."""
    position = 0
    for k in range(CHANGES_PER_CUSTOMER):
        for n in range(customers):
            position += 1
            if n % CONSENT_EVERY == 0 and k == n // CONSENT_EVERY % CHANGES_PER_CUSTOMER:
                kind, payload = "consent", '{"purposes": {"analytics": "granted"}}'
            elif (n + k) % 2:
                kind, payload = "session", f'{{"version": {k}}}'
            else:
                kind, payload = "cart", f'{{"version": {k}}}'
            yield (tenant_id, position, customer_id(n), kind, payload, now)


def _events(tenant_id: str, customers: int, now: datetime) -> Iterator[tuple[Any, ...]]:
    serial = 0
    for n in range(customers):
        owner = customer_id(n)
        for k in range(events_of(n, customers)):
            serial += 1
            when = now - timedelta(minutes=(serial * 7919) % HISTORY_MINUTES)
            if k % 10 == 9:
                properties = {"order_id": f"o{serial}", "value": 80.0, "skus": [f"SKU{k % 300}"]}
                yield (
                    tenant_id,
                    f"s{serial}",
                    owner,
                    owner,
                    "order_completed",
                    "web",
                    when,
                    now,
                    json.dumps(properties),
                    "shoes",
                    80.0,
                )
            else:
                properties = {"sku": f"SKU{serial % 300}", "category": "shoes"}
                yield (
                    tenant_id,
                    f"s{serial}",
                    owner,
                    owner,
                    "product_viewed",
                    "web",
                    when,
                    now,
                    json.dumps(properties),
                    "shoes",
                    None,
                )
