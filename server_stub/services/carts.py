"""Carts on the server: one active cart per customer, a CRDT from omnisdk.core.cart.

Operations on a customer's cart are serialised by locking its row (PostgreSQL) or by SQLite's
single writer; each operation id is applied at most once, so retries and outbox replays never
double an add. Only checkout-style steps (`mark_ordered`) compare versions (If-Match).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import cart as rules
from omnisdk.core.problems import ProblemType
from omnisdk.models import CartLineView, CartOpIn, CartView
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import changes
from server_stub.storage.tables import carts, ordered_carts


def _op(op: CartOpIn, now: datetime) -> rules.Op:
    op_id = rules.OpId.parse(op.op_id)
    observed = frozenset(rules.OpId.parse(text) for text in op.observed)
    if op.type == "clear":
        return rules.Clear(op_id, observed)
    if op.line is None:
        raise rules.CartError(f"a {op.type} names its line (sku and options)")
    key = rules.line_key(op.line.sku, op.line.options)
    if op.type == "remove":
        return rules.Remove(op_id, key, observed)
    attributes = rules.Attributes(**op.attributes.model_dump()) if op.attributes else None
    return rules.Add(op_id, key, op.delta, attributes, now.timestamp())


async def _locked(
    conn: AsyncConnection, tenant_id: str, customer_id: str
) -> tuple[rules.Cart, int, datetime | None]:
    """The customer's cart, its row locked for this transaction (created empty if missing)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(
        dialect.insert(carts)
        .values(
            tenant_id=tenant_id,
            customer_id=customer_id,
            state=rules.Cart().to_dict(),
            version=0,
            updated_at=utcnow(),
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "customer_id"])
    )
    row = (
        await conn.execute(
            select(carts)
            .where(carts.c.tenant_id == tenant_id, carts.c.customer_id == customer_id)
            .with_for_update()
        )
    ).one()
    return rules.Cart.from_dict(row.state), row.version, row.updated_at if row.version else None


async def read(conn: AsyncConnection, tenant_id: str, customer_id: str) -> CartView:
    row = (
        await conn.execute(
            select(carts).where(carts.c.tenant_id == tenant_id, carts.c.customer_id == customer_id)
        )
    ).first()
    if row is None:
        return view(customer_id, rules.Cart(), 0, None)
    return view(customer_id, rules.Cart.from_dict(row.state), row.version, row.updated_at)


async def _save(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    cart: rules.Cart,
    version: int,
    now: datetime,
) -> None:
    await conn.execute(
        update(carts)
        .where(carts.c.tenant_id == tenant_id, carts.c.customer_id == customer_id)
        .values(state=cart.to_dict(), version=version, updated_at=now)
    )


def view(
    customer_id: str,
    cart: rules.Cart,
    version: int,
    updated_at: datetime | None,
    applied: list[str] | None = None,
    duplicates: list[str] | None = None,
) -> CartView:
    lines = []
    for key, quantity in cart.quantities().items():
        sku, _, options = key.partition("|")
        attributes = cart.lines[key].attributes
        lines.append(
            CartLineView(
                key=key,
                sku=sku,
                options=dict(part.split("=", 1) for part in options.split(";")) if options else {},
                quantity=quantity,
                name=attributes.name,
                unit_price=attributes.unit_price,
                currency=attributes.currency,
                image_url=attributes.image_url,
                observed=sorted(op.text() for op in cart.observed(key)),
            )
        )
    return CartView(
        customer_id=customer_id,
        version=version,
        lines=lines,
        updated_at=updated_at,
        applied=applied or [],
        duplicates=duplicates or [],
    )


async def apply_ops(
    conn: AsyncConnection, tenant_id: str, customer_id: str, ops: list[CartOpIn]
) -> CartView:
    """Apply the operations, all or none; each operation id at most once."""
    now = utcnow()
    cart, version, updated_at = await _locked(conn, tenant_id, customer_id)
    applied: list[str] = []
    duplicates: list[str] = []
    for index, op_in in enumerate(ops):
        try:
            op = _op(op_in, now)
            if op.op_id in cart.applied:
                duplicates.append(op_in.op_id)
                continue
            cart.check(op)
        except rules.CartError as error:
            raise Problem(
                ProblemType.INVALID_CART_OPERATION, f"operation {index}: {error}", index=index
            ) from error
        cart.apply(op)
        applied.append(op_in.op_id)
    if not applied:  # every operation was a repeat: nothing changes
        return view(customer_id, cart, version, updated_at, applied, duplicates)
    result = view(customer_id, cart, version + 1, now, applied, duplicates)
    await _save(conn, tenant_id, customer_id, cart, version + 1, now)
    await _announce(conn, tenant_id, result)
    return result


