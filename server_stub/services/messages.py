"""Messages decided at send time, claimed safely across processes, and their outcomes.

A due message is claimed with a lease (`claim`: FOR UPDATE SKIP LOCKED on PostgreSQL, so two
server processes never take the same one; SQLite has one writer), then decided (`decide`)
against the state now — still in stock, not bought since on any channel, still in the cart,
consent for the channel granted now (the decision relied on is recorded), outside the quiet
hours of the customer's time zone, under the frequency caps, through her preferred channel or
the fallback order — and handed to the shop's webhook outside any transaction. `finish`
records the outcome only if the lease is still the claimer's, so a process that lost its lease
(it stalled, another took over) writes nothing. Every skip, and every send, is recorded on the
customer's timeline (`message_skipped`, `message_sent` events).
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import consent as consent_rules
from omnisdk.core import preferences as preference_rules
from omnisdk.core.cart import Cart, line_parts
from omnisdk.core.notifications import (
    CART_KINDS,
    PURPOSE_OF_CHANNEL,
    SERVICE_KINDS,
    Kind,
    Skip,
    backoff_seconds,
    channel_order,
    over_cap,
    quiet_until,
    zone,
)
from omnisdk.notification_models import AlertMetrics, KindMetrics, MessageView
from server_stub.services import identity, preferences
from server_stub.services.consent import ledger
from server_stub.services.stock import Stock
from server_stub.services.stock import read as read_stock
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import (
    ORDER_COMPLETED,
    alert_messages,
    alert_subscriptions,
    carts,
    customers,
    events,
    order_lines,
    orders,
    preference_declarations,
    return_orders,
    return_tokens,
)

LEASE = timedelta(seconds=60)
RETRY_BASE_SECONDS = 5.0
RETRY_CEILING_SECONDS = 3600.0
COUNTED = ("sending", "retry", "sent")  # messages that count against the frequency caps


def _dialect(conn: AsyncConnection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def view(row: Any) -> MessageView:
    return MessageView(
        id=row.id,
        kind=Kind(row.kind),
        customer_id=row.customer_id,
        sku=row.sku,
        item=row.item,
        status=row.status,
        reason=row.reason,
        channel=row.channel,
        consent_decision_id=row.consent_decision_id,
        attempts=row.attempts,
        due_at=row.due_at,
        created_at=row.created_at,
        sent_at=row.sent_at,
    )


# --- claiming -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claimed:
    tenant_id: str
    id: str
    token: str
    kind: str = ""


async def claim(
    conn: AsyncConnection, now: datetime, limit: int, lease: timedelta = LEASE
) -> list[Claimed]:
    """Lease up to `limit` due messages to this caller: pending or retry ones whose time has
    come, and those whose claimer's lease ran out (it died mid-delivery)."""
    due = or_(
        and_(alert_messages.c.status.in_(("pending", "retry")), alert_messages.c.due_at <= now),
        and_(alert_messages.c.status == "sending", alert_messages.c.lease_until < now),
    )
    rows = list(
        await conn.execute(
            select(alert_messages.c.tenant_id, alert_messages.c.id, alert_messages.c.kind)
            .where(due)
            .order_by(alert_messages.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    token = secrets.token_hex(8)  # one lease for the batch: its messages are this caller's
    by_tenant: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        by_tenant[row.tenant_id].append(row.id)
    for tenant_id, ids in by_tenant.items():
        await conn.execute(
            update(alert_messages)
            .where(alert_messages.c.tenant_id == tenant_id, alert_messages.c.id.in_(ids))
            .values(status="sending", lease_until=now + lease, lease_token=token)
        )
    return [Claimed(row.tenant_id, row.id, token, row.kind) for row in rows]


# What recording an outcome reads back from the message it wrote (UPDATE … RETURNING: only
# a write that matched, the lease still ours, has side effects).
_OUTCOME = (
    alert_messages.c.id,
    alert_messages.c.customer_id,
    alert_messages.c.kind,
    alert_messages.c.sku,
    alert_messages.c.subscription_id,
)


def _mine(claimed: Claimed) -> tuple[Any, ...]:
    return (
        alert_messages.c.tenant_id == claimed.tenant_id,
        alert_messages.c.id == claimed.id,
        alert_messages.c.lease_token == claimed.token,
        alert_messages.c.status == "sending",
    )


# --- deciding -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    customer_id: str
    channel: str
    consent_decision_id: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class Skipped:
    reason: Skip


@dataclass(frozen=True)
class Delayed:
    until: datetime
    reason: str


Decision = Send | Skipped | Delayed

# Where an observed preference is a shop channel rather than a message channel: engaging in
# the app means a push notification reaches her there.
MESSAGE_CHANNEL_OF = {"app": "push"}


def _message_channel(channel: str | None, source: str) -> tuple[str | None, str]:
    channel = MESSAGE_CHANNEL_OF.get(channel or "", channel)
    return (channel, source) if channel in PURPOSE_OF_CHANNEL else (None, source)


async def preferred_channel(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str]
) -> tuple[str | None, str]:
    """The message channel she prefers (declared wins over observed; services/preferences)
    and where that comes from; None when it names no message channel."""
    channel, source = await preferences.preferred_channel(conn, tenant_id, customer_ids)
    return _message_channel(channel, source)


async def _preferred_channels(
    conn: AsyncConnection, tenant_id: str, customer_ids: list[str], now: datetime
) -> dict[str, tuple[str | None, str]]:
    """`preferred_channel` of many customers in two queries (the rule of
    services/preferences: her latest declaration wins, else her observed engagement)."""
    declared: dict[str, str | None] = {}
    for row in await conn.execute(
        select(preference_declarations.c.customer_id, preference_declarations.c.channel)
        .where(
            preference_declarations.c.tenant_id == tenant_id,
            preference_declarations.c.customer_id.in_(customer_ids),
        )
        .order_by(preference_declarations.c.declared_at, preference_declarations.c.id)
    ):
        declared[row.customer_id] = row.channel
    found: dict[str, tuple[str | None, str]] = {}
    rest = []
    for customer in customer_ids:
        if declared.get(customer):
            found[customer] = _message_channel(declared[customer], "declared")
        else:
            rest.append(customer)
    if not rest:
        return found
    latest = (
        func.row_number()
        .over(partition_by=events.c.customer_id, order_by=events.c.occurred_at.desc())
        .label("n")
    )
    recent = (
        select(
            events.c.customer_id,
            events.c.name,
            events.c.channel,
            events.c.properties,
            events.c.occurred_at,
            latest,
        )
        .where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id.in_(rest),
            events.c.name.in_(sorted(preference_rules.ENGAGEMENT_EVENTS)),
            events.c.occurred_at >= now - timedelta(days=preferences.OBSERVED_DAYS),
        )
        .subquery()
    )
    signals: dict[str, list[preference_rules.Signal]] = defaultdict(list)
    for row in await conn.execute(select(recent).where(recent.c.n <= preferences.OBSERVED_SIGNALS)):
        properties = row.properties if isinstance(row.properties, dict) else {}
        told = properties.get("channel")
        signals[row.customer_id].append(
            preference_rules.Signal(
                row.name, row.channel, told if isinstance(told, str) else None, row.occurred_at
            )
        )
    for customer in rest:
        seen = preference_rules.observed_channel(signals.get(customer, []), now)
        channel, source = preference_rules.preferred(None, seen)
        found[customer] = _message_channel(channel.value if channel else None, source.value)
    return found


def _listed_skus(properties: Any) -> list[str]:
    properties = properties if isinstance(properties, dict) else {}
    skus = properties.get("skus")
    listed = [str(s) for s in skus] if isinstance(skus, list) else []
    lines = properties.get("lines")
    if isinstance(lines, list):
        listed += [str(line.get("sku")) for line in lines if isinstance(line, dict)]
    return listed


async def bought_since(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str], sku: str, since: datetime
) -> bool:
    """Whether she ordered the SKU since `since`, on any channel: in the order record (online
    checkouts and store sales, services/orders.py), or as an `order_completed` event the shop
    tracked without recording the order."""
    purchases = await _purchases(conn, tenant_id, list(customer_ids), {sku}, since)
    return any(bought >= since for customer in customer_ids for bought in purchases[customer, sku])


