"""The SDK against `omnisdk-server serve` in its own process, over HTTP."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

import omnisdk
from omnisdk.testing import ServerProcess

OMNISDK_SERVER = str(Path(sys.executable).parent / "omnisdk-server")  # the console script


# The operator's server secret key: the commands and the server use the same one.
SERVER_SECRET_KEY = base64.b64encode(b"operator-secret-key-of-32-bytes!").decode()


def _cli(*args: str, database_url: str) -> str:
    result = subprocess.run(
        [OMNISDK_SERVER, *args, "--database-url", database_url],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "OMNISDK_SECRET_KEY": SERVER_SECRET_KEY},
    )
    return result.stdout.strip()


def test_operator_creates_tenant_and_key_on_the_command_line_and_the_sdk_uses_it(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    tenant = _cli("tenant", "create", "Amy's Shoes", database_url=url)
    key = _cli("key", "create", "--tenant", tenant, "--channel", "web", database_url=url)
    server = ServerProcess(url, secret_key=SERVER_SECRET_KEY)
    with server, omnisdk.Client(server.url, key, channel="web") as client:
        principal = client.system.whoami()
        # The tenant's identifier secret, sealed by the command, opens in the server.
        amy = client.identity.identify(anonymous_id="amy-laptop", email="amy@example.com")
        assert client.identity.resolve("email", "amy@example.com") == amy.customer_id
    assert principal.tenant_id == tenant
    assert principal.channel is omnisdk.Channel.WEB


def test_sync_client_reads_and_writes(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("app") as client:
        assert client.system.whoami().tenant_id == shop.id
        pong = client.system.ping("hello", 7)
    assert (pong.message, pong.sequence, pong.channel) == ("hello", 7, omnisdk.Channel.APP)


async def test_async_client_reads_and_writes(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    async with shop.async_client("pos") as client:
        assert (await client.system.whoami()).channel is omnisdk.Channel.POS
        assert (await client.system.ping("till", 1)).tenant_id == shop.id


def test_typed_errors_reach_the_caller(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with omnisdk.Client(server_process.url, "osk_web_0123456789abcdef_" + "x" * 43) as stranger:
        with pytest.raises(omnisdk.AuthenticationError) as auth:
            stranger.system.whoami()
    assert auth.value.status_code == 401 and auth.value.request_id
    with shop.client("web") as web:
        with pytest.raises(omnisdk.PermissionDeniedError) as denied:
            web.keys.list()
    assert denied.value.problem["required_scope"] == "keys:manage"
    with shop.client("admin") as admin:
        with pytest.raises(omnisdk.NotFoundError):
            admin.keys.revoke("key_0000000000000000")
        with pytest.raises(omnisdk.ValidationError) as invalid:
            admin.keys.create("web", scopes=[omnisdk.Scope.RETURNS_REDEEM])
    assert invalid.value.status_code == 422


def test_other_tenants_resources_are_not_found(server_process: ServerProcess) -> None:
    alice, mallory = server_process.create_tenant("alice"), server_process.create_tenant("mallory")
    with alice.client("admin") as a, mallory.client("admin") as m:
        victim = a.keys.create("pos", name="till 1").key_id
        with pytest.raises(omnisdk.NotFoundError):
            m.keys.revoke(victim)
        assert next(k for k in a.keys.list() if k.key_id == victim).revoked_at is None


def test_same_idempotency_key_creates_one_key(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("admin") as admin:
        first = admin.keys.create("pos", idempotency_key="till-9-setup")
        second = admin.keys.create("pos", idempotency_key="till-9-setup")
        assert first.key_id == second.key_id
        # The secret is shown once: the replayed answer does not hold it.
        assert first.secret is not None and second.secret is None
        with pytest.raises(omnisdk.IdempotencyError):
            admin.keys.create("web", idempotency_key="till-9-setup")
        assert sum(k.channel == "pos" for k in admin.keys.list()) == 1


def test_revoked_key_is_refused(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("admin") as admin:
        created = admin.keys.create("app")
        admin.keys.revoke(created.key_id)
    with omnisdk.Client(server_process.url, created.secret) as client:
        with pytest.raises(omnisdk.AuthenticationError):
            client.system.whoami()
