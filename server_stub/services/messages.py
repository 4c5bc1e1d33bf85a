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

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import consent as consent_rules
from omnisdk.core.cart import Cart
from omnisdk.core.notifications import (
    CART_KINDS,
    PURPOSE_OF_CHANNEL,
    Kind,
    Skip,
    backoff_seconds,
    channel_order,
    over_cap,
    quiet_until,
    zone,
)
from omnisdk.notification_models import AlertMetrics, KindMetrics, MessageView
from server_stub.errors import Problem
from server_stub.services import identity, orders, preferences
from server_stub.services.consent import ledger
from server_stub.services.stock import read as read_stock
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import (
    alert_messages,
    alert_subscriptions,
    carts,
    customers,
    events,
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
            select(alert_messages.c.tenant_id, alert_messages.c.id)
            .where(due)
            .order_by(alert_messages.c.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    )
    claimed = []
    for row in rows:
        token = secrets.token_hex(8)
        await conn.execute(
            update(alert_messages)
            .where(alert_messages.c.tenant_id == row.tenant_id, alert_messages.c.id == row.id)
            .values(status="sending", lease_until=now + lease, lease_token=token)
        )
        claimed.append(Claimed(row.tenant_id, row.id, token))
    return claimed


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


async def preferred_channel(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str]
) -> tuple[str | None, str]:
    """The message channel she prefers (declared wins over observed; services/preferences)
    and where that comes from; None when it names no message channel."""
    channel, source = await preferences.preferred_channel(conn, tenant_id, customer_ids)
    channel = MESSAGE_CHANNEL_OF.get(channel or "", channel)
    return (channel, source) if channel in PURPOSE_OF_CHANNEL else (None, source)


async def _traits(conn: AsyncConnection, tenant_id: str, customer_id: str) -> dict[str, Any]:
    row = (
        await conn.execute(
            select(customers.c.traits).where(
                customers.c.tenant_id == tenant_id, customers.c.id == customer_id
            )
        )
    ).first()
    return dict(row.traits or {}) if row is not None else {}


async def bought_since(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str], sku: str, since: datetime
) -> bool:
    """Whether she ordered the SKU since `since`, on any channel: in the order record (online
    checkouts and store sales, services/orders.py), or as an `order_completed` event the shop
    tracked without recording the order."""
    if await orders.bought_since(conn, tenant_id, list(customer_ids), sku, since):
        return True
    rows = await conn.execute(
        select(events.c.properties).where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id.in_(list(customer_ids)),
            events.c.name == "order_completed",
            events.c.occurred_at >= since,
        )
    )
    for row in rows:
        properties = row.properties or {}
        skus = properties.get("skus")
        listed = [str(s) for s in skus] if isinstance(skus, list) else []
        lines = properties.get("lines")
        if isinstance(lines, list):
            listed += [str(line.get("sku")) for line in lines if isinstance(line, dict)]
        if sku in listed or any(s.split("|", 1)[0] == sku for s in listed):
            return True
    return False


async def _cart_quantities(conn: AsyncConnection, tenant_id: str, customer_id: str) -> Any:
    row = (
        await conn.execute(
            select(carts.c.state, carts.c.updated_at).where(
                carts.c.tenant_id == tenant_id, carts.c.customer_id == customer_id
            )
        )
    ).first()
    if row is None:
        return {}, None
    return Cart.from_dict(row.state).quantities(), row.updated_at


async def _consented_channel(
    conn: AsyncConnection, context: TenantContext, customer_id: str, order: list[str]
) -> tuple[str, str] | None:
    """The first channel of `order` whose marketing purpose she grants now, with the id of the
    decision that grants it."""
    rows = await ledger(conn, context.tenant_id, [customer_id])
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
    current = consent_rules.state(decisions, skew=context.settings.consent.skew_seconds)
    for channel in order:
        purpose = PURPOSE_OF_CHANNEL[channel]
        standing = current.get(purpose)
        if standing is None or not standing.granted:
            continue
        grants = [row for row in person if row.purpose == purpose and row.status == "granted"]
        if grants:
            return channel, str(grants[-1].id)
    return None


async def _caps_reached(
    conn: AsyncConnection, context: TenantContext, customer_id: str, message_id: str, now: datetime
) -> bool:
    settings = context.settings.notifications
    rows = await conn.execute(
        select(alert_messages.c.decided_at).where(
            alert_messages.c.tenant_id == context.tenant_id,
            alert_messages.c.customer_id == customer_id,
            alert_messages.c.status.in_(COUNTED),
            alert_messages.c.decided_at >= now - timedelta(days=7),
            alert_messages.c.id != message_id,
        )
    )
    return over_cap(
        [row.decided_at for row in rows], now, settings.max_per_day, settings.max_per_week
    )


