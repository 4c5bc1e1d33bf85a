"""A repeated Idempotency-Key replays the stored answer; a different body is a conflict."""

from __future__ import annotations

import asyncio
import json
import uuid

from omnisdk.core.problems import ProblemType
from tests.server.conftest import ShopForTest


async def _key_count(shop: ShopForTest) -> int:
    return len((await shop.request("GET", "/v1/keys")).json()["items"])


async def test_repeat_with_same_key_replays_and_applies_once(shop: ShopForTest) -> None:
    before = await _key_count(shop)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    first = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    again = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    assert first.status_code == again.status_code == 201
    # The same answer, less the secret (shown once: the stored answer does not keep it).
    assert again.json() == {**first.json(), "secret": None}
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert await _key_count(shop) == before + 1


async def test_same_key_with_different_body_is_a_conflict_and_changes_nothing(
    shop: ShopForTest,
) -> None:
    headers = {"Idempotency-Key": "order-42-create-key"}
    await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    before = await _key_count(shop)
    other = await shop.request("POST", "/v1/keys", json={"channel": "web"}, headers=headers)
    assert other.status_code == 409
    assert other.json()["type"] == ProblemType.IDEMPOTENCY_KEY_REUSED
    assert await _key_count(shop) == before


async def test_same_key_on_another_endpoint_is_a_conflict(shop: ShopForTest) -> None:
    headers = {"Idempotency-Key": "reused-across-endpoints"}
    assert (
        await shop.request("POST", "/v1/system/ping", json={}, headers=headers)
    ).status_code == 200
    response = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    assert response.status_code == 409
    assert response.json()["type"] == ProblemType.IDEMPOTENCY_KEY_REUSED


async def test_failed_request_does_not_consume_its_key(shop: ShopForTest) -> None:
    headers = {"Idempotency-Key": "retry-after-fixing-the-body"}
    bad = await shop.request("POST", "/v1/keys", json={"channel": "till"}, headers=headers)
    assert bad.status_code == 422
    good = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    assert good.status_code == 201


async def test_keys_are_scoped_per_tenant(server, shop: ShopForTest) -> None:  # type: ignore[no-untyped-def]
    other = await server.shop("other")
    headers = {"Idempotency-Key": "the-same-key-in-two-shops"}
    a = await shop.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    b = await other.request("POST", "/v1/keys", json={"channel": "pos"}, headers=headers)
    assert a.status_code == b.status_code == 201
    assert "idempotent-replayed" not in b.headers
    assert a.json()["tenant_id"] != b.json()["tenant_id"]


async def test_invalid_idempotency_key_is_refused(shop: ShopForTest) -> None:
    for key in ("x" * 256, "tab\there"):
        response = await shop.request(
            "POST", "/v1/system/ping", json={}, headers={"Idempotency-Key": key}
        )
        assert response.status_code == 400
        assert response.json()["type"] == ProblemType.INVALID_IDEMPOTENCY_KEY


async def test_concurrent_twins_apply_once_and_answer_alike(shop: ShopForTest) -> None:
    before = await _key_count(shop)
    headers = {"Idempotency-Key": str(uuid.uuid4())}
    answers = await asyncio.gather(
        *(
            shop.request("POST", "/v1/keys", json={"channel": "app"}, headers=headers)
            for _ in range(6)
        )
    )
    assert {a.status_code for a in answers} == {201}
    # Alike but for the secret, which only the request that created the key is shown.
    assert len({json.dumps({**a.json(), "secret": None}) for a in answers}) == 1
    assert sum(a.json()["secret"] is not None for a in answers) == 1
    assert await _key_count(shop) == before + 1
