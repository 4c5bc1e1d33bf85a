"""The single customer view, derived from identifiers, traits, events and annotations."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Row,
    Select,
    and_,
    case,
    func,
    null,
    or_,
    select,
    type_coerce,
    union_all,
)
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
    LifetimeValue,
    OrderSummary,
    Profile,
    Purchases,
    RfmScores,
    TimelinePage,
)
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.services import analytics, carts, notes, preferences, segment_hook
from server_stub.services.identity import live_id, person_ids
from server_stub.services.orders import own_lines
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import (
    ORDER_COMPLETED,
    customers,
    events,
    identifiers,
    order_lines,
    orders,
)

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


async def _purchased(
    conn: AsyncConnection, tenant_id: str, live: str, ids: Sequence[str], records: Any
) -> list[str]:
    """SKUs she bought for herself, newest first: the lines of her order records (every
    channel) not labelled gift (by the classifier, or as staff or she corrected it), then
    from `order_completed` events of orders without a record, unless flagged gift. A gift
    says nothing of her taste: it neither anchors her recommendations nor is left out of
    them (issue 19)."""
    found: dict[str, None] = {}
    recorded = await conn.execute(
        own_lines(tenant_id, live, order_lines.c.sku).limit(MAX_PURCHASED * 4)
    )
    for row in recorded:
        found.setdefault(row.sku)
    order = func.coalesce(events.c.properties["order_id"].as_string(), events.c.event_id)
    rows = await conn.execute(
        _newest_of_person(
            tenant_id,
            ids,
            [events.c.properties],
            [ORDER_COMPLETED, order.not_in(records)],
            MAX_PURCHASED,
        )
    )
    for row in rows:
        if (row.properties or {}).get("gift") is True:
            continue
        skus = (row.properties or {}).get("skus")
        for sku in skus if isinstance(skus, list) else ():
            if isinstance(sku, str):
                found.setdefault(sku)
    return list(found)[:MAX_PURCHASED]


def _of_person(ids: Sequence[str]) -> ColumnElement[bool]:
    return events.c.customer_id == ids[0] if len(ids) == 1 else events.c.customer_id.in_(ids)


def _newest_of_person(
    tenant_id: str,
    ids: Sequence[str],
    columns: Sequence[Any],
    where: Sequence[ColumnElement[bool]],
    limit: int,
) -> Select[Any]:
    """The newest `limit` of a person's events matching `where`, newest first. Each of her
    ids is read newest first along the (tenant, customer, time) index and cut at `limit`,
    then the cuts are merged: a heavy customer's history is never read whole for a page."""
    order = (events.c.occurred_at.desc(), events.c.seq.desc())
    wanted = [*columns, events.c.occurred_at, events.c.seq]

    def cut(customer_id: str) -> Select[Any]:
        return (
            select(*wanted)
            .where(events.c.tenant_id == tenant_id, events.c.customer_id == customer_id, *where)
            .order_by(*order)
            .limit(limit)
        )

    if len(ids) == 1:
        return cut(ids[0])
    merged = union_all(*(select(cut(i).subquery()) for i in ids)).subquery("person")
    return select(merged).order_by(merged.c.occurred_at.desc(), merged.c.seq.desc()).limit(limit)


def _order_summary(mine: Any, records: Any) -> Any:
    """How many orders and their value: one per `order_id`, so an order recorded by the cart
    (carts.mark_ordered) and sent again by the shop as its own `order_completed` counts once.
    Orders the shop also has as order records (`records`: their references) are left to
    those (`_recorded_summary`)."""
    order = func.coalesce(events.c.properties["order_id"].as_string(), events.c.event_id)
    per_order = (
        select(order.label("order"), func.max(events.c.value).label("value"))
        .where(mine, ORDER_COMPLETED, order.not_in(records))
        .group_by(order)
        .subquery()
    )
    return select(func.count(), func.coalesce(func.sum(per_order.c.value), 0.0))


def _records_of(tenant_id: str, live: str) -> Any:
    return select(orders.c.reference).where(
        orders.c.tenant_id == tenant_id, orders.c.customer_id == live
    )