async def decide(
    conn: AsyncConnection,
    context: TenantContext,
    claimed: Claimed,
    now: datetime,
    lease: timedelta = LEASE,
) -> Decision | None:
    """Decide a claimed message now (None: the lease is no longer ours). The customer is
    locked, so two processes deciding two of her messages count each other against the caps."""
    row = (await conn.execute(select(alert_messages).where(*_mine(claimed)))).first()
    if row is None:
        return None
    try:
        customer = await identity.lock_customer(conn, context.tenant_id, row.customer_id)
    except Problem:
        return Skipped(Skip.CUSTOMER_GONE)
    kind = Kind(row.kind)
    data = dict(row.data or {})
    since = datetime.fromisoformat(data["since"]) if data.get("since") else row.created_at
    if row.subscription_id is not None:
        sub = (
            await conn.execute(
                select(alert_subscriptions.c.status).where(
                    alert_subscriptions.c.tenant_id == context.tenant_id,
                    alert_subscriptions.c.id == row.subscription_id,
                )
            )
        ).first()
        if sub is None or sub.status == "cancelled":
            return Skipped(Skip.SUBSCRIPTION_CANCELLED)
    stock = (await read_stock(conn, context.tenant_id, [row.item]))[row.item] if row.item else None
    if stock is not None and kind is not Kind.PRICE_DROP:
        store = data.get("store") or None
        if stock.units(store) <= 0:
            return Skipped(Skip.OUT_OF_STOCK)
    if (
        kind is Kind.PRICE_DROP
        and stock is not None
        and (stock.price is None or stock.price > float(data.get("price", stock.price)))
    ):
        return Skipped(Skip.PRICE_NOT_LOWER)
    if row.sku and await bought_since(conn, context.tenant_id, [customer], row.sku, since):
        return Skipped(Skip.BOUGHT_SINCE)
    held, cart_changed = await _cart_quantities(conn, context.tenant_id, customer)
    if kind in CART_KINDS or data.get("cart"):
        if row.item and held.get(row.item, 0) <= 0:
            return Skipped(Skip.NOT_IN_CART)
        if kind is Kind.ABANDONED_CART:
            if not held:
                return Skipped(Skip.NOT_IN_CART)
            if cart_changed is not None and cart_changed > since:
                return Skipped(Skip.CART_ACTIVE)
    settings = context.settings.notifications
    preferred, source = await preferred_channel(conn, context.tenant_id, [customer])
    order = channel_order(preferred, settings.fallback_channels)
    chosen = await _consented_channel(conn, context, customer, order)
    if chosen is None:
        return Skipped(Skip.NO_CONSENT)
    traits = await _traits(conn, context.tenant_id, customer)
    tz = zone(
        traits.get("time_zone") if isinstance(traits.get("time_zone"), str) else None,
        settings.time_zone,
    )
    until = quiet_until(now, tz, settings.quiet_hours_start, settings.quiet_hours_end)
    if until is not None:
        return Delayed(until, "quiet_hours")
    if await _caps_reached(conn, context, customer, row.id, now):
        return Skipped(Skip.FREQUENCY_CAP)
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
            "units_available": stock.units(data.get("store") or None) if stock else None,
            "store": data.get("store"),
            "cart_items": sorted(held) if kind in CART_KINDS or data.get("cart") else None,
            "locale": traits.get("locale"),
            "first_name": traits.get("first_name"),
        },
    }
    await conn.execute(
        update(alert_messages)
        .where(*_mine(claimed))
        .values(
            customer_id=customer,
            channel=channel,
            consent_decision_id=decision_id,
            decided_at=now,
            lease_until=now + lease,
        )
    )
    return Send(customer, channel, decision_id, payload)


def _options(item: str | None) -> dict[str, str]:
    if not item or "|" not in item:
        return {}
    from omnisdk.core.cart import line_parts

    return line_parts(item)[1]


# --- outcomes -------------------------------------------------------------------------------


async def _timeline(
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
    row = (await conn.execute(select(alert_messages).where(*_mine(claimed)))).first()
    if row is None:
        return False
    await conn.execute(
        update(alert_messages)
        .where(*_mine(claimed))
        .values(status="skipped", reason=str(reason), lease_token=None, lease_until=None)
    )
    if row.subscription_id is not None and reason != Skip.SUBSCRIPTION_CANCELLED:
        # She is not told this time: the subscription waits for the next restock.
        await _subscription(conn, claimed.tenant_id, row.subscription_id, "waiting", None)
    await _timeline(
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


async def sent(conn: AsyncConnection, claimed: Claimed, send: Send, now: datetime) -> bool:
    row = (await conn.execute(select(alert_messages).where(*_mine(claimed)))).first()
    if row is None:
        return False
    await conn.execute(
        update(alert_messages)
        .where(*_mine(claimed))
        .values(
            status="sent",
            sent_at=now,
            attempts=alert_messages.c.attempts + 1,
            reason=None,
            lease_token=None,
            lease_until=None,
        )
    )
    if row.subscription_id is not None:
        await _subscription(conn, claimed.tenant_id, row.subscription_id, "notified", now)
    await _timeline(
        conn,
        claimed.tenant_id,
        row.customer_id,
        "message_sent",
        row.id,
        {
            "kind": row.kind,
            "channel": send.channel,
            "consent_decision_id": send.consent_decision_id,
            "sku": row.sku,
        },
        now,
    )
    return True


async def failed(
    conn: AsyncConnection,
    claimed: Claimed,
    error: str,
    max_attempts: int,
    now: datetime,
    retry_base: float = RETRY_BASE_SECONDS,
) -> bool:
    """A delivery attempt failed: retry later with backoff, or dead-letter the message after
    `max_attempts` (status `failed`; `replay` sends it again)."""
    row = (await conn.execute(select(alert_messages).where(*_mine(claimed)))).first()
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
