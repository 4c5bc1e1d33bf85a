"""Locks no wider than the data they protect (services/identity.py, docs/server.md "Locks and
jobs"): one customer's sign-in never waits for another's, while two sign-ins naming the same
identifier still take turns. PostgreSQL only: SQLite has one writer at a time by design."""

from __future__ import annotations

import asyncio

from sqlalchemy import func, or_, select
from sqlalchemy.exc import DBAPIError

from omnisdk.core.channels import Channel
from omnisdk.core.identifiers import IdentifierKey, IdentifierType
from omnisdk.core.problems import ProblemType
from omnisdk.models import EventIn
from omnisdk.testing import ATTRIBUTED_EVENTS
from server_stub.services import events, identity, privacy
from server_stub.services.tenant_context import TenantContexts
from server_stub.storage.database import lost_a_lock_race
from server_stub.storage.tables import events as events_table
from tests.server.conftest import TEST_SEALER, Harness, ShopForTest
from tests.server.interleave import waiting_for_a_lock

GUARD_SECONDS = 60  # a request still waiting after this fails the test instead of hanging it


async def _identify(shop: ShopForTest, **body: str) -> dict[str, object]:
    answer = await asyncio.wait_for(
        shop.request("POST", "/v1/identity/identify", "web", json=body), GUARD_SECONDS
    )
    assert answer.status_code == 200, answer.text
    result: dict[str, object] = answer.json()
    return result


async def _email_key(server: Harness, shop: ShopForTest, email: str) -> IdentifierKey:
    contexts = TenantContexts(60, TEST_SEALER)
    async with server.database.transaction(write=False) as conn:
        context = await contexts.get(conn, shop.id)
    return context.key(IdentifierType.EMAIL, email)


async def test_a_sign_in_completes_while_another_customers_identifiers_are_locked(
    pg_server: Harness,
) -> None:
    shop = await pg_server.shop()
    amy = await _identify(shop, email="amy@example.com")
    amy_email = await _email_key(pg_server, shop, "amy@example.com")
    async with pg_server.database.transaction(write=True) as held:
        # A sign-in of Amy's, stopped in the middle: her identifier and her row are locked.
        await identity.lock_identifiers(held, shop.id, [amy_email])
        assert (
            await identity.lock_customer(held, shop.id, str(amy["customer_id"]))
            == amy["customer_id"]
        )
        # Bob signs in (a new customer) and Carl links a device: neither waits for Amy.
        bob = await _identify(shop, email="bob@example.com", anonymous_id="bob-phone")
        carl = await _identify(shop, customer_ref="carl")
        carl_again = await _identify(shop, customer_ref="carl", anonymous_id="carl-laptop")
        assert bob["created"] is True
        assert carl_again["customer_id"] == carl["customer_id"]
        assert len({amy["customer_id"], bob["customer_id"], carl["customer_id"]}) == 3
        # Events of other customers are ingested meanwhile too, new identifiers and all.
        batch = {
            "events": [
                {"name": "page_viewed", "customer_id": bob["customer_id"]},
                {"name": "page_viewed", "anonymous_id": "dave-phone"},
            ]
        }
        ingested = await asyncio.wait_for(
            shop.request("POST", "/v1/events/batch", "web", json=batch), GUARD_SECONDS
        )
        assert ingested.status_code == 200, ingested.text
        assert ingested.json()["accepted"] == 2


async def test_two_sign_ins_naming_one_identifier_take_turns(pg_server: Harness) -> None:
    shop = await pg_server.shop()
    amy = await _identify(shop, email="amy@example.com")
    amy_email = await _email_key(pg_server, shop, "amy@example.com")
    async with pg_server.database.transaction(write=True) as held:
        await identity.lock_identifiers(held, shop.id, [amy_email])
        # A second sign-in with her address must wait for the first to end...
        waiting = asyncio.create_task(
            _identify(shop, email="amy@example.com", anonymous_id="amy-tablet")
        )
        while await waiting_for_a_lock(pg_server, "advisory") == 0:
            assert not waiting.done(), "the second sign-in did not wait for the first"
            await asyncio.sleep(0.01)
        assert not waiting.done()
    # ...and goes on once it has, to the same customer: no duplicate was created meanwhile.
    second = await waiting
    assert second["customer_id"] == amy["customer_id"]
    assert second["created"] is False