async def _purchases(
    conn: AsyncConnection, tenant_id: str, customer_ids: list[str], skus: set[str], since: datetime
) -> dict[tuple[str, str], list[datetime]]:
    """When each customer bought each SKU since `since`: order lines (services/orders.py) and
    `order_completed` events. Two queries, whatever the number of customers."""
    found: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    if not customer_ids or not skus:
        return found
    for row in await conn.execute(
        select(orders.c.customer_id, order_lines.c.sku, orders.c.placed_at).where(
            orders.c.tenant_id == tenant_id,
            orders.c.customer_id.in_(customer_ids),
            orders.c.placed_at >= since,
            order_lines.c.tenant_id == orders.c.tenant_id,
            order_lines.c.order_id == orders.c.id,
            order_lines.c.sku.in_(sorted(skus)),
        )
    ):
        found[row.customer_id, row.sku].append(row.placed_at)
    for row in await conn.execute(
        select(events.c.customer_id, events.c.properties, events.c.occurred_at).where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id.in_(customer_ids),
            ORDER_COMPLETED,
            events.c.occurred_at >= since,
        )
    ):
        for listed in _listed_skus(row.properties):
            base = listed.split("|", 1)[0]
            if base in skus:
                found[row.customer_id, base].append(row.occurred_at)
    return found


