"""Carts on the server: one active cart per customer, a CRDT from omnisdk.core.cart.

Operations on a customer's cart are serialised by the customer's lock (see the locking order in
services/identity.py) and its cart row's lock (PostgreSQL) or by SQLite's single writer; each
operation id is applied at most once, so retries and outbox replays never double an add. Only
checkout-style steps (`mark_ordered`) compare versions (If-Match). The stored state is bounded
(docs/carts.md); a change on the feed carries the lines that changed, not the whole cart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import cart as rules
from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from omnisdk.models import CartLineView, CartOpIn, CartView
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import changes, named_locks, orders
from server_stub.storage.prepared import Prepared
from server_stub.storage.tables import carts, ordered_carts


@dataclass
class _Stored:
    cart: rules.Cart
    version: int
    updated_at: datetime | None
    # Replicas whose operations were addressed to a merged-away id: replica → that id (a split
    # gives their contributions back to it).
    addressed: dict[str, str] = field(default_factory=dict)
    addressed_as_read: dict[str, str] | None = None  # None: the row is new, or not read


def _op(op: CartOpIn, now: datetime) -> rules.Op:
    op_id = rules.OpId.parse(op.op_id)
    observed = rules.vector(rules.OpId.parse(text) for text in op.observed)
    if op.type == "clear":
        return rules.Clear(op_id, observed)
    if op.line is None:
        raise rules.CartError(f"a {op.type} names its line (sku and options)")
    key = rules.line_key(op.line.sku, op.line.options)
    if op.type == "remove":
        return rules.Remove(op_id, key, observed)
    attributes = rules.Attributes(**op.attributes.model_dump()) if op.attributes else None
    return rules.Add(op_id, key, op.delta, attributes, now.timestamp())


def _dialect(conn: AsyncConnection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


def _where(tenant_id: str, customer_id: str) -> tuple[Any, ...]:
    return (carts.c.tenant_id == tenant_id, carts.c.customer_id == customer_id)


# The statements of every cart operation, compiled once and run on the driver
# (storage/prepared.py). `addressed` is written only when it changed.
_THE_CART = (
    carts.c.tenant_id == bindparam("key_tenant"),
    carts.c.customer_id == bindparam("key_customer"),
)
_STATE = (carts.c.state, carts.c.version, carts.c.updated_at, carts.c.addressed)
_READ = select(*_STATE).where(*_THE_CART)
_READ_LOCKED = Prepared(_READ.with_for_update())
_SAVE = Prepared(
    update(carts)
    .where(*_THE_CART)
    .values(
        state=bindparam("state"), version=bindparam("version"), updated_at=bindparam("updated_at")
    )
)
_SAVE_ADDRESSED = Prepared(
    update(carts)
    .where(*_THE_CART)
    .values(
        state=bindparam("state"),
        version=bindparam("version"),
        updated_at=bindparam("updated_at"),
        addressed=bindparam("addressed"),
    )
)


def _key(tenant_id: str, customer_id: str) -> dict[str, Any]:
    return {"key_tenant": tenant_id, "key_customer": customer_id}


def _stored(row: Sequence[Any]) -> _Stored:
    state, version, updated_at, addressed = row
    addressed = dict(addressed or {})
    # Kept as read, so that `_save` writes `addressed` only when it changed.
    return _Stored(
        rules.Cart.from_dict(state),
        version,
        updated_at if version else None,
        addressed,
        {**addressed},
    )


async def _locked(conn: AsyncConnection, tenant_id: str, customer_id: str) -> _Stored:
    """The customer's cart, its row locked for this transaction (created empty if missing).
    The caller holds the customer's lock, so no other writer creates the row meanwhile."""
    key = _key(tenant_id, customer_id)
    row = await _READ_LOCKED.fetchone(conn, key)
    if row is None:
        await conn.execute(
            _dialect(conn)
            .insert(carts)
            .values(
                tenant_id=tenant_id,
                customer_id=customer_id,
                state=rules.Cart().to_dict(),
                version=0,
                updated_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["tenant_id", "customer_id"])
        )
        row = await _READ_LOCKED.fetchone(conn, key)
        assert row is not None
    return _stored(row)


