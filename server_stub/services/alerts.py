"""Stock alert subscriptions and the triggers that turn into messages (issue 20).

A trigger only enqueues: each message is decided when it is due (services/messages.py), so
what counts is the state then — stock, orders, the cart, consent, quiet hours, caps. A message
is stored once per idempotency key (rule, customer, item, window; omnisdk.core.notifications),
so the same trigger seen twice (a retried request, two server processes, a restart) enqueues
one message.

A restock is paced: the first k x units waiting subscribers (first come, first served) are
enqueued at once, the next batch after the pacing interval, with the stock read again before
each batch (`pace`, run by the delivery loop); a sold-out item stops the batches.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Text, cast, delete, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import cart as cart_rules
from omnisdk.core.cart import line_key, line_parts
from omnisdk.core.notifications import Kind, batch_size, message_key, window_of
from omnisdk.core.problems import ProblemType
from omnisdk.notification_models import SubscribeRequest, Subscription
from server_stub.errors import Problem
from server_stub.ids import new_id
from server_stub.services.stock import read
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import (
    alert_messages,
    alert_restocks,
    alert_subscriptions,
    carts,
    consent_decisions,
)

WAITING, QUEUED, NOTIFIED, CANCELLED = "waiting", "queued", "notified", "cancelled"
OPEN = (WAITING, QUEUED)
MARKETING = ("marketing:email", "marketing:sms", "marketing:push")
CART_SCAN_BATCH = 500
ABANDONED_LOOKBACK = timedelta(days=7)
ENQUEUE_CHUNK = 1000  # rows per INSERT: 21 columns each, under 32,767 parameters


def _dialect(conn: AsyncConnection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def subscription_view(row: Any) -> Subscription:
    sku, options = line_parts(row.item)
    return Subscription(
        id=row.id,
        customer_id=row.customer_id,
        kind=row.kind,
        sku=sku,
        options=options,
        item=row.item,
        store=row.store_id,
        min_quantity=row.min_quantity,
        status=row.status,
        consent_decision_id=row.consent_decision_id,
        created_at=row.created_at,
    )


async def standing_marketing_decision(
    conn: AsyncConnection, tenant_id: str, customer_id: str
) -> str | None:
    """The latest person-scoped marketing grant of the customer (the decision a subscription
    relies on when made), if any."""
    row = (
        await conn.execute(
            select(consent_decisions.c.id)
            .where(
                consent_decisions.c.tenant_id == tenant_id,
                consent_decisions.c.customer_id == customer_id,
                consent_decisions.c.purpose.in_(MARKETING),
                consent_decisions.c.status == "granted",
                consent_decisions.c.scope == "person",
            )
            .order_by(consent_decisions.c.recorded_at.desc())
            .limit(1)
        )
    ).first()
    return None if row is None else str(row.id)


async def subscribe(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    body: SubscribeRequest,
    channel: str,
    now: datetime,
) -> Subscription:
    """Subscribe the (live, locked) customer; an open subscription for the same item, kind
    and store is returned as it is (subscribing twice is harmless)."""
    item = line_key(body.sku, body.options)
    same = (
        alert_subscriptions.c.tenant_id == tenant_id,
        alert_subscriptions.c.customer_id == customer_id,
        alert_subscriptions.c.kind == body.kind,
        alert_subscriptions.c.item == item,
        alert_subscriptions.c.status.in_(OPEN),
        alert_subscriptions.c.store_id.is_(None)
        if body.store is None
        else alert_subscriptions.c.store_id == body.store,
    )
    existing = (await conn.execute(select(alert_subscriptions).where(*same))).first()
    if existing is not None:
        return subscription_view(existing)
    stock = (await read(conn, tenant_id, [item]))[item]
    values = {
        "tenant_id": tenant_id,
        "id": new_id("sub", 10),
        "customer_id": customer_id,
        "origin_customer_id": customer_id,
        "kind": body.kind,
        "item": item,
        "sku": body.sku,
        "store_id": body.store,
        "min_quantity": body.min_quantity,
        "status": WAITING,
        "consent_decision_id": await standing_marketing_decision(conn, tenant_id, customer_id),
        "channel": channel,
        "price_seen": stock.price,
        "created_at": now,
        "notified_at": None,
    }
    await conn.execute(alert_subscriptions.insert().values(**values))
    return subscription_view(_Row(values))


class _Row:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


async def unsubscribe(
    conn: AsyncConnection, tenant_id: str, customer_id: str, subscription_id: str
) -> Subscription:
    where = (
        alert_subscriptions.c.tenant_id == tenant_id,
        alert_subscriptions.c.id == subscription_id,
        alert_subscriptions.c.customer_id == customer_id,
    )
    row = (await conn.execute(select(alert_subscriptions).where(*where))).first()
    if row is None:
        raise Problem(
            ProblemType.NOT_FOUND, f"the customer has no subscription {subscription_id!r}"
        )
    if row.status in OPEN:
        await conn.execute(update(alert_subscriptions).where(*where).values(status=CANCELLED))
        row = (await conn.execute(select(alert_subscriptions).where(*where))).one()
    return subscription_view(row)


async def subscriptions_of(
    conn: AsyncConnection, tenant_id: str, customer_id: str
) -> list[Subscription]:
    rows = await conn.execute(
        select(alert_subscriptions)
        .where(
            alert_subscriptions.c.tenant_id == tenant_id,
            alert_subscriptions.c.customer_id == customer_id,
        )
        .order_by(alert_subscriptions.c.created_at, alert_subscriptions.c.id)
    )
    return [subscription_view(row) for row in rows]


# --- enqueueing -----------------------------------------------------------------------------


def _message(
    tenant_id: str,
    kind: Kind,
    customer_id: str,
    item: str | None,
    window: str,
    now: datetime,
    *,
    subscription_id: str | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, Any]:
    sku = line_parts(item)[0] if item else None
    return {
        "tenant_id": tenant_id,
        "id": new_id("msg", 12),
        "idempotency_key": message_key(kind, customer_id, item or "", window),
        "kind": kind.value,
        "customer_id": customer_id,
        "origin_customer_id": customer_id,
        "item": item,
        "sku": sku,
        "subscription_id": subscription_id,
        "status": "pending",
        "reason": None,
        "channel": None,
        "consent_decision_id": None,
        "attempts": 0,
        "due_at": now,
        "lease_until": None,
        "lease_token": None,
        "created_at": now,
        "decided_at": None,
        "sent_at": None,
        "data": data or {},
    }


async def enqueue(conn: AsyncConnection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Store messages, one per idempotency key: those already stored are left as they are.
    Returns the rows stored now. Written in chunks (PostgreSQL takes at most 32,767
    parameters in a statement; a big restock's batch is thousands of rows)."""
    new: set[str] = set()
    for start in range(0, len(rows), ENQUEUE_CHUNK):
        stored = await conn.execute(
            _dialect(conn)
            .insert(alert_messages)
            .values(rows[start : start + ENQUEUE_CHUNK])
            .on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
            .returning(alert_messages.c.id)
        )
        new.update(row.id for row in stored)
    return [row for row in rows if row["id"] in new]


