"""The server's storage: pooled PostgreSQL connections that were lost while idle."""

from __future__ import annotations

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

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
