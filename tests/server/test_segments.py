"""Named segments: definitions, real-time membership, backfill, counts, export, explanations,
the change feed, and the law that real time and backfill agree (issue 19)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.problems import ProblemType
from omnisdk.models import Profile
from omnisdk.resources.content import profile_facts
from omnisdk.testing import ATTRIBUTED_EVENTS
from server_stub.errors import Problem
from server_stub.services import segments
from server_stub.services.profile import get_profile
from server_stub.storage.tables import (
    audit_log,
    changes,
    customers,
    events,
    segment_members,
    segment_pending,
)
from server_stub.storage.tables import segments as segments_table
from tests.server.conftest import Harness, ShopForTest, start_harness
from tests.server.interleave import Step, interleaved

# The background evaluator and backfiller wait a minute between rounds here: each test runs
# what they run itself (settle), to the end, so what it reads next is complete.
QUIET = {"segment_drain_seconds": 60, "database_pool_size": 3, "log_level": "WARNING"}


@pytest.fixture
async def server(migrated_database_url: str) -> AsyncIterator[Harness]:
    async for harness in start_harness(migrated_database_url, **QUIET):
        yield harness


@pytest.fixture
async def shop(server: Harness) -> ShopForTest:
    return await server.shop(settings=ATTRIBUTED_EVENTS)


def ago(days: float) -> str:
    return (datetime.now(UTC) - timedelta(days=days)).isoformat()


async def customer(shop: ShopForTest, device: str, **traits: Any) -> str:
    body: dict[str, Any] = {"anonymous_id": device, "traits": traits}
    response = await shop.request("POST", "/v1/identity/identify", "web", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["customer_id"])


async def track(
    shop: ShopForTest, customer_id: str, name: str, channel: str = "web", **p: Any
) -> None:
    days = p.pop("days", 1)
    event = {"customer_id": customer_id, "name": name, "properties": p, "timestamp": ago(days)}
    response = await shop.request("POST", "/v1/events", channel, json=event)
    assert response.status_code == 200 and response.json()["customer_id"], response.text


async def define(shop: ShopForTest, name: str, condition: dict[str, Any]) -> dict[str, Any]:
    response = await shop.request(
        "POST", "/v1/segments", json={"name": name, "condition": condition}
    )
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


async def settle(server: Harness) -> None:
    """Run what the background tasks run, to the end: backfills due, then the queue."""
    await segments.backfill_due(server.database)
    while await segments.drain(server.database):
        pass


async def members(server: Harness, shop: ShopForTest, name: str) -> set[str]:
    listed = await shop.request("GET", f"/v1/segments/{name}/members", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    return {m["customer_id"] for m in listed.json()["items"]}


async def test_a_malformed_segment_is_refused_with_every_reason(shop: ShopForTest) -> None:
    response = await shop.request(
        "POST",
        "/v1/segments",
        json={"name": "vip", "condition": {"orders.count": {"$bigger": 2}, "cart.lines": 1}},
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["type"] == ProblemType.INVALID_SEGMENT.value
    assert any("$bigger" in error for error in problem["errors"])
    await define(shop, "vip", {"traits.tier": "gold"})
    again = await shop.request("POST", "/v1/segments", json={"name": "vip", "condition": {}})
    assert again.status_code == 422 and "another segment" in again.json()["detail"]
    web = await shop.request("POST", "/v1/segments", "web", json={"name": "x", "condition": {}})
    assert web.status_code == 403


async def test_she_enters_when_her_profile_changes_and_the_feed_says_so(
    server: Harness, shop: ShopForTest
) -> None:
    await define(shop, "runners", {"top_interest": "running"})
    amy = await customer(shop, "amy-phone")
    await settle(server)
    assert await members(server, shop, "runners") == set()
    await track(shop, amy, "product_viewed", category="running")
    await settle(server)
    assert await members(server, shop, "runners") == {amy}
    profile = (await shop.request("GET", f"/v1/customers/{amy}/profile", "web")).json()
    assert profile["segments"] == ["runners"]
    for _ in range(3):
        await track(shop, amy, "product_added", category="hiking")
    await settle(server)
    assert await members(server, shop, "runners") == set()
    async with server.database.transaction(write=False) as conn:
        kinds = [
            row.kind
            for row in await conn.execute(
                select(changes.c.kind)
                .where(changes.c.tenant_id == shop.id, changes.c.kind.like("segment.%"))
                .order_by(changes.c.position)
            )
        ]
        row = (
            await conn.execute(select(segment_members).where(segment_members.c.customer_id == amy))
        ).one()
    assert kinds == ["segment.entered", "segment.exited"]
    assert row.exited_at is not None and row.entered_at <= row.exited_at


async def test_a_new_segment_is_backfilled_over_existing_customers_with_progress(
    server: Harness, shop: ShopForTest
) -> None:
    gold = [await customer(shop, f"gold-{n}", tier="gold") for n in range(5)]
    for n in range(3):
        await customer(shop, f"silver-{n}", tier="silver")
    created = await define(shop, "gold", {"traits.tier": "gold"})
    assert created["backfilled_version"] is None
    seen: list[tuple[int, int]] = []
    await segments.backfill(
        server.database, shop.id, created["segment_id"], lambda d, t: seen.append((d, t)), batch=3
    )
    assert seen == [(0, 8), (3, 8), (6, 8), (8, 8)]
    assert await members(server, shop, "gold") == set(gold)
    view = (await shop.request("GET", "/v1/segments/gold")).json()
    assert (view["members"], view["backfilled_version"]) == (5, 1)


async def test_an_edited_condition_is_a_new_version_backfilled_again(
    server: Harness, shop: ShopForTest
) -> None:
    big = await customer(shop, "big")
    small = await customer(shop, "small")
    await track(shop, big, "order_completed", order_id="o1", value=300.0)
    await track(shop, small, "order_completed", order_id="o2", value=20.0)
    await define(shop, "spenders", {"orders.value": {"$gte": 100}})
    await settle(server)
    assert await members(server, shop, "spenders") == {big}
    edited = await shop.request(
        "PATCH", "/v1/segments/spenders", json={"condition": {"orders.value": {"$gte": 10}}}
    )
    assert edited.json()["version"] == 2
    await settle(server)
    view = (await shop.request("GET", "/v1/segments/spenders")).json()
    assert (view["members"], view["backfilled_version"]) == (2, 2)


async def test_explain_says_which_clause_holds_and_with_what_value(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "amy", tier="gold")
    await define(shop, "gold-runners", {"traits.tier": "gold", "top_interest": "running"})
    await settle(server)
    why = (await shop.request("GET", f"/v1/segments/gold-runners/explain/{amy}")).json()
    assert (why["member"], why["holds"]) == (False, False)
    assert [(c["holds"], c["values"]) for c in why["clauses"]] == [
        (True, {"traits.tier": "gold"}),
        (False, {"top_interest": None}),
    ]


async def test_members_leave_when_merged_away_and_when_the_segment_is_deleted(
    server: Harness, shop: ShopForTest
) -> None:
    phone = await customer(shop, "phone", tier="gold")
    laptop = await customer(shop, "laptop", tier="gold")
    await define(shop, "gold", {"traits.tier": "gold"})
    await settle(server)
    assert await members(server, shop, "gold") == {phone, laptop}
    for device in ("phone", "laptop"):
        await shop.request(
            "POST",
            "/v1/identity/identify",
            "web",
            json={"anonymous_id": device, "customer_ref": "crm-amy"},
        )
    await settle(server)
    assert await members(server, shop, "gold") == {phone}
    deleted = await shop.request("DELETE", "/v1/segments/gold")
    assert deleted.status_code == 200
    assert (await shop.request("GET", "/v1/segments/gold")).status_code == 404


async def test_consent_and_preferred_channel_are_attributes_a_segment_can_test(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "amy")
    await define(shop, "sms-ok", {"consent.marketing:sms": True, "preferred_channel": "sms"})
    decision = {"purpose": "marketing:sms", "status": "granted", "source": "account_settings"}
    granted = await shop.request(
        "POST", f"/v1/consent/{amy}", "web", json={"decisions": [decision]}
    )
    assert granted.status_code == 200, granted.text
    await settle(server)
    assert await members(server, shop, "sms-ok") == set()
    declared = await shop.request(
        "PUT", f"/v1/customers/{amy}/preferred-channel", "app", json={"channel": "sms"}
    )
    assert declared.json() == {"customer_id": amy, "channel": "sms", "source": "declared"}
    await settle(server)
    assert await members(server, shop, "sms-ok") == {amy}


async def test_segment_attributes_are_the_content_engines_profile_facts(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "amy", tier="gold", size=38)
    await track(shop, amy, "product_viewed", category="running", days=3)
    await track(shop, amy, "product_added", "app", category="shoes", days=40)
    await track(shop, amy, "order_completed", "pos", order_id="o1", value=80.5, gift=True)
    await track(shop, amy, "order_completed", order_id="o1", value=80.5, gift=True)
    await track(shop, amy, "email_clicked", days=2)
    await track(shop, amy, "email_clicked", days=3)
    # The sale below is her order_completed at the till too: e-mail 8.6 > store 5.9 > web 3.9
    await track(shop, amy, "email_clicked", days=1)
    sale = {
        "reference": "POS-1",
        "channel": "pos",
        "store_id": "warsaw-1",
        "currency": "EUR",
        "customer_id": amy,
        "lines": [{"sku": "TR2", "quantity": 2, "unit_price": 60.0, "gift": True}],
    }
    recorded = await shop.request("POST", "/v1/orders", "pos", json=sale)
    assert recorded.status_code in (200, 201), recorded.text
    async with server.database.transaction(write=False) as conn:
        context = await server.app.state.runtime.tenants.get(conn, shop.id)
        profile: Profile = await get_profile(conn, context, amy)
        settings_ = await segments.settings_of(conn, shop.id)
        facts = (await segments.facts_for(conn, shop.id, [amy], settings_))[amy]
    content = profile_facts(profile, 0.0).attributes
    for key in ("known", "traits", "top_interest", "lifecycle", "buyer_type", "orders"):
        assert facts[key] == content[key], key
    assert facts["interests"] == pytest.approx(content["interests"], rel=1e-3)
    assert facts["preferred_channel"] == content["preferred_channel"] == "email"


# --- the law: real time and backfill agree --------------------------------------------------

CONDITIONS = [
    {"top_interest": "running"},
    {"traits.tier": {"$in": ["gold", "platinum"]}},
    {"orders.count": {"$gte": 2}},
    {"orders.value": {"$gt": 100}, "buyer_type": "self"},
    {"buyer_type": "gift"},
    {"consent.marketing:email": True},
    {"preferred_channel": {"$in": ["email", "app"]}},
    {"$or": [{"lifecycle": "new"}, {"interests.hiking": {"$gt": 1}}]},
]
STEPS = st.one_of(
    st.tuples(st.just("view"), st.sampled_from(["running", "hiking", "shoes"]), st.integers(0, 90)),
    st.tuples(st.just("order"), st.integers(1, 200), st.booleans()),
    st.tuples(st.just("tier"), st.sampled_from(["gold", "silver", "platinum"])),
    st.tuples(st.just("consent"), st.sampled_from(["granted", "denied"])),
    st.tuples(st.just("prefer"), st.sampled_from(["email", "sms", "app", None])),
    st.tuples(st.just("click")),
    st.tuples(st.just("record"), st.integers(1, 200), st.booleans()),
)
PROFILES = st.lists(st.lists(STEPS, max_size=6), min_size=1, max_size=5)


async def _apply(shop: ShopForTest, who: str, device: str, step: tuple[Any, ...], n: int) -> None:
    kind = step[0]
    if kind == "view":
        await track(shop, who, "product_viewed", category=step[1], days=step[2] + 0.5)
        return
    if kind == "order":
        value, gift = float(step[1]), step[2]
        await track(shop, who, "order_completed", "app", order_id=f"o{n}", value=value, gift=gift)
        return
    if kind == "click":
        await track(shop, who, "email_clicked")
        return
    if kind == "record":
        line = {"sku": "S1", "quantity": 1, "unit_price": float(step[1]), "gift": step[2]}
        sale = {"reference": f"{who}-r{n}", "currency": "EUR", "customer_id": who, "lines": [line]}
        response = await shop.request("POST", "/v1/orders", "web", json=sale)
        assert response.status_code in (200, 201), response.text
        return
    if kind == "tier":
        body: dict[str, Any] = {"anonymous_id": device, "traits": {"tier": step[1]}}
        response = await shop.request("POST", "/v1/identity/identify", "web", json=body)
    elif kind == "consent":
        decision = {"purpose": "marketing:email", "status": step[1], "source": "account_settings"}
        response = await shop.request(
            "POST", f"/v1/consent/{who}", "web", json={"decisions": [decision]}
        )
    else:
        response = await shop.request(
            "PUT", f"/v1/customers/{who}/preferred-channel", "web", json={"channel": step[1]}
        )
    assert response.status_code == 200, response.text


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(histories=PROFILES)
def test_real_time_membership_and_backfill_agree_on_random_profiles(
    migrated_database_url: str, histories: list[list[tuple[Any, ...]]]
) -> None:
    async def scenario() -> None:
        async for server in start_harness(migrated_database_url, **QUIET):
            shop = await server.shop(settings=ATTRIBUTED_EVENTS)
            for n, condition in enumerate(CONDITIONS):
                await define(shop, f"live-{n}", condition)
            await settle(server)
            people = [await customer(shop, f"person-{n}") for n in range(len(histories))]
            for number, (who, steps) in enumerate(zip(people, histories, strict=True)):
                for n, step in enumerate(steps):
                    await _apply(shop, who, f"person-{number}", step, n)
            await settle(server)  # real time: what the writes queued
            for n, condition in enumerate(CONDITIONS):
                await define(shop, f"backfilled-{n}", condition)
            await settle(server)  # the new segments' backfill
            for n in range(len(CONDITIONS)):
                live = await members(server, shop, f"live-{n}")
                backfilled = await members(server, shop, f"backfilled-{n}")
                assert live == backfilled, CONDITIONS[n]
            return

    asyncio.run(scenario())


async def test_time_alone_moves_her_from_active_to_lapsing_at_the_periodic_refresh(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await customer(shop, "drifting")
    await track(shop, amy, "product_viewed", category="running", days=80)  # idle 80 days: active
    other = await define(shop, "gold", {"traits.tier": "gold"})  # does not depend on time
    lapsing = await define(shop, "lapsing", {"lifecycle": "lapsing"})
    assert other["segment_id"] and lapsing["segment_id"]

    async def age(table: Any, column: Any, where: Any, by: timedelta) -> None:
        key = [c for c in table.primary_key.columns]
        async with server.database.transaction(write=True) as conn:
            for row in list(await conn.execute(select(*key, column).where(where))):
                same = [c == row._mapping[c] for c in key]
                when = row._mapping[column] - by
                await conn.execute(update(table).where(*same).values({column.name: when}))

    await age(customers, customers.c.created_at, customers.c.id == amy, timedelta(days=200))
    await settle(server)
    assert await members(server, shop, "lapsing") == set()
    # Fifteen days pass: nothing of hers happens, only time (her history and the segments'
    # last backfill grow older).
    await age(events, events.c.occurred_at, events.c.customer_id == amy, timedelta(days=15))
    await age(customers, customers.c.created_at, customers.c.id == amy, timedelta(days=15))
    await age(
        segments_table,
        segments_table.c.backfilled_at,
        segments_table.c.tenant_id == shop.id,
        timedelta(days=15),
    )
    assert not await segments.drain(server.database)  # no change of hers was queued
    assert await members(server, shop, "lapsing") == set()
    refreshed = await segments.backfill_due(server.database, refresh=timedelta(hours=24))
    assert refreshed == 1  # only the segment over time: "gold" is not evaluated again
    assert await members(server, shop, "lapsing") == {amy}
    assert await segments.backfill_due(server.database, refresh=timedelta(hours=24)) == 0


@pytest.mark.parametrize("with_segments", [False, True])
async def test_a_customer_new_at_sign_in_is_queued_only_when_the_shop_has_segments(
    server: Harness, shop: ShopForTest, with_segments: bool
) -> None:
    """Her creation queues her for evaluation (on PostgreSQL in the statement that creates
    her): a shop with no segment queues no one."""
    if with_segments:
        await define(shop, "gold", {"traits.tier": "gold"})
        await settle(server)
    zoe = await customer(shop, "zoe")  # a device alone: nothing but her creation changed
    async with server.database.transaction(write=False) as conn:
        queued = set(
            await conn.scalars(
                select(segment_pending.c.customer_id).where(segment_pending.c.tenant_id == shop.id)
            )
        )
    assert queued == ({zoe} if with_segments else set())


async def _evaluate_twice_at_once(server: Harness, shop: ShopForTest, who: str) -> list[int]:
    """How many entries and exits each of two racing evaluations of one customer recorded."""

    async def evaluation(conn: AsyncConnection) -> segments.Outcome:
        return await segments.evaluate(conn, shop.id, [who])

    outcomes = await interleaved(server, evaluation, evaluation)
    return [o.entered + o.exited for o in outcomes]


async def test_two_evaluators_racing_for_one_customer_announce_each_move_once(
    server: Harness, shop: ShopForTest
) -> None:
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two evaluations cannot overlap")
    await define(shop, "gold", {"traits.tier": "gold"})
    await settle(server)
    amy = await customer(shop, "amy", tier="gold")
    assert sorted(await _evaluate_twice_at_once(server, shop, amy)) == [0, 1]
    await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={"anonymous_id": "amy", "traits": {"tier": "x"}},
    )
    assert sorted(await _evaluate_twice_at_once(server, shop, amy)) == [0, 1]
    async with server.database.transaction(write=False) as conn:
        kinds = list(
            (
                await conn.execute(
                    select(changes.c.kind)
                    .where(changes.c.tenant_id == shop.id, changes.c.kind.like("segment.%"))
                    .order_by(changes.c.position)
                )
            ).scalars()
        )
    assert kinds == ["segment.entered", "segment.exited"]
    assert await members(server, shop, "gold") == set()


async def _segment_changes(server: Harness, shop: ShopForTest) -> list[tuple[str, str]]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(changes.c.kind, changes.c.customer_id)
            .where(changes.c.tenant_id == shop.id, changes.c.kind.like("segment.%"))
            .order_by(changes.c.position)
        )
        return [(row.kind, row.customer_id) for row in rows]


async def test_a_deletion_and_an_evaluation_at_once_announce_each_move_once(
    server: Harness, shop: ShopForTest
) -> None:
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two writes cannot overlap")
    await define(shop, "gold", {"traits.tier": "gold"})
    await settle(server)
    amy = await customer(shop, "amy", tier="gold")
    await settle(server)
    await customer(shop, "amy", tier="silver")  # she is to leave ...
    bob = await customer(shop, "bob", tier="gold")  # ... and he to enter

    async def amy_evaluated(conn: AsyncConnection) -> segments.Outcome:
        return await segments.evaluate(conn, shop.id, [amy])

    async def deleted(conn: AsyncConnection) -> segments.SegmentRecord:
        return await segments.remove(conn, shop.id, "gold", None)

    # Her exit is being recorded when the segment is deleted: one exit, not two.
    outcome, record = await interleaved(server, amy_evaluated, deleted)
    assert (outcome.exited, record.name) == (1, "gold")
    # Re-created, then deleted while his entry is being evaluated: he never enters it.
    await define(shop, "gold", {"traits.tier": "gold"})

    async def bob_evaluated(conn: AsyncConnection) -> segments.Outcome:
        return await segments.evaluate(conn, shop.id, [bob])

    record, outcome = await interleaved(server, deleted, bob_evaluated)
    assert (record.name, outcome.entered) == ("gold", 0)
    assert await _segment_changes(server, shop) == [
        ("segment.entered", amy),
        ("segment.exited", amy),
    ]
    async with server.database.transaction(write=False) as conn:
        left = await conn.scalar(select(func.count()).where(segment_members.c.tenant_id == shop.id))
    assert left == 0


async def test_two_deletions_or_two_edits_of_one_segment_take_turns(
    server: Harness, shop: ShopForTest
) -> None:
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two writes cannot overlap")
    await define(shop, "gold", {"traits.tier": "gold"})

    def edited(tier: str) -> Step:
        async def edit(conn: AsyncConnection) -> Any:
            return await segments.edit(conn, shop.id, "gold", {"traits.tier": tier}, None, None)

        return edit

    first, second = await interleaved(server, edited("silver"), edited("bronze"))
    assert [first[0].version, second[0].version] == [2, 3]
    view = (await shop.request("GET", "/v1/segments/gold")).json()
    assert (view["version"], view["condition"]) == (3, {"traits.tier": "bronze"})

    async def deleted(conn: AsyncConnection) -> segments.SegmentRecord:
        return await segments.remove(conn, shop.id, "gold", None)

    record, again = await interleaved(server, deleted, deleted)
    assert record.name == "gold"
    assert isinstance(again, Problem) and again.type is ProblemType.NOT_FOUND
    async with server.database.transaction(write=False) as conn:
        audited = list(
            (
                await conn.execute(
                    select(audit_log.c.action).where(audit_log.c.tenant_id == shop.id)
                )
            ).scalars()
        )
    assert sorted(a for a in audited if a.startswith("segment.")) == [
        "segment.created",
        "segment.deleted",
        "segment.edited",
        "segment.edited",
    ]


async def test_evaluations_and_edits_of_one_segment_do_not_wait_for_each_other(
    server: Harness, shop: ShopForTest
) -> None:
    """An evaluation holds its segments FOR KEY SHARE (a deletion waits for it): it took FOR NO
    KEY UPDATE, so every drain and backfill batch of a tenant waited for every other."""
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two writes cannot overlap")
    await define(shop, "gold", {"traits.tier": "gold"})
    await settle(server)
    amy = await customer(shop, "amy", tier="gold")
    bob = await customer(shop, "bob", tier="gold")
    async with server.database.transaction(write=True) as held:
        assert (await segments.evaluate(held, shop.id, [amy])).entered == 1
        # Meanwhile, another process evaluates Bob and an admin edits the segment: neither
        # waits for the transaction above (a guard of 30 s fails the test instead of hanging).
        async with asyncio.timeout(30):
            async with server.database.transaction(write=True) as conn:
                assert (await segments.evaluate(conn, shop.id, [bob])).entered == 1
            async with server.database.transaction(write=True) as conn:
                edited, _ = await segments.edit(
                    conn, shop.id, "gold", None, "customers of the gold tier", None
                )
    assert edited.description == "customers of the gold tier"
    assert await members(server, shop, "gold") == {amy, bob}