def _consented(rows: list[Any], order: list[str], skew: float) -> tuple[str, str] | None:
    """The first channel of `order` whose marketing purpose her ledger (`rows`) grants now,
    with the id of the decision that grants it."""
    person = [row for row in rows if row.scope == "person"]
    decisions = [
        consent_rules.Decision(
            at=row.recorded_at.timestamp(),
            purpose=row.purpose,
            status=consent_rules.Status(row.status),
            notice_version=row.notice_version,
            channel=row.channel,
            decision_id=row.id,
            origin=row.origin_customer_id,
        )
        for row in person
    ]
    current = consent_rules.state(decisions, skew=skew)
    for channel in order:
        purpose = PURPOSE_OF_CHANNEL[channel]
        standing = current.get(purpose)
        if standing is None or not standing.granted:
            continue
        grants = [row for row in person if row.purpose == purpose and row.status == "granted"]
        if grants:
            return channel, str(grants[-1].id)
    return None


@dataclass
class _Facts:
    """What the decisions of one batch read, each in one query for the whole batch."""

    live: dict[str, str]
    cancelled: set[str]
    stock: dict[str, Stock]
    purchases: dict[tuple[str, str], list[datetime]]
    carts: dict[str, tuple[dict[str, int], datetime | None]]
    channels: dict[str, tuple[str | None, str]]
    ledgers: dict[str, list[Any]]
    traits: dict[str, dict[str, Any]]
    counted: dict[str, list[datetime]]
    codes: dict[str, Any]  # return codes by token id (messages of kind return_code)


async def _lock(conn: AsyncConnection, tenant_id: str, ids: set[str]) -> dict[str, str]:
    """The live customer of each id, locked (in id order, as every writer locks them) so that
    no merge interleaves and two processes deciding her messages count each other's."""
    while True:
        live = await identity.live_ids(conn, tenant_id, ids)
        # Rows locked as merges lock them (identity.lock_customers); one merged in between
        # the read and the lock is read again.
        locked = await identity.lock_customers(conn, tenant_id, set(live.values()))
        if all(merged_into is None for merged_into in locked.values()):
            break
    return live


