"""SQLite for SQLAlchemy's async engine, run inline on the event loop's thread.

aiosqlite hands every call (open a cursor, execute, fetch, close, commit) to a thread of its
own and waits for the answer: some twenty round trips between threads for one cart operation,
which cost more than the SQL. SQLite answers our statements in microseconds, so this shim calls
`sqlite3` directly, in the shape SQLAlchemy's aiosqlite dialect expects of an aiosqlite
connection. A cart operation through the server took half the time (measured in-process).

Nothing here may wait for long, since the event loop waits with it:
- writers of this process queue in the loop (`Database.transaction`), and `BEGIN IMMEDIATE` is
  tried without SQLite's busy handler (`PRAGMA busy_timeout=0`): when another process holds the
  write lock, the transaction is retried after an asynchronous pause instead;
- in WAL mode readers never wait for writers, and a commit never waits for readers (automatic
  checkpoints are passive); readers keep a short busy timeout for the rare WAL recovery.
"""

from __future__ import annotations

import sqlite3
from typing import Any


class InlineCursor:
    """An aiosqlite-shaped cursor over a `sqlite3.Cursor`."""

    __slots__ = ("_cursor",)

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    async def __aenter__(self) -> InlineCursor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._cursor.close()

    async def execute(self, sql: str, parameters: Any = ()) -> InlineCursor:
        self._cursor.execute(sql, parameters)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Any) -> InlineCursor:
        self._cursor.executemany(sql, seq_of_parameters)
        return self

    async def fetchall(self) -> list[Any]:
        return self._cursor.fetchall()

    async def fetchone(self) -> Any:
        return self._cursor.fetchone()

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        return self._cursor.fetchmany(size if size is not None else self._cursor.arraysize)

    async def close(self) -> None:
        self._cursor.close()

    @property
    def description(self) -> Any:
        return self._cursor.description

    @property
    def rowcount(self) -> int:
        return self._cursor.rowcount

    @property
    def lastrowid(self) -> int | None:
        return self._cursor.lastrowid

    @property
    def arraysize(self) -> int:
        return self._cursor.arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._cursor.arraysize = value


class _RunNow:
    """Stands in for aiosqlite's request queue, which the dialect uses to set the isolation
    level: the function runs at once and settles its future."""

    def put_nowait(self, item: tuple[Any, Any]) -> None:
        future, function = item
        try:
            future.set_result(function())
        except Exception as error:  # handed to whoever awaits the future
            future.set_exception(error)


class InlineConnection:
    """An aiosqlite-shaped connection over a `sqlite3.Connection`, used only from the loop."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._conn = connection
        self._connection: sqlite3.Connection | None = connection
        self._tx = _RunNow()

    @property
    def raw(self) -> sqlite3.Connection:
        """The `sqlite3` connection itself, for statements run without SQLAlchemy."""
        return self._conn

    @property
    def isolation_level(self) -> str | None:
        return self._conn.isolation_level

    def cursor(self) -> InlineCursor:
        return InlineCursor(self._conn.cursor())

    async def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._conn.create_function(*args, **kwargs)

    async def commit(self) -> None:
        self._conn.commit()

    async def rollback(self) -> None:
        self._conn.rollback()

    async def close(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()

    def stop(self) -> None:
        if self._connection is not None:
            self._connection = None
            self._conn.close()


def creator(path: str) -> Any:
    """An `async_creator` for `create_async_engine` opening `path` inline."""

    async def connect() -> InlineConnection:
        # The connection is used by one task at a time, always on the loop's thread; SQLAlchemy
        # may close it from a garbage-collection callback, hence check_same_thread=False.
        return InlineConnection(sqlite3.connect(path, check_same_thread=False))

    return connect
