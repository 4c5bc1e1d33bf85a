"""The change feed: what changed in a customer's shared state, in commit order, and live.

Ordering (DESIGN: Ordering and atomicity). A change is written in the same transaction as the
state it describes, so a watcher never sees a change that was rolled back. Its place in the
feed, though, is handed out only when that transaction commits, under its tenant's row in
`change_positions`: on PostgreSQL a constraint trigger deferred to COMMIT numbers the changes
the transaction inserted with provisional negative positions (migration 0013); on SQLite the
transaction's last statements before COMMIT bump the counter and insert the changes. That row
stays locked until the commit is done, so another writer of the tenant waits there and numbers
its changes after the first has committed. Positions therefore follow commit order, per
tenant, without gaps; a reader that sees position n has seen everything below n (PostgreSQL
makes a commit visible before it releases the transaction's locks; SQLite has one writer at a
time), so "everything after my last position" never skips a change. The price is that a
tenant's committing writers queue for the length of PostgreSQL's own COMMIT (no client round
trip is inside it); they take this lock last, after every other lock, so the queue can never
deadlock.

Positions are per tenant: a tenant learns nothing of another's activity from them.

Waking. Watchers are woken when a change commits: on PostgreSQL by NOTIFY (every server
process LISTENs); on SQLite at once in the writing process, and in other processes on the same
file by a poll of the watched tenants' counters every `change_poll_seconds`.

Retention. Changes older than `change_retention_seconds` are pruned; the tenant's row keeps
the last pruned position. A watcher resuming below it is sent a `resync` event (its caches
must reload) and continues from the newest position.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    bindparam,
    column,
    delete,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.problems import ProblemType
from server_stub import tasks
from server_stub.ids import utcnow
from server_stub.storage.database import Database, before_commit, dumps
from server_stub.storage.prepared import Prepared
from server_stub.storage.tables import change_positions, changes

log = logging.getLogger("omnisdk.server")
CHANNEL = "omnisdk_changes"
AFTER_COMMIT = "omnisdk_after_commit"
OUTGOING = "omnisdk_outgoing_changes"
TENANT_WIDE = ""  # the customer id of changes that concern the whole tenant (content)
RESYNC = "resync"  # the SSE event of a watcher whose position was pruned or is unknown


@dataclass
class Outgoing:
    """The changes a transaction published, numbered and stored just before it commits."""

    pending: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, conn: AsyncConnection) -> None:
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for change in self.pending:
            by_tenant[change["tenant_id"]].append(change)
        now = utcnow()
        # Tenants in id order: two transactions touching the same tenants lock them alike.
        for tenant_id in sorted(by_tenant):
            batch = by_tenant[tenant_id]
            if conn.dialect.name == "postgresql":
                await _store_on_postgresql(conn, tenant_id, batch, now)
                continue
            last = await _take_positions(conn, tenant_id, len(batch))
            first = last - len(batch) + 1
            rows = [
                {**change, "position": first + n, "created_at": now}
                for n, change in enumerate(batch)
            ]
            await _INSERT_CHANGE.executemany(conn, rows)


async def publish(
    conn: AsyncConnection, tenant_id: str, customer_id: str, kind: str, payload: dict[str, Any]
) -> None:
    """Record a change; it takes its feed position when the transaction commits, and
    watchers are woken once it has."""
    outgoing = before_commit(conn, OUTGOING, Outgoing)
    outgoing.pending.append(
        {"tenant_id": tenant_id, "customer_id": customer_id, "kind": kind, "payload": payload}
    )
    if conn.dialect.name != "postgresql":  # PostgreSQL: NOTIFY goes with the positions
        conn.info.setdefault(AFTER_COMMIT, set()).add(f"{tenant_id}:{customer_id}")


# PostgreSQL: the changes and their NOTIFY in one statement. Each change goes in with a
# provisional negative position; a trigger deferred to COMMIT numbers it (migration 0013), so
# the tenant's counter row is locked only while PostgreSQL commits. NOTIFY is transactional:
# delivered at COMMIT, never for a rollback.
_STORE_ON_POSTGRESQL = Prepared(
    text(
        """
