"""Stock per item and location, and the alerts its changes trigger (issue 20).

An item is a SKU with its variant options (`omnisdk.core.cart.line_key`, "TR2|size=38"), the
same key a cart line has. Stock is kept per location; a location is `online` (a warehouse that
ships web and app orders) or a `store`, and the two are reported apart — online availability
is the sum over online locations, a store's is its own, never one sum of both.

A batch of writes is applied in one transaction, with the touched items' rows locked in item
order (PostgreSQL; SQLite has one writer), so two processes writing the same item serialise
and every delta is applied exactly once by its `op_id`. The alerts the batch triggers — back
in stock, low stock, price drop — are enqueued in the same transaction: a failed batch leaves
neither stock nor messages behind.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.cart import line_key
from omnisdk.core.notifications import crossing
from omnisdk.notification_models import (
    Availability,
    InventoryResult,
    InventoryWrite,
    ItemIn,
    StockDeltaIn,
    StockLevelIn,
)
from server_stub.services import alerts
from server_stub.services.stock import ONLINE, Stock, availability, read
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import inventory_items, inventory_levels, inventory_ops


def _dialect(conn: AsyncConnection) -> Any:
    return postgresql if conn.dialect.name == "postgresql" else sqlite


async def _lock_items(
    conn: AsyncConnection, tenant_id: str, items: dict[str, str], now: datetime
) -> None:
    """Create the items' rows if missing and lock them in item order (one order for every
    writer, so two batches never deadlock)."""
    dialect = _dialect(conn)
    await conn.execute(
        dialect.insert(inventory_items)
        .values(
            [
                {"tenant_id": tenant_id, "item": item, "sku": sku, "updated_at": now}
                for item, sku in sorted(items.items())
            ]
        )
        .on_conflict_do_nothing(index_elements=["tenant_id", "item"])
    )
    if conn.dialect.name == "postgresql":
        await conn.execute(
            select(inventory_items.c.item)
            .where(inventory_items.c.tenant_id == tenant_id, inventory_items.c.item.in_(items))
            .order_by(inventory_items.c.item)
            .with_for_update()
        )


async def _set_level(
    conn: AsyncConnection,
    tenant_id: str,
    item: str,
    location: str,
    kind: str,
    quantity: int,
    now: datetime,
    *,
    relative: bool,
) -> None:
    dialect = _dialect(conn)
    statement = dialect.insert(inventory_levels).values(
        tenant_id=tenant_id,
        item=item,
        location=location,
        kind=kind,
        quantity=quantity,
        updated_at=now,
    )
    new_quantity = (
        inventory_levels.c.quantity + statement.excluded.quantity
        if relative
        else statement.excluded.quantity
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id", "item", "location"],
            set_={"quantity": new_quantity, "kind": statement.excluded.kind, "updated_at": now},
        )
    )


async def _claim_op(conn: AsyncConnection, tenant_id: str, op_id: str, now: datetime) -> bool:
    """Record a delta's operation id; False if it was applied before."""
    done = await conn.execute(
        _dialect(conn)
        .insert(inventory_ops)
        .values(tenant_id=tenant_id, op_id=op_id, applied_at=now)
        .on_conflict_do_nothing(index_elements=["tenant_id", "op_id"])
    )
    return bool(done.rowcount)


async def write(
    conn: AsyncConnection, context: TenantContext, body: InventoryWrite, now: datetime
) -> InventoryResult:
    """Apply a batch of levels, deltas and item settings; enqueue the alerts it triggers."""
    tenant_id = context.tenant_id
    touched: dict[str, str] = {}
    entries: list[ItemIn | StockLevelIn | StockDeltaIn] = [*body.items, *body.levels, *body.deltas]
    for entry in entries:
        touched[line_key(entry.sku, entry.options)] = entry.sku
    if not touched:
        return InventoryResult(applied=0, duplicates=0, items=[], triggered={})
    await _lock_items(conn, tenant_id, touched, now)
    before = await read(conn, tenant_id, touched)
    applied = duplicates = 0
    for entry in body.items:
        values: dict[str, Any] = {"updated_at": now}
        if entry.price is not None:
            values["price"] = entry.price
            values["currency"] = entry.currency
        if entry.low_stock_threshold is not None:
            values["low_stock_threshold"] = entry.low_stock_threshold
        await conn.execute(
            update(inventory_items)
            .where(
                inventory_items.c.tenant_id == tenant_id,
                inventory_items.c.item == line_key(entry.sku, entry.options),
            )
            .values(**values)
        )
        applied += 1
    for level in body.levels:
        item = line_key(level.sku, level.options)
        await _set_level(
            conn, tenant_id, item, level.location, level.kind, level.quantity, now, relative=False
        )
        applied += 1
    for delta in body.deltas:
        if not await _claim_op(conn, tenant_id, delta.op_id, now):
            duplicates += 1
            continue
        item = line_key(delta.sku, delta.options)
        await _set_level(
            conn, tenant_id, item, delta.location, delta.kind, delta.delta, now, relative=True
        )
        applied += 1
    after = await read(conn, tenant_id, touched)
    triggered = await _trigger(conn, context, before, after, now)
    default = context.settings.notifications.low_stock_threshold
    return InventoryResult(
        applied=applied,
        duplicates=duplicates,
        items=[availability(after[item], default) for item in sorted(after)],
        triggered=dict(triggered),
    )


async def _trigger(
    conn: AsyncConnection,
    context: TenantContext,
    before: dict[str, Stock],
    after: dict[str, Stock],
    now: datetime,
) -> dict[str, int]:
    """Enqueue what the change means: a restock per scope (online, each store) that went
    from none to some, low stock for carts, a lower price for subscribers and carts."""
    default = context.settings.notifications.low_stock_threshold
    triggered: dict[str, int] = defaultdict(int)
    for item, now_stock in after.items():
        was = before[item]
        scopes = {ONLINE: (was.online, now_stock.online)}
        for store in set(was.stores) | set(now_stock.stores):
            scopes[store] = (was.stores.get(store, 0), now_stock.stores.get(store, 0))
        threshold = now_stock.threshold or default
        for store, (old, new) in scopes.items():
            if crossing(old, new, threshold).back_in_stock:
                triggered["back_in_stock"] += await alerts.start_restock(
                    conn, context, item, store, now
                )
        if crossing(was.online, now_stock.online, threshold).low_stock:
            triggered["low_stock"] += await alerts.low_stock(conn, context, item, now)
        if was.price is not None and now_stock.price is not None and now_stock.price < was.price:
            triggered["price_drop"] += await alerts.price_drop(
                conn, context, item, now_stock.price, now
            )
    return {kind: count for kind, count in triggered.items() if count}


async def get(
    conn: AsyncConnection, context: TenantContext, items: list[str]
) -> list[Availability]:
    stock = await read(conn, context.tenant_id, items)
    default = context.settings.notifications.low_stock_threshold
    return [availability(stock[item], default) for item in sorted(stock)]


OPS_KEPT = timedelta(days=30)  # longer than any outbox holds a till's writes


async def forget_ops(conn: AsyncConnection, now: datetime) -> int:
    """Forget the operation ids of deltas applied more than OPS_KEPT ago (the table stays
    bounded); a replay older than that would be applied again."""
    done = await conn.execute(
        delete(inventory_ops).where(inventory_ops.c.applied_at < now - OPS_KEPT)
    )
    return int(done.rowcount or 0)