async def _facts(
    conn: AsyncConnection,
    context: TenantContext,
    rows: list[Any],
    live: dict[str, str],
    now: datetime,
) -> _Facts:
    """What the decisions of `rows` read, for their customers (`live`, locked by `_lock`)."""
    tenant_id = context.tenant_id
    people = sorted(set(live.values()))
    subscription_ids = [row.subscription_id for row in rows if row.subscription_id]
    cancelled: set[str] = set()
    if subscription_ids:
        cancelled = {
            row.id
            for row in await conn.execute(
                select(alert_subscriptions.c.id).where(
                    alert_subscriptions.c.tenant_id == tenant_id,
                    alert_subscriptions.c.id.in_(subscription_ids),
                    alert_subscriptions.c.status == "cancelled",
                )
            )
        }
    stock = await read_stock(conn, tenant_id, {row.item for row in rows if row.item})
    earliest = min((_since(row) for row in rows), default=now)
    purchases = await _purchases(
        conn, tenant_id, people, {row.sku for row in rows if row.sku}, earliest
    )
    held: dict[str, tuple[dict[str, int], datetime | None]] = {}
    for cart in await conn.execute(
        select(carts.c.customer_id, carts.c.state, carts.c.updated_at).where(
            carts.c.tenant_id == tenant_id, carts.c.customer_id.in_(people)
        )
    ):
        held[cart.customer_id] = (Cart.from_dict(cart.state).quantities(), cart.updated_at)
    ledgers: dict[str, list[Any]] = defaultdict(list)
    for decision in await ledger(conn, tenant_id, people):
        ledgers[decision.customer_id].append(decision)
    traits = {
        row.id: dict(row.traits or {})
        for row in await conn.execute(
            select(customers.c.id, customers.c.traits).where(
                customers.c.tenant_id == tenant_id, customers.c.id.in_(people)
            )
        )
    }
    counted: dict[str, list[datetime]] = defaultdict(list)
    for row in await conn.execute(
        select(alert_messages.c.customer_id, alert_messages.c.decided_at).where(
            alert_messages.c.tenant_id == tenant_id,
            alert_messages.c.customer_id.in_(people),
            alert_messages.c.status.in_(COUNTED),
            alert_messages.c.decided_at >= now - timedelta(days=7),
            alert_messages.c.id.not_in([r.id for r in rows]),
        )
    ):
        counted[row.customer_id].append(row.decided_at)
    return _Facts(
        codes=await _return_codes(conn, tenant_id, rows),
        live=live,
        cancelled=cancelled,
        stock=stock,
        purchases=purchases,
        carts=held,
        channels=await _preferred_channels(conn, tenant_id, people, now),
        ledgers=ledgers,
        traits=traits,
        counted=counted,
    )


async def _return_codes(conn: AsyncConnection, tenant_id: str, rows: list[Any]) -> dict[str, Any]:
    """The return codes the batch's `return_code` messages carry, as they are now."""
    wanted = {
        str((row.data or {}).get("token_id"))
        for row in rows
        if row.kind == Kind.RETURN_CODE.value and (row.data or {}).get("token_id")
    }
    if not wanted:
        return {}
    found = await conn.execute(
        select(
            return_tokens.c.token_id,
            return_tokens.c.token,
            return_tokens.c.order_ref,
            return_tokens.c.expires_at,
            # A code is void when it, or its whole order, was revoked (returns.revoke_*).
            func.coalesce(return_tokens.c.revoked_at, return_orders.c.revoked_at).label(
                "revoked_at"
            ),
        )
        .outerjoin(
            return_orders,
            (return_orders.c.tenant_id == return_tokens.c.tenant_id)
            & (return_orders.c.order_ref == return_tokens.c.order_ref),
        )
        .where(return_tokens.c.tenant_id == tenant_id, return_tokens.c.token_id.in_(wanted))
    )
    return {row.token_id: row for row in found}