async def read(conn: AsyncConnection, tenant_id: str, customer_id: str) -> CartView:
    row = (await conn.execute(_READ, _key(tenant_id, customer_id))).first()
    if row is None:
        return view(customer_id, rules.Cart(), 0, None)
    stored = _stored(row)
    return view(customer_id, stored.cart, stored.version, stored.updated_at)


async def _save(
    conn: AsyncConnection, tenant_id: str, customer_id: str, stored: _Stored, now: datetime
) -> None:
    values: dict[str, Any] = {
        **_key(tenant_id, customer_id),
        "state": stored.cart.to_dict(),
        "version": stored.version,
        "updated_at": now,
    }
    if stored.addressed == stored.addressed_as_read:
        await _SAVE.execute(conn, values)
    else:
        await _SAVE_ADDRESSED.execute(conn, {**values, "addressed": stored.addressed or None})


def line_view(cart: rules.Cart, key: str) -> CartLineView:
    """A line as a client sees it (quantity 0: the line is gone)."""
    sku, options = rules.line_parts(key)
    line = cart.lines.get(key)
    attributes = line.attributes if line else rules.Attributes()
    return CartLineView(
        key=key,
        sku=sku,
        options=options,
        quantity=cart.quantity(key),
        name=attributes.name,
        unit_price=attributes.unit_price,
        currency=attributes.currency,
        image_url=attributes.image_url,
        observed=[f"{replica}:{seq}" for replica, seq in sorted(cart.observed(key).items())],
    )


def view(
    customer_id: str,
    cart: rules.Cart,
    version: int,
    updated_at: datetime | None,
    applied: list[str] | None = None,
    duplicates: list[str] | None = None,
) -> CartView:
    return CartView(
        customer_id=customer_id,
        version=version,
        lines=[line_view(cart, key) for key in cart.quantities()],
        updated_at=updated_at,
        applied=applied or [],
        duplicates=duplicates or [],
    )


def _touched(cart: rules.Cart, op: rules.Op) -> set[str]:
    return set(cart.lines) if isinstance(op, rules.Clear) else {op.line}


async def apply_ops(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    ops: list[CartOpIn],
    addressed_to: str | None = None,
) -> CartView:
    """Apply the operations, all or none; each operation id at most once. `customer_id` is
    the live customer, locked (identity.lock_customer); `addressed_to`, the id the caller
    named, if it was merged into it."""
    now = utcnow()
    stored = await _locked(conn, tenant_id, customer_id)
    cart = stored.cart
    applied: list[str] = []
    duplicates: list[str] = []
    touched: set[str] = set()
    for index, op_in in enumerate(ops):
        try:
            op = _op(op_in, now)
            if cart.has_applied(op.op_id):
                duplicates.append(op_in.op_id)
                continue
            cart.check(op)
        except rules.CartError as error:
            raise Problem(
                ProblemType.INVALID_CART_OPERATION, f"operation {index}: {error}", index=index
            ) from error
        touched |= _touched(cart, op)
        cart.apply(op)
        applied.append(op_in.op_id)
        if addressed_to is not None and addressed_to != customer_id:
            stored.addressed[op.op_id.replica] = addressed_to
    if not applied:  # every operation was a repeat: nothing changes
        return view(customer_id, cart, stored.version, stored.updated_at, applied, duplicates)
    stored.version += 1
    await _save(conn, tenant_id, customer_id, stored, now)
    await _announce(conn, tenant_id, customer_id, stored, now, touched)
    return view(customer_id, cart, stored.version, now, applied, duplicates)


async def _announce(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    stored: _Stored,
    now: datetime,
    keys: Iterable[str],
) -> None:
    """Publish what changed: the new state of the lines touched (quantity 0: gone)."""
    payload = {
        "customer_id": customer_id,
        "version": stored.version,
        "updated_at": now.isoformat(),
        "lines": [line_view(stored.cart, key).model_dump(mode="json") for key in sorted(keys)],
    }
    await changes.publish(conn, tenant_id, customer_id, "cart", payload)


