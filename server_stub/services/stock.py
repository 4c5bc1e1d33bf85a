"""Reading stock: an item's online units, units per store, price and low-stock threshold.

Shared by the inventory writes and the alerts that re-check stock before each batch and
each message (services/inventory.py, services/alerts.py, services/messages.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.cart import line_parts
from omnisdk.notification_models import Availability
from server_stub.storage.tables import inventory_items, inventory_levels

ONLINE = ""  # the store key of online stock (alert_restocks.store_key; a subscription's store)


@dataclass
class Stock:
    """An item's stock as read: online units, units per store, its price and threshold."""

    item: str
    online: int = 0
    stores: dict[str, int] = field(default_factory=dict)
    price: float | None = None
    currency: str | None = None
    threshold: int | None = None

    def units(self, store: str | None) -> int:
        return self.online if not store else self.stores.get(store, 0)


async def read(conn: AsyncConnection, tenant_id: str, items: Iterable[str]) -> dict[str, Stock]:
    """The stock of these items (an unknown item has none)."""
    wanted = sorted(set(items))
    found = {item: Stock(item) for item in wanted}
    if not wanted:
        return found
    for row in await conn.execute(
        select(inventory_items).where(
            inventory_items.c.tenant_id == tenant_id, inventory_items.c.item.in_(wanted)
        )
    ):
        stock = found[row.item]
        stock.price, stock.currency, stock.threshold = (
            row.price,
            row.currency,
            row.low_stock_threshold,
        )
    for row in await conn.execute(
        select(inventory_levels).where(
            inventory_levels.c.tenant_id == tenant_id, inventory_levels.c.item.in_(wanted)
        )
    ):
        stock = found[row.item]
        if row.kind == "store":
            stock.stores[row.location] = row.quantity
        else:
            stock.online += row.quantity
    return found


def availability(stock: Stock, default_threshold: int) -> Availability:
    sku, options = line_parts(stock.item)
    threshold = stock.threshold or default_threshold
    return Availability(
        sku=sku,
        options=options,
        item=stock.item,
        online=stock.online,
        stores=dict(sorted(stock.stores.items())),
        low_stock_threshold=threshold,
        low_stock=0 < stock.online < threshold,
        price=stock.price,
        currency=stock.currency,
    )
