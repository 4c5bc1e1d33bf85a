"""The server's storage: pooled PostgreSQL connections that were lost while idle."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from server_stub.ids import utcnow
from server_stub.storage import database


async def test_a_connection_lost_while_idle_is_replaced_not_handed_out(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = migrated_database_url
    if database.is_sqlite(url):
        pytest.skip("PostgreSQL only: SQLite has no server to lose a connection to")
    monkeypatch.setattr(database, "PING_AFTER_IDLE_SECONDS", 0.0)
    db = database.Database(url, pool_size=1)
    try:
        async with db.transaction(write=True) as conn:
            lost = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        parsed = make_url(url)
        admin = await asyncpg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
        )
        try:
            await admin.execute("SELECT pg_terminate_backend($1)", lost)
        finally:
            await admin.close()
        async with db.transaction(write=True) as conn:
            now = (await conn.execute(text("SELECT pg_backend_pid()"))).scalar()
        assert now != lost
    finally:
        await db.dispose()


class _Failed(Exception):
    pass


async def test_statements_run_on_the_driver_share_the_transaction(
    migrated_database_url: str,
) -> None:
    """Hot-path statements (storage/prepared.py) bypass SQLAlchemy's execution: they commit
    and roll back with the request's transaction all the same, alone or mixed with
    SQLAlchemy statements, and read back exactly what SQLAlchemy stores."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select

    from server_stub.storage.prepared import Prepared
    from server_stub.storage.tables import change_positions, sessions

    store = Prepared(insert(sessions))
    read = Prepared(
        select(sessions.c.document, sessions.c.updated_at).where(
            sessions.c.tenant_id == "t-prepared"
        )
    )
    at = datetime(2026, 12, 3, 8, 0, 0, 123456, tzinfo=UTC)
    row = {"tenant_id": "t-prepared", "document": {"k": ["ü", 1.5]}, "updated_at": at}
    db = database.Database(migrated_database_url)
    try:
        for mixed in (False, True):
            with pytest.raises(_Failed):
                async with db.transaction(write=True) as conn:
                    await store.execute(conn, {**row, "customer_id": f"c-{mixed}"})
                    if mixed:
                        await conn.execute(
                            insert(change_positions).values(
                                tenant_id="t-prepared", position=1, pruned_through=0
                            )
                        )
                    raise _Failed
        async with db.transaction(write=False) as conn:
            assert await read.fetchone(conn, {}) is None
            gone = select(change_positions).where(change_positions.c.tenant_id == "t-prepared")
            assert (await conn.execute(gone)).first() is None
        async with db.transaction(write=True) as conn:
            await store.execute(conn, {**row, "customer_id": "c-kept"})
        async with db.transaction(write=False) as conn:
            assert await read.fetchone(conn, {}) == (row["document"], at)
            by_sqlalchemy = select(sessions.c.document, sessions.c.updated_at).where(
                sessions.c.tenant_id == "t-prepared"
            )
            assert tuple((await conn.execute(by_sqlalchemy)).one()) == (row["document"], at)
    finally:
        await db.dispose()


async def test_every_statement_is_planned_for_its_values_and_never_compiled(
    migrated_database_url: str,
) -> None:
    """A generic plan made while a table was empty would read a whole tenant per lookup until
    autovacuum analysed it (storage/database.py): the server's connections never use one.
    Nor do they compile a statement (JIT), which in a large shop cost an erasure 25 ms."""
    url = migrated_database_url
    if database.is_sqlite(url):
        pytest.skip("PostgreSQL only: SQLite plans every statement when it is prepared")
    db = database.Database(url, pool_size=1)
    try:
        for write in (True, False):
            async with db.transaction(write=write) as conn:
                mode = (await conn.execute(text("SHOW plan_cache_mode"))).scalar()
                jit = (await conn.execute(text("SHOW jit"))).scalar()
            assert (mode, jit) == ("force_custom_plan", "off")
    finally:
        await db.dispose()
    # Behind a transaction pooler no startup setting is sent (PgBouncer refuses unknown ones);
    # its statements are unnamed, which PostgreSQL plans for their values anyway.
    assert "server_settings" not in database._pooler_connect_args("transaction")


