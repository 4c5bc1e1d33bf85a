"""Stock per item and location: absolute levels, deltas applied once, prices and thresholds.

An item is a SKU with its options (a size, a colour), the same key a cart line has. Online
stock (warehouses serving web and app orders) and store stock are kept and reported apart.
Each delta carries an operation id, so a retry — or an outbox replay after a till lost its
network — never applies it twice; `queue` puts writes in the durable outbox when the server
cannot be reached.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from omnisdk.core.cart import line_key
from omnisdk.notification_models import (
    Availability,
    AvailabilityList,
    AvailabilityLookup,
    InventoryResult,
    InventoryWrite,
    ItemIn,
    StockDeltaIn,
    StockLevelIn,
)
from omnisdk.resources._resource import (
    Append,
    C,
    Call,
    Flow,
    Resource,
    model,
    operation,
    send,
)

INVENTORY = "inventory"  # the outbox kind of inventory writes queued while offline
LocationKind = Literal["online", "store"]


def write_call(body: InventoryWrite, idempotency_key: str | None = None) -> Call[InventoryResult]:
    return Call(
        "POST",
        "/v1/inventory",
        model(InventoryResult),
        json=body.model_dump(mode="json", exclude_none=True),
        idempotency_key=idempotency_key,
    )


def delivery_call(payload: dict[str, Any], key: str) -> Call[InventoryResult]:
    """The request that delivers a queued write (its outbox key is its Idempotency-Key)."""
    return write_call(InventoryWrite.model_validate(payload["request"]), key)


def read_call(item: str) -> Call[AvailabilityList]:
    return Call("GET", "/v1/inventory", model(AvailabilityList), params={"item": item})


def lookup_call(items: list[str]) -> Call[AvailabilityList]:
    body = AvailabilityLookup(items=items)
    return Call("POST", "/v1/inventory/lookup", model(AvailabilityList), json=body.model_dump())


def new_op_id() -> str:
    return f"sdk-{uuid.uuid4().hex}"


def _write(
    levels: Sequence[StockLevelIn | Mapping[str, Any]],
    deltas: Sequence[StockDeltaIn | Mapping[str, Any]],
    items: Sequence[ItemIn | Mapping[str, Any]],
) -> InventoryWrite:
    return InventoryWrite(
        levels=[StockLevelIn.model_validate(x) for x in levels],
        deltas=[StockDeltaIn.model_validate(x) for x in deltas],
        items=[ItemIn.model_validate(x) for x in items],
    )


class Inventory(Resource[C]):
    """Stock per item and location, and the alerts its changes trigger on the server."""

    @operation
    def write(
        self,
        *,
        levels: Sequence[StockLevelIn | Mapping[str, Any]] = (),
        deltas: Sequence[StockDeltaIn | Mapping[str, Any]] = (),
        items: Sequence[ItemIn | Mapping[str, Any]] = (),
    ) -> Flow[InventoryResult]:
        """Apply a batch (all or none): absolute `levels`, `deltas` (each applied once by its
        `op_id`) and `items` (price, low-stock threshold). The answer says what the batch
        triggered: back in stock, low stock, price drop."""
        return (yield from send(write_call(_write(levels, deltas, items))))

    @operation
    def set_level(
        self,
        sku: str,
        quantity: int,
        *,
        options: Mapping[str, str] | None = None,
        location: str = "online",
        kind: LocationKind = "online",
    ) -> Flow[Availability]:
        """Set the units on hand of an item at a location (`kind` "online" or "store")."""
        level = {
            "sku": sku,
            "options": dict(options or {}),
            "location": location,
            "kind": kind,
            "quantity": quantity,
        }
        result = yield from send(write_call(_write([level], [], [])))
        return result.items[0]

    @operation
    def adjust(
        self,
        sku: str,
        delta: int,
        *,
        options: Mapping[str, str] | None = None,
        location: str = "online",
        kind: LocationKind = "online",
        op_id: str | None = None,
    ) -> Flow[Availability]:
        """Change an item's units by `delta` (received +, sold -), applied once by `op_id`
        (default: a new id; pass your stock movement's id to make your own retries safe)."""
        change = {
            "op_id": op_id or new_op_id(),
            "sku": sku,
            "options": dict(options or {}),
            "location": location,
            "kind": kind,
            "delta": delta,
        }
        result = yield from send(write_call(_write([], [change], [])))
        return result.items[0]

    @operation
    def set_price(
        self,
        sku: str,
        price: float,
        currency: str,
        *,
        options: Mapping[str, str] | None = None,
        low_stock_threshold: int | None = None,
    ) -> Flow[Availability]:
        """Set an item's price (a lower price tells its price-drop subscribers and carts)."""
        item = {
            "sku": sku,
            "options": dict(options or {}),
            "price": price,
            "currency": currency,
            "low_stock_threshold": low_stock_threshold,
        }
        result = yield from send(write_call(_write([], [], [item])))
        return result.items[0]

    @operation
    def get(self, sku: str, options: Mapping[str, str] | None = None) -> Flow[Availability]:
        """An item's availability: online units and units per store, apart."""
        found = yield from send(read_call(line_key(sku, options)))
        return found.items[0]

    @operation
    def availability(self, items: Sequence[str]) -> Flow[list[Availability]]:
        """Availability of up to 200 items by key (`sku` or `sku|size=38`, as cart lines)."""
        found = yield from send(lookup_call(list(items)))
        return list(found.items)

    @operation
    def queue(
        self,
        *,
        levels: Sequence[StockLevelIn | Mapping[str, Any]] = (),
        deltas: Sequence[StockDeltaIn | Mapping[str, Any]] = (),
        items: Sequence[ItemIn | Mapping[str, Any]] = (),
    ) -> Flow[str]:
        """Put a batch in the durable outbox and return its key: delivered in the background
        (a till counting stock with no network), each delta still applied once."""
        body = _write(levels, deltas, items)
        client = self._client
        outbox = yield from self._open_outbox()
        key = f"inventory-{uuid.uuid4().hex}"
        yield Append(outbox, INVENTORY, key, {"request": body.model_dump(mode="json")})
        client.delivery.nudge()
        return key