async def test_a_deadlock_postgresql_breaks_is_known_as_one_to_run_again(
    pg_server: Harness,
) -> None:
    """The routing runs a request again when PostgreSQL ended it to break a deadlock (a rare
    race of an id merged between being read and being locked): it must know one."""
    shop = await pg_server.shop()
    a = str((await _identify(shop, customer_ref="a"))["customer_id"])
    b = str((await _identify(shop, customer_ref="b"))["customer_id"])
    first_locked, second_locked = asyncio.Event(), asyncio.Event()
    errors: list[BaseException] = []

    async def lock(mine: str, theirs: str, locked: asyncio.Event, other: asyncio.Event) -> None:
        try:
            async with pg_server.database.transaction(write=True) as conn:
                await identity.lock_customers(conn, shop.id, [mine])
                locked.set()
                await other.wait()
                await identity.lock_customers(conn, shop.id, [theirs])  # the wrong order
        except DBAPIError as error:
            errors.append(error)

    await asyncio.wait_for(
        asyncio.gather(
            lock(a, b, first_locked, second_locked), lock(b, a, second_locked, first_locked)
        ),
        GUARD_SECONDS,
    )
    assert len(errors) == 1
    assert isinstance(errors[0], DBAPIError) and lost_a_lock_race(errors[0])


async def _events_of(server: Harness, shop: ShopForTest, customer_id: str) -> int:
    async with server.database.transaction(write=False) as conn:
        found = await conn.scalar(
            select(func.count())
            .select_from(events_table)
            .where(
                events_table.c.tenant_id == shop.id,
                or_(
                    events_table.c.customer_id == customer_id,
                    events_table.c.origin_customer_id == customer_id,
                ),
            )
        )
    return int(found or 0)


async def test_an_erasure_waits_for_events_being_stored_for_her_and_erases_them_too(
    pg_server: Harness,
) -> None:
    """Ingestion reads and holds her row in one statement (events._hold_live): an erasure
    that starts while her events are being stored waits for them, then erases them with her,
    so no event of hers outlives her erasure."""
    shop = await pg_server.shop(settings=ATTRIBUTED_EVENTS)
    amy = str((await _identify(shop, customer_ref="amy"))["customer_id"])
    contexts = TenantContexts(60, TEST_SEALER)
    async with pg_server.database.transaction(write=True) as held:
        context = await contexts.get(held, shop.id)
        stored = await events.ingest(
            held, context, Channel.WEB, [EventIn(name="page_viewed", customer_id=amy)]
        )
        assert len(stored.accepted) == 1
        erasing = asyncio.create_task(
            asyncio.wait_for(
                shop.request("POST", f"/v1/privacy/{amy}/erase", "admin"), GUARD_SECONDS
            )
        )
        while await waiting_for_a_lock(pg_server) == 0:
            assert not erasing.done(), "the erasure did not wait for her events"
            await asyncio.sleep(0.01)
    receipt = await erasing
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["removed"]["events"] == 1
    assert await _events_of(pg_server, shop, amy) == 0


async def test_events_sent_while_she_is_being_erased_are_refused_not_stored(
    pg_server: Harness,
) -> None:
    shop = await pg_server.shop(settings=ATTRIBUTED_EVENTS)
    amy = str((await _identify(shop, customer_ref="amy", anonymous_id="amy-phone"))["customer_id"])
    async with pg_server.database.transaction(write=True) as erasing:
        await privacy.erase(erasing, shop.id, amy)
        batch = {
            "events": [
                {"name": "page_viewed", "customer_id": amy},
                {"name": "page_viewed", "anonymous_id": "amy-phone"},
            ]
        }
        sending = asyncio.create_task(
            asyncio.wait_for(
                shop.request("POST", "/v1/events/batch", "web", json=batch), GUARD_SECONDS
            )
        )
        while await waiting_for_a_lock(pg_server) == 0:
            assert not sending.done(), "her events did not wait for her erasure"
            await asyncio.sleep(0.01)
    answer = await sending
    assert answer.status_code == 200, answer.text
    result = answer.json()
    # By customer id and by her device alike: both named her, and she is gone.
    assert result["accepted"] == 0
    assert [(r["index"], r["type"]) for r in result["rejected"]] == [
        (0, ProblemType.NOT_FOUND.value),
        (1, ProblemType.NOT_FOUND.value),
    ]
    assert await _events_of(pg_server, shop, amy) == 0
