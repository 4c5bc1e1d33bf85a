"""The single customer view, derived from identifiers, traits, events and annotations."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Row, and_, func, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import profile as rules
from omnisdk.core.channels import Channel
from omnisdk.core.events import INTEREST_EVENTS
from omnisdk.core.identifiers import IdentifierKey, IdentifierType
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    Annotation,
    AnnotationIn,
    CartSummary,
    EventView,
    IdentifierView,
    OrderSummary,
    Profile,
    TimelinePage,
)
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.services import carts, notes, preferences, segment_hook
from server_stub.services.identity import live_id
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import customers, events, identifiers

RECENT_EVENTS = 20
INTEREST_SIGNALS = 2_000
ORDERS_FOR_BUYER_TYPE = 200
MAX_TIMELINE_PAGE = 200


async def require_customer(conn: AsyncConnection, tenant_id: str, customer_id: str) -> str:
    """The live id of `customer_id`, or a 404 problem (also for another tenant's customers)."""
    live = await live_id(conn, tenant_id, customer_id)
    if live is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no customer {customer_id!r}")
    return live


MAX_PURCHASED = 200


async def _purchased(conn: AsyncConnection, mine: Any) -> list[str]:
    rows = await conn.execute(
        select(events.c.properties)
        .where(mine, events.c.name == "order_completed")
        .order_by(events.c.occurred_at.desc())
        .limit(MAX_PURCHASED)
    )
    found: dict[str, None] = {}
    for row in rows:
        skus = (row.properties or {}).get("skus")
        for sku in skus if isinstance(skus, list) else ():
            if isinstance(sku, str):
                found.setdefault(sku)
    return list(found)[:MAX_PURCHASED]


def _order_summary(mine: Any) -> Any:
    """How many orders and their value: one per `order_id`, so an order recorded by the cart
    (carts.mark_ordered) and sent again by the shop as its own `order_completed` counts once."""
    order = func.coalesce(events.c.properties["order_id"].as_string(), events.c.event_id)
    per_order = (
        select(order.label("order"), func.max(events.c.value).label("value"))
        .where(mine, events.c.name == "order_completed")
        .group_by(order)
        .subquery()
    )
    return select(func.count(), func.coalesce(func.sum(per_order.c.value), 0.0))


def event_view(row: Row[Any]) -> EventView:
    return EventView(
        event_id=row.event_id,
        name=row.name,
        channel=Channel(row.channel),
        occurred_at=row.occurred_at,
        properties=row.properties,
    )


async def get_profile(
    conn: AsyncConnection,
    context: TenantContext,
    customer_id: str,
    reader: notes.Author | None = None,
) -> Profile:
    tenant_id = context.tenant_id
    live = await require_customer(conn, tenant_id, customer_id)
    now = utcnow()
    customer = (
        await conn.execute(
            select(customers).where(customers.c.tenant_id == tenant_id, customers.c.id == live)
        )
    ).one()
    mine = and_(events.c.tenant_id == tenant_id, events.c.customer_id == live)
    last_seen = {
        Channel(row.channel): row.last
        for row in await conn.execute(
            select(events.c.channel, func.max(events.c.occurred_at).label("last"))
            .where(mine)
            .group_by(events.c.channel)
        )
    }
    first_event = (await conn.execute(select(func.min(events.c.occurred_at)).where(mine))).scalar()
    orders = (await conn.execute(_order_summary(mine))).one()
    first_seen = min(customer.created_at, first_event) if first_event else customer.created_at
    last = max([*last_seen.values(), customer.created_at])
    return Profile(
        customer_id=live,
        created_at=customer.created_at,
        previous_ids=await _previous_ids(conn, tenant_id, live),
        identifiers=await _identifiers(conn, tenant_id, live),
        traits=customer.traits,
        interests=await _interests(conn, context, live, now),
        first_seen=first_seen,
        last_seen=last_seen,
        orders=OrderSummary(count=int(orders[0]), total_value=float(orders[1])),
        lifecycle=rules.lifecycle(first_seen, last, now, context.lifecycle),
        buyer_type=await _buyer_type(conn, tenant_id, live),
        annotations=await notes.listed(conn, tenant_id, live, reader or BACKEND_READER),
        purchased_skus=await _purchased(conn, mine),
        recent_events=(await timeline(conn, tenant_id, live, RECENT_EVENTS, None)).items,
        cart=await _cart(conn, context, live, now),
        **await _preference_and_segments(conn, tenant_id, live),
    )


async def _preference_and_segments(
    conn: AsyncConnection, tenant_id: str, live: str
) -> dict[str, Any]:
    channel, source = await preferences.preferred_channel(conn, tenant_id, [live])
    return {
        "preferred_channel": channel,
        "preferred_channel_source": source,
        "segments": await segment_hook.segments_of(conn, tenant_id, live),
    }


async def _cart(
    conn: AsyncConnection, context: TenantContext, live: str, now: datetime
) -> CartSummary | None:
    """The active cart in brief; abandoned if untouched for the tenant's threshold."""
    cart = await carts.read(conn, context.tenant_id, live)
    if not cart.lines or cart.updated_at is None:
        return None
    priced = [(line.unit_price, line.quantity) for line in cart.lines]
    value = (
        None
        if any(price is None for price, _ in priced)
        else sum(float(price or 0) * quantity for price, quantity in priced)
    )
    idle_hours = (now - cart.updated_at).total_seconds() / 3600
    return CartSummary(
        lines=len(cart.lines),
        units=sum(line.quantity for line in cart.lines),
        value=value,
        updated_at=cart.updated_at,
        abandoned=idle_hours >= context.settings.carts.abandoned_after_hours,
        skus=list(dict.fromkeys(line.sku for line in cart.lines)),
    )


async def _previous_ids(conn: AsyncConnection, tenant_id: str, live: str) -> list[str]:
    rows = await conn.execute(
        select(customers.c.id)
        .where(customers.c.tenant_id == tenant_id, customers.c.merged_into == live)
        .order_by(customers.c.created_at)
    )
    return [row.id for row in rows]


async def _identifiers(conn: AsyncConnection, tenant_id: str, live: str) -> list[IdentifierView]:
    rows = await conn.execute(
        select(identifiers)
        .where(identifiers.c.tenant_id == tenant_id, identifiers.c.customer_id == live)
        .order_by(identifiers.c.type, identifiers.c.linked_at)
    )
    views = []
    for row in rows:
        key = IdentifierKey(IdentifierType(row.type), row.value)
        shown = key.masked().split(":", 1)[1]
        views.append(
            IdentifierView(type=key.type, value=shown, shared=row.shared, linked_at=row.linked_at)
        )
    return views


async def _interests(
    conn: AsyncConnection, context: TenantContext, live: str, now: datetime
) -> dict[str, float]:
    rows = await conn.execute(
        select(events.c.name, events.c.category, events.c.occurred_at)
        .where(
            events.c.tenant_id == context.tenant_id,
            events.c.customer_id == live,
            events.c.category.is_not(None),
            events.c.name.in_(INTEREST_EVENTS),
        )
        .order_by(events.c.occurred_at.desc())
        .limit(INTEREST_SIGNALS)
    )
    signals = [(row.category, row.occurred_at, INTEREST_EVENTS[row.name]) for row in rows]
    return rules.interests(signals, now, context.settings.profile.interest_half_life_days)


async def _buyer_type(conn: AsyncConnection, tenant_id: str, live: str) -> rules.BuyerType:
    rows = await conn.execute(
        select(events.c.properties)
        .where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id == live,
            events.c.name == "order_completed",
        )
        .order_by(events.c.occurred_at.desc())
        .limit(ORDERS_FOR_BUYER_TYPE)
    )
    return rules.buyer_type(
        (
            row.properties.get("gift") is True,
            row.properties.get("shipping_differs_from_billing") is True,
        )
        for row in rows
    )