def _since(row: Any) -> datetime:
    data = row.data or {}
    return datetime.fromisoformat(data["since"]) if data.get("since") else row.created_at


def _decide_one(context: TenantContext, row: Any, facts: _Facts, now: datetime) -> Decision:
    customer = facts.live.get(row.customer_id)
    if customer is None or customer not in facts.traits:
        return Skipped(Skip.CUSTOMER_GONE)
    kind = Kind(row.kind)
    data = dict(row.data or {})
    since = _since(row)
    if row.subscription_id is not None and row.subscription_id in facts.cancelled:
        return Skipped(Skip.SUBSCRIPTION_CANCELLED)
    code = facts.codes.get(str(data.get("token_id"))) if kind is Kind.RETURN_CODE else None
    if kind is Kind.RETURN_CODE and (
        code is None or code.revoked_at is not None or code.expires_at <= now
    ):
        return Skipped(Skip.RETURN_CODE_VOID)
    stock = facts.stock.get(row.item) if row.item else None
    store = data.get("store") or None
    if stock is not None and kind is not Kind.PRICE_DROP and stock.units(store) <= 0:
        return Skipped(Skip.OUT_OF_STOCK)
    if (
        kind is Kind.PRICE_DROP
        and stock is not None
        and (stock.price is None or stock.price > float(data.get("price", stock.price)))
    ):
        return Skipped(Skip.PRICE_NOT_LOWER)
    if row.sku and any(at >= since for at in facts.purchases.get((customer, row.sku), [])):
        return Skipped(Skip.BOUGHT_SINCE)
    held, cart_changed = facts.carts.get(customer, ({}, None))
    in_cart = kind in CART_KINDS or bool(data.get("cart"))
    if in_cart and row.item and held.get(row.item, 0) <= 0:
        return Skipped(Skip.NOT_IN_CART)
    if kind is Kind.ABANDONED_CART:
        if not held:
            return Skipped(Skip.NOT_IN_CART)
        if cart_changed is not None and cart_changed > since:
            return Skipped(Skip.CART_ACTIVE)
    settings = context.settings.notifications
    preferred, source = facts.channels.get(customer, (None, "none"))
    order = channel_order(preferred, settings.fallback_channels)
    chosen = _consented(
        facts.ledgers.get(customer, []), order, context.settings.consent.skew_seconds
    )
    if chosen is None:
        return Skipped(Skip.NO_CONSENT)
    traits = facts.traits[customer]
    named_zone = traits.get("time_zone")
    tz = zone(named_zone if isinstance(named_zone, str) else None, settings.time_zone)
    until = quiet_until(now, tz, settings.quiet_hours_start, settings.quiet_hours_end)
    if until is not None:
        return Delayed(until, "quiet_hours")
    if kind not in SERVICE_KINDS and over_cap(
        facts.counted[customer], now, settings.max_per_day, settings.max_per_week
    ):
        return Skipped(Skip.FREQUENCY_CAP)
    facts.counted[customer].append(now)  # the next message of hers in this batch counts it
    channel, decision_id = chosen
    payload = {
        "type": f"message.{kind.value}",
        "timestamp": now.isoformat(),
        "data": {
            "message_id": row.id,
            "kind": kind.value,
            "customer_id": customer,
            "channel": channel,
            "channel_source": source if channel == preferred else "fallback",
            "consent_decision_id": decision_id,
            "sku": row.sku,
            "item": row.item,
            "options": _options(row.item),
            "subscription_id": row.subscription_id,
            "price": stock.price if stock is not None else None,
            "currency": stock.currency if stock is not None else None,
            "units_available": stock.units(store) if stock is not None else None,
            "store": data.get("store"),
            "cart_items": sorted(held) if in_cart else None,
            "locale": traits.get("locale"),
            "first_name": traits.get("first_name"),
            **(
                {"order_ref": code.order_ref, "return_code": code.token} if code is not None else {}
            ),
        },
    }
    return Send(customer, channel, decision_id, payload)


