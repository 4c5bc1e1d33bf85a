"""Engines and transactions over SQLite (default) or PostgreSQL.

Each request runs in one transaction (`Database.transaction`): everything it writes commits
together or not at all. On SQLite, writing transactions start with `BEGIN IMMEDIATE` so that
concurrent writers queue on the database lock instead of failing when a read lock would have
to be upgraded; readers use WAL snapshots and never wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

SQLITE_BUSY_TIMEOUT_MS = 15_000


def async_url(url: str) -> str:
    """The URL with its async driver: `sqlite://` → aiosqlite, `postgresql://` → asyncpg."""
    parsed = make_url(url)
    driver = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    backend = parsed.get_backend_name()
    if parsed.drivername in driver:
        parsed = parsed.set(drivername=driver[parsed.drivername])
    elif backend not in driver:
        raise ValueError(f"unsupported database {backend!r}: use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _configure_sqlite(engine: AsyncEngine, begin: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours (SQLAlchemy's recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin)


class Database:
    """The server's storage: one engine for reads and, on SQLite, one that writes."""

    def __init__(self, url: str, pool_size: int = 10) -> None:
        self.url = async_url(url)
        self.sqlite = is_sqlite(self.url)
        self._sqlite_writer = asyncio.Lock()
        if self.sqlite:
            self.read_engine = create_async_engine(self.url)
            self.write_engine = create_async_engine(self.url)
            _configure_sqlite(self.read_engine, "BEGIN")
            _configure_sqlite(self.write_engine, "BEGIN IMMEDIATE")
        else:
            engine = create_async_engine(
                self.url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True
            )
            self.read_engine = self.write_engine = engine

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed if the block ends normally, rolled back if it raises."""
        if write and self.sqlite:
            # SQLite has one writer at a time. Queue this process's writers here, in the event
            # loop, rather than in SQLite's busy handler, which waits by sleeping up to 100 ms.
            async with self._sqlite_writer, self.write_engine.begin() as connection:
                yield connection
            return
        engine = self.write_engine if write else self.read_engine
        async with engine.begin() as connection:
            yield connection

    async def ping(self) -> None:
        async with self.read_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        await self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            await self.write_engine.dispose()