async def return_code(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    order_ref: str,
    token_id: str,
    now: datetime,
) -> str | None:
    """Queue an order's return code to be sent to her again, decided when due as every
    message is (her preferred channel, consent, quiet hours; the code still valid). One per
    order and minute, so a form sent twice sends it once: the new message's id, or None."""
    window = f"{order_ref}|{window_of(now, 60)}"
    data = {"order_ref": order_ref, "token_id": token_id}
    row = _message(tenant_id, Kind.RETURN_CODE, customer_id, None, window, now, data=data)
    stored = await enqueue(conn, [row])
    return str(stored[0]["id"]) if stored else None


def _window(context: TenantContext, now: datetime) -> str:
    return window_of(now, _window_seconds(context))


def _window_seconds(context: TenantContext) -> int:
    return int(context.settings.notifications.window_hours * 3600)


def _window_start(context: TenantContext, now: datetime) -> datetime:
    """When the window `now` falls in began (windows are counted from the epoch)."""
    seconds = _window_seconds(context)
    return datetime.fromtimestamp(now.timestamp() // seconds * seconds, tz=UTC)


# --- back in stock, paced -------------------------------------------------------------------


async def start_restock(
    conn: AsyncConnection, context: TenantContext, item: str, store: str, now: datetime
) -> int:
    """An item came back (online, or in `store`): start pacing its waiting subscribers and
    enqueue the first batch now. Returns how many messages were enqueued."""
    statement = _dialect(conn).insert(alert_restocks)
    await conn.execute(
        statement.values(
            tenant_id=context.tenant_id,
            item=item,
            store_key=store,
            next_at=now,
            batches=0,
            started_at=now,
        ).on_conflict_do_update(
            index_elements=["tenant_id", "item", "store_key"],
            set_={"next_at": now, "started_at": now},
        )
    )
    return await pace(conn, context, item, store, now)


async def pace(
    conn: AsyncConnection, context: TenantContext, item: str, store: str, now: datetime
) -> int:
    """One batch of a restock: read the stock again, enqueue the next k x units waiting
    subscribers (oldest first), and plan the next batch — or end the restock when the item
    is sold out or nobody waits."""
    settings = context.settings.notifications
    units = (await read(conn, context.tenant_id, [item]))[item].units(store or None)
    key = (
        alert_restocks.c.tenant_id == context.tenant_id,
        alert_restocks.c.item == item,
        alert_restocks.c.store_key == store,
    )
    size = batch_size(units, settings.pacing_factor)
    started = (await conn.execute(select(alert_restocks.c.started_at).where(*key))).scalar()
    # Told (or skipped) since this restock began, or in this window (whose message key she
    # has used): she waits for the next restock, behind no one (see migration 0027).
    since = min(started or now, _window_start(context, now))
    messaged = (
        select(alert_messages.c.id)
        .where(
            alert_messages.c.tenant_id == alert_subscriptions.c.tenant_id,
            alert_messages.c.subscription_id == alert_subscriptions.c.id,
            alert_messages.c.created_at >= since,
        )
        .exists()
    )
    waiting = (
        select(alert_subscriptions)
        .where(
            ~messaged,
            alert_subscriptions.c.tenant_id == context.tenant_id,
            alert_subscriptions.c.item == item,
            alert_subscriptions.c.kind == Kind.BACK_IN_STOCK.value,
            alert_subscriptions.c.status == WAITING,
            alert_subscriptions.c.min_quantity <= max(units, 0),
            alert_subscriptions.c.store_id.is_(None)
            if not store
            else alert_subscriptions.c.store_id == store,
        )
        .order_by(alert_subscriptions.c.created_at, alert_subscriptions.c.id)
        .limit(size + 1)
    )
    chosen = list(await conn.execute(waiting)) if size else []
    batch, more = chosen[:size], len(chosen) > size
    # The batch was read without a lock: one of them may be unsubscribing at this moment. Each
    # is locked and found waiting still before her message is stored, and queued only if it
    # was stored now (a subscription skipped earlier in this window already has its message,
    # and waits for the next window rather than staying queued for nothing).
    still = await _lock_waiting(conn, context.tenant_id, [sub.id for sub in batch])
    window = f"restock-{store}-{_window(context, now)}"
    rows = [
        _message(
            context.tenant_id,
            Kind.BACK_IN_STOCK,
            sub.customer_id,
            item,
            f"{sub.id}-{window}",
            now,
            subscription_id=sub.id,
            data={"since": sub.created_at.isoformat(), "store": store or None},
        )
        for sub in still
    ]
    stored = await enqueue(conn, rows)
    await _queue(conn, context.tenant_id, [row["subscription_id"] for row in stored])
    if more and units > 0:
        await conn.execute(
            update(alert_restocks)
            .where(*key)
            .values(
                next_at=now + timedelta(seconds=settings.pacing_interval_seconds),
                batches=alert_restocks.c.batches + 1,
            )
        )
    else:
        await conn.execute(delete(alert_restocks).where(*key))
    return len(stored)


async def _lock_waiting(
    conn: AsyncConnection, tenant_id: str, subscription_ids: list[str]
) -> list[Any]:
    """Those of the subscriptions still waiting, locked (in id order, FOR UPDATE: one being
    cancelled is waited for and then left out; SQLite has one writer), oldest first."""
    if not subscription_ids:
        return []
    locked = await conn.execute(
        select(alert_subscriptions)
        .where(
            alert_subscriptions.c.tenant_id == tenant_id,
            alert_subscriptions.c.id.in_(subscription_ids),
            alert_subscriptions.c.status == WAITING,
        )
        .order_by(alert_subscriptions.c.id)
        .with_for_update()
    )
    return sorted(locked, key=lambda sub: (sub.created_at, sub.id))


async def _queue(conn: AsyncConnection, tenant_id: str, subscription_ids: list[str]) -> None:
    """Mark subscriptions (locked by `_lock_waiting`) as queued, only where still waiting."""
    if subscription_ids:
        await conn.execute(
            update(alert_subscriptions)
            .where(
                alert_subscriptions.c.tenant_id == tenant_id,
                alert_subscriptions.c.id.in_(subscription_ids),
                alert_subscriptions.c.status == WAITING,
            )
            .values(status=QUEUED)
        )


async def postpone_restock(conn: AsyncConnection, due: Any, until: datetime) -> None:
    """Leave a due restock (a row of `due_restocks`) until `until`."""
    await conn.execute(
        update(alert_restocks)
        .where(
            alert_restocks.c.tenant_id == due.tenant_id,
            alert_restocks.c.item == due.item,
            alert_restocks.c.store_key == due.store_key,
        )
        .values(next_at=until)
    )


async def due_restocks(conn: AsyncConnection, now: datetime, limit: int = 20) -> list[Any]:
    """Restocks whose next batch is due, locked so that one process paces each (others skip
    them: FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite has one writer)."""
    query = (
        select(alert_restocks.c.tenant_id, alert_restocks.c.item, alert_restocks.c.store_key)
        .where(alert_restocks.c.next_at <= now)
        .order_by(alert_restocks.c.next_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(await conn.execute(query))


# --- carts: low stock, price drop, abandoned --------------------------------------------------


def _like_item(item: str) -> Any:
    escaped = item.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    # A cheap filter in the database (the line key appears quoted in the stored state); the
    # cart itself then says whether the line still holds units.
    return cast(carts.c.state, Text()).like(f'%"{escaped}"%', escape="\\")


async def carts_holding(
    conn: AsyncConnection, tenant_id: str, item: str
) -> list[tuple[str, datetime]]:
    """Customers whose cart holds the item now, with the cart's last change."""
    found: list[tuple[str, datetime]] = []
    after = ""
    while True:
        rows = list(
            await conn.execute(
                select(carts.c.customer_id, carts.c.state, carts.c.updated_at)
                .where(
                    carts.c.tenant_id == tenant_id, carts.c.customer_id > after, _like_item(item)
                )
                .order_by(carts.c.customer_id)
                .limit(CART_SCAN_BATCH)
            )
        )
        for row in rows:
            if cart_rules.Cart.from_dict(row.state).quantity(item) > 0:
                found.append((row.customer_id, row.updated_at))
        if len(rows) < CART_SCAN_BATCH:
            return found
        after = rows[-1].customer_id


async def low_stock(conn: AsyncConnection, context: TenantContext, item: str, now: datetime) -> int:
    """The item fell below its low-stock threshold: tell those who hold it in their cart."""
    window = _window(context, now)
    rows = [
        _message(
            context.tenant_id,
            Kind.LOW_STOCK,
            customer,
            item,
            window,
            now,
            data={"since": updated.isoformat()},
        )
        for customer, updated in await carts_holding(conn, context.tenant_id, item)
    ]
    return len(await enqueue(conn, rows))


async def price_drop(
    conn: AsyncConnection, context: TenantContext, item: str, price: float, now: datetime
) -> int:
    """The item's price fell: tell its price-drop subscribers who saw a higher price, and
    those who hold it in their cart."""
    window = f"{_window(context, now)}-{price:.2f}"
    subscribers = await conn.execute(
        select(alert_subscriptions).where(
            alert_subscriptions.c.tenant_id == context.tenant_id,
            alert_subscriptions.c.item == item,
            alert_subscriptions.c.kind == Kind.PRICE_DROP.value,
            alert_subscriptions.c.status.in_(OPEN),
            or_(
                alert_subscriptions.c.price_seen.is_(None), alert_subscriptions.c.price_seen > price
            ),
        )
    )
    rows: dict[str, dict[str, Any]] = {}
    for sub in subscribers:
        rows[sub.customer_id] = _message(
            context.tenant_id,
            Kind.PRICE_DROP,
            sub.customer_id,
            item,
            window,
            now,
            subscription_id=sub.id,
            data={"since": sub.created_at.isoformat(), "price": price},
        )
    for customer, updated in await carts_holding(conn, context.tenant_id, item):
        rows.setdefault(
            customer,
            _message(
                context.tenant_id,
                Kind.PRICE_DROP,
                customer,
                item,
                window,
                now,
                data={"since": updated.isoformat(), "price": price, "cart": True},
            ),
        )
    return len(await enqueue(conn, list(rows.values())))


IdleCursor = tuple[datetime, str]  # (updated_at, customer_id) of the last cart a scan read


async def abandoned_carts(
    conn: AsyncConnection, context: TenantContext, now: datetime, after: IdleCursor | None = None
) -> tuple[int, IdleCursor | None]:
    """Carts idle for the tenant's `carts.abandoned_after_hours` with something in them: one
    message per idle stretch (its window is the cart's last change). A scan reads at most
    CART_SCAN_BATCH carts along the (tenant, updated_at, customer) index, going on from
    `after` (where the previous scan stopped), so a tenant with more idle carts than a batch
    has them all reached in turn, never the oldest batch again and again. Returns how many
    messages were queued and where the next scan goes on from. A cart changed since the
    cursor passed it moves past it, and is scanned again when it goes idle again."""
    if not context.settings.notifications.abandoned_cart:
        return 0, after
    cutoff = now - timedelta(hours=context.settings.carts.abandoned_after_hours)
    floor = cutoff - ABANDONED_LOOKBACK
    where = [
        carts.c.tenant_id == context.tenant_id,
        carts.c.updated_at <= cutoff,
        carts.c.updated_at > floor,
    ]
    if after is not None and after[0] > floor:
        where.append(tuple_(carts.c.updated_at, carts.c.customer_id) > tuple_(*after))
    idle = list(
        await conn.execute(
            select(carts.c.customer_id, carts.c.state, carts.c.updated_at)
            .where(*where)
            .order_by(carts.c.updated_at, carts.c.customer_id)
            .limit(CART_SCAN_BATCH)
        )
    )
    rows = []
    for row in idle:
        held = cart_rules.Cart.from_dict(row.state).quantities()
        if held:
            stamp = f"idle-{row.updated_at.timestamp():.6f}"
            rows.append(
                _message(
                    context.tenant_id,
                    Kind.ABANDONED_CART,
                    row.customer_id,
                    None,
                    stamp,
                    now,
                    data={"since": row.updated_at.isoformat(), "items": sorted(held)},
                )
            )
    last = (idle[-1].updated_at, idle[-1].customer_id) if idle else after
    return len(await enqueue(conn, rows)), last


# --- identity merges and splits, export and erasure ---------------------------------------------


async def merge(conn: AsyncConnection, tenant_id: str, survivor_id: str, loser_id: str) -> None:
    """The loser's subscriptions and messages follow it to the survivor (each keeps its
    origin, for a split)."""
    for table in (alert_subscriptions, alert_messages):
        await conn.execute(
            update(table)
            .where(table.c.tenant_id == tenant_id, table.c.customer_id == loser_id)
            .values(customer_id=survivor_id)
        )


async def split(
    conn: AsyncConnection, tenant_id: str, survivor_id: str, loser_id: str, origins: list[str]
) -> None:
    for table in (alert_subscriptions, alert_messages):
        await conn.execute(
            update(table)
            .where(
                table.c.tenant_id == tenant_id,
                table.c.customer_id == survivor_id,
                table.c.origin_customer_id.in_(origins),
            )
            .values(customer_id=loser_id)
        )


async def export(conn: AsyncConnection, tenant_id: str, ids: Iterable[str]) -> dict[str, Any]:
    """Her subscriptions and messages, for a data export."""
    wanted = list(ids)
    subs = await conn.execute(
        select(alert_subscriptions).where(
            alert_subscriptions.c.tenant_id == tenant_id,
            alert_subscriptions.c.customer_id.in_(wanted),
        )
    )
    messages = await conn.execute(
        select(alert_messages).where(
            alert_messages.c.tenant_id == tenant_id, alert_messages.c.customer_id.in_(wanted)
        )
    )
    plain = ("lease_token", "lease_until", "tenant_id", "idempotency_key")
    return {
        "subscriptions": [subscription_view(row).model_dump(mode="json") for row in subs],
        "messages": [
            {k: _jsonable(v) for k, v in row._mapping.items() if k not in plain} for row in messages
        ],
    }


def _jsonable(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


async def erase(conn: AsyncConnection, tenant_id: str, ids: Iterable[str]) -> int:
    """Remove her subscriptions and messages everywhere; how many rows went."""
    wanted = list(ids)
    removed = 0
    for table in (alert_subscriptions, alert_messages):
        done = await conn.execute(
            delete(table).where(
                table.c.tenant_id == tenant_id,
                or_(table.c.customer_id.in_(wanted), table.c.origin_customer_id.in_(wanted)),
            )
        )
        removed += done.rowcount or 0
    return removed
