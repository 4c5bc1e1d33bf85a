"""The customer's shared cart: the same cart on every channel and device.

Every change is an operation with its own id (this client's replica name and a counter), so a
retry never applies twice. Quantities change by deltas: `set_quantity` sends the difference
from the quantity the caller saw, and `remove` cancels only the adds the caller saw, so an add
made meanwhile on another device survives.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections import OrderedDict
from typing import Any

from omnisdk.models import CartOpIn, CartOps, CartView, LineAttributes, LineRef, MarkOrdered
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model

REPLICAS_KEPT = 10_000  # customers whose operation counters a client remembers
_LIVE: weakref.WeakSet[Replica] = weakref.WeakSet()


class Replica:
    """This client's names in operation ids, one per customer, and their counters.

    Each customer's cart gets its own replica name (this client's name and a random part), so
    the sequence numbers a cart sees from it run 1, 2, 3, … without gaps: the server remembers
    them as one watermark. A forked child process takes a new name (`os.register_at_fork`), so
    its operations are never mistaken for its parent's.
    """

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self._lock = threading.Lock()
        self._renew()
        _LIVE.add(self)

    def _renew(self) -> None:
        self._lock = threading.Lock()
        self.name = f"{self.channel}-{os.urandom(6).hex()}"
        self._carts: OrderedDict[str, tuple[str, itertools.count[int]]] = OrderedDict()

    def next_id(self, customer_id: str) -> str:
        with self._lock:
            entry = self._carts.pop(customer_id, None)
            if entry is None:
                # A forgotten customer gets a new name: a counter never restarts under one.
                entry = (f"{self.name}.{os.urandom(3).hex()}", itertools.count(1))
            self._carts[customer_id] = entry
            while len(self._carts) > REPLICAS_KEPT:
                self._carts.popitem(last=False)
        name, counter = entry
        return f"{name}:{next(counter)}"


def _renew_after_fork() -> None:
    for replica in list(_LIVE):
        replica._renew()


os.register_at_fork(after_in_child=_renew_after_fork)


def get_call(customer_id: str) -> Call[CartView]:
    return Call("GET", f"/v1/carts/{customer_id}", model(CartView))


def ops_call(customer_id: str, ops: list[CartOpIn]) -> Call[CartView]:
    body = CartOps(ops=ops).model_dump(mode="json", exclude_none=True)
    # The operation ids make the request idempotent: use them as its key.
    key = "cart-" + ",".join(op.op_id for op in ops)
    return Call(
        "POST",
        f"/v1/carts/{customer_id}/ops",
        model(CartView),
        json=body,
        idempotency_key=key[:255],
    )


def ordered_call(customer_id: str, order_ref: str, version: int) -> Call[CartView]:
    return Call(
        "POST",
        f"/v1/carts/{customer_id}/mark-ordered",
        model(CartView),
        json=MarkOrdered(order_ref=order_ref).model_dump(),
        headers={"If-Match": f'"{version}"'},
    )


def _line(sku: str, options: dict[str, str] | None) -> LineRef:
    return LineRef(sku=sku, options=options or {})


def _observed(seen: CartView, sku: str | None, options: dict[str, str] | None) -> list[str]:
    return [
        op
        for line in seen.lines
        if sku is None or (line.sku == sku and line.options == (options or {}))
        for op in line.observed
    ]


def _quantity(seen: CartView, sku: str, options: dict[str, str] | None) -> int:
    return sum(x.quantity for x in seen.lines if x.sku == sku and x.options == (options or {}))


class CartOpsBuilder:
    """The operations of the helpers below, built once for both clients."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica

    def add(
        self,
        customer_id: str,
        sku: str,
        quantity: int,
        options: dict[str, str] | None,
        **attributes: Any,
    ) -> CartOpIn:
        return CartOpIn(
            op_id=self.replica.next_id(customer_id),
            type="add",
            line=_line(sku, options),
            delta=quantity,
            attributes=LineAttributes(**attributes) if attributes else None,
        )

    def set_quantity(
        self, seen: CartView, sku: str, quantity: int, options: dict[str, str] | None
    ) -> CartOpIn:
        delta = quantity - _quantity(seen, sku, options)
        return CartOpIn(
            op_id=self.replica.next_id(seen.customer_id),
            type="add",
            line=_line(sku, options),
            delta=delta,
        )

    def remove(self, seen: CartView, sku: str, options: dict[str, str] | None) -> CartOpIn:
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


class Carts(SyncResource):
    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.ops = CartOpsBuilder(Replica(client.channel.value if client.channel else "sdk"))

    def get(self, customer_id: str) -> CartView:
        """The customer's cart as every channel sees it, with its version."""
        return self._client.execute(get_call(customer_id))

    def apply(self, customer_id: str, ops: list[CartOpIn]) -> CartView:
        """Apply operations (all or none; each at most once, so retries are safe)."""
        return self._client.execute(ops_call(customer_id, ops))

    def add(
        self,
        customer_id: str,
        sku: str,
        quantity: int = 1,
        options: dict[str, str] | None = None,
        **attributes: Any,
    ) -> CartView:
        """Add units of a line; attributes (name, unit_price, currency, image_url) snapshot
        the shop's data."""
        return self.apply(
            customer_id, [self.ops.add(customer_id, sku, quantity, options, **attributes)]
        )

    def set_quantity(
        self,
        customer_id: str,
        seen: CartView,
        sku: str,
        quantity: int,
        options: dict[str, str] | None = None,
    ) -> CartView:
        """Make a line `quantity` relative to the cart the customer saw (`seen`)."""
        return self.apply(customer_id, [self.ops.set_quantity(seen, sku, quantity, options)])

    def remove(
        self, customer_id: str, seen: CartView, sku: str, options: dict[str, str] | None = None
    ) -> CartView:
        """Remove a line as the customer saw it; adds made meanwhile elsewhere stay."""
        return self.apply(customer_id, [self.ops.remove(seen, sku, options)])

    def clear(self, customer_id: str, seen: CartView) -> CartView:
        return self.apply(customer_id, [self.ops.clear(seen)])

    def mark_ordered(self, customer_id: str, order_ref: str, version: int) -> CartView:
        """Turn the cart into an order if it is still `version` (ConflictError otherwise)."""
        return self._client.execute(ordered_call(customer_id, order_ref, version))


class AsyncCarts(AsyncResource):
    def __init__(self, client: Any) -> None:
        super().__init__(client)
        self.ops = CartOpsBuilder(Replica(client.channel.value if client.channel else "sdk"))

    async def get(self, customer_id: str) -> CartView:
        return await self._client.execute(get_call(customer_id))

    async def apply(self, customer_id: str, ops: list[CartOpIn]) -> CartView:
        return await self._client.execute(ops_call(customer_id, ops))

    async def add(
        self,
        customer_id: str,
        sku: str,
        quantity: int = 1,
        options: dict[str, str] | None = None,
        **attributes: Any,
    ) -> CartView:
        return await self.apply(
            customer_id, [self.ops.add(customer_id, sku, quantity, options, **attributes)]
        )

    async def mark_ordered(self, customer_id: str, order_ref: str, version: int) -> CartView:
        return await self._client.execute(ordered_call(customer_id, order_ref, version))
