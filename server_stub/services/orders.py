"""Orders on every channel: the order record, its lines, and what was given back.

An order is recorded once per shop reference (unique per tenant), from the cart's checkout
(`record_checkout`, called by carts.mark_ordered), from `POST /v1/orders` (an online order the
shop records, or a sale at a till), and only ever grows what was given back: a return taken at
a till (returns.redeem calls `apply_redemption`, linking by the return order's reference) or a
refund the shop records (`refund`), each applied once by its id. The net value is
`total - refunded`.

Money is exact: `Decimal` with two decimals in Python, NUMERIC(14, 2) on PostgreSQL and whole
cents on SQLite (storage.tables.Money). On the wire and in `OrderFact` it is a float, as every
other amount of the API.

A store sale is linked to a customer only by what identifies her without personal data at the
till (a signed customer code, a loyalty id, a keyed hash of her e-mail or phone, the address
she gave for an e-receipt) and only if her consent to `analytics` allowed it at the time of
the sale (DESIGN: consent; docs/orders.md): otherwise the sale is kept unlinked. Every link
records its method and confidence.

Orders follow their customer through merges and splits (identity.py moves `customer_id`, and
gives back by `origin_customer_id`); at erasure they are accounting records, kept with nothing
that links them to the person (privacy.py).

Read helpers for other features: `orders_of`, `stream_orders` (bounded memory, keyset
batches) and `bought_since`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Integer,
    Row,
    Select,
    String,
    bindparam,
    exists,
    func,
    insert,
    select,
    tuple_,
    type_coerce,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import NullType

from omnisdk.core import gifts
from omnisdk.core.channels import Channel
from omnisdk.core.identifiers import IdentifierType, InvalidIdentifier
from omnisdk.core.orders import LINK_CONFIDENCE, LinkMethod
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    OrderLineView,
    OrderView,
    RecordedOrder,
    RecordOrderRequest,
    RefundRequest,
)
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import (
    consent,
    customer_codes,
    events,
    identity,
    named_locks,
    segment_hook,
)
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.prepared import Prepared
from server_stub.storage.tables import CENT, UtcDateTime, order_lines, order_refunds, orders

# A sale may be dated a little ahead of the server's clock (a till's clock runs fast), no more.
CLOCK_SKEW = timedelta(minutes=5)
# Identifiers a till may name the buyer by, with the link method each stands for.
_BY_IDENTIFIER: dict[str, tuple[IdentifierType, LinkMethod]] = {
    "loyalty_id": (IdentifierType.LOYALTY_CARD, "loyalty_id"),
    "email": (IdentifierType.EMAIL, "email_hash"),
    "phone": (IdentifierType.PHONE, "phone_hash"),
    "e_receipt_email": (IdentifierType.EMAIL, "e_receipt"),
}

# ISO 4217's code for "no currency": a checkout whose lines name several currencies, or none.
NO_CURRENCY = "XXX"


MAX_TOTAL = Decimal("999999999999.99")  # what the money columns hold (NUMERIC(14, 2))


def money(value: float | Decimal | int | str) -> Decimal:
    """An amount as stored: a Decimal with two decimals (from a float by its shortest repr)."""
    return Decimal(str(value)).quantize(CENT)


@dataclass(frozen=True)
class SaleLine:
    """A line about to be stored."""

    sku: str
    quantity: int
    unit_price: Decimal
    gift: bool = False
    gift_confidence: float | None = None
    category: str | None = None
    size: str | None = None
    gender: str | None = None
    age_band: str | None = None


@dataclass(frozen=True)
class NewOrder:
    """An order about to be stored (the service's input, whatever the source)."""

    reference: str
    customer_id: str | None
    channel: str
    store_id: str | None
    currency: str
    total: Decimal
    placed_at: datetime
    link_method: LinkMethod
    lines: tuple[SaleLine, ...]

    @property
    def link_confidence(self) -> float:
        return LINK_CONFIDENCE[self.link_method] if self.customer_id is not None else 0.0


@dataclass(frozen=True)
class OrderFact:
    """One order, as analytics needs it (attribution, ROPO, lifetime value)."""

    order_id: str
    customer_id: str | None
    channel: str
    store_id: str | None
    placed_at: datetime
    net_value: float
    currency: str
    link_method: str


# --- writing --------------------------------------------------------------------------------


def _insert_new(conn: AsyncConnection) -> Any:
    """INSERT that leaves an existing reference alone (a retry, or a concurrent twin: on
    PostgreSQL it waits for the other transaction, then does nothing)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(orders).on_conflict_do_nothing(index_elements=["tenant_id", "reference"])


async def store(
    conn: AsyncConnection, tenant_id: str, order: NewOrder, source: str = "order"
) -> tuple[OrderView, bool]:
    """Store the order once per reference; (the stored order, whether this call created it).
    A reference recorded before with other content is refused (409), so a retry is harmless
    and a reused reference is not silently taken for another sale. The buyer's
    `order_completed` event is recorded with it, once (events.record_order; `source` says
    where the order came from: "order" or "cart")."""
    if order.total > MAX_TOTAL:  # each price is bounded; their sum must fit the money column
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"the order's total {order.total} is more than an order may hold ({MAX_TOTAL})",
        )
    order_id = new_id("ord", 10)
    now = utcnow()
    result = await conn.execute(
        _insert_new(conn).values(
            tenant_id=tenant_id,
            id=order_id,
            reference=order.reference,
            customer_id=order.customer_id,
            origin_customer_id=order.customer_id,
            channel=order.channel,
            store_id=order.store_id,
            currency=order.currency,
            total=order.total,
            refunded=Decimal(0),
            placed_at=order.placed_at,
            link_method=order.link_method if order.customer_id else "none",
            link_confidence=order.link_confidence,
            created_at=now,
        )
    )
    if result.rowcount == 1:
        await conn.execute(
            insert(order_lines),
            [
                {
                    "tenant_id": tenant_id,
                    "order_id": order_id,
                    "line_no": number,
                    "sku": line.sku,
                    "quantity": line.quantity,
                    "unit_price": line.unit_price,
                    "gift": line.gift,
                    "gift_confidence": line.gift_confidence,
                    "returned_quantity": 0,
                    "category": line.category,
                    "size": line.size,
                    "gender": line.gender,
                    "age_band": line.age_band,
                }
                for number, line in enumerate(order.lines, start=1)
            ],
        )
        if order.customer_id:  # her orders are part of her profile (segments, issue 19)
            await _record_event(conn, tenant_id, order, source)
            await segment_hook.profile_changed(conn, tenant_id, [order.customer_id])
        return _new_view(order_id, order, now), True
    stored = await by_reference(conn, tenant_id, order.reference)
    assert stored is not None
    if not _same(stored, order):
        raise Problem(
            ProblemType.CONFLICT,
            f"order {order.reference!r} was recorded before with other content; an order "
            "reference names one order: give this one its own reference",
        )
    return stored, False


async def _record_event(
    conn: AsyncConnection, tenant_id: str, order: NewOrder, source: str
) -> None:
    """Her `order_completed` event for the order: her timeline and the recommendations read
    events, so a store sale shows there as an online order does. Its gift lines are marked
    (`gift_skus`): the recommendations count only what she bought for herself."""
    assert order.customer_id is not None
    lines = [
        {
            "sku": line.sku,
            "quantity": line.quantity,
            "unit_price": float(line.unit_price),
            "currency": order.currency,
            "gift": line.gift,
        }
        for line in order.lines
    ]
    await events.record_order(
        conn,
        tenant_id,
        order.customer_id,
        Channel(order.channel),
        order.reference,
        lines,
        order.placed_at,
        source,
    )


def _new_view(order_id: str, order: NewOrder, now: datetime) -> OrderView:
    """The view of an order just stored, as `by_reference` would read it back."""
    return OrderView(
        order_id=order_id,
        reference=order.reference,
        customer_id=order.customer_id,
        channel=order.channel,  # type: ignore[arg-type]
        store_id=order.store_id,
        currency=order.currency,
        total=float(order.total),
        refunded=0.0,
        net=float(order.total),
        placed_at=order.placed_at,
        link_method=order.link_method if order.customer_id else "none",
        link_confidence=order.link_confidence,
        lines=[
            OrderLineView(
                line_no=number,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=float(line.unit_price),
                gift=line.gift,
                gift_confidence=line.gift_confidence,
                returned_quantity=0,
            )
            for number, line in enumerate(order.lines, start=1)
        ],
        created_at=now,
    )


def _same(stored: OrderView, order: NewOrder) -> bool:
    """Whether `order` is the stored order sent again (its buyer may since have merged)."""
    lines = [(line.sku, line.quantity, money(line.unit_price)) for line in stored.lines]
    return (
        stored.channel == order.channel
        and stored.store_id == order.store_id
        and stored.currency == order.currency
        and money(stored.total) == order.total
        and lines == [(line.sku, line.quantity, line.unit_price) for line in order.lines]
    )


async def record(
    conn: AsyncConnection, context: TenantContext, request: RecordOrderRequest, channel: Channel
) -> RecordedOrder:
    """Record an order the shop sends (`POST /v1/orders`): an online order, or a sale at a
    till linked to the buyer by what the till knew of her (see the module docstring)."""
    sold_on = request.channel or (channel.value if channel is not Channel.ADMIN else None)
    if sold_on is None:
        raise Problem(ProblemType.VALIDATION_ERROR, "say on which channel it was sold: channel")
    if channel is Channel.POS and sold_on != Channel.POS.value:
        # A till sells in a store: what it records is a store sale, whatever the body says.
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"a till's key records sales at a till: channel {sold_on!r} is not 'pos' "
            "(send 'pos' or leave channel out)",
        )
    if sold_on == "pos" and request.store_id is None:
        raise Problem(ProblemType.VALIDATION_ERROR, "a sale at a till names its store: store_id")
    now = utcnow()
    placed_at = request.placed_at or now
    if placed_at > now + CLOCK_SKEW:
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"placed_at {placed_at.isoformat()} is in the future: check the till's clock",
        )
    named = [
        field
        for field in ("customer_id", "customer_code", *_BY_IDENTIFIER)
        if getattr(request, field) is not None
    ]
    if len(named) > 1:
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"name the buyer by one of {', '.join(named)}, not several",
        )
    lines = tuple(
        SaleLine(
            sku=line.sku,
            quantity=line.quantity,
            unit_price=money(line.unit_price),
            gift=bool(line.gift),
            gift_confidence=line.gift_confidence,
            category=line.category,
            size=line.size,
            gender=line.gender,
            age_band=line.age_band,
        )
        for line in request.lines
    )
    total = (
        money(request.total)
        if request.total is not None
        else sum((line.unit_price * line.quantity for line in lines), Decimal(0))
    )
    buyer, method, refused = await _buyer(conn, context, request, named, placed_at)
    if buyer is not None and _needs_analytics_consent(method, sold_on):
        allowed = await consent.analytics_allowed(conn, context, [(buyer, placed_at)])
        if not allowed[buyer, placed_at]:
            buyer, refused = None, "consent"
    lines = await _labelled(conn, context.tenant_id, buyer, request, lines)
    order = NewOrder(
        reference=request.reference,
        customer_id=buyer,
        channel=sold_on,
        store_id=request.store_id,
        currency=request.currency,
        total=total,
        placed_at=placed_at,
        link_method=method,
        lines=lines,
    )
    stored, created = await store(conn, context.tenant_id, order)
    return RecordedOrder(order=stored, created=created, link_refused=refused if created else None)


def _needs_analytics_consent(method: LinkMethod, sold_on: str) -> bool:
    """Whether linking the sale to her needs her `analytics` consent (docs/orders.md,
    "Consent"): only an order she placed online, signed in to the shop's own account, is
    hers by contract; one found by a code, card, address or number, or sold at a till, is
    analysis of her behaviour, whatever channel the body names."""
    return method != "checkout" or sold_on == Channel.POS.value


async def _labelled(
    conn: AsyncConnection,
    tenant_id: str,
    buyer: str | None,
    request: RecordOrderRequest,
    lines: tuple[SaleLine, ...],
) -> tuple[SaleLine, ...]:
    """Each line labelled gift or for herself with a confidence: the shop's own label when
    it gave one with its confidence; else omnisdk.core.gifts.classify over what the line and
    the order say (the shop's flag, shipping, the product's attributes) against her earlier
    purchases. A correction by staff or by her (services/gifts.py) later wins for good."""
    unlabelled = [(n, line) for n, line in enumerate(request.lines) if line.gift_confidence is None]
    if not unlabelled:
        return lines
    history = await _gift_history(conn, tenant_id, buyer) if buyer else gifts.History()
    labelled = list(lines)
    for n, line in unlabelled:
        label = gifts.classify(
            gifts.Line(
                category=line.category,
                size=line.size,
                gender=line.gender,
                age_band=line.age_band,
                explicit_gift=line.gift,
                ship_to_other_name=request.ship_to_other_name,
                ship_to_other_address=request.ship_to_other_address,
            ),
            history,
        )
        labelled[n] = replace(lines[n], gift=label.gift, gift_confidence=label.confidence)
    return tuple(labelled)


def own_lines(tenant_id: str, customer_id: str, *columns: Any) -> Select[Any]:
    """Her order lines bought for herself (not labelled gift), newest order first: what says
    something of her own taste (the gift classifier's history, her purchased SKUs)."""
    return (
        select(*columns)
        .join(
            orders,
            (orders.c.tenant_id == order_lines.c.tenant_id)
            & (orders.c.id == order_lines.c.order_id),
        )
        .where(
            orders.c.tenant_id == tenant_id,
            orders.c.customer_id == customer_id,
            order_lines.c.gift.is_(False),
        )
        .order_by(orders.c.placed_at.desc(), order_lines.c.line_no)
    )


HISTORY_LINES = 500  # her latest lines the classifier compares a new line with


async def _gift_history(conn: AsyncConnection, tenant_id: str, buyer: str) -> gifts.History:
    """Her own purchases (lines labelled for herself) for the classifier, newest first."""
    rows = list(
        await conn.execute(
            own_lines(
                tenant_id,
                buyer,
                order_lines.c.order_id,
                order_lines.c.category,
                order_lines.c.size,
                order_lines.c.gender,
                order_lines.c.age_band,
            ).limit(HISTORY_LINES)
        )
    )
    return gifts.History(
        orders=len({row.order_id for row in rows}),
        sizes=Counter((r.category, r.size) for r in rows if r.category and r.size),
        genders=Counter(row.gender for row in rows if row.gender),
        age_bands=Counter(row.age_band for row in rows if row.age_band),
        categories=Counter(row.category for row in rows if row.category),
    )


async def _buyer(
    conn: AsyncConnection,
    context: TenantContext,
    request: RecordOrderRequest,
    named: list[str],
    placed_at: datetime,
) -> tuple[str | None, LinkMethod, str | None]:
    """(the live customer, how she was identified, why not if she was named but not found)."""
    if not named:
        return None, "none", None
    tenant_id = context.tenant_id
    field = named[0]
    if field == "customer_id":
        assert request.customer_id is not None
        return await identity.lock_customer(conn, tenant_id, request.customer_id), "checkout", None
    if field == "customer_code":
        assert request.customer_code is not None
        owner, status = await customer_codes.owner(
            conn, tenant_id, request.customer_code, placed_at
        )
        if owner is None:
            reason = "unknown" if status.value == "valid" else f"customer_code_{status.value}"
            return None, "customer_code", reason
        return await _locked_live(conn, tenant_id, owner), "customer_code", None
    type, method = _BY_IDENTIFIER[field]
    try:
        key = context.key(type, getattr(request, field))
    except InvalidIdentifier as error:
        raise identity.invalid_identifier(error) from error
    owner = await identity.resolve(conn, context, key)
    if owner is None:
        return None, method, "unknown"
    return await _locked_live(conn, tenant_id, owner), method, None


async def _locked_live(conn: AsyncConnection, tenant_id: str, customer_id: str) -> str | None:
    """The customer's live id, locked for the write (None if she was erased meanwhile)."""
    try:
        return await identity.lock_customer(conn, tenant_id, customer_id)
    except Problem:
        return None


async def record_checkout(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    channel: Channel,
    reference: str,
    cart_lines: Sequence[dict[str, Any]],
    now: datetime,
) -> OrderView:
    """The order a cart became (carts.mark_ordered, in its transaction): linked by the
    checkout itself. A cart line without a price snapshot counts at 0."""
    lines = tuple(
        SaleLine(
            sku=str(line["sku"]),
            quantity=int(line["quantity"]),
            unit_price=money(line.get("unit_price") or 0),
        )
        for line in cart_lines
        if int(line["quantity"]) > 0
    )
    currencies = {str(line["currency"]) for line in cart_lines if line.get("currency")}
    order = NewOrder(
        reference=reference,
        customer_id=customer_id,
        channel=channel.value if channel.value in ("web", "app", "pos") else "web",
        store_id=None,
        currency=currencies.pop() if len(currencies) == 1 else NO_CURRENCY,
        total=sum((line.unit_price * line.quantity for line in lines), Decimal(0)),
        placed_at=now,
        link_method="checkout",
        lines=lines,
    )
    stored, _ = await store(conn, tenant_id, order, "cart")
    return stored


async def refund(
    conn: AsyncConnection, tenant_id: str, reference: str, request: RefundRequest
) -> OrderView:
    """Give back money on an order, once per refund id: lines taken back (each unit at most
    once) and/or an amount, never more than the order's total."""
    if not request.lines and request.amount is None:
        raise Problem(ProblemType.VALIDATION_ERROR, "name the lines taken back, an amount, or both")
    order = await _order_row(conn, tenant_id, reference, lock=True)
    lines = {line.line_no: line.model_dump() for line in request.lines}
    if len(lines) != len(request.lines):
        raise Problem(ProblemType.VALIDATION_ERROR, "name each line once")
    known = {row.line_no: row for row in await _line_rows(conn, tenant_id, [order.id])}
    for line_no in lines:
        if line_no not in known:
            raise Problem(ProblemType.VALIDATION_ERROR, f"order {reference} has no line {line_no}")
    amount = (
        money(request.amount)
        if request.amount is not None
        else _lines_worth(
            order, known.values(), [(known[n], line["quantity"]) for n, line in lines.items()]
        )
    )
    await _give_back(
        conn, tenant_id, order, request.refund_id, "refund", amount, list(lines.values())
    )
    view = await by_reference(conn, tenant_id, reference)
    assert view is not None
    return view


def _lines_worth(order: Row[Any], rows: Iterable[Any], taken: Iterable[tuple[Any, int]]) -> Decimal:
    """What units taken back are worth: their prices, scaled down as the order's total was
    below its lines' sum (a discount on the whole order: two at 50 sold for 80 give back 40
    each, where 50 each refused the second unit), and never more than is left to refund."""
    worth = sum((row.unit_price * quantity for row, quantity in taken), Decimal(0))
    listed = sum((row.unit_price * row.quantity for row in rows), Decimal(0))
    total: Decimal = order.total
    if 0 < total < listed:
        worth = worth * total / listed
    left: Decimal = total - order.refunded
    return min(money(worth), left)


async def apply_redemption(
    conn: AsyncConnection,
    tenant_id: str,
    reference: str,
    redemption_id: str,
    returned: Iterable[tuple[str, int]],
    value: float | None,
) -> bool:
    """A return taken at a till reduces the order of the same reference, once per redemption
    (returns.redeem, in its transaction): the units of each SKU go to the order's lines of
    that SKU in line order; the amount is the redemption's value, or the lines' prices.
    False if the shop recorded no order of that reference."""
    order = await _order_row(conn, tenant_id, reference, lock=True, missing_ok=True)
    if order is None:
        return False
    rows = await _line_rows(conn, tenant_id, [order.id])
    taken: list[dict[str, int]] = []
    for sku, quantity in returned:
        left = quantity
        for row in rows:
            if row.sku != sku or left == 0:
                continue
            already = sum(t["quantity"] for t in taken if t["line_no"] == row.line_no)
            room = row.quantity - row.returned_quantity - already
            step = min(room, left)
            if step > 0:
                taken.append({"line_no": row.line_no, "quantity": step})
                left -= step
    by_line = {row.line_no: row for row in rows}
    amount = _lines_worth(order, rows, [(by_line[t["line_no"]], t["quantity"]) for t in taken])
    if value is not None:
        amount = min(money(value), order.total - order.refunded)
    await _give_back(conn, tenant_id, order, redemption_id, "till_return", amount, taken)
    return True


async def _give_back(
    conn: AsyncConnection,
    tenant_id: str,
    order: Row[Any],
    refund_id: str,
    source: str,
    amount: Decimal,
    lines: list[dict[str, int]],
) -> None:
    """Record the refund (once per id) and raise the order's refunded amount and lines'
    returned units, each bounded by what was bought. The caller holds the order's row lock;
    a refusal leaves nothing changed (the request's transaction rolls back)."""
    await named_locks.take(conn, tenant_id, "refund", refund_id)  # one id, maybe two orders
    earlier = (
        await conn.execute(
            select(order_refunds.c.order_id, order_refunds.c.amount, order_refunds.c.lines).where(
                order_refunds.c.tenant_id == tenant_id, order_refunds.c.refund_id == refund_id
            )
        )
    ).first()
    if earlier is not None:
        if earlier.order_id != order.id or (
            source == "refund" and (earlier.amount != amount or earlier.lines != lines)
        ):
            raise Problem(
                ProblemType.CONFLICT,
                f"refund {refund_id!r} was recorded before with other content",
            )
        return  # a retry: applied once already
    for line in lines:
        result = await conn.execute(
            update(order_lines)
            .where(
                order_lines.c.tenant_id == tenant_id,
                order_lines.c.order_id == order.id,
                order_lines.c.line_no == line["line_no"],
                order_lines.c.returned_quantity + line["quantity"] <= order_lines.c.quantity,
            )
            .values(returned_quantity=order_lines.c.returned_quantity + line["quantity"])
        )
        if result.rowcount != 1:
            raise Problem(
                ProblemType.ALREADY_RETURNED,
                f"line {line['line_no']} of order {order.reference} has fewer than "
                f"{line['quantity']} units left to take back",
                line_no=line["line_no"],
            )
    if amount < 0 or order.refunded + amount > order.total:
        left = order.total - order.refunded
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"order {order.reference} has {left} {order.currency} left to refund, not {amount}",
            refundable=float(left),
        )
    await conn.execute(
        update(orders)
        .where(orders.c.tenant_id == tenant_id, orders.c.id == order.id)
        .values(refunded=orders.c.refunded + amount)
    )
    if order.customer_id:
        await segment_hook.profile_changed(conn, tenant_id, [order.customer_id])
    await conn.execute(
        insert(order_refunds).values(
            tenant_id=tenant_id,
            refund_id=refund_id,
            order_id=order.id,
            source=source,
            amount=amount,
            lines=lines,
            created_at=utcnow(),
        )
    )


# --- reading --------------------------------------------------------------------------------


async def _order_row(
    conn: AsyncConnection,
    tenant_id: str,
    reference: str,
    *,
    lock: bool = False,
    missing_ok: bool = False,
) -> Any:
    query = select(orders).where(orders.c.tenant_id == tenant_id, orders.c.reference == reference)
    if lock:
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None and not missing_ok:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no order {reference!r}")
    return row


async def _line_rows(
    conn: AsyncConnection, tenant_id: str, order_ids: Sequence[str]
) -> list[Row[Any]]:
    if not order_ids:
        return []
    rows = await conn.execute(
        select(order_lines)
        .where(order_lines.c.tenant_id == tenant_id, order_lines.c.order_id.in_(order_ids))
        .order_by(order_lines.c.order_id, order_lines.c.line_no)
    )
    return list(rows)


def _view(row: Row[Any], lines: Sequence[Row[Any]]) -> OrderView:
    return OrderView(
        order_id=row.id,
        reference=row.reference,
        customer_id=row.customer_id,
        channel=row.channel,
        store_id=row.store_id,
        currency=row.currency,
        total=float(row.total),
        refunded=float(row.refunded),
        net=float(row.total - row.refunded),
        placed_at=row.placed_at,
        link_method=row.link_method,
        link_confidence=row.link_confidence,
        lines=[
            OrderLineView(
                line_no=line.line_no,
                sku=line.sku,
                quantity=line.quantity,
                unit_price=float(line.unit_price),
                gift=line.gift,
                gift_confidence=line.gift_confidence,
                returned_quantity=line.returned_quantity,
            )
            for line in lines
        ],
        created_at=row.created_at,
    )


async def _views(
    conn: AsyncConnection, tenant_id: str, rows: Sequence[Row[Any]]
) -> list[OrderView]:
    by_order: dict[str, list[Row[Any]]] = {row.id: [] for row in rows}
    for line in await _line_rows(conn, tenant_id, list(by_order)):
        by_order[line.order_id].append(line)
    return [_view(row, by_order[row.id]) for row in rows]


async def by_reference(conn: AsyncConnection, tenant_id: str, reference: str) -> OrderView | None:
    """The order of this shop reference, or None."""
    row = await _order_row(conn, tenant_id, reference, missing_ok=True)
    return None if row is None else (await _views(conn, tenant_id, [row]))[0]


async def orders_of(
    conn: AsyncConnection, tenant_id: str, customer_ids: list[str], limit: int | None = None
) -> list[OrderView]:
    """The orders of these customers (the live id suffices: orders follow merges), newest
    first, with their lines and net value."""
    if not customer_ids:
        return []
    query = (
        select(orders)
        .where(orders.c.tenant_id == tenant_id, orders.c.customer_id.in_(customer_ids))
        .order_by(orders.c.placed_at.desc(), orders.c.id.desc())
    )
    if limit is not None:
        query = query.limit(limit)
    return await _views(conn, tenant_id, list(await conn.execute(query)))


# One statement serves every page of `stream_orders`: the first page starts after
# (since, ""), which every order at `since` follows. The net value is read as the database's
# own number (whole cents on SQLite, NUMERIC on PostgreSQL) and made a float here, without a
# Decimal per row: the read feeds attribution and lifetime value over millions of orders.
_NET_RAW = type_coerce(orders.c.total - orders.c.refunded, NullType())
_PAGE = Prepared(
    select(
        orders.c.id,
        orders.c.customer_id,
        orders.c.channel,
        orders.c.store_id,
        orders.c.placed_at,
        _NET_RAW,
        orders.c.currency,
        orders.c.link_method,
    )
    .where(
        orders.c.tenant_id == bindparam("tenant"),
        orders.c.placed_at < bindparam("until", type_=UtcDateTime()),
        # A row-value comparison: both databases walk the (tenant, placed_at, id) index.
        tuple_(orders.c.placed_at, orders.c.id)
        > tuple_(bindparam("at", type_=UtcDateTime()), bindparam("after_id", type_=String())),
    )
    .order_by(orders.c.placed_at, orders.c.id)
    .limit(bindparam("batch", type_=Integer()))
)
_EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)
_LATEST = datetime(9000, 1, 1, tzinfo=UTC)