async def decide_many(
    conn: AsyncConnection,
    context: TenantContext,
    claimed: Sequence[Claimed],
    now: datetime,
    lease: timedelta = LEASE,
) -> dict[str, Decision]:
    """Decide claimed messages of one tenant now, reading each fact once for the batch; the
    messages whose lease is no longer ours are left out. Those to send are marked decided
    (channel, the consent decision relied on) in the same transaction."""
    if not claimed:
        return {}
    token = claimed[0].token
    rows = list(
        await conn.execute(
            select(alert_messages).where(
                alert_messages.c.tenant_id == context.tenant_id,
                alert_messages.c.id.in_([c.id for c in claimed]),
                alert_messages.c.lease_token == token,
                alert_messages.c.status == "sending",
            )
        )
    )
    if not rows:
        return {}
    live = await _lock(conn, context.tenant_id, {row.customer_id for row in rows})
    # Read without a lock, the lease may be running out (a slow pass) with another process
    # claiming the message at this moment: it is asserted again, and renewed, by a write that
    # waits for that claim and then finds the message no longer ours. What it returns stays
    # locked, so only this transaction decides, skips, delays or sends those messages.
    # (Customers first, then messages: the order merges lock them in.)
    renewed = await _renew(conn, context.tenant_id, [row.id for row in rows], token, now + lease)
    rows = [row for row in rows if row.id in renewed]
    if not rows:
        return {}
    facts = await _facts(conn, context, rows, live, now)
    decided = {row.id: _decide_one(context, row, facts, now) for row in rows}
    sends = [(id_, d) for id_, d in decided.items() if isinstance(d, Send)]
    if sends:
        await conn.execute(
            update(alert_messages)
            .where(
                alert_messages.c.tenant_id == bindparam("t"),
                alert_messages.c.id == bindparam("i"),
                alert_messages.c.lease_token == bindparam("token"),
            )
            .values(
                customer_id=bindparam("customer"),
                channel=bindparam("channel"),
                consent_decision_id=bindparam("decision"),
                decided_at=now,
            ),
            [
                {
                    "t": context.tenant_id,
                    "i": id_,
                    "token": token,
                    "customer": d.customer_id,
                    "channel": d.channel,
                    "decision": d.consent_decision_id,
                }
                for id_, d in sends
            ],
        )
    return decided


async def _renew(
    conn: AsyncConnection, tenant_id: str, ids: list[str], token: str, until: datetime
) -> set[str]:
    """Extend the lease of those of the messages still leased to `token`; their ids."""
    renewed = await conn.execute(
        update(alert_messages)
        .where(
            alert_messages.c.tenant_id == tenant_id,
            alert_messages.c.id.in_(ids),
            alert_messages.c.lease_token == token,
            alert_messages.c.status == "sending",
        )
        .values(lease_until=until)
        .returning(alert_messages.c.id)
    )
    return set(renewed.scalars())


async def decide(
    conn: AsyncConnection,
    context: TenantContext,
    claimed: Claimed,
    now: datetime,
    lease: timedelta = LEASE,
) -> Decision | None:
    """Decide one claimed message now (None: the lease is no longer ours)."""
    return (await decide_many(conn, context, [claimed], now, lease)).get(claimed.id)


def _options(item: str | None) -> dict[str, str]:
    return line_parts(item)[1] if item and "|" in item else {}


# --- outcomes -------------------------------------------------------------------------------


async def timeline_event(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    name: str,
    message_id: str,
    properties: dict[str, Any],
    now: datetime,
) -> None:
    statement = (
        _dialect(conn)
        .insert(events)
        .values(
            tenant_id=tenant_id,
            event_id=f"{name}-{message_id}-{int(now.timestamp() * 1000)}",
            customer_id=customer_id,
            origin_customer_id=customer_id,
            name=name,
            channel="admin",
            occurred_at=now,
            received_at=now,
            properties={"message_id": message_id, **properties},
            category=None,
            value=None,
        )
        # The events' unique key holds the time (PostgreSQL partitions them by month).
        .on_conflict_do_nothing(index_elements=["tenant_id", "event_id", "occurred_at"])
    )
    await conn.execute(statement)


