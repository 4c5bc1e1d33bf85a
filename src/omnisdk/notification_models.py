"""Wire models of inventory, stock alerts and messages (issue 20), shared by SDK and server.

Kept apart from `omnisdk.models` so that each domain has its own file (STYLE: models per
domain); the package re-exports nothing new from here, import them from this module.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import Field

from omnisdk.core.notifications import Kind
from omnisdk.models import Float, Int, WireModel

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^|;=]+$")]
Location = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
Options = Annotated[
    dict[Annotated[str, Field(max_length=32)], Annotated[str, Field(max_length=64)]],
    Field(max_length=8),
]
LocationKind = Literal["online", "store"]
SubscribableKind = Literal["back_in_stock", "price_drop"]


# --- inventory ------------------------------------------------------------------------------


class StockLevelIn(WireModel):
    """An absolute stock level of an item at a location (a warehouse serving online sales,
    or a store)."""

    sku: Sku
    options: Options = Field(default_factory=dict, description="Variant options, e.g. size.")
    location: Location = Field(description="Warehouse or store id, such as `online` or `berlin-1`.")
    kind: LocationKind = Field(
        default="online", description="`online` (ships to web/app orders) or `store` (in store)."
    )
    quantity: Int = Field(ge=0, le=10_000_000, description="Units on hand now.")


class StockDeltaIn(WireModel):
    """A change of stock (received +, sold -), applied exactly once by its `op_id`."""

    op_id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    sku: Sku
    options: Options = Field(default_factory=dict)
    location: Location
    kind: LocationKind = "online"
    delta: Int = Field(ge=-10_000_000, le=10_000_000)


class ItemIn(WireModel):
    """An item's price and low-stock threshold (either may be left out)."""

    sku: Sku
    options: Options = Field(default_factory=dict)
    price: Float | None = Field(default=None, ge=0, le=10_000_000)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    low_stock_threshold: Int | None = Field(default=None, ge=1, le=1_000_000)


class InventoryWrite(WireModel):
    """One batch of inventory writes, applied together (all or none)."""

    levels: list[StockLevelIn] = Field(default_factory=list, max_length=1000)
    deltas: list[StockDeltaIn] = Field(default_factory=list, max_length=1000)
    items: list[ItemIn] = Field(default_factory=list, max_length=1000)


class Availability(WireModel):
    """An item's stock, online and per store kept apart (never summed across the two)."""

    sku: str
    options: dict[str, str]
    item: str = Field(description="The item's key: the SKU and its options.")
    online: Int = Field(description="Units in locations of kind `online`.")
    stores: dict[str, Int] = Field(description="Units per store.")
    low_stock_threshold: Int
    low_stock: bool = Field(description="Online units are above 0 and below the threshold.")
    price: Float | None = None
    currency: str | None = None


class InventoryResult(WireModel):
    applied: Int = Field(description="Changes applied now (levels, new deltas, items).")
    duplicates: Int = Field(description="Deltas already applied before (by op_id): skipped.")
    items: list[Availability]
    triggered: dict[str, Int] = Field(description="Messages enqueued now, per kind.")


# --- subscriptions --------------------------------------------------------------------------


class SubscribeRequest(WireModel):
    sku: Sku
    options: Options = Field(default_factory=dict)
    kind: SubscribableKind = "back_in_stock"
    store: Location | None = Field(default=None, description="Alert on this store's stock only.")
    min_quantity: Int = Field(default=1, ge=1, le=1000)


class Subscription(WireModel):
    id: str
    customer_id: str
    kind: SubscribableKind
    sku: str
    options: dict[str, str]
    item: str
    store: str | None
    min_quantity: Int
    status: Literal["waiting", "queued", "notified", "cancelled"]
    consent_decision_id: str | None = Field(
        description="The marketing consent decision standing when she subscribed (if any)."
    )
    created_at: datetime


class SubscriptionList(WireModel):
    items: list[Subscription]


# --- messages -------------------------------------------------------------------------------


class MessageView(WireModel):
    id: str = Field(description="The message id; also its webhook-id (receivers dedupe by it).")
    kind: Kind
    customer_id: str
    sku: str | None
    item: str | None
    status: Literal["pending", "sending", "retry", "sent", "skipped", "failed"]
    reason: str | None = Field(description="Why it was skipped, delayed or failed.")
    channel: str | None
    consent_decision_id: str | None = Field(description="The decision the send relied on.")
    attempts: Int
    due_at: datetime
    created_at: datetime
    sent_at: datetime | None


class MessageList(WireModel):
    items: list[MessageView]


class KindMetrics(WireModel):
    triggered: Int
    sent: Int
    failed: Int
    pending: Int
    skipped: dict[str, Int]


class AlertMetrics(WireModel):
    kinds: dict[str, KindMetrics]


class WebhookEndpointIn(WireModel):
    url: str = Field(min_length=8, max_length=2000, pattern=r"^https?://")
    kinds: list[Kind] = Field(default_factory=list, description="Empty: every kind.")


class WebhookEndpoint(WireModel):
    id: str
    url: str
    kinds: list[Kind]
    created_at: datetime
    secret: str | None = Field(
        default=None, description="The signing secret (`whsec_...`), shown once at creation."
    )


class WebhookEndpointList(WireModel):
    items: list[WebhookEndpoint]


class ReplayResult(WireModel):
    replayed: Int


class MessagePayload(WireModel):
    """The body of a message's webhook (`type` is `message.<kind>`)."""

    type: str
    timestamp: datetime
    data: dict[str, Any]


class AvailabilityList(WireModel):
    items: list[Availability]


class ReplayRequest(WireModel):
    ids: list[Annotated[str, Field(max_length=40)]] | None = Field(
        default=None, max_length=1000, description="Messages to send again; null: every failed one."
    )
