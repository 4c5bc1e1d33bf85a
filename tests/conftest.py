"""Shared fixtures: the databases every server test runs on.

SQLite always runs. PostgreSQL runs when OMNISDK_TEST_POSTGRES_URL names a server (CI sets it,
see .ci/run); each test session then works in a database of its own, created and dropped here.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

POSTGRES_ENV = "OMNISDK_TEST_POSTGRES_URL"


@pytest.fixture(scope="session", autouse=True)
def sdk_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Clients made by the tests keep their outboxes here, not in the home directory."""
    directory = tmp_path_factory.mktemp("sdk-data")
    previous = os.environ.get("OMNISDK_DATA_DIR")
    os.environ["OMNISDK_DATA_DIR"] = str(directory)
    yield directory
    if previous is None:
        os.environ.pop("OMNISDK_DATA_DIR", None)
    else:
        os.environ["OMNISDK_DATA_DIR"] = previous


@pytest.fixture(scope="session", autouse=True)
def server_secret_key_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Commands that seal (tenant create, migrate) make their key file here, not in the
    working directory."""
    path = tmp_path_factory.mktemp("server-key") / "omnisdk-secret.key"
    previous = os.environ.get("OMNISDK_SECRET_KEY_FILE")
    os.environ["OMNISDK_SECRET_KEY_FILE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("OMNISDK_SECRET_KEY_FILE", None)
    else:
        os.environ["OMNISDK_SECRET_KEY_FILE"] = previous


POSTGRES_SKIP_REASON = (
    f"PostgreSQL tests skipped: set {POSTGRES_ENV}=postgresql://postgres@127.0.0.1:5432/test "
    "to run them (CI does)"
)


def pytest_report_header() -> str:
    if postgres_admin_url():
        return f"postgresql: tests run against {POSTGRES_ENV}"
    return POSTGRES_SKIP_REASON


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not postgres_admin_url():
        terminalreporter.write_line(POSTGRES_SKIP_REASON, yellow=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test has its own node id: pytest-xdist (CI runs the suite on two workers) sends
    tests to workers by node id, so two tests sharing one would run once between them.

    schemathesis names each operation's test `test_x[GET /path]`, but under pytest 9 (which
    builds node ids from the original name and a parametrisation schemathesis does not use)
    every one gets the node id `...::test_x`; they are given their names back."""
    for item in items:
        if type(item).__name__ == "SchemathesisFunction" and item.parent is not None:
            wanted = f"{item.parent.nodeid}::{item.name}"
            if item.nodeid != wanted:
                item._id = type(item._id).parse(wanted)  # type: ignore[attr-defined]
    seen: set[str] = set()
    shared = {item.nodeid for item in items if item.nodeid in seen or seen.add(item.nodeid)}
    if shared:
        raise pytest.UsageError(f"tests share a node id (give them distinct ids): {sorted(shared)}")


def postgres_admin_url() -> str | None:
    return os.environ.get(POSTGRES_ENV) or None


async def direct_connection(url: str) -> Any:
    """An asyncpg connection to the PostgreSQL database of `url`, beside the server's pools."""
    import asyncpg

    where = make_url(url)
    return await asyncpg.connect(
        host=where.host, port=where.port, user=where.username, database=where.database
    )


async def _admin(admin_url: str, statement: str) -> None:
    """Run one statement (CREATE or DROP DATABASE) on the PostgreSQL server."""
    import asyncpg

    url = make_url(admin_url)
    conn = await asyncpg.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 5432,
        user=url.username or "postgres",
        password=url.password,
        database=url.database or "postgres",
    )
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


class PostgresDatabases:
    """Fresh, empty PostgreSQL databases for one test session; all dropped at its end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.created: list[str] = []

    def new(self) -> str:
        name = f"omnisdk_test_{secrets.token_hex(6)}"
        asyncio.run(_admin(self.admin_url, f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        url = make_url(self.admin_url).set(drivername="postgresql+asyncpg", database=name)
        return url.render_as_string(hide_password=False)

    def drop_all(self) -> None:
        for name in self.created:
            asyncio.run(_admin(self.admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases | None]:
    admin_url = postgres_admin_url()
    if admin_url is None:
        yield None
        return
    # Set but unreachable is an error, not a skip: CI must never silently skip PostgreSQL.
    databases = PostgresDatabases(admin_url)
    yield databases
    databases.drop_all()


def new_database_url(kind: str, tmp_path: Path, postgres: PostgresDatabases | None) -> str:
    """A new, empty database of `kind` ("sqlite" or "postgres")."""
    if kind == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / f'omnisdk-{secrets.token_hex(4)}.sqlite3'}"
    if postgres is None:
        pytest.skip(POSTGRES_SKIP_REASON)
    return postgres.new()


DATABASES = [pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session", params=DATABASES)
def migrated_database_url(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> str:
    """One migrated database per kind, shared by the session (tests use fresh tenants)."""
    from server_stub.storage.migrate import upgrade

    url = new_database_url(request.param, tmp_path_factory.mktemp("db"), postgres_databases)
    asyncio.run(upgrade(url))
    return url
