"""The change feed: what changed in a customer's shared state, in order, and live.

A change is written in the same transaction as the state it describes, so a watcher never sees
a change that was rolled back. Watchers are woken when it commits: on PostgreSQL by NOTIFY
(every server process LISTENs), on SQLite by this process (a single process serves SQLite).
A watcher resumes after the last change it saw (SSE `Last-Event-ID`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from sqlalchemy import func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.ids import utcnow
from server_stub.storage.database import Database
from server_stub.storage.tables import changes

log = logging.getLogger("omnisdk.server")
CHANNEL = "omnisdk_changes"
AFTER_COMMIT = "omnisdk_after_commit"


async def publish(
    conn: AsyncConnection, tenant_id: str, customer_id: str, kind: str, payload: dict[str, Any]
) -> None:
    """Record a change; watchers are woken once the transaction commits."""
    await conn.execute(
        insert(changes).values(
            tenant_id=tenant_id,
            customer_id=customer_id,
            kind=kind,
            payload=payload,
            created_at=utcnow(),
        )
    )
    topic = f"{tenant_id}:{customer_id}"
    if conn.dialect.name == "postgresql":
        await conn.execute(
            text("SELECT pg_notify(:channel, :topic)"), {"channel": CHANNEL, "topic": topic}
        )
    else:
        conn.info.setdefault(AFTER_COMMIT, set()).add(topic)


async def since(
    conn: AsyncConnection, tenant_id: str, customer_id: str, after: int, limit: int = 100
) -> list[Any]:
    rows = await conn.execute(
        select(changes)
        .where(
            changes.c.tenant_id == tenant_id,
            changes.c.customer_id == customer_id,
            changes.c.seq > after,
        )
        .order_by(changes.c.seq)
        .limit(limit)
    )
    return list(rows)


TENANT_WIDE = ""  # the customer id of changes that concern the whole tenant (content)


async def of_tenant(
    conn: AsyncConnection, tenant_id: str, kinds: list[str], after: int, limit: int = 100
) -> list[Any]:
    """The tenant's changes of these kinds after `after` (every customer's)."""
    rows = await conn.execute(
        select(changes)
        .where(changes.c.tenant_id == tenant_id, changes.c.seq > after, changes.c.kind.in_(kinds))
        .order_by(changes.c.seq)
        .limit(limit)
    )
    return list(rows)


async def last_seq(conn: AsyncConnection, tenant_id: str, customer_id: str | None = None) -> int:
    """The newest change of the customer (of the whole tenant when None)."""
    query = select(func.max(changes.c.seq)).where(changes.c.tenant_id == tenant_id)
    if customer_id is not None:
        query = query.where(changes.c.customer_id == customer_id)
    value = (await conn.execute(query)).scalar()
    return int(value or 0)


def tenant_topic(tenant_id: str) -> str:
    """The topic a tenant-wide watcher waits on; every change of the tenant wakes it."""
    return f"{tenant_id}:*"


class ChangeHub:
    """Wakes this process's watchers when a change of their customer commits."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listener: Any = None
        self._lock = asyncio.Lock()

    async def _listen(self) -> None:
        """On PostgreSQL: one LISTEN connection per process, opened on the first watcher."""
        if self._database.sqlite or self._listener is not None:
            return
        async with self._lock:
            if self._listener is not None:
                return
            import asyncpg

            url = make_url(self._database.url)
            connection = await asyncpg.connect(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password,
                database=url.database,
            )
            await connection.add_listener(CHANNEL, lambda *args: self.wake(args[3]))
            self._listener = connection

    def wake(self, topic: str) -> None:
        tenant = tenant_topic(topic.split(":", 1)[0])
        for event in [*self._waiting.get(topic, ()), *self._waiting.get(tenant, ())]:
            event.set()

    @contextlib.asynccontextmanager
    async def watching(self, topic: str) -> AsyncIterator[asyncio.Event]:
        """An event set when a change of `topic` commits. Register before reading what is
        there, so that a change committing between the read and the wait is not missed."""
        await self._listen()
        event = asyncio.Event()
        self._waiting[topic].add(event)
        try:
            yield event
        finally:
            self._waiting[topic].discard(event)
            if not self._waiting[topic]:
                self._waiting.pop(topic, None)

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None