async def skip(conn: AsyncConnection, claimed: Claimed, reason: Skip | str, now: datetime) -> bool:
    """Record the message as skipped, if its lease is still ours (False: it is not, and
    nothing is written)."""
    row = (
        await conn.execute(
            update(alert_messages)
            .where(*_mine(claimed))
            .values(status="skipped", reason=str(reason), lease_token=None, lease_until=None)
            .returning(*_OUTCOME)
        )
    ).first()
    if row is None:
        return False
    if row.subscription_id is not None and reason != Skip.SUBSCRIPTION_CANCELLED:
        # She is not told this time: the subscription waits for the next restock.
        await _subscription(conn, claimed.tenant_id, row.subscription_id, "waiting", None)
    await timeline_event(
        conn,
        claimed.tenant_id,
        row.customer_id,
        "message_skipped",
        row.id,
        {"kind": row.kind, "reason": str(reason), "sku": row.sku},
        now,
    )
    return True


async def delay(
    conn: AsyncConnection, claimed: Claimed, until: datetime, reason: str, now: datetime
) -> bool:
    """Put the message back until `until`, if its lease is still ours."""
    done = await conn.execute(
        update(alert_messages)
        .where(*_mine(claimed))
        .values(status="pending", due_at=until, reason=reason, lease_token=None, lease_until=None)
    )
    return bool(done.rowcount)


async def _subscription(
    conn: AsyncConnection, tenant_id: str, subscription_id: str, status: str, at: datetime | None
) -> None:
    await conn.execute(
        update(alert_subscriptions)
        .where(
            alert_subscriptions.c.tenant_id == tenant_id,
            alert_subscriptions.c.id == subscription_id,
            alert_subscriptions.c.status != "cancelled",
        )
        .values(status=status, notified_at=at)
    )


async def sent_many(
    conn: AsyncConnection,
    tenant_id: str,
    token: str,
    sends: Sequence[tuple[str, Send]],
    now: datetime,
) -> set[str]:
    """Record messages the shop took (only those still leased to `token`), their
    subscriptions as notified, and a `message_sent` on each customer's timeline; the ids
    recorded."""
    if not sends:
        return set()
    done = list(
        await conn.execute(
            update(alert_messages)
            .where(
                alert_messages.c.tenant_id == tenant_id,
                alert_messages.c.id.in_([id_ for id_, _ in sends]),
                alert_messages.c.lease_token == token,
                alert_messages.c.status == "sending",
            )
            .values(
                status="sent",
                sent_at=now,
                attempts=alert_messages.c.attempts + 1,
                reason=None,
                lease_token=None,
                lease_until=None,
            )
            .returning(*_OUTCOME)
        )
    )
    subscriptions = [row.subscription_id for row in done if row.subscription_id]
    if subscriptions:
        await conn.execute(
            update(alert_subscriptions)
            .where(
                alert_subscriptions.c.tenant_id == tenant_id,
                alert_subscriptions.c.id.in_(subscriptions),
                alert_subscriptions.c.status != "cancelled",
            )
            .values(status="notified", notified_at=now)
        )
    by_id = dict(sends)
    if done:
        stamp = int(now.timestamp() * 1000)
        await conn.execute(
            _dialect(conn)
            .insert(events)
            .on_conflict_do_nothing(index_elements=["tenant_id", "event_id", "occurred_at"]),
            [
                {
                    "tenant_id": tenant_id,
                    "event_id": f"message_sent-{row.id}-{stamp}",
                    "customer_id": row.customer_id,
                    "origin_customer_id": row.customer_id,
                    "name": "message_sent",
                    "channel": "admin",
                    "occurred_at": now,
                    "received_at": now,
                    "properties": {
                        "message_id": row.id,
                        "kind": row.kind,
                        "channel": by_id[row.id].channel,
                        "consent_decision_id": by_id[row.id].consent_decision_id,
                        "sku": row.sku,
                    },
                    "category": None,
                    "value": None,
                }
                for row in done
            ],
        )
    return {row.id for row in done}