WITH stored AS (
    INSERT INTO changes (tenant_id, position, customer_id, kind, payload, created_at)
    SELECT :tenant, -nextval('change_provisional'), c.customer_id, c.kind,
           CAST(c.payload AS json), CAST(:now AS timestamptz)
    FROM unnest(CAST(:customers AS text[]), CAST(:kinds AS text[]), CAST(:payloads AS text[]))
         WITH ORDINALITY AS c(customer_id, kind, payload, n)
    ORDER BY c.n
    RETURNING 1
)
SELECT count(pg_notify(:channel, topic)) FROM unnest(CAST(:topics AS text[])) AS topic
"""
    )
)


async def _store_on_postgresql(
    conn: AsyncConnection, tenant_id: str, batch: list[dict[str, Any]], now: datetime
) -> None:
    await _STORE_ON_POSTGRESQL.fetchone(
        conn,
        {
            "tenant": tenant_id,
            "now": now,
            "customers": [change["customer_id"] for change in batch],
            "kinds": [change["kind"] for change in batch],
            "payloads": [dumps(change["payload"]) for change in batch],
            "channel": CHANNEL,
            "topics": sorted({f"{tenant_id}:{change['customer_id']}" for change in batch}),
        },
    )


def _advance(dialect: Any) -> Prepared:
    statement = dialect.insert(change_positions).values(
        tenant_id=bindparam("p_tenant"), position=bindparam("p_count"), pruned_through=0
    )
    statement = statement.on_conflict_do_update(
        index_elements=["tenant_id"],
        set_={"position": change_positions.c.position + statement.excluded.position},
    ).returning(change_positions.c.position)
    return Prepared(statement)


# The statements of every change, compiled once and run on the driver (storage/prepared.py).
_ADVANCE = {"postgresql": _advance(postgresql), "sqlite": _advance(sqlite)}
_INSERT_CHANGE = Prepared(insert(changes))  # one parameter per column, named after it


async def _take_positions(conn: AsyncConnection, tenant_id: str, count: int) -> int:
    """Advance the tenant's counter by `count` and return the last position taken. The row
    stays locked until this transaction ends: that is what orders positions by commit."""
    row = await _ADVANCE[conn.dialect.name].fetchone(
        conn, {"p_tenant": tenant_id, "p_count": count}
    )
    assert row is not None
    return int(row[0])


# --- reading -------------------------------------------------------------------------------


async def since(
    conn: AsyncConnection, tenant_id: str, customer_id: str, after: int, limit: int = 100
) -> list[Any]:
    """The customer's changes after position `after`, in order."""
    page = await read_page(conn, tenant_id, after, customer_id=customer_id, limit=limit)
    return page.rows


@dataclass(frozen=True)
class Horizon:
    """A tenant's feed bounds: the newest position and the last one pruned."""

    newest: int
    pruned_through: int

    def resync_needed(self, after: int) -> bool:
        """True when a watcher at `after` cannot simply continue: changes it has not seen
        were pruned, or the position is not one this feed has handed out yet."""
        return after < self.pruned_through or after > self.newest


async def horizon(conn: AsyncConnection, tenant_id: str) -> Horizon:
    row = (
        await conn.execute(
            select(change_positions.c.position, change_positions.c.pruned_through).where(
                change_positions.c.tenant_id == tenant_id
            )
        )
    ).first()
    return Horizon(0, 0) if row is None else Horizon(int(row[0]), int(row[1]))


@dataclass(frozen=True)
class FeedPage:
    """Changes after a position, and the feed's bounds as of the same reading."""

    horizon: Horizon
    rows: list[Any]


def _horizon_columns(tenant: Any) -> tuple[Any, Any]:
    """The tenant's horizon as two columns beside a read's rows (one statement, one snapshot):
    `newest` and `pruned_through`. `tenant` is its id or a bind parameter."""
    counter = change_positions.c.tenant_id == tenant
    newest = select(change_positions.c.position).where(counter).scalar_subquery()
    pruned = select(change_positions.c.pruned_through).where(counter).scalar_subquery()
    return newest.label("newest"), pruned.label("pruned_through")


async def read_page(
    conn: AsyncConnection,
    tenant_id: str,
    after: int,
    *,
    customer_id: str | None = None,
    kinds: list[str] | None = None,
    limit: int = 100,
) -> FeedPage:
    """The tenant's changes after `after` (the customer's, of these kinds), with its horizon.

    The horizon comes with the rows, in one statement and so one snapshot: a prune cannot hide
    rows without showing the raised `pruned_through` beside them. With no rows it is read
    after them, which is as safe: a prune in between shows in the later read."""
    if customer_id is None and kinds is not None and conn.dialect.name == "postgresql":
        rows = await _rows_of_kinds(conn, tenant_id, after, kinds, limit)
    else:
        query = select(changes, *_horizon_columns(tenant_id)).where(
            changes.c.tenant_id == tenant_id, changes.c.position > after
        )
        if customer_id is not None:
            query = query.where(changes.c.customer_id == customer_id)
        if kinds is not None:
            query = query.where(changes.c.kind.in_(kinds))
        rows = list(await conn.execute(query.order_by(changes.c.position).limit(limit)))
    if not rows:
        return FeedPage(await horizon(conn, tenant_id), [])
    first = rows[0]
    return FeedPage(Horizon(int(first.newest or 0), int(first.pruned_through or 0)), rows)


