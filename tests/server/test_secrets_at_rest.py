"""Nothing secret is kept in the clear: answers replayed by an Idempotency-Key hold no key
secret and no confirmation token, and the identifier HMAC key is sealed."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
from pathlib import Path

from sqlalchemy import select

from omnisdk.core.problems import ProblemType
from server_stub.services.tenants import unseal_identifier_secret
from server_stub.storage.migrate import upgrade
from server_stub.storage.tables import idempotency_records, identifiers, tenants
from tests.conftest import PostgresDatabases, new_database_url
from tests.server.conftest import TEST_SEALER, Harness, ShopForTest, start_harness


async def _stored_bodies(server: Harness, shop: ShopForTest) -> list[bytes]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(idempotency_records.c.body).where(idempotency_records.c.tenant_id == shop.id)
        )
        return [bytes(row.body) for row in rows]


async def test_a_created_key_secret_is_not_kept_for_replays(
    server: Harness, shop: ShopForTest
) -> None:
    headers = {"Idempotency-Key": "create-pos-key"}
    created = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("osk_")
    assert not any(secret.encode() in body for body in await _stored_bodies(server, shop))

    replay = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    assert replay.status_code == 201
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["secret"] is None
    assert replay.json()["key_id"] == created.json()["key_id"]
    # The key itself works: only its copy in the replay record is gone.
    whoami = await server.http.get(
        "/v1/system/whoami", headers={"Authorization": f"Bearer {secret}"}
    )
    assert whoami.status_code == 200


async def test_a_confirmation_token_is_not_kept_for_replays(
    server: Harness, shop: ShopForTest
) -> None:
    amy = (
        await shop.request("POST", "/v1/identity/identify", json={"anonymous_id": "phone"})
    ).json()["customer_id"]
    body = {"decisions": [{"purpose": "marketing:email", "status": "granted"}]}
    headers = {"Idempotency-Key": "opt-in-1"}
    first = await shop.request("POST", f"/v1/consent/{amy}", "web", json=body, headers=headers)
    assert first.status_code == 200, first.text
    token = first.json()["confirmations"][0]["token"]
    assert token
    assert not any(token.encode() in stored for stored in await _stored_bodies(server, shop))

    replay = await shop.request("POST", f"/v1/consent/{amy}", "web", json=body, headers=headers)
    assert replay.headers["idempotent-replayed"] == "true"
    assert replay.json()["confirmations"][0]["token"] is None
    assert (
        replay.json()["confirmations"][0]["decision_id"]
        == (first.json()["confirmations"][0]["decision_id"])
    )
    confirmed = await shop.request(
        "POST", "/v1/consent/confirmations", "web", json={"token": token}
    )
    assert confirmed.status_code == 200, confirmed.text


async def test_the_identifier_hmac_key_is_sealed(server: Harness, shop: ShopForTest) -> None:
    identified = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "a", "email": "amy@example.com"}
    )
    assert identified.status_code == 200
    async with server.database.transaction(write=False) as conn:
        stored = (
            await conn.execute(select(tenants.c.identifier_secret).where(tenants.c.id == shop.id))
        ).scalar_one()
        hashes = {
            row.value
            for row in await conn.execute(
                select(identifiers.c.value).where(
                    identifiers.c.tenant_id == shop.id, identifiers.c.type == "email"
                )
            )
        }
    sealed = bytes(stored)
    assert len(sealed) == 60  # nonce, 32 bytes of ciphertext, tag

    def keyed(secret: bytes) -> str:
        return hmac.new(secret, b"email\x00amy@example.com", hashlib.sha256).hexdigest()

    # What the database holds does not make the hashes; only the server's secret key opens it.
    assert keyed(sealed) not in hashes
    assert keyed(unseal_identifier_secret(TEST_SEALER, shop.id, sealed)) in hashes


async def test_a_server_with_another_secret_key_says_so_instead_of_failing(
    migrated_database_url: str, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> None:
    # A database of its own: one holding signing keys (a shop that issued return codes) makes
    # a server with another key refuse to start at all (tests/server/test_returns_limits.py).
    kind = "postgres" if "postgresql" in migrated_database_url else "sqlite"
    url = await asyncio.to_thread(new_database_url, kind, tmp_path, postgres_databases)
    await upgrade(url)
    async for first in start_harness(url):
        shop = await first.shop()
    other_key = base64.b64encode(b"another-secret-key-of-32-bytes!!").decode()
    async for other in start_harness(url, secret_key=other_key):
        response = await other.http.post(
            "/v1/identity/identify",
            json={"anonymous_id": "a"},
            headers=shop.auth(),
        )
        assert response.status_code == 503
        assert response.json()["type"] == ProblemType.SERVICE_UNAVAILABLE