async def _announce(conn: AsyncConnection, tenant_id: str, cart: CartView) -> None:
    payload = cart.model_dump(mode="json", exclude={"applied", "duplicates"})
    await changes.publish(conn, tenant_id, cart.customer_id, "cart", payload)


async def mark_ordered(
    conn: AsyncConnection, tenant_id: str, customer_id: str, if_match: str | None, order_ref: str
) -> CartView:
    """Turn the cart into an order, if it is still the version the caller saw; empty it."""
    cart, version, updated_at = await _locked(conn, tenant_id, customer_id)
    if if_match is None:
        raise Problem(
            ProblemType.PRECONDITION_REQUIRED,
            "send the cart version you showed the customer as If-Match",
        )
    if if_match.strip('"W/ ') != str(version):
        current = view(customer_id, cart, version, updated_at)
        raise Problem(
            ProblemType.VERSION_CONFLICT,
            f"the cart is at version {version}, not {if_match}: show the customer the current cart",
            cart=current.model_dump(mode="json"),
        )
    placed = (
        await conn.execute(
            select(ordered_carts.c.customer_id).where(
                ordered_carts.c.tenant_id == tenant_id, ordered_carts.c.order_ref == order_ref
            )
        )
    ).first()
    if placed is not None:
        raise Problem(ProblemType.CONFLICT, f"order {order_ref!r} was already placed")
    now = utcnow()
    lines = view(customer_id, cart, version, updated_at).model_dump(mode="json")["lines"]
    await conn.execute(
        insert(ordered_carts).values(
            tenant_id=tenant_id,
            id=new_id("ord", 10),
            customer_id=customer_id,
            order_ref=order_ref,
            lines=lines,
            version=version,
            ordered_at=now,
        )
    )
    cart.apply(rules.Clear(rules.OpId("server", version + 1), cart.observed()))
    await _save(conn, tenant_id, customer_id, cart, version + 1, now)
    result = view(customer_id, cart, version + 1, now)
    await _announce(conn, tenant_id, result)
    return result


async def merge(
    conn: AsyncConnection,
    tenant_id: str,
    survivor_id: str,
    loser_id: str,
    policy: rules.MergePolicy,
    merge_id: str,
) -> dict[str, Any] | None:
    """Fold the loser's cart into the survivor's (one idempotent set of operations); return
    what was merged, and the loser's cart state (for a split), or None if it had no cart."""
    row = (
        await conn.execute(
            select(carts).where(carts.c.tenant_id == tenant_id, carts.c.customer_id == loser_id)
        )
    ).first()
    if row is None:
        return None
    guest = rules.Cart.from_dict(row.state)
    customer, version, _ = await _locked(conn, tenant_id, survivor_id)
    now = utcnow()
    plan = rules.merge_plan(customer, guest, policy, merge_id, now.timestamp())
    for op in plan:
        customer.apply(op)
    if plan:
        await _save(conn, tenant_id, survivor_id, customer, version + 1, now)
        await _announce(conn, tenant_id, view(survivor_id, customer, version + 1, now))
    await conn.execute(
        carts.delete().where(carts.c.tenant_id == tenant_id, carts.c.customer_id == loser_id)
    )
    return {
        "policy": policy.value,
        "lines": {key: q for key, q in guest.quantities().items()},
        "result": customer.quantities(),
        "loser_state": row.state,
    }


async def restore(
    conn: AsyncConnection, tenant_id: str, customer_id: str, state: dict[str, Any]
) -> None:
    """Give a split-off customer its cart back as it was at the merge."""
    await conn.execute(
        insert(carts).values(
            tenant_id=tenant_id,
            customer_id=customer_id,
            state=state,
            version=1,
            updated_at=utcnow(),
        )
    )
