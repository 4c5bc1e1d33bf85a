"""Stock alert messages under races between transactions, over SQLite and PostgreSQL.

A restock batch and an unsubscribe, or two processes and one message whose lease ran out,
are interleaved deterministically: the first transaction is held open until the other is seen
waiting for its lock (pg_locks), then committed. SQLite has one writer, so those interleavings
run on PostgreSQL only.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy import select, text, update

from omnisdk.core.notifications import Skip
from server_stub.alert_delivery import run_until_idle
from server_stub.services import alerts, messages
from server_stub.storage.tables import alert_messages, alert_subscriptions
from tests.server import test_alerts
from tests.server.conftest import Harness, ShopForTest
from tests.server.interleave import waiting_for_a_lock
from tests.server.test_alerts import (
    ITEM,
    customer,
    grant,
    level,
    messages_of,
    shop_with_webhook,
    stock,
    subscribe,
    timeline_names,
    worker_of,
)
from tests.webhook_receiver import WebhookReceiver

# The alerts tests' harness (no delivery loop of its own) and webhook receiver.
server = test_alerts.server
receiver = test_alerts.receiver

T = TypeVar("T")
ONE_WRITER = "PostgreSQL only: SQLite has one writer, so the two transactions cannot overlap"


async def _while_held(
    server: Harness, hold: Callable[[Any], Awaitable[object]], act: Callable[[], Awaitable[T]]
) -> T:
    """Run `act` while another transaction has done `hold` and not committed; once `act`
    waits for that transaction's lock, commit it. What `act` returned."""
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with server.database.transaction(write=True) as conn:
            await hold(conn)
            held.set()
            await release.wait()

    holding = asyncio.create_task(holder())
    try:
        async with asyncio.timeout(60):
            await held.wait()
            acting = asyncio.create_task(act())
            while await waiting_for_a_lock(server) == 0:
                assert not acting.done(), "it did not wait for the other transaction"
                await asyncio.sleep(0.01)
            release.set()
            await holding
            return await acting
    finally:
        release.set()


async def _subscription_status(server: Harness, subscription_id: str) -> str:
    async with server.database.transaction(write=False) as conn:
        status = await conn.scalar(
            select(alert_subscriptions.c.status).where(alert_subscriptions.c.id == subscription_id)
        )
    return str(status)


# --- a restock batch and an unsubscribe ----------------------------------------------------------


async def test_she_who_unsubscribes_while_a_restock_batch_reads_her_is_not_sent_the_message(
    server: Harness, receiver: WebhookReceiver
) -> None:
    if server.database.sqlite:
        pytest.skip(ONE_WRITER)
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    sub = await subscribe(shop, amy)

    async def unsubscribe(conn: Any) -> None:
        await alerts.unsubscribe(conn, shop.id, amy, sub["id"])

    restocked = await _while_held(server, unsubscribe, lambda: stock(shop, levels=[level(4)]))
    assert restocked["triggered"] == {}
    await run_until_idle(worker_of(server))
    assert receiver.requests == []
    assert await messages_of(shop, amy) == []
    assert await _subscription_status(server, sub["id"]) == "cancelled"


async def test_a_subscriber_skipped_in_this_window_waits_for_the_next_not_queued_for_nothing(
    server: Harness, receiver: WebhookReceiver
) -> None:
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone")
    sub = await subscribe(shop, amy)
    await stock(shop, levels=[level(4)])
    await run_until_idle(worker_of(server))  # no consent yet: skipped, and she waits again
    [skipped] = await messages_of(shop, amy)
    assert (skipped["status"], skipped["reason"]) == ("skipped", "no_consent")
    assert await _subscription_status(server, sub["id"]) == "waiting"
    await grant(shop, amy, "marketing:push")
    await stock(shop, levels=[level(0)])
    again = await stock(shop, levels=[level(4)])  # same window: her message is the one skipped
    assert again["triggered"] == {}
    assert await _subscription_status(server, sub["id"]) == "waiting"
    next_window = datetime.now(UTC) + timedelta(hours=168)  # notifications.window_hours
    async with server.database.transaction(write=True) as conn:
        context = await server.app.state.runtime.tenants.get(conn, shop.id)
        assert await alerts.start_restock(conn, context, ITEM, "", next_window) == 1
    assert await _subscription_status(server, sub["id"]) == "queued"


async def test_subscribers_skipped_in_this_restock_do_not_stand_before_the_others(
    server: Harness, receiver: WebhookReceiver
) -> None:
    """One unit back: two subscribers a batch. The first two have no consent and are skipped;
    the next batch must go to the third, not to them again (with their message of this window
    already stored, it stored nothing, and the restock stood still until the window changed)."""
    shop = await shop_with_webhook(server, receiver)
    first = [await customer(shop, device) for device in ("amy-phone", "bob-phone")]
    for customer_id in first:
        await subscribe(shop, customer_id)
    carl = await customer(shop, "carl-phone")
    await grant(shop, carl, "marketing:push")
    waiting = await subscribe(shop, carl)
    assert (await stock(shop, levels=[level(1)]))["triggered"] == {"back_in_stock": 2}
    await run_until_idle(worker_of(server))
    for customer_id in first:
        [skipped] = await messages_of(shop, customer_id)
        assert (skipped["status"], skipped["reason"]) == ("skipped", "no_consent")
    async with server.database.transaction(write=True) as conn:
        context = await server.app.state.runtime.tenants.get(conn, shop.id)
        later = datetime.now(UTC) + timedelta(minutes=15)  # the next pacing interval
        assert await alerts.pace(conn, context, ITEM, "", later) == 1
    assert await _subscription_status(server, waiting["id"]) == "queued"


