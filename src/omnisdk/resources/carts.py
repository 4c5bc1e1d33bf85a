"""The customer's shared cart: the same cart on every channel and device.

Every change is an operation with its own id (a replica name of this client and a counter), so
a retry never applies twice. Quantities change by deltas: `set_quantity` sends the difference
from the quantity the caller saw, and `remove` cancels only the adds the caller saw, so an add
made meanwhile on another device, thread or task survives.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from omnisdk.models import CartOpIn, CartOps, CartView, LineAttributes, LineRef, MarkOrdered
from omnisdk.resources._resource import (
    C,
    Call,
    Flow,
    Resource,
    checked_customer_id,
    model,
    operation,
    send,
)

REPLICAS_KEPT = 10_000  # replica names a client remembers: idle ones, and ones in flight
_LIVE: weakref.WeakSet[Replica] = weakref.WeakSet()


class _Counter:
    """One replica name of a customer's cart, and the number of its next operation."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._numbers = itertools.count(1)

    def next_id(self) -> str:
        return f"{self.name}:{next(self._numbers)}"


class Replica:
    """This client's replica names in operation ids, lent one operation at a time.

    A remove cancels, per replica, the contributions numbered up to the highest it saw, which
    is right only if a replica's operations reach the server in order (DESIGN: cart). Threads
    and asyncio tasks sharing a client issue operations at once, so a name is lent to one
    operation at a time: the next operation of a name is numbered only after the server's
    answer named the previous one (`answered`). Concurrent operations take other names; an
    operation still in flight, or whose answer was lost, keeps its name out of use. So a cart
    holds as many of this client's names as operations were ever in flight on it at once, and
    each name numbers its operations 1, 2, 3, … without gaps (one watermark on the server).

    A forked child process takes new names (`os.register_at_fork`), so its operations are never
    mistaken for its parent's.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._renew()
        _LIVE.add(self)

    def _renew(self) -> None:
        self._lock = threading.Lock()
        self.name = f"{self.channel}-{os.urandom(6).hex()}"
        self._idle: OrderedDict[str, list[_Counter]] = OrderedDict()  # customer → free names
        self._lent: OrderedDict[str, tuple[str, _Counter]] = OrderedDict()  # op id → name

    def next_id(self, customer_id: str) -> str:
        """A new operation id for the customer's cart, under a name no operation in flight
        holds. Give it back with `answered` once the server's answer names the operation."""
        with self._lock:
            idle = self._idle.pop(customer_id, [])
            # A forgotten name is never reused: a counter never restarts under one.
            counter = idle.pop() if idle else _Counter(f"{self.name}.{os.urandom(3).hex()}")
            if idle:
                self._idle[customer_id] = idle
            op_id = counter.next_id()
            self._lent[op_id] = (customer_id, counter)
            while len(self._lent) > REPLICAS_KEPT:  # never answered: the name stays unused
                self._lent.popitem(last=False)
        return op_id

    def answered(self, op_ids: Iterable[str]) -> None:
        """The server applied these operations (its answer listed them as applied or as
        duplicates): their names may number the customer's next operations."""
        with self._lock:
            for op_id in op_ids:
                lent = self._lent.pop(op_id, None)
                if lent is None:
                    continue  # not lent by this client, or already given back
                customer_id, counter = lent
                self._idle.setdefault(customer_id, []).append(counter)
                self._idle.move_to_end(customer_id)
            while len(self._idle) > REPLICAS_KEPT:
                self._idle.popitem(last=False)


def _renew_after_fork() -> None:
    for replica in list(_LIVE):
        replica._renew()


os.register_at_fork(after_in_child=_renew_after_fork)


def get_call(customer_id: str) -> Call[CartView]:
    return Call("GET", f"/v1/carts/{checked_customer_id(customer_id)}", model(CartView))


def ops_call(customer_id: str, ops: Sequence[CartOpIn | Mapping[str, Any]]) -> Call[CartView]:
    checked = [CartOpIn.model_validate(op) for op in ops]
    body = CartOps(ops=checked).model_dump(mode="json", exclude_none=True)
    # The operation ids make the request idempotent: use them as its key.
    key = "cart-" + ",".join(op.op_id for op in checked)
    return Call(
        "POST",
        f"/v1/carts/{checked_customer_id(customer_id)}/ops",
        model(CartView),
        json=body,
        idempotency_key=key[:255],
    )


def ordered_call(customer_id: str, order_ref: str, version: int) -> Call[CartView]:
    return Call(
        "POST",
        f"/v1/carts/{checked_customer_id(customer_id)}/mark-ordered",
        model(CartView),
        json=MarkOrdered(order_ref=order_ref).model_dump(),
        headers={"If-Match": f'"{version}"'},
    )


def _line(sku: str, options: Mapping[str, str] | None) -> LineRef:
    return LineRef(sku=sku, options=dict(options or {}))


def _observed(seen: CartView, sku: str | None, options: Mapping[str, str] | None) -> list[str]:
    return [
        op
        for line in seen.lines
        if sku is None or (line.sku == sku and line.options == (options or {}))
        for op in line.observed
    ]


def _quantity(seen: CartView, sku: str, options: Mapping[str, str] | None) -> int:
    return sum(x.quantity for x in seen.lines if x.sku == sku and x.options == (options or {}))


