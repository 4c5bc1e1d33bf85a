"""Stock per item and location: absolute levels, idempotent deltas, prices and thresholds."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from omnisdk.core.cart import CartError, line_key, line_parts
from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.notification_models import (
    AvailabilityList,
    AvailabilityLookup,
    InventoryResult,
    InventoryWrite,
)
from server_stub.auth import needs
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import inventory

router = APIRouter(prefix="/v1/inventory", tags=["inventory"], route_class=ApiRoute)
MAX_ITEMS_READ = 200


@router.post(
    "",
    summary="Write stock levels, deltas and item prices (one batch, all or none)",
    description=(
        "Levels are absolute, deltas are applied once each by their `op_id` (a retry applies "
        "nothing twice), items set a price or a low-stock threshold. Alerts the batch triggers "
        "(back in stock, low stock, price drop) are enqueued in the same transaction."
    ),
    openapi_extra=needs(Scope.INVENTORY_WRITE),
)
async def write_inventory(
    body: InventoryWrite, conn: Connection, context: Context
) -> InventoryResult:
    return await inventory.write(conn, context, body, utcnow())


@router.get(
    "",
    summary="Availability of items, online and per store",
    openapi_extra=needs(Scope.INVENTORY_READ),
)
async def read_inventory(
    conn: Connection,
    context: Context,
    item: Annotated[
        list[str],
        Query(description="Item keys (`sku` or `sku|option=value;...`, as cart lines have)."),
    ],
) -> AvailabilityList:
    if not item or len(item) > MAX_ITEMS_READ:
        raise Problem(
            ProblemType.VALIDATION_ERROR, f"ask for 1 to {MAX_ITEMS_READ} items at a time"
        )
    if any(not key or len(key) > 200 for key in item):
        raise Problem(ProblemType.VALIDATION_ERROR, "an item key is 1 to 200 characters")
    return AvailabilityList(items=await inventory.get(conn, context, _keys(item)))


@router.post(
    "/lookup",
    summary="Availability of many items (a lookup: changes nothing)",
    openapi_extra=needs(Scope.INVENTORY_READ, read_only=True),
)
async def lookup_inventory(
    body: AvailabilityLookup, conn: Connection, context: Context
) -> AvailabilityList:
    return AvailabilityList(items=await inventory.get(conn, context, _keys(body.items)))


def _keys(items: list[str]) -> list[str]:
    """The item keys asked for, each as `line_key` writes it; any other is refused (422)."""
    for key in items:
        try:
            canonical = line_key(*line_parts(key))
        except CartError:
            canonical = None
        if canonical != key:
            raise Problem(
                ProblemType.VALIDATION_ERROR,
                f"item {key!r} is no item key: `sku` or `sku|name=value;...`, options in name "
                "order, the SKU 1-64 characters without `|`",
            )
    return list(items)