BACKEND_READER = notes.Author(name="", department=None, role=None, key_id=None)


async def annotate(
    conn: AsyncConnection, tenant_id: str, customer_id: str, note: AnnotationIn
) -> Annotation:
    """A note written by a shop backend that names its author and department."""
    author = notes.Author(note.author, note.department, None, None)
    return await notes.create(conn, tenant_id, customer_id, note, author)


def _cursor(row: Row[Any]) -> str:
    raw = f"{row.occurred_at.isoformat()}|{row.seq}".encode()
    return base64.urlsafe_b64encode(raw).decode()


MAX_SEQ = 2**63 - 1  # events.seq is a BIGINT


def _parse_cursor(cursor: str) -> tuple[datetime, int]:
    """The (time, seq) a cursor stands for. A forged one is refused here, not by the database:
    a naive time, a BIGINT overflow or a year beyond the calendar made PostgreSQL fail."""
    try:
        when, seq = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        at = datetime.fromisoformat(when)
        if at.tzinfo is None or not seq.isascii() or not seq.isdigit() or len(seq) > 19:
            raise ValueError("not a cursor of this server")
        at, number = at.astimezone(UTC), int(seq)
        if not 1 < at.year < 9999 or number > MAX_SEQ:
            raise ValueError("not a cursor of this server")
        return at, number
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise Problem(
            ProblemType.VALIDATION_ERROR, "the cursor is not one this server handed out"
        ) from exc


async def timeline(
    conn: AsyncConnection, tenant_id: str, live: str, limit: int, cursor: str | None
) -> TimelinePage:
    """The customer's events across channels, newest first, in pages."""
    query = (
        select(events)
        .where(events.c.tenant_id == tenant_id, events.c.customer_id == live)
        .order_by(events.c.occurred_at.desc(), events.c.seq.desc())
        .limit(limit + 1)
    )
    if cursor is not None:
        when, seq = _parse_cursor(cursor)
        query = query.where(
            or_(events.c.occurred_at < when, and_(events.c.occurred_at == when, events.c.seq < seq))
        )
    rows = list(await conn.execute(query))
    page = rows[:limit]
    more = len(rows) > limit
    return TimelinePage(
        items=[event_view(row) for row in page], next_cursor=_cursor(page[-1]) if more else None
    )