async def test_single_reads_send_no_begin_but_behind_a_transaction_pooler(
    migrated_database_url: str,
) -> None:
    """A feed page is one statement: read in autocommit it is one round trip, not BEGIN, the
    read and COMMIT. The pooled connection goes back to transactions afterwards."""
    url = migrated_database_url
    if database.is_sqlite(url):
        pytest.skip("PostgreSQL only: on SQLite a BEGIN costs no round trip")
    transaction_id = text("SELECT txid_current()")
    db = database.Database(url, pool_size=1)
    try:
        for _ in range(2):
            async with db.single_reads() as conn:
                # Each statement is a transaction of its own: no BEGIN was sent before it.
                first = (await conn.execute(transaction_id)).scalar()
                assert (await conn.execute(transaction_id)).scalar() != first
            async with db.transaction(write=False) as conn:
                first = (await conn.execute(transaction_id)).scalar()
                assert (await conn.execute(transaction_id)).scalar() == first
    finally:
        await db.dispose()
    # Behind a transaction pooler, a statement outside a transaction may be prepared on one
    # server connection and run on another: there they stay in a transaction.
    pooled = database.Database(url, pool_size=1, pooler="transaction")
    try:
        async with pooled.single_reads() as conn:
            first = (await conn.execute(transaction_id)).scalar()
            assert (await conn.execute(transaction_id)).scalar() == first
    finally:
        await pooled.dispose()


@pytest.mark.parametrize("first_statement", ["sqlalchemy", "prepared"])
async def test_a_request_cancelled_as_its_transaction_begins_leaves_no_transaction_open(
    migrated_database_url: str, monkeypatch: pytest.MonkeyPatch, first_statement: str
) -> None:
    """A request is cancelled (its client went away, an SSE stream closed) just as BEGIN came
    back: asyncpg still counts that transaction as its outer one, SQLAlchemy does not. Were
    the connection pooled again, every later transaction on it would be a savepoint inside one
    that never commits: writes nobody else sees, row locks held until the process ends. The
    connection is discarded instead, and the next transaction's write is visible to all."""
    import asyncio

    import asyncpg.transaction
    from sqlalchemy import insert, select

    from server_stub.storage.prepared import Prepared
    from server_stub.storage.tables import sessions

    url = migrated_database_url
    if database.is_sqlite(url):
        pytest.skip("PostgreSQL only: SQLite's transactions are begun by the server itself")
    tenant = f"t-cancelled-{first_statement}"
    begin = asyncpg.transaction.Transaction.start
    cancelled: list[bool] = []

    async def start_then_cancelled(self: asyncpg.transaction.Transaction) -> None:
        await begin(self)
        if not cancelled:  # the BEGIN reached the server; the task's cancel lands now
            cancelled.append(True)
            raise asyncio.CancelledError

    read = Prepared(select(sessions.c.customer_id).where(sessions.c.tenant_id == tenant))
    db = database.Database(url, pool_size=1)
    try:
        async with db.transaction(write=False) as conn:  # the pool's connection, set up
            await read.fetchone(conn, {})
        monkeypatch.setattr(asyncpg.transaction.Transaction, "start", start_then_cancelled)
        with pytest.raises(asyncio.CancelledError):
            async with db.transaction(write=True) as conn:
                if first_statement == "prepared":
                    await read.fetchone(conn, {})
                else:
                    await conn.execute(select(sessions.c.customer_id).limit(1))
        assert cancelled
        monkeypatch.setattr(asyncpg.transaction.Transaction, "start", begin)
        row = {"tenant_id": tenant, "customer_id": "c-after", "document": {}}
        async with db.transaction(write=True) as conn:
            await conn.execute(insert(sessions).values(**row, updated_at=utcnow()))
        parsed = make_url(url)
        other = await asyncpg.connect(
            host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
        )
        try:
            seen = await other.fetch(
                "SELECT customer_id FROM sessions WHERE tenant_id = $1", tenant
            )
            open_transactions = await other.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
        finally:
            await other.close()
        assert [r["customer_id"] for r in seen] == ["c-after"]
        assert open_transactions == 0
    finally:
        await db.dispose()