async def stream_orders(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    batch: int = 1000,
) -> AsyncIterator[list[OrderFact]]:
    """Every order placed in [since, until), oldest first, in batches of at most `batch`:
    keyset pages on (placed_at, id), so memory stays bounded however many orders there are."""
    cents = conn.dialect.name == "sqlite"  # storage.tables.Money
    parameters: dict[str, Any] = {
        "tenant": tenant_id,
        "until": until or _LATEST,
        "at": since or _EARLIEST,
        "after_id": "",
        "batch": batch,
    }
    while True:
        rows = await _PAGE.fetchall(conn, parameters)
        if not rows:
            return
        yield [
            OrderFact(
                order_id=order_id,
                customer_id=customer_id,
                channel=channel,
                store_id=store_id,
                placed_at=placed_at,
                net_value=net / 100 if cents else float(net),
                currency=currency,
                link_method=link_method,
            )
            for (
                order_id,
                customer_id,
                channel,
                store_id,
                placed_at,
                net,
                currency,
                link_method,
            ) in rows
        ]
        if len(rows) < batch:
            return
        parameters["at"], parameters["after_id"] = rows[-1][4], rows[-1][0]


async def bought_since(
    conn: AsyncConnection, tenant_id: str, customer_ids: list[str], sku: str, since: datetime
) -> bool:
    """Whether these customers bought `sku` on any channel (store sales included) since then."""
    if not customer_ids:
        return False
    query = select(
        exists().where(
            orders.c.tenant_id == tenant_id,
            orders.c.customer_id.in_(customer_ids),
            orders.c.placed_at >= since,
            order_lines.c.tenant_id == orders.c.tenant_id,
            order_lines.c.order_id == orders.c.id,
            order_lines.c.sku == sku,
        )
    )
    return bool((await conn.execute(query)).scalar())


async def count(conn: AsyncConnection, tenant_id: str) -> int:
    return int(
        (
            await conn.execute(select(func.count()).where(orders.c.tenant_id == tenant_id))
        ).scalar_one()
    )
