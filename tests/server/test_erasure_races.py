"""Erasures racing what changes who a customer is (services/privacy.py `_lock_person`): an
erasure that waited for her locks reads again, under them, what she has become. Erased by the
one it waited for: 404, with nothing published or audited a second time (or, for a retry with
the same Idempotency-Key, the first try's answer). Merged into another customer: the whole
survivor is erased. PostgreSQL only: SQLite has one writer at a time, so nothing interleaves."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from sqlalchemy import func, select

from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from omnisdk.models import IdentifyRequest
from server_stub.services import changes, identity, privacy
from server_stub.services.tenant_context import TenantContexts
from server_stub.storage.tables import audit_log
from server_stub.storage.tables import changes as changes_table
from tests.server.conftest import TEST_SEALER, Harness, ShopForTest
from tests.server.interleave import waiting_for_a_lock

GUARD_SECONDS = 60  # a request still waiting after this fails the test instead of hanging it


async def _identify(shop: ShopForTest, **body: str) -> str:
    answer = await shop.request("POST", "/v1/identity/identify", "web", json=body)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["customer_id"])


def _erasing(shop: ShopForTest, customer_id: str, **headers: str) -> asyncio.Task[Any]:
    request = shop.request("POST", f"/v1/privacy/{customer_id}/erase", headers=headers)
    return asyncio.create_task(asyncio.wait_for(request, GUARD_SECONDS))


async def _until_waiting(server: Harness, requests: list[asyncio.Task[Any]]) -> None:
    """Return once each of `requests` waits for a lock."""
    while await waiting_for_a_lock(server) < len(requests):
        assert not any(r.done() for r in requests), "an erasure did not wait for the locks"
        await asyncio.sleep(0.01)


async def _erasures_recorded(server: Harness, shop: ShopForTest) -> tuple[int, int]:
    """How many erasures the audit log holds, and how many the change feed announced."""
    async with server.database.transaction(write=False) as conn:
        audited = await conn.scalar(
            select(func.count()).where(
                audit_log.c.tenant_id == shop.id, audit_log.c.action == "privacy.erase"
            )
        )
        announced = await conn.scalar(
            select(func.count()).where(
                changes_table.c.tenant_id == shop.id,
                changes_table.c.customer_id == changes.TENANT_WIDE,
                changes_table.c.kind == "consent",
            )
        )
    return int(audited or 0), int(announced or 0)


async def test_an_erasure_of_someone_erased_while_it_waited_answers_404_and_records_nothing(
    pg_server: Harness,
) -> None:
    shop = await pg_server.shop()
    amy = await _identify(shop, customer_ref="amy", anonymous_id="amy-phone")
    async with pg_server.database.transaction(write=True) as first:
        await privacy.erase(first, shop.id, amy)
        second = _erasing(shop, amy)
        await _until_waiting(pg_server, [second])
    answer: httpx.Response = await second
    assert answer.status_code == 404, answer.text
    assert answer.json()["type"] == ProblemType.NOT_FOUND.value
    # Only the first erasure was announced; the second wrote no audit entry of an erasure.
    assert await _erasures_recorded(pg_server, shop) == (0, 1)


async def test_an_erasure_that_waited_for_a_merge_erases_the_survivor_she_became(
    pg_server: Harness,
) -> None:
    shop = await pg_server.shop()
    bob = await _identify(shop, customer_ref="bob")  # the older: he survives the merge
    amy = await _identify(shop, anonymous_id="amy-phone")
    async with pg_server.database.transaction(write=True) as merging:
        context = await TenantContexts(60, TEST_SEALER).get(merging, shop.id)
        request = IdentifyRequest(customer_ref="bob", anonymous_id="amy-phone")
        merged = await identity.identify(merging, context, request, Channel.WEB)
        assert merged.customer_id == bob and merged.merged
        erasing = _erasing(shop, amy)
        await _until_waiting(pg_server, [erasing])
    answer: httpx.Response = await erasing
    assert answer.status_code == 200, answer.text
    assert answer.json()["customers"] == 2
    for old in (amy, bob):
        assert (await shop.request("GET", f"/v1/customers/{old}/profile")).status_code == 404
    for kind, value in (("anonymous", "amy-phone"), ("customer_ref", "bob")):
        resolved = await shop.request(
            "POST", "/v1/identity/resolve", json={"type": kind, "value": value}
        )
        assert resolved.status_code == 404, resolved.text


async def test_a_retried_erasure_racing_its_first_try_replays_its_answer(
    pg_server: Harness,
) -> None:
    shop = await pg_server.shop()
    amy = await _identify(shop, customer_ref="amy", anonymous_id="amy-phone")
    key = {"Idempotency-Key": "erase-amy-1"}
    async with pg_server.database.transaction(write=True) as event_batch:
        # Events being stored for her (her row held FOR KEY SHARE): the first try waits for
        # them, and the retry, sent meanwhile, waits for the first try.
        await identity.lock_customers(event_batch, shop.id, [amy], mode="read")
        tries = [_erasing(shop, amy, **key)]
        await _until_waiting(pg_server, tries)
        tries.append(_erasing(shop, amy, **key))
        await _until_waiting(pg_server, tries)
    answers: list[httpx.Response] = list(await asyncio.gather(*tries))
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    assert answers[0].json() == answers[1].json()
    assert answers[0].json()["customers"] == 1
    assert await _erasures_recorded(pg_server, shop) == (1, 1)