async def failed(
    conn: AsyncConnection,
    claimed: Claimed,
    error: str,
    max_attempts: int,
    now: datetime,
    retry_base: float = RETRY_BASE_SECONDS,
) -> bool:
    """A delivery attempt failed: retry later with backoff, or dead-letter the message after
    `max_attempts` (status `failed`; `replay` sends it again). False: the lease is no longer
    ours, and nothing is written."""
    # Locked as read: the attempt counted is the one written, on a message still ours.
    mine = select(alert_messages).where(*_mine(claimed)).with_for_update()
    row = (await conn.execute(mine)).first()
    if row is None:
        return False
    attempts = row.attempts + 1
    dead = attempts >= max_attempts
    await conn.execute(
        update(alert_messages)
        .where(*_mine(claimed))
        .values(
            status="failed" if dead else "retry",
            attempts=attempts,
            reason=error[:200],
            due_at=now
            + timedelta(seconds=backoff_seconds(attempts, retry_base, RETRY_CEILING_SECONDS)),
            lease_token=None,
            lease_until=None,
        )
    )
    return True


# --- the operator's view ----------------------------------------------------------------------


async def metrics(conn: AsyncConnection, tenant_id: str) -> AlertMetrics:
    rows = await conn.execute(
        select(
            alert_messages.c.kind, alert_messages.c.status, alert_messages.c.reason, func.count()
        )
        .where(alert_messages.c.tenant_id == tenant_id)
        .group_by(alert_messages.c.kind, alert_messages.c.status, alert_messages.c.reason)
    )
    counts: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"triggered": 0, "sent": 0, "failed": 0, "pending": 0, "skipped": {}}
    )
    for kind, status, reason, count in rows:
        entry = counts[kind]
        entry["triggered"] += count
        if status == "skipped":
            entry["skipped"][reason or "unknown"] = (
                entry["skipped"].get(reason or "unknown", 0) + count
            )
        elif status in ("sent", "failed"):
            entry[status] += count
        else:
            entry["pending"] += count
    return AlertMetrics(
        kinds={kind: KindMetrics(**entry) for kind, entry in sorted(counts.items())}
    )


async def listing(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    customer_id: str | None = None,
    status: str | None = None,
    kind: str | None = None,
    limit: int = 100,
) -> list[MessageView]:
    query = select(alert_messages).where(alert_messages.c.tenant_id == tenant_id)
    if customer_id is not None:
        query = query.where(alert_messages.c.customer_id == customer_id)
    if status is not None:
        query = query.where(alert_messages.c.status == status)
    if kind is not None:
        query = query.where(alert_messages.c.kind == kind)
    rows = await conn.execute(
        query.order_by(alert_messages.c.created_at.desc(), alert_messages.c.id).limit(limit)
    )
    return [view(row) for row in rows]


async def replay(
    conn: AsyncConnection, tenant_id: str, ids: Sequence[str] | None, now: datetime
) -> int:
    """Send dead-lettered messages again (the given ones, or every one of the tenant): each is
    decided again, so one that may no longer be sent is skipped, not forced through. Its id
    — the webhook-id — stays, so a receiver that had it after all drops the copy."""
    where = [alert_messages.c.tenant_id == tenant_id, alert_messages.c.status == "failed"]
    if ids is not None:
        where.append(alert_messages.c.id.in_(list(ids)))
    done = await conn.execute(
        update(alert_messages)
        .where(*where)
        .values(status="retry", attempts=0, due_at=now, reason="replayed")
    )
    return int(done.rowcount or 0)
