"""Hot-path statements compiled once per dialect and run on the driver connection itself.

A statement executed through SQLAlchemy's async engine costs some 80 µs of Python around the
driver's few microseconds (greenlet hand-offs, cache-key generation, execution contexts, result
objects); a cart operation runs five of them. The statements of the hot paths (a cart
operation, a change-feed entry) are therefore written once with SQLAlchemy Core, as everywhere
else, compiled once for the connection's dialect, and executed on the driver (`sqlite3` inline
on the loop, or asyncpg) with the column types' own bind and result processors — so what is
stored and read back is exactly what SQLAlchemy would store and read.

They run inside the request's transaction: the same connection, after SQLAlchemy has begun it
(on asyncpg, BEGIN is sent lazily; `_driver` starts it first if no statement has yet).
Only plain parameters are supported (no expanding IN lists, no defaults filled in by
SQLAlchemy): every value a statement needs is passed by name.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from server_stub.storage.inline_sqlite import InlineConnection

Processor = Callable[[Any], Any] | None

# Told of every statement run here (its SQL and parameters) before it runs, while not empty:
# the query-plan test (tests/server/test_query_plans.py) explains what the hot paths send.
statement_observers: list[Callable[[str, tuple[Any, ...]], None]] = []


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # parameter names in positional order
    binds: tuple[Processor, ...]
    defaults: dict[str, Any]  # values written into the statement (`values(flag=0)`)
    results: tuple[Processor, ...]


class Prepared:
    """One statement, compiled on first use for each dialect it meets."""

    __slots__ = ("_by_dialect", "_statement")

    def __init__(self, statement: ClauseElement) -> None:
        self._statement = statement
        self._by_dialect: dict[str, _Compiled] = {}

    def _compiled(self, dialect: Dialect) -> _Compiled:
        compiled = self._by_dialect.get(dialect.name)
        if compiled is None:
            compiled = self._by_dialect[dialect.name] = _compile(self._statement, dialect)
        return compiled

    async def fetchone(
        self, conn: AsyncConnection, parameters: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """The first row (its values processed as SQLAlchemy would), or None."""
        compiled = self._compiled(conn.dialect)
        values = _values(compiled, parameters)
        if statement_observers:
            _observe(compiled.sql, values)
        driver, kind = await _driver(conn)
        try:
            if kind is _Kind.SQLITE:
                row = driver.execute(compiled.sql, values).fetchone()
            elif kind is _Kind.ASYNCPG:
                row = await driver.fetchrow(compiled.sql, *values)
            else:
                row = (await conn.exec_driver_sql(compiled.sql, values)).first()
        except Exception as error:
            raise _wrapped(conn, compiled.sql, error) from error
        if row is None:
            return None
        if not compiled.results:  # text(): no column types to process by
            return tuple(row)
        return tuple(
            value if process is None else process(value)
            for process, value in zip(compiled.results, row, strict=True)
        )

    async def fetchall(
        self, conn: AsyncConnection, parameters: Mapping[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Every row (its values processed as SQLAlchemy would)."""
        compiled = self._compiled(conn.dialect)
        values = _values(compiled, parameters)
        if statement_observers:
            _observe(compiled.sql, values)
        driver, kind = await _driver(conn)
        try:
            if kind is _Kind.SQLITE:
                rows = driver.execute(compiled.sql, values).fetchall()
            elif kind is _Kind.ASYNCPG:
                rows = await driver.fetch(compiled.sql, *values)
            else:
                rows = (await conn.exec_driver_sql(compiled.sql, values)).all()
        except Exception as error:
            raise _wrapped(conn, compiled.sql, error) from error
        if not compiled.results:
            return [tuple(row) for row in rows]
        active = [(n, process) for n, process in enumerate(compiled.results) if process]
        processed = []
        for row in rows:
            cells = list(row)
            for n, process in active:
                cells[n] = process(cells[n])
            processed.append(tuple(cells))
        return processed

    async def execute(self, conn: AsyncConnection, parameters: Mapping[str, Any]) -> None:
        compiled = self._compiled(conn.dialect)
        values = _values(compiled, parameters)
        if statement_observers:
            _observe(compiled.sql, values)
        driver, kind = await _driver(conn)
        try:
            if kind is _Kind.SQLITE:
                driver.execute(compiled.sql, values)
            elif kind is _Kind.ASYNCPG:
                await driver.execute(compiled.sql, *values)
            else:
                await conn.exec_driver_sql(compiled.sql, values)
        except Exception as error:
            raise _wrapped(conn, compiled.sql, error) from error

    async def executemany(self, conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
        compiled = self._compiled(conn.dialect)
        values = _many_values(compiled, rows)
        if statement_observers and values:
            _observe(compiled.sql, values[0])
        driver, kind = await _driver(conn)
        try:
            if kind is _Kind.SQLITE:
                driver.executemany(compiled.sql, values)
            elif kind is _Kind.ASYNCPG and len(values) == 1:
                await driver.execute(compiled.sql, *values[0])  # one Bind, not a pipeline
            elif kind is _Kind.ASYNCPG:
                await driver.executemany(compiled.sql, values)
            else:
                await conn.exec_driver_sql(compiled.sql, values)
        except Exception as error:
            raise _wrapped(conn, compiled.sql, error) from error


async def copy_rows(
    conn: AsyncConnection, table: str, columns: Sequence[str], records: Iterable[tuple[Any, ...]]
) -> None:
    """PostgreSQL: `records` (tuples of `columns`) into `table` by COPY, in the caller's
    transaction: no statement text, no JSON, each value encoded once by the driver, which made
    it a third of a multi-row INSERT's time for the recommendations job's counts."""
    driver, kind = await _driver(conn)
    if kind is not _Kind.ASYNCPG:
        raise ValueError("COPY is PostgreSQL's (asyncpg's): use an INSERT on other databases")
    try:
        await driver.copy_records_to_table(table, records=records, columns=list(columns))
    except Exception as error:
        raise _wrapped(conn, f"COPY {table}", error) from error


# "`{column}` is one of these ids", the ids being one parameter `:ids` (`id_list`): one plan
# and no placeholder per id, however many. On PostgreSQL an array, whose size the planner
# sees (the statements are planned for their parameters): it picks the unique index for
# many ids; SQLite reads a JSON array.
ID_IN = {
    "postgresql": "{column} = ANY(CAST(:ids AS text[]))",
    "sqlite": "{column} IN (SELECT value FROM json_each(:ids))",
}


def id_list(conn: AsyncConnection, ids: Iterable[str]) -> list[str] | str:
    """`ids` as the `:ids` parameter of ID_IN on this connection's database."""
    wanted = sorted(set(ids))
    return wanted if conn.dialect.name == "postgresql" else json.dumps(wanted)


def _observe(sql: str, values: tuple[Any, ...]) -> None:
    for observer in statement_observers:
        observer(sql, values)


def _compile(statement: ClauseElement, dialect: Dialect) -> _Compiled:
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    names = tuple(compiled.positiontup or ())
    if dialect.paramstyle not in ("qmark", "numeric_dollar") or not set(names) <= set(
        compiled.binds
    ):
        raise TypeError(f"cannot prepare for {dialect.name}/{dialect.paramstyle}: {statement}")
    binds = tuple(
        compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect) for name in names
    )
    columns: Sequence[Any] = getattr(compiled, "_result_columns", ()) or ()
    results = tuple(
        column[3].dialect_impl(dialect).result_processor(dialect, None) for column in columns
    )
    defaults = {
        name: bind.value
        for name, bind in compiled.binds.items()
        if bind.value is not None and not bind.required
    }
    return _Compiled(compiled.string, names, binds, defaults, results)