# A watcher of some kinds, on PostgreSQL. `changes` is partitioned by kind (migration 0028),
# so each kind's changes lie together in position order: a page of a rare kind is a few heap
# pages of its partition, where in one table it lay one row on each of a hundred pages, found
# among every other change after the watcher's position.
#
# One branch per kind, each kind a value of its own: the planner sees which kind it reads (every
# statement is planned for its values, storage/database.py), so each branch reads only that
# kind's partition, through its index, cut at the page size. A kind reached through a join
# (`unnest(:kinds)`) is not known at planning time, and every partition would be read.
def _rows_of_kinds_statement(count: int) -> Prepared:
    columns = ", ".join(column.name for column in changes.columns)
    branches = " UNION ALL ".join(
        f"(SELECT {columns} FROM changes WHERE tenant_id = :tenant AND kind = :kind_{n} "
        "AND position > :after ORDER BY position LIMIT :limit)"
        for n in range(count)
    )
    return Prepared(
        text(
            f"SELECT p.*, h.position AS newest, h.pruned_through FROM ({branches}) AS p "
            "LEFT JOIN change_positions AS h ON h.tenant_id = :tenant "
            "ORDER BY p.position LIMIT :limit"
        ).columns(
            *(column(c.name, c.type) for c in changes.columns),
            column("newest", BigInteger()),
            column("pruned_through", BigInteger()),
        )
    )


_ROWS_OF_KINDS: dict[int, Prepared] = {}


class _KindRow(NamedTuple):
    tenant_id: str
    position: int
    customer_id: str
    kind: str
    payload: Any
    created_at: datetime
    newest: int | None
    pruned_through: int | None


async def _rows_of_kinds(
    conn: AsyncConnection, tenant_id: str, after: int, kinds: list[str], limit: int
) -> list[Any]:
    wanted = sorted(set(kinds))
    statement = _ROWS_OF_KINDS.get(len(wanted))
    if statement is None:
        statement = _ROWS_OF_KINDS[len(wanted)] = _rows_of_kinds_statement(len(wanted))
    parameters: dict[str, Any] = {"tenant": tenant_id, "after": after, "limit": limit}
    parameters.update((f"kind_{n}", kind) for n, kind in enumerate(wanted))
    rows = await statement.fetchall(conn, parameters)
    return [_KindRow._make(row) for row in rows]


def resync_event(newest: int) -> dict[str, Any]:
    """The body of the `resync` event (a problem document, RFC 9457 shape)."""
    kind = ProblemType.CHANGE_FEED_RESYNC
    return {
        "type": kind.value,
        "title": kind.default_title,
        "status": kind.status,
        "detail": "changes after your position are no longer kept (or the position is "
        f"unknown): reload what you cache, then continue from {newest}",
        "position": newest,
    }


def tenant_topic(tenant_id: str) -> str:
    """The topic a tenant-wide watcher waits on; every change of the tenant wakes it."""
    return f"{tenant_id}:*"


# --- retention -------------------------------------------------------------------------------


async def prune(conn: AsyncConnection, retention_seconds: float, now: datetime) -> int:
    """Delete changes older than the retention and raise each tenant's pruned position."""
    removed = 0
    for tenant_id, through in (await expired(conn, retention_seconds, now)).items():
        removed += await prune_through(conn, tenant_id, through)
    return removed


async def expired(conn: AsyncConnection, retention_seconds: float, now: datetime) -> dict[str, int]:
    """Per tenant, the newest position of a change older than the retention."""
    cutoff = now - timedelta(seconds=retention_seconds)
    rows = await conn.execute(
        select(changes.c.tenant_id, func.max(changes.c.position))
        .where(changes.c.created_at < cutoff)
        .group_by(changes.c.tenant_id)
    )
    return {tenant_id: int(through) for tenant_id, through in rows}


