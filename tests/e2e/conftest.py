"""A real `omnisdk-server serve` process per database kind, driven over HTTP by the SDK."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from omnisdk.testing import ServerProcess
from tests.conftest import DATABASES, PostgresDatabases, new_database_url


@pytest.fixture(scope="session", autouse=True)
def webhooks_may_reach_this_machine() -> Iterator[None]:
    """The tests' webhook receivers listen on 127.0.0.1, which a server refuses unless its
    operator allows private networks: every server process started here inherits this."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
        yield


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
