"""A real `omnisdk-server serve` process per database kind, driven over HTTP by the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omnisdk.testing import ServerProcess
from tests.conftest import DATABASES, PostgresDatabases, new_database_url


@pytest.fixture(scope="session", params=DATABASES)
def server_process(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("e2e")
    url = new_database_url(request.param, directory, postgres_databases)
    with ServerProcess(url, log_path=directory / "server.log") as server:
        yield server