async def prune_through(
    conn: AsyncConnection, tenant_id: str, through: int, limit: int | None = None
) -> int:
    """Delete the tenant's changes up to position `through`, or only the next `limit` of them
    (positions have no gaps, so a range of `limit` positions is at most `limit` rows, and the
    transaction stays short however far behind the pruning is). Returns how many went."""
    done = (
        await conn.execute(
            select(change_positions.c.pruned_through).where(
                change_positions.c.tenant_id == tenant_id
            )
        )
    ).scalar() or 0
    if limit is not None:
        through = min(through, done + limit)
    result = await conn.execute(
        delete(changes).where(
            changes.c.tenant_id == tenant_id,
            changes.c.position > done,
            changes.c.position <= through,
        )
    )
    # Last, so the counter row (which the tenant's writers queue on) is held briefly.
    await conn.execute(
        update(change_positions)
        .where(
            change_positions.c.tenant_id == tenant_id,
            change_positions.c.pruned_through < through,
        )
        .values(pruned_through=through)
    )
    return int(result.rowcount or 0)


# --- waking ----------------------------------------------------------------------------------


class ChangeHub:
    """Wakes this process's watchers when a change of their customer commits."""

    def __init__(self, database: Database, poll_seconds: float = 0.1) -> None:
        self._database = database
        self._poll_seconds = poll_seconds
        self._waiting: dict[str, set[asyncio.Event]] = defaultdict(set)
        self._listener: Any = None
        self._poller: asyncio.Task[None] | None = None
        self._seen: dict[str, int] = {}  # SQLite: each watched tenant's newest position
        self._lock = asyncio.Lock()

    async def _listen(self) -> None:
        """On PostgreSQL: one LISTEN connection per process, opened on the first watcher."""
        if self._database.sqlite or self._listener is not None:
            return
        async with self._lock:
            if self._listener is not None:
                return
            import asyncpg

            # A direct connection: a transaction pooler would drop LISTEN between transactions.
            url = make_url(self._database.listen_url)
            connection = await asyncpg.connect(
                host=url.host,
                port=url.port,
                user=url.username,
                password=url.password,
                database=url.database,
            )
            await connection.add_listener(CHANNEL, lambda *args: self.wake(args[3]))
            self._listener = connection

    async def _follow_sqlite(self, tenant_id: str) -> None:
        """On SQLite: note the tenant's newest position before the watcher reads, so the poll
        wakes it for anything committed later by any process on the file."""
        if not self._database.sqlite:
            return
        if tenant_id not in self._seen:
            async with self._database.transaction(write=False) as conn:
                self._seen.setdefault(tenant_id, (await horizon(conn, tenant_id)).newest)
        if self._poller is None:
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._poll_seconds)
            try:
                await self._poll_once()
            except Exception as exc:  # a busy or locked file: try again at the next tick
                log.warning("change poll failed", extra={"error_type": type(exc).__name__})

    async def _poll_once(self) -> None:
        watched = {topic.split(":", 1)[0] for topic in self._waiting}
        for tenant_id in [t for t in self._seen if t not in watched]:
            del self._seen[tenant_id]
        if not self._seen:
            return
        async with self._database.transaction(write=False) as conn:
            newest = await conn.execute(
                select(change_positions.c.tenant_id, change_positions.c.position).where(
                    change_positions.c.tenant_id.in_(list(self._seen))
                )
            )
            moved = {t: (self._seen[t], int(p)) for t, p in newest if int(p) > self._seen[t]}
            for tenant_id, (before, now) in moved.items():
                self._seen[tenant_id] = now
                for customer_id in await _customers_between(conn, tenant_id, before, now):
                    self.wake(f"{tenant_id}:{customer_id}")

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
            await self._follow_sqlite(topic.split(":", 1)[0])
            yield event
        finally:
            self._waiting[topic].discard(event)
            if not self._waiting[topic]:
                self._waiting.pop(topic, None)

    async def close(self) -> None:
        if self._poller is not None:
            await tasks.stop(self._poller)
            self._poller = None
        if self._listener is not None:
            await self._listener.close()
            self._listener = None


async def _customers_between(
    conn: AsyncConnection, tenant_id: str, after: int, through: int
) -> Iterable[str]:
    rows = await conn.execute(
        select(changes.c.customer_id)
        .distinct()
        .where(
            changes.c.tenant_id == tenant_id,
            changes.c.position > after,
            changes.c.position <= through,
        )
    )
    return [row[0] for row in rows]
