"""The real server app, in process, over a migrated SQLite or PostgreSQL database."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from omnisdk.core.channels import Channel, Scope
from server_stub.app import create_app
from server_stub.sealing import Sealer
from server_stub.services import keys, tenants
from server_stub.settings import Settings, settings_from_environment
from server_stub.storage.database import Database


@dataclass
class ShopForTest:
    """A tenant and an API key per channel, with authenticated request helpers."""

    id: str
    http: httpx.AsyncClient
    keys: dict[Channel, str] = field(default_factory=dict)

    def auth(self, channel: Channel | str = Channel.ADMIN) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[Channel(channel)]}"}

    async def request(
        self, method: str, path: str, channel: Channel | str = Channel.ADMIN, **kwargs: Any
    ) -> httpx.Response:
        headers = {**self.auth(channel), **kwargs.pop("headers", {})}
        return await self.http.request(method, path, headers=headers, **kwargs)


@dataclass
class Harness:
    app: FastAPI
    http: httpx.AsyncClient
    database: Database

    async def shop(
        self, name: str = "test shop", settings: dict[str, Any] | None = None
    ) -> ShopForTest:
        async with self.database.transaction(write=True) as conn:
            tenant = await tenants.create(conn, name, settings, sealer=TEST_SEALER)
            shop = ShopForTest(tenant.id, self.http)
            for channel in Channel:
                shop.keys[channel] = (await keys.create(conn, tenant.id, channel))[1]
        return shop

    async def key_with_scopes(self, shop: ShopForTest, channel: Channel, scopes: set[Scope]) -> str:
        async with self.database.transaction(write=True) as conn:
            return (await keys.create(conn, shop.id, channel, "", frozenset(scopes)))[1]


TEST_SECRET_KEY = base64.b64encode(b"test-secret-key-of-32-bytes-long").decode()
TEST_SEALER = Sealer(base64.b64decode(TEST_SECRET_KEY))


@pytest.fixture(autouse=True)
def webhooks_may_reach_this_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The tests' webhook receivers listen on 127.0.0.1, which a server refuses unless its
    operator allows private networks: these servers (and the CLI's commands) do.
    tests/server/test_webhook_targets.py overrides this to test the refusals."""
    monkeypatch.setenv("OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "true")
    settings_from_environment.cache_clear()
    yield
    settings_from_environment.cache_clear()


async def start_harness(database_url: str, **settings: Any) -> AsyncIterator[Harness]:
    settings.setdefault("secret_key", TEST_SECRET_KEY)
    app = create_app(Settings(database_url=database_url, **settings))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield Harness(app, http, app.state.runtime.database)


@pytest.fixture
async def server(migrated_database_url: str) -> AsyncIterator[Harness]:
    async for harness in start_harness(migrated_database_url):
        yield harness


@pytest.fixture
async def shop(server: Harness) -> ShopForTest:
    return await server.shop()


@pytest.fixture
async def pg_server(migrated_database_url: str) -> AsyncIterator[Harness]:
    """A server on PostgreSQL only (skipped on SQLite, which serialises every writer by
    design): for the tests of what two transactions at once may do."""
    if "postgresql" not in migrated_database_url:
        pytest.skip("PostgreSQL only: SQLite serialises every writer by design")
    async for harness in start_harness(migrated_database_url):
        yield harness