def _values(compiled: _Compiled, parameters: Mapping[str, Any]) -> tuple[Any, ...]:
    if compiled.defaults:
        parameters = {**compiled.defaults, **parameters}
    return tuple(
        parameters[name] if process is None else process(parameters[name])
        for name, process in zip(compiled.names, compiled.binds, strict=True)
    )


_UNSEEN = object()


def _many_values(compiled: _Compiled, rows: Iterable[Mapping[str, Any]]) -> list[tuple[Any, ...]]:
    """`_values` of each row; a value that is the very object the row before held in its
    column (a batch's tenant, its arrival time) is processed once, not once per row."""
    columns = tuple(zip(compiled.names, compiled.binds, strict=True))
    previous: list[Any] = [_UNSEEN] * len(columns)
    processed: list[Any] = [None] * len(columns)
    many = []
    for row in rows:
        if compiled.defaults:
            row = {**compiled.defaults, **row}
        cells = []
        for n, (name, process) in enumerate(columns):
            value = row[name]
            if process is not None:
                if value is not previous[n]:
                    previous[n] = value
                    processed[n] = process(value)
                value = processed[n]
            cells.append(value)
        many.append(tuple(cells))
    return many


class _Kind(enum.Enum):
    SQLITE = "sqlite3 inline on the loop"
    ASYNCPG = "asyncpg"
    OTHER = "through SQLAlchemy (aiosqlite for an in-memory database)"


async def _driver(conn: AsyncConnection) -> tuple[Any, _Kind]:
    """The driver's connection under `conn`, in the transaction SQLAlchemy began."""
    pooled = conn.sync_connection.connection  # type: ignore[union-attr]
    driver = pooled.driver_connection
    if isinstance(driver, InlineConnection):
        return driver.raw, _Kind.SQLITE
    if conn.dialect.name != "postgresql":
        return None, _Kind.OTHER
    adapter: Any = pooled.dbapi_connection
    if adapter._transaction is None and not adapter.autocommit:
        # asyncpg's BEGIN goes out with the first statement SQLAlchemy sends; this may be it.
        await adapter._start_transaction()
    return adapter._connection, _Kind.ASYNCPG


def _wrapped(conn: AsyncConnection, sql: str, error: Exception) -> Exception:
    """The error as SQLAlchemy raises it (IntegrityError, OperationalError, ...), so callers
    handle it alike whichever way the statement ran."""
    dbapi = conn.dialect.loaded_dbapi
    if conn.dialect.name != "sqlite":
        adapter: Any = conn.sync_connection.connection.dbapi_connection  # type: ignore[union-attr]
        try:
            adapter._handle_exception(error)  # raises asyncpg's error in DBAPI terms
        except dbapi.Error as translated:
            error = translated
        except Exception as other:
            error = other
    if not isinstance(error, dbapi.Error):
        return error
    return DBAPIError.instance(sql, None, error, dbapi.Error)
