"""Alembic migrations, applied programmatically (by `serve` on start and by `migrate`)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine

from server_stub.storage.database import async_url, is_sqlite

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works; it only has to be the same for every server process.
_PG_MIGRATION_LOCK = 7_470_011


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(_config()).get_current_head()


def _upgrade(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Several server processes may start at once; one migrates, the others wait.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    command.upgrade(_config(connection), "head")


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(url: str) -> str | None:
    """Bring the database at `url` to the newest schema; returns the revision it is at."""
    engine = create_async_engine(async_url(url))
    try:
        async with engine.begin() as connection:
            if is_sqlite(url):
                await connection.exec_driver_sql("PRAGMA journal_mode=WAL")
            await connection.run_sync(_upgrade)
        async with engine.connect() as connection:
            return await connection.run_sync(_current)
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(async_url(url))
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_current)
    finally:
        await engine.dispose()