async def _recorded_summary(
    conn: AsyncConnection, tenant_id: str, live: str, from_events: tuple[int, float]
) -> tuple[OrderSummary, Purchases, list[tuple[bool, bool]]]:
    """Her order records (every channel, store sales included) with the events-only orders
    added: the summary, her purchases net of returns and refunds, and (gift, False) per
    record for the buyer type (an order is a gift if most of its units are)."""
    her = (orders.c.tenant_id == tenant_id, orders.c.customer_id == live)
    by_channel = {
        row.channel: (int(row.n), row.total, row.refunded, row.last)
        for row in await conn.execute(
            select(
                orders.c.channel,
                func.count().label("n"),
                func.sum(orders.c.total).label("total"),
                func.sum(orders.c.refunded).label("refunded"),
                func.max(orders.c.placed_at).label("last"),
            )
            .where(*her)
            .group_by(orders.c.channel)
        )
    }
    units = await conn.execute(
        select(
            order_lines.c.order_id,
            order_lines.c.gift,
            func.sum(order_lines.c.quantity).label("units"),
        )
        .join(
            orders,
            (orders.c.tenant_id == order_lines.c.tenant_id)
            & (orders.c.id == order_lines.c.order_id),
        )
        .where(*her)
        .group_by(order_lines.c.order_id, order_lines.c.gift)
    )
    per_order: dict[str, list[int]] = {}
    for row in units:
        per_order.setdefault(row.order_id, [0, 0])[0 if row.gift else 1] += int(row.units)
    count, value = from_events
    total = sum((float(t) for _, t, _, _ in by_channel.values()), 0.0)
    refunded = sum((float(r) for _, _, r, _ in by_channel.values()), 0.0)
    summary = OrderSummary(
        count=count + sum(n for n, _, _, _ in by_channel.values()),
        total_value=round(value + total, 2),
    )
    purchases = Purchases(
        net_value=round(value + total - refunded, 2),
        refunded=round(refunded, 2),
        by_channel={channel: n for channel, (n, _, _, _) in sorted(by_channel.items())},
        gift_units=sum(gift for gift, _ in per_order.values()),
        self_units=sum(own for _, own in per_order.values()),
        last_order_at=max((last for _, _, _, last in by_channel.values()), default=None),
    )
    return summary, purchases, [(gift * 2 > gift + own, False) for gift, own in per_order.values()]


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
    # The person's events: a merge leaves the loser's under its own id (identity.py).
    ids = await person_ids(conn, tenant_id, live)
    mine = and_(events.c.tenant_id == tenant_id, _of_person(ids))
    per_channel = list(
        await conn.execute(
            select(
                events.c.channel,
                func.min(events.c.occurred_at).label("first"),
                func.max(events.c.occurred_at).label("last"),
            )
            .where(mine)
            .group_by(events.c.channel)
        )
    )
    last_seen = {Channel(row.channel): row.last for row in per_channel}
    first_event = min((row.first for row in per_channel), default=None)
    records = _records_of(tenant_id, live)
    from_events = (await conn.execute(_order_summary(mine, records))).one()
    summary, purchases, recorded_buyer = await _recorded_summary(
        conn, tenant_id, live, (int(from_events[0]), float(from_events[1]))
    )
    first_seen = min(customer.created_at, first_event) if first_event else customer.created_at
    last = max([*last_seen.values(), customer.created_at])
    return Profile(
        customer_id=live,
        created_at=customer.created_at,
        previous_ids=await _previous_ids(conn, tenant_id, live),
        identifiers=await _identifiers(conn, tenant_id, live),
        traits=customer.traits,
        interests=await _interests(conn, context, ids, now),
        first_seen=first_seen,
        last_seen=last_seen,
        orders=summary,
        lifecycle=rules.lifecycle(first_seen, last, now, context.lifecycle),
        buyer_type=await _buyer_type(conn, tenant_id, ids, records, recorded_buyer),
        annotations=await notes.listed(conn, tenant_id, live, reader or BACKEND_READER),
        purchased_skus=await _purchased(conn, tenant_id, live, ids, records),
        purchases=purchases,
        **await _scores(conn, tenant_id, live),
        recent_events=(await timeline(conn, tenant_id, live, RECENT_EVENTS, None, ids)).items,
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


async def _scores(conn: AsyncConnection, tenant_id: str, live: str) -> dict[str, Any]:
    """`ltv` and `rfm` from the latest lifetime value fit (services/analytics.py)."""
    row = await analytics.scores_of(conn, tenant_id, live)
    if row is None:
        return {}
    rfm = RfmScores(
        fitted_at=row.fitted_at,
        recency=row.rfm_recency,
        frequency=row.rfm_frequency,
        monetary=row.rfm_monetary,
        score=row.rfm_recency * 100 + row.rfm_frequency * 10 + row.rfm_monetary,
    )
    if row.clv is None:
        return {"rfm": rfm}
    ltv = LifetimeValue(
        fitted_at=row.fitted_at,
        p_alive=row.p_alive,
        purchases_90=row.purchases_90,
        purchases_365=row.purchases_365,
        value_per_purchase=row.value_per_purchase,
        clv=row.clv,
    )
    return {"rfm": rfm, "ltv": ltv}


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


# What her interests are read from (also services/segments.py): events naming a category, and
# the properties of orders, which say whether one was a gift: a gift says nothing of her own
# interests (issue 19). Read whole and judged in Python, as the profile reads a flag (JSON
# `true` is 1 to SQLite's JSON functions, `true` to PostgreSQL's).
INTEREST_COLUMNS = (
    events.c.name,
    events.c.category,
    type_coerce(case((ORDER_COMPLETED, events.c.properties), else_=null()), JSON).label("order"),
)
INTEREST_WHERE = (events.c.category.is_not(None), events.c.name.in_(INTEREST_EVENTS))


def interest_signal(row: Row[Any]) -> tuple[str, datetime, float] | None:
    """The (category, time, weight) an event of hers adds to her interests; None for an
    order she bought as a gift."""
    if isinstance(row.order, dict) and row.order.get("gift") is True:
        return None
    return row.category, row.occurred_at, INTEREST_EVENTS[row.name]


async def _interests(
    conn: AsyncConnection, context: TenantContext, ids: Sequence[str], now: datetime
) -> dict[str, float]:
    rows = await conn.execute(
        _newest_of_person(
            context.tenant_id, ids, INTEREST_COLUMNS, INTEREST_WHERE, INTEREST_SIGNALS
        )
    )
    signals = [signal for row in rows if (signal := interest_signal(row)) is not None]
    return rules.interests(signals, now, context.settings.profile.interest_half_life_days)


async def _buyer_type(
    conn: AsyncConnection,
    tenant_id: str,
    ids: Sequence[str],
    records: Any,
    recorded: list[tuple[bool, bool]],
) -> rules.BuyerType:
    """From her orders: the order records' gift lines (`recorded`), and the gift flags of the
    `order_completed` events of orders without a record."""
    order = func.coalesce(events.c.properties["order_id"].as_string(), events.c.event_id)
    rows = await conn.execute(
        _newest_of_person(
            tenant_id,
            ids,
            [events.c.properties],
            [ORDER_COMPLETED, order.not_in(records)],
            ORDERS_FOR_BUYER_TYPE,
        )
    )
    from_events = [
        (
            row.properties.get("gift") is True,
            row.properties.get("shipping_differs_from_billing") is True,
        )
        for row in rows
    ]
    return rules.buyer_type([*recorded[:ORDERS_FOR_BUYER_TYPE], *from_events])


BACKEND_READER = notes.BACKEND_READER


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
    conn: AsyncConnection,
    tenant_id: str,
    live: str,
    limit: int,
    cursor: str | None,
    ids: Sequence[str] | None = None,
) -> TimelinePage:
    """The customer's events across channels (every id merged into her too), newest first,
    in pages."""
    where: list[ColumnElement[bool]] = []
    if cursor is not None:
        when, seq = _parse_cursor(cursor)
        where.append(
            or_(events.c.occurred_at < when, and_(events.c.occurred_at == when, events.c.seq < seq))
        )
    if ids is None:
        ids = await person_ids(conn, tenant_id, live)
    columns = [c for c in events.c if c.name not in ("occurred_at", "seq")]
    rows = list(await conn.execute(_newest_of_person(tenant_id, ids, columns, where, limit + 1)))
    page = rows[:limit]
    more = len(rows) > limit
    return TimelinePage(
        items=[event_view(row) for row in page], next_cursor=_cursor(page[-1]) if more else None
    )