# --- one message, two processes --------------------------------------------------------------


async def _due_message(server: Harness, receiver: WebhookReceiver) -> tuple[ShopForTest, str]:
    """A shop whose customer's back-in-stock message is due, and her."""
    shop = await shop_with_webhook(server, receiver)
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    await subscribe(shop, amy)
    assert (await stock(shop, levels=[level(4)]))["triggered"] == {"back_in_stock": 1}
    return shop, amy


async def _lease(shop: ShopForTest, conn: Any, until: datetime) -> messages.Claimed:
    """Lease the shop's message as `messages.claim` does (claim itself takes any tenant's)."""
    token = secrets.token_hex(8)
    [(message_id, kind)] = await conn.execute(
        update(alert_messages)
        .where(alert_messages.c.tenant_id == shop.id)
        .values(status="sending", lease_until=until, lease_token=token)
        .returning(alert_messages.c.id, alert_messages.c.kind)
    )
    return messages.Claimed(shop.id, message_id, token, kind)


async def _run_out_and_taken_over(
    server: Harness, shop: ShopForTest, act: Callable[[messages.Claimed], Awaitable[T]]
) -> tuple[T, messages.Claimed]:
    """This process's lease on the message runs out; another process claims the message,
    and before that claim commits this one acts on its own lease (`act`). What `act`
    returned, and the other's claim."""
    async with server.database.transaction(write=True) as conn:
        ours = await _lease(shop, conn, datetime.now(UTC) - timedelta(seconds=1))
    theirs: list[messages.Claimed] = []

    async def claim(conn: Any) -> None:
        theirs.append(await _lease(shop, conn, datetime.now(UTC) + messages.LEASE))

    done = await _while_held(server, claim, lambda: act(ours))
    return done, theirs[0]


async def test_a_message_taken_over_after_the_lease_ran_out_is_sent_once(
    server: Harness, receiver: WebhookReceiver
) -> None:
    if server.database.sqlite:
        pytest.skip(ONE_WRITER)
    shop, amy = await _due_message(server, receiver)
    ours, theirs = worker_of(server), worker_of(server)
    _, taken = await _run_out_and_taken_over(
        server, shop, lambda claimed: ours._deliver_batch([claimed])
    )
    assert receiver.requests == []  # the lease was no longer ours: nothing was decided
    await theirs._deliver_batch([taken])
    assert len(receiver.requests) == 1
    [message] = await messages_of(shop, amy)
    assert message["status"] == "sent"
    sent = [p for name, p in await timeline_names(shop, amy) if name == "message_sent"]
    assert len(sent) == 1
    counted = server.app.state.runtime.metrics.registry.get_sample_value(
        "omnisdk_alert_messages_total", {"kind": "back_in_stock", "outcome": "sent"}
    )
    assert counted == 1


async def test_a_skip_on_a_lease_taken_over_meanwhile_writes_nothing(
    server: Harness, receiver: WebhookReceiver
) -> None:
    if server.database.sqlite:
        pytest.skip(ONE_WRITER)
    shop, amy = await _due_message(server, receiver)
    [sub] = (await shop.request("GET", f"/v1/alerts/{amy}/subscriptions", "web")).json()["items"]

    async def skip(claimed: messages.Claimed) -> bool:
        async with server.database.transaction(write=True) as conn:
            return await messages.skip(conn, claimed, Skip.OUT_OF_STOCK, datetime.now(UTC))

    skipped, _ = await _run_out_and_taken_over(server, shop, skip)
    assert skipped is False
    [message] = await messages_of(shop, amy)
    assert (message["status"], message["reason"]) == ("sending", None)
    assert await _subscription_status(server, sub["id"]) == "queued"
    assert "message_skipped" not in [name for name, _ in await timeline_names(shop, amy)]


async def test_a_sent_message_whose_recording_loses_a_deadlock_is_recorded_not_sent_again(
    server: Harness, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shop has taken the message; then PostgreSQL ends the transaction recording it to
    break a deadlock (a real 40P01, raised by the server after the recording's own writes).
    The recording ran once and was lost: the message stayed leased and was sent again when
    the lease ran out. It now runs again, and the message is sent and counted once."""
    if server.database.sqlite:
        pytest.skip(ONE_WRITER)
    shop, amy = await _due_message(server, receiver)
    recordings = 0
    real = messages.sent_many

    async def loses_the_first_race(conn: Any, *args: Any) -> set[str]:
        nonlocal recordings
        recordings += 1
        recorded = await real(conn, *args)
        if recordings == 1:
            await conn.execute(
                text(
                    "DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' "
                    "USING ERRCODE = 'deadlock_detected'; END $$"
                )
            )
        return recorded

    monkeypatch.setattr(messages, "sent_many", loses_the_first_race)
    worker = worker_of(server)
    await run_until_idle(worker)
    assert recordings == 2
    [message] = await messages_of(shop, amy)
    assert message["status"] == "sent"
    # Were it still leased, the next pass after the lease ran out would send it again.
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(alert_messages)
            .where(alert_messages.c.tenant_id == shop.id)
            .values(lease_until=datetime.now(UTC) - timedelta(seconds=1))
        )
    await run_until_idle(worker)
    assert len(receiver.requests) == 1
    sent = [p for name, p in await timeline_names(shop, amy) if name == "message_sent"]
    assert len(sent) == 1
    counted = server.app.state.runtime.metrics.registry.get_sample_value(
        "omnisdk_alert_messages_total", {"kind": "back_in_stock", "outcome": "sent"}
    )
    assert counted == 1
