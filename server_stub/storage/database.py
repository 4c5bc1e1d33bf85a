"""Engines and transactions over SQLite (default) or PostgreSQL.

Each request runs in one transaction (`Database.transaction`): everything it writes commits
together or not at all. On SQLite, writing transactions start with `BEGIN IMMEDIATE` so that
concurrent writers queue on the database lock instead of failing when a read lock would have
to be upgraded; readers use WAL snapshots and never wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import orjson
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import await_only

from server_stub.storage.inline_sqlite import InlineConnection, creator

SQLITE_LOCK_WAIT_SECONDS = 15.0  # how long a writer waits for another process's write lock
SQLITE_READER_BUSY_MS = 100  # readers wait only for the rare WAL recovery
BEFORE_COMMIT = "omnisdk_before_commit"
AFTER_COMMIT_ACTIONS = "omnisdk_after_commit_actions"


class CommitStep(Protocol):
    async def __call__(self, connection: AsyncConnection, /) -> None: ...


Step = TypeVar("Step", bound=CommitStep)


def before_commit(connection: AsyncConnection, key: str, make: Callable[[], Step]) -> Step:
    """The step registered under `key` in this transaction (made by `make` the first time):
    it runs as the transaction's last statements, just before COMMIT, and never if the
    transaction rolls back. The change feed numbers its changes there (services/changes)."""
    steps: dict[str, Any] = connection.info.setdefault(BEFORE_COMMIT, {})
    if key not in steps:
        steps[key] = make()
    step: Step = steps[key]
    return step


async def _run_before_commit(connection: AsyncConnection) -> list[Callable[[], object]]:
    """Runs the transaction's last steps; returns what is to run once it has committed."""
    steps: dict[str, CommitStep] = connection.info.pop(BEFORE_COMMIT, {})
    for step in steps.values():
        await step(connection)
    actions: list[Callable[[], object]] = connection.info.pop(AFTER_COMMIT_ACTIONS, [])
    return actions


def after_commit(connection: AsyncConnection, action: Callable[[], object]) -> None:
    """`action` runs once this transaction has committed, never if it rolls back. A cache
    dropped before the commit can be filled again, by another request, from the rows as
    they were: drop it here as well."""
    connection.info.setdefault(AFTER_COMMIT_ACTIONS, []).append(action)


def _forget_before_commit(connection: AsyncConnection) -> None:
    # `info` belongs to the pooled DBAPI connection and outlives the transaction: steps of a
    # transaction that rolled back must not run in the next one on the same connection.
    # An invalidated connection (SQLAlchemy's answer to a statement cancelled mid-flight) has
    # no pooled connection left to hold them, and `info` would reconnect to find one.
    if not connection.invalidated:
        connection.info.pop(BEFORE_COMMIT, None)
        connection.info.pop(AFTER_COMMIT_ACTIONS, None)


# A pooled PostgreSQL connection idle this long is pinged before use (see _ping_when_idle).
PING_AFTER_IDLE_SECONDS = 5.0


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