def _seen(cart: CartView | Mapping[str, Any]) -> CartView:
    """The cart the customer saw, as a model (a mapping of its JSON works too)."""
    return cart if isinstance(cart, CartView) else CartView.model_validate(cart)


class CartOpsBuilder:
    """The operations of the helpers below, built once for both clients. An operation built
    here holds its replica name until an answer to this client names it (`carts.apply`);
    until then, operations built meanwhile take other names."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def add(
        self,
        customer_id: str,
        sku: str,
        quantity: int,
        options: Mapping[str, str] | None,
        attributes: LineAttributes | None = None,
    ) -> CartOpIn:
        return CartOpIn(
            op_id=self.replica.next_id(checked_customer_id(customer_id)),
            type="add",
            line=_line(sku, options),
            delta=quantity,
            attributes=attributes,
        )

    def set_quantity(
        self, seen: CartView, sku: str, quantity: int, options: Mapping[str, str] | None
    ) -> CartOpIn:
        delta = quantity - _quantity(seen, sku, options)
        return CartOpIn(
            op_id=self.replica.next_id(seen.customer_id),
            type="add",
            line=_line(sku, options),
            delta=delta,
        )

    def remove(self, seen: CartView, sku: str, options: Mapping[str, str] | None) -> CartOpIn:
        return CartOpIn(
            op_id=self.replica.next_id(seen.customer_id),
            type="remove",
            line=_line(sku, options),
            observed=_observed(seen, sku, options),
        )

    def clear(self, seen: CartView) -> CartOpIn:
        return CartOpIn(
            op_id=self.replica.next_id(seen.customer_id),
            type="clear",
            observed=_observed(seen, None, None),
        )


class Carts(Resource[C]):
    """The customer's one cart, shared by every channel and device."""

    def __init__(self, client: C) -> None:
        super().__init__(client)
        self.ops = CartOpsBuilder(Replica(client.channel.value if client.channel else "sdk"))

    def _sent(
        self, customer_id: str, ops: Sequence[CartOpIn | Mapping[str, Any]]
    ) -> Flow[CartView]:
        """Send operations; once the answer names them, their replica names are free again."""
        cart = yield from send(ops_call(customer_id, ops))
        self.ops.replica.answered([*cart.applied, *cart.duplicates])
        return cart

    @operation
    def get(self, customer_id: str) -> Flow[CartView]:
        """The customer's cart as every channel sees it, with its version."""
        return (yield from send(get_call(customer_id)))

    @operation
    def apply(
        self, customer_id: str, ops: Sequence[CartOpIn | Mapping[str, Any]]
    ) -> Flow[CartView]:
        """Apply operations (all or none; each at most once, so retries are safe). Build them
        with `carts.ops` or pass mappings of the same fields."""
        return (yield from self._sent(customer_id, ops))

    @operation
    def add(
        self,
        customer_id: str,
        sku: str,
        quantity: int = 1,
        options: Mapping[str, str] | None = None,
        *,
        name: str | None = None,
        unit_price: float | None = None,
        currency: str | None = None,
        image_url: str | None = None,
    ) -> Flow[CartView]:
        """Add `quantity` units of a line (`sku` plus `options`, such as a size). The name,
        unit price (with its ISO 4217 currency) and image URL snapshot the shop's data for
        every channel's display; the latest write of each wins."""
        given = {
            "name": name,
            "unit_price": unit_price,
            "currency": currency,
            "image_url": image_url,
        }
        attributes = (
            LineAttributes.model_validate(given)
            if any(v is not None for v in given.values())
            else None
        )
        op = self.ops.add(customer_id, sku, quantity, options, attributes)
        return (yield from self._sent(customer_id, [op]))

    @operation
    def set_quantity(
        self,
        customer_id: str,
        seen: CartView | Mapping[str, Any],
        sku: str,
        quantity: int,
        options: Mapping[str, str] | None = None,
    ) -> Flow[CartView]:
        """Make a line `quantity` relative to the cart the customer saw (`seen`, as `get` or a
        write returned it): sent as the difference, so units added meanwhile elsewhere stay."""
        op = self.ops.set_quantity(_seen(seen), sku, quantity, options)
        return (yield from self._sent(customer_id, [op]))

    @operation
    def remove(
        self,
        customer_id: str,
        seen: CartView | Mapping[str, Any],
        sku: str,
        options: Mapping[str, str] | None = None,
    ) -> Flow[CartView]:
        """Remove a line as the customer saw it; adds made meanwhile elsewhere stay."""
        op = self.ops.remove(_seen(seen), sku, options)
        return (yield from self._sent(customer_id, [op]))

    @operation
    def clear(self, customer_id: str, seen: CartView | Mapping[str, Any]) -> Flow[CartView]:
        """Empty the cart as the customer saw it; adds made meanwhile elsewhere stay."""
        return (yield from self._sent(customer_id, [self.ops.clear(_seen(seen))]))

    @operation
    def mark_ordered(self, customer_id: str, order_ref: str, version: int) -> Flow[CartView]:
        """Turn the cart into order `order_ref` if it is still at `version` (ConflictError
        otherwise): the order counts in the customer's profile on every channel."""
        return (yield from send(ordered_call(customer_id, order_ref, version)))
