"""Wire models of inventory, stock alerts and messages (issue 20), shared by SDK and server.

Kept apart from `omnisdk.models` so that each domain has its own file (STYLE: models per
domain); the package re-exports nothing new from here, import them from this module.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field

from omnisdk.core.notifications import Kind
from omnisdk.models import Float, Int, WireModel

Sku = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^|;=]+$")]
Location = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
# An item's key is `sku|name=value;...` (omnisdk.core.cart.line_key): the separators cannot
# appear where they would change which item is meant.
Options = Annotated[
    dict[
        Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[^|;=]+$")],
        Annotated[str, Field(max_length=64, pattern=r"^[^|;]*$")],
    ],
    Field(max_length=8),
]
LocationKind = Literal["online", "store"]
SubscribableKind = Literal["back_in_stock", "price_drop"]


# --- inventory ------------------------------------------------------------------------------


class StockLevelIn(WireModel):
    """An absolute stock level of an item at a location (a warehouse serving online sales,
    or a store)."""

    sku: Sku = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    options: Options = Field(default_factory=dict, description="Variant options, e.g. size.")
    location: Location = Field(description="Warehouse or store id, such as `online` or `berlin-1`.")
    kind: LocationKind = Field(
        default="online",
        description="`online` (ships to web/app orders) or `store` (in store).",
    )
    quantity: Int = Field(ge=0, le=10_000_000, description="Units on hand now.")


class StockDeltaIn(WireModel):
    """A change of stock (received +, sold -), applied exactly once by its `op_id`."""

    op_id: str = Field(
        description="The change's own id: a delta with an id seen before is not applied again.",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:-]+$",
    )
    sku: Sku = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    options: Options = Field(
        description='Variant options, such as the size: `{"size": "38"}`.', default_factory=dict
    )
    location: Location = Field(description="Warehouse or store id, such as `online` or `berlin-1`.")
    kind: LocationKind = Field(default="online", description="What it is about.")
    delta: Int = Field(
        description="Units received (positive) or sold, lost or moved away (negative).",
        ge=-10_000_000,
        le=10_000_000,
    )


class ItemIn(WireModel):
    """An item's price and low-stock threshold (either may be left out)."""

    sku: Sku = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    options: Options = Field(
        description='Variant options, such as the size: `{"size": "38"}`.', default_factory=dict
    )
    price: Float | None = Field(
        description="The item's price now, in `currency`.", default=None, ge=0, le=10_000_000
    )
    currency: str | None = Field(
        description="ISO 4217 code of the price.", default=None, pattern=r"^[A-Z]{3}$"
    )
    low_stock_threshold: Int | None = Field(
        description="Online units below which the item counts as low stock.",
        default=None,
        ge=1,
        le=1_000_000,
    )


class InventoryWrite(WireModel):
    """One batch of inventory writes, applied together (all or none)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "levels": [
                        {
                            "sku": "TR2",
                            "options": {"size": "38"},
                            "location": "online",
                            "kind": "online",
                            "quantity": 12,
                        }
                    ],
                    "deltas": [
                        {
                            "op_id": "erp-4711",
                            "sku": "TR2",
                            "options": {"size": "38"},
                            "location": "berlin-1",
                            "kind": "store",
                            "delta": -1,
                        }
                    ],
                    "items": [
                        {"sku": "TR2", "options": {"size": "38"}, "price": 79.0, "currency": "EUR"}
                    ],
                }
            ]
        }
    )

    levels: list[StockLevelIn] = Field(
        description="Absolute stock levels.", default_factory=list, max_length=1000
    )
    deltas: list[StockDeltaIn] = Field(
        description="Stock changes, each applied once by its op_id.",
        default_factory=list,
        max_length=1000,
    )
    items: list[ItemIn] = Field(description="The items.", default_factory=list, max_length=1000)


class Availability(WireModel):
    """An item's stock, online and per store kept apart (never summed across the two)."""

    sku: str = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    options: dict[str, str] = Field(
        description='Variant options, such as the size: `{"size": "38"}`.'
    )
    item: str = Field(description="The item's key: the SKU and its options.")
    online: Int = Field(description="Units in locations of kind `online`.")
    stores: dict[str, Int] = Field(description="Units per store.")
    low_stock_threshold: Int = Field(
        description="Online units below which the item counts as low stock."
    )
    low_stock: bool = Field(description="Online units are above 0 and below the threshold.")
    price: Float | None = Field(default=None, description="The item's price now, in `currency`.")
    currency: str | None = Field(default=None, description="ISO 4217 code of the price.")


class InventoryResult(WireModel):
    applied: Int = Field(description="Changes applied now (levels, new deltas, items).")
    duplicates: Int = Field(description="Deltas already applied before (by op_id): skipped.")
    items: list[Availability] = Field(description="The items.")
    triggered: dict[str, Int] = Field(description="Messages enqueued now, per kind.")


# --- subscriptions --------------------------------------------------------------------------


class SubscribeRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"sku": "TR2", "options": {"size": "38"}, "kind": "back_in_stock"}]
        }
    )

    sku: Sku = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    options: Options = Field(
        description='Variant options, such as the size: `{"size": "38"}`.', default_factory=dict
    )
    kind: SubscribableKind = Field(default="back_in_stock", description="What it is about.")
    store: Location | None = Field(default=None, description="Alert on this store's stock only.")
    min_quantity: Int = Field(
        description="Alert only once at least this many units are available.",
        default=1,
        ge=1,
        le=1000,
    )


class Subscription(WireModel):
    id: str = Field(description="The record's id.")
    customer_id: str = Field(description="The customer's live id.")
    kind: SubscribableKind = Field(description="What it is about.")
    sku: str = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    options: dict[str, str] = Field(
        description='Variant options, such as the size: `{"size": "38"}`.'
    )
    item: str = Field(
        description="The item's key: the SKU and its options (`TR2|size=38`), as a cart line's."
    )
    store: str | None = Field(description="Alert on this store's stock only (null: online stock).")
    min_quantity: Int = Field(description="Alert only once at least this many units are available.")
    status: Literal["waiting", "queued", "notified", "cancelled"] = Field(
        description="Where it stands."
    )
    consent_decision_id: str | None = Field(
        description="The marketing consent decision standing when she subscribed (if any).",
    )
    created_at: datetime = Field(description="When it was made.")


class SubscriptionList(WireModel):
    items: list[Subscription] = Field(description="The items.")


# --- messages -------------------------------------------------------------------------------


class MessageView(WireModel):
    id: str = Field(description="The message id; also its webhook-id (receivers dedupe by it).")
    kind: Kind = Field(description="What it is about.")
    customer_id: str = Field(description="The customer's live id.")
    sku: str | None = Field(description="The product's SKU (1-64 characters, no `|`, `;` or `=`).")
    item: str | None = Field(
        description="The item's key: the SKU and its options (`TR2|size=38`), as a cart line's."
    )
    status: Literal["pending", "sending", "retry", "sent", "skipped", "failed"] = Field(
        description="Where it stands."
    )
    reason: str | None = Field(description="Why it was skipped, delayed or failed.")
    channel: str | None = Field(
        description="The marketing channel chosen when it was decided: email, push or sms."
    )
    consent_decision_id: str | None = Field(description="The decision the send relied on.")
    attempts: Int = Field(description="Delivery attempts so far.")
    due_at: datetime = Field(description="When it is (next) decided and delivered.")
    created_at: datetime = Field(description="When it was made.")
    sent_at: datetime | None = Field(description="When the shop's webhook took it.")


class MessageList(WireModel):
    items: list[MessageView] = Field(description="The items.")


class KindMetrics(WireModel):
    triggered: Int = Field(description="Messages enqueued now, per kind.")
    sent: Int = Field(description="Messages the shop's webhook took.")
    failed: Int = Field(
        description="Messages dead-lettered after every attempt failed (replay sends them again)."
    )
    pending: Int = Field(description="Messages waiting: due later, being delivered or retried.")
    skipped: dict[str, Int] = Field(description="Messages not sent, per reason.")


class AlertMetrics(WireModel):
    kinds: dict[str, KindMetrics] = Field(description="Per message kind.")


class WebhookEndpointIn(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://shop.example/hooks/omnisdk",
                    "kinds": ["back_in_stock", "abandoned_cart"],
                }
            ]
        }
    )

    url: str = Field(
        description="Where the signed webhooks are posted (http or https).",
        min_length=8,
        max_length=2000,
        pattern=r"^https?://",
    )
    kinds: list[Kind] = Field(default_factory=list, description="Empty: every kind.")


class WebhookEndpoint(WireModel):
    id: str = Field(description="The record's id.")
    url: str = Field(description="Where the signed webhooks are posted (http or https).")
    kinds: list[Kind] = Field(description="Per message kind.")
    created_at: datetime = Field(description="When it was made.")
    secret: str | None = Field(
        default=None,
        description="The signing secret (`whsec_...`), shown once at creation.",
    )


class WebhookEndpointList(WireModel):
    items: list[WebhookEndpoint] = Field(description="The items.")


class ReplayResult(WireModel):
    replayed: Int = Field(description="Messages set to be decided and delivered again.")


class MessagePayload(WireModel):
    """The body of a message's webhook (`type` is `message.<kind>`)."""

    type: str = Field(description="`message.<kind>`.")
    timestamp: datetime = Field(description="When the message was decided.")
    data: dict[str, Any] = Field(
        description="The message: customer, channel, item, price, consent decision relied on."
    )


class AvailabilityList(WireModel):
    items: list[Availability] = Field(description="The items.")


class ReplayRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"ids": ["msg_0123456789abcdef01234567"]}]}
    )

    ids: list[Annotated[str, Field(max_length=40)]] | None = Field(
        default=None, max_length=1000, description="Messages to send again; null: every failed one."
    )


class AvailabilityLookup(WireModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": ["TR2|size=38", "CAP"]}]})

    items: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        min_length=1,
        max_length=200,
        description="Item keys (`sku` or `sku|option=value;...`, as cart lines have).",
    )