def _configure_sqlite(engine: AsyncEngine, begin: str, busy_ms: int, inline: bool) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so BEGIN is ours (SQLAlchemy's recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection: Any) -> None:
        if inline:
            # Straight to sqlite3: a statement through SQLAlchemy costs ten times the BEGIN.
            # A writer's transaction is already open (begun by Database._begin_writer) when
            # SQLAlchemy begins on its first statement.
            raw = connection.connection.driver_connection.raw
            if not raw.in_transaction:
                raw.execute(begin)
        else:
            connection.exec_driver_sql(begin)


def _hidden_transaction(dbapi_connection: Any) -> bool:
    """Whether asyncpg holds a transaction SQLAlchemy does not know of: one whose BEGIN was
    interrupted by a cancellation (a client that hung up, an SSE stream closed) after asyncpg
    took it as its outer transaction. Every later transaction on such a connection would be a
    savepoint inside one that never commits (sqlalchemy/sqlalchemy#13381)."""
    driver = getattr(dbapi_connection, "_connection", None)
    if getattr(dbapi_connection, "_transaction", None) is not None or driver is None:
        return False  # SQLAlchemy's own transaction: its reset rolls that back
    # `_top_xact` is asyncpg's record of its outer transaction (set before BEGIN is sent).
    return getattr(driver, "_top_xact", None) is not None or bool(driver.is_in_transaction())


def _discard_hidden_transactions(engine: AsyncEngine) -> None:
    """A connection going back to the pool with a hidden transaction is rolled back at once
    (its locks and snapshot go with it), and discarded at its next checkout rather than handed
    to another request."""

    @event.listens_for(engine.sync_engine, "reset")
    def on_reset(dbapi_connection: Any, record: Any, state: Any) -> None:
        if not _hidden_transaction(dbapi_connection):
            return
        record.info["hidden_transaction"] = True
        if state.asyncio_safe and not state.terminate_only:
            # Discarded at checkout whatever happens here; rolled back now so its locks and
            # snapshot do not wait in the pool until then.
            with contextlib.suppress(Exception):
                await_only(dbapi_connection._connection.execute("ROLLBACK"))

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if record.info.pop("hidden_transaction", False) or _hidden_transaction(dbapi_connection):
            raise DisconnectionError("the pooled connection held a transaction of its own")


def _ping_when_idle(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only if it sat idle for a while, and replace it if
    the ping fails. `pool_pre_ping` pings at every checkout: three round trips with asyncpg
    (begin, ping, rollback) per request, for connections used milliseconds earlier. A
    connection dropped while idle (a server restart, an idle timeout) is still never handed
    out; one dropped while busy fails its request either way."""

    @event.listens_for(engine.sync_engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine.sync_engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.get("idle_since")
        if idle_since is None or time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS:
            return
        try:
            dbapi_connection.ping()
        except Exception as error:
            # The pool discards this connection and checks out a new one.
            raise DisconnectionError("the pooled connection was lost while idle") from error


def _pooler_connect_args(pooler: str) -> dict[str, Any]:
    """asyncpg's options behind a pooler in transaction mode (PgBouncer's `transaction`): the
    server connection under a client changes between transactions, so no prepared statement
    may be cached (asyncpg's cache and SQLAlchemy's), and those SQLAlchemy prepares within a
    transaction get unique names, never to meet another client's on a shared connection."""
    if pooler == "none":
        # Every statement planned for its parameters. The hot paths' statements are prepared
        # once per connection (storage/prepared.py), and after five runs PostgreSQL may keep a
        # generic plan made without their values: one made while a table was new and empty
        # reads a whole tenant for every lookup until autovacuum next analyses it (a fresh
        # database under sign-ins fell to a third of its speed), and one plan cannot suit a
        # tenant of ten customers and one of ten million. Planning these statements costs
        # microseconds. (Behind a pooler, statements are unnamed and always planned so.)
        # No JIT compilation: in a large shop the planner's estimates for a statement over
        # every event partition pass `jit_above_cost`, and compiling it took 25 ms of an
        # erasure that ran in 10 (docs/scaling.md). Every request's statements read a
        # customer's rows through an index, where compiled expressions save nothing.
        return {"server_settings": {"plan_cache_mode": "force_custom_plan", "jit": "off"}}
    if pooler != "transaction":
        raise ValueError(f"unknown pooler mode {pooler!r}: use 'none' or 'transaction'")
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": lambda: f"__omnisdk_{uuid.uuid4().hex}__",
    }


def dumps(value: Any) -> str:
    """JSON as the database columns store it."""
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# JSON columns (carts, sessions, changes, traits, ...) are encoded and decoded by orjson: the
# standard library's encoder was a tenth of a cart operation's CPU time.
JSON_CODEC = {"json_serializer": dumps, "json_deserializer": orjson.loads}


def _inline(connection: AsyncConnection) -> sqlite3.Connection | None:
    """The sqlite3 connection under an inline SQLite connection (None for other drivers)."""
    driver = connection.sync_connection.connection.driver_connection  # type: ignore[union-attr]
    return driver.raw if isinstance(driver, InlineConnection) else None


async def _commit_writer(connection: AsyncConnection) -> None:
    raw = _inline(connection)
    if connection.in_transaction() or raw is None:
        await connection.commit()  # SQLAlchemy began too: it commits (sqlite3's transaction)
    else:
        raw.execute("COMMIT")