async def mark_ordered(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    if_match: str | None,
    order_ref: str,
    channel: Channel = Channel.WEB,
) -> CartView:
    """Turn the cart into an order, if it is still the version the caller saw; empty it. The
    order is recorded as an order record and the customer's `order_completed` event
    (orders.record_checkout)."""
    stored = await _locked(conn, tenant_id, customer_id)
    cart, version = stored.cart, stored.version
    if if_match is None:
        raise Problem(
            ProblemType.PRECONDITION_REQUIRED,
            "send the cart version you showed the customer as If-Match",
        )
    if if_match.strip('"W/ ') != str(version):
        current = view(customer_id, cart, version, stored.updated_at)
        raise Problem(
            ProblemType.VERSION_CONFLICT,
            f"the cart is at version {version}, not {if_match}: show the customer the current cart",
            cart=current.model_dump(mode="json"),
        )
    await named_locks.take(conn, tenant_id, "ordered_cart", order_ref)  # two carts, one order
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
    lines = view(customer_id, cart, version, stored.updated_at).model_dump(mode="json")["lines"]
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
    await orders.record_checkout(conn, tenant_id, customer_id, channel, order_ref, lines, now)
    touched = set(cart.lines)
    cart.checkout()
    stored.version += 1
    await _save(conn, tenant_id, customer_id, stored, now)
    await _announce(conn, tenant_id, customer_id, stored, now, touched)
    return view(customer_id, cart, stored.version, now)


async def merge(
    conn: AsyncConnection,
    tenant_id: str,
    survivor_id: str,
    loser_id: str,
    policy: rules.MergePolicy,
    merge_id: str,
) -> dict[str, Any] | None:
    """Fold the loser's cart into the survivor's (one idempotent set of operations) and carry
    its applied operation ids over; return what was merged and the loser's cart state (for a
    split), or None if it had no cart. Both customers are locked by the caller."""
    row = await _READ_LOCKED.fetchone(conn, _key(tenant_id, loser_id))
    if row is None:
        return None
    guest = _stored(row).cart
    stored = await _locked(conn, tenant_id, survivor_id)
    customer = stored.cart
    now = utcnow()
    plan = rules.merge_plan(customer, guest, policy, merge_id, now.timestamp())
    for op in plan:
        customer.apply(op)
    customer.adopt_applied(guest)
    stored.version += 1
    await _save(conn, tenant_id, survivor_id, stored, now)
    if plan:
        await _announce(conn, tenant_id, survivor_id, stored, now, {op.line for op in plan})
    await conn.execute(carts.delete().where(*_where(tenant_id, loser_id)))
    return {
        "policy": policy.value,
        "lines": guest.quantities(),
        "result": customer.quantities(),
        "loser_state": row[0],
    }


async def split(
    conn: AsyncConnection,
    tenant_id: str,
    survivor_id: str,
    loser_id: str,
    merge_id: str,
    origins: list[str],
    snapshot: dict[str, Any],
) -> None:
    """Undo a cart merge: the survivor loses the merge's contributions and those of the
    operations addressed to the loser (or ids merged into it) since; the loser gets its cart
    back as it was at the merge, with those operations."""
    stored = await _locked(conn, tenant_id, survivor_id)
    survivor = stored.cart
    before = survivor.quantities()
    survivor.take_runs([rules.merge_replica(merge_id)])
    theirs = sorted(r for r, who in stored.addressed.items() if who in origins)
    moved = survivor.take_runs(theirs)
    lost = rules.Cart.from_dict(snapshot["loser_cart"]) if snapshot.get("loser_cart") else None
    if lost is None and not moved:
        return
    now = utcnow()
    given = lost or rules.Cart()
    given.give_runs(moved)
    for replica in theirs:
        given.applied[replica] = survivor.applied[replica]
        del stored.addressed[replica]
    stored.version += 1
    await _save(conn, tenant_id, survivor_id, stored, now)
    await _announce(conn, tenant_id, survivor_id, stored, now, before.keys() | set(moved))
    await _restore(conn, tenant_id, loser_id, given, now)


async def _restore(
    conn: AsyncConnection, tenant_id: str, customer_id: str, cart: rules.Cart, now: datetime
) -> None:
    values = {"state": cart.to_dict(), "version": 1, "updated_at": now, "addressed": None}
    await conn.execute(
        _dialect(conn)
        .insert(carts)
        .values(tenant_id=tenant_id, customer_id=customer_id, **values)
        .on_conflict_do_update(index_elements=["tenant_id", "customer_id"], set_=values)
    )
    stored = _Stored(cart, 1, now)
    await _announce(conn, tenant_id, customer_id, stored, now, cart.lines)