class Database:
    """The server's storage: one engine for reads and, on SQLite, one that writes."""

    def __init__(
        self,
        url: str,
        pool_size: int = 10,
        *,
        pooler: str = "none",
        listen_url: str | None = None,
    ) -> None:
        self.url = async_url(url)
        self.sqlite = is_sqlite(self.url)
        self.pooler = pooler
        # Direct connections (LISTEN, session advisory locks) bypass a transaction pooler.
        self.listen_url = async_url(listen_url) if listen_url else self.url
        self._sqlite_writer = asyncio.Lock()
        # SQLite: this process's one writing connection, kept open between transactions
        # (writers take turns on `_sqlite_writer`, so a pool would only add checkout costs).
        self._writer: AsyncConnection | None = None
        if self.sqlite:
            path = make_url(self.url).database
            # A file runs inline on the loop (see inline_sqlite); ":memory:" keeps aiosqlite.
            inline = path is not None and path not in ("", ":memory:")
            options = {"async_creator": creator(path)} if path and inline else {}
            self.read_engine = create_async_engine(self.url, **options, **JSON_CODEC)
            self.write_engine = create_async_engine(self.url, **options, **JSON_CODEC)
            _configure_sqlite(self.read_engine, "BEGIN", SQLITE_READER_BUSY_MS, inline)
            # No busy handler for writers: it would sleep with the event loop (see below).
            _configure_sqlite(self.write_engine, "BEGIN IMMEDIATE", 0 if inline else 15_000, inline)
        else:
            engine = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                connect_args=_pooler_connect_args(pooler),
                **JSON_CODEC,
            )
            _discard_hidden_transactions(engine)
            _ping_when_idle(engine)
            self.read_engine = self.write_engine = engine

    @asynccontextmanager
    async def transaction(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed if the block ends normally, rolled back if it raises."""
        if write and self.sqlite:
            # SQLite has one writer at a time. Queue this process's writers here, in the event
            # loop, rather than in SQLite's busy handler, which waits by sleeping up to 100 ms.
            async with self._sqlite_writer:
                connection = await self._begin_writer()
                _forget_before_commit(connection)
                try:
                    yield connection
                    actions = await _run_before_commit(connection)
                    await _commit_writer(connection)
                except BaseException:
                    await self._abandon_writer(connection)
                    raise
                finally:
                    _forget_before_commit(connection)
            for action in actions:
                action()
            return
        engine = self.write_engine if write else self.read_engine
        async with engine.connect() as connection:
            _forget_before_commit(connection)
            try:
                async with connection.begin():
                    yield connection
                    actions = await _run_before_commit(connection)
            finally:
                _forget_before_commit(connection)
        for action in actions:
            action()

    @asynccontextmanager
    async def single_reads(self) -> AsyncIterator[AsyncConnection]:
        """A connection for reads that are each one statement, like a feed page: on PostgreSQL
        every statement is its own transaction (autocommit), so a read is one round trip
        rather than three (BEGIN, the read, COMMIT). Two statements read two snapshots; a
        caller that needs one snapshot for several reads, or writes, uses `transaction`.

        A reading transaction instead on SQLite, where a BEGIN costs no round trip, and
        behind a transaction pooler: there asyncpg prepares a statement in one exchange and
        runs it in the next, and outside a transaction PgBouncer may hand the second to
        another server connection, which never saw the statement."""
        if self.sqlite or self.pooler == "transaction":
            async with self.transaction(write=False) as connection:
                yield connection
            return
        async with self.read_engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            yield connection

    async def _begin_writer(self) -> AsyncConnection:
        """A connection in a `BEGIN IMMEDIATE` transaction. While another process holds the
        write lock, try again after a pause that does not block the loop."""
        deadline = time.monotonic() + SQLITE_LOCK_WAIT_SECONDS
        pause = 0.001
        while True:
            if self._writer is None:
                self._writer = await self.write_engine.connect()
            connection = self._writer
            try:
                raw = _inline(connection)
                if raw is None:
                    await connection.begin()
                else:
                    # The transaction is sqlite3's own; SQLAlchemy joins it on its first
                    # statement (see `on_begin`), and a request whose statements all run on
                    # the driver (storage/prepared.py) never pays for SQLAlchemy's.
                    raw.execute("BEGIN IMMEDIATE")
                return connection
            except (OperationalError, sqlite3.OperationalError) as error:
                # BEGIN goes to sqlite3 directly (see _configure_sqlite): its own error class.
                await self._abandon_writer(connection)
                reason = str(getattr(error, "orig", error))
                locked = "locked" in reason or "busy" in reason
                if not locked or time.monotonic() > deadline:
                    raise
            except BaseException:
                await self._abandon_writer(connection)
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def _abandon_writer(self, connection: AsyncConnection) -> None:
        """Roll back what the writer was doing; after any failure of the connection itself,
        close it (the next transaction opens a new one)."""
        try:
            raw = _inline(connection)
            if connection.in_transaction() or raw is None:
                await connection.rollback()
            elif raw.in_transaction:
                raw.execute("ROLLBACK")
            if not connection.invalidated:
                return
        except BaseException:
            pass
        self._writer = None
        await connection.close()

    async def ping(self) -> None:
        async with self.read_engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    async def dispose(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            await writer.close()
        await self.read_engine.dispose()
        if self.write_engine is not self.read_engine:
            await self.write_engine.dispose()


# PostgreSQL ended the transaction to break a deadlock (40P01) or a serialization conflict
# (40001): everything it did was undone, so the request (or a background task's transaction)
# runs again from the start. Writers take locks in one order (services/identity.py), so this
# stays the rare race of an id that was merged between being read and being locked. A unique
# violation (23505) is run again too: a write that checks for a row and then inserts it takes
# a lock first (services/named_locks.py), so one left is a race it did not foresee with a
# request that inserted the same row and committed; run again, this request finds that row
# and answers as it would have a moment later, rather than with a 500.
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001", "23505"})
TRANSACTION_ATTEMPTS = 3


def lost_a_lock_race(error: DBAPIError) -> bool:
    """True when `error` ended its transaction in a lock race that running it again settles."""
    cause: BaseException | None = error.orig
    while cause is not None:
        if getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
        cause = cause.__cause__
    return False
