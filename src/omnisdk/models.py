"""Pydantic models of the wire format, shared by the SDK (to read answers) and the server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    WithJsonSchema,
)

from omnisdk.core.channels import Channel, Scope
from omnisdk.core.consent import (
    CUSTOM_PURPOSE,
    DEFAULT_SKEW_SECONDS,
    DOUBLE_OPT_IN_DEFAULT,
    ConsentScope,
    Status,
)
from omnisdk.core.events import MAX_BATCH, MAX_CUSTOMER_ID, MAX_EVENT_ID, shallow
from omnisdk.core.identifiers import MAX_VALUE_LENGTH, IdentifierType
from omnisdk.core.orders import LinkMethod
from omnisdk.core.preferences import PreferenceSource, PreferredChannel
from omnisdk.core.profile import BuyerType, Lifecycle
from omnisdk.core.strict_json import strict
from omnisdk.core.tokens import VerificationKey

# JSON's types, not Python's conversions: `true` or "1" where a number belongs is refused (422),
# as the OpenAPI document promises (tests/server/test_openapi_contract.py checks it).
Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]
Bool = Annotated[bool, Strict()]
SkuCount = Annotated[
    tuple[str, Int],
    WithJsonSchema(
        {
            "type": "array",
            "description": "[sku, count]: the SKU (a string), then how often (an integer).",
            "items": {"type": ["string", "integer"]},
            "minItems": 2,
            "maxItems": 2,
        }
    ),
]


def _storable_instant(value: datetime) -> datetime:
    """The time in UTC, if every store can hold it: a time zone is required (a naive time
    compared with a stored one failed), and the first and last days of the calendar are
    refused (moving them to UTC overflows)."""
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time lies beyond the calendar once moved to UTC") from None
    if not 1 < value.year < 9999:
        raise ValueError("the time must lie between the years 2 and 9998")
    return value


Instant = Annotated[AwareDatetime, AfterValidator(_storable_instant)]


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Principal(WireModel):
    """Who a request is: the tenant, the key's public id, its channel and scopes."""

    tenant_id: str = Field(description="The key's tenant.")
    key_id: str = Field(description="The API key's public id (`key_...`); never the secret.")
    channel: Channel = Field(description="The key's channel.")
    scopes: list[Scope] = Field(description="The key's scopes.")


class PingRequest(WireModel):
    """A write that changes nothing: proves a key can write, and measures the stack."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"message": "hello", "sequence": 1}]})

    message: str = Field(description="Any short text; echoed back.", default="ping", max_length=256)
    sequence: Int = Field(
        description="A number of the caller's (echoed), to match answers to requests.",
        default=0,
        ge=0,
    )


class Pong(WireModel):
    message: str = Field(description="The message sent (echoed).")
    sequence: Int = Field(
        description="A number of the caller's (echoed), to match answers to requests."
    )
    tenant_id: str = Field(description="The caller's tenant.")
    channel: Channel = Field(description="The caller's channel.")
    received_at: datetime = Field(description="When the server received the ping.")


class ApiKeyCreate(WireModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"channel": "web", "name": "web shop backend"}]}
    )

    channel: Channel = Field(
        description="The channel the key is for; it decides the key's default scopes."
    )
    name: str = Field(
        description="A label for the key (say, which backend uses it).", default="", max_length=100
    )
    scopes: list[Scope] | None = Field(
        default=None, description="A subset of the channel's default scopes; all of them if absent."
    )


class ApiKey(WireModel):
    """An API key as the server shows it: never the secret, except `secret` once at creation."""

    key_id: str = Field(description="The API key's public id (`key_...`); never the secret.")
    tenant_id: str = Field(description="The shop (tenant) the record belongs to.")
    channel: Channel = Field(description="The channel the key is for.")
    name: str = Field(description="The key's label.")
    scopes: list[Scope] = Field(description="What the key may do, such as `events:write`.")
    created_at: datetime = Field(description="When the key was made.")
    revoked_at: datetime | None = Field(
        default=None, description="When it was revoked; null while it is valid."
    )


class CreatedApiKey(ApiKey):
    secret: str | None = Field(
        description="The full API key. Shown once; the server keeps only a hash. None when the "
        "answer is a replay of the same request (`Idempotent-Replayed`): the secret is not "
        "kept, so revoke that key and create another."
    )


class ApiKeyList(WireModel):
    items: list[ApiKey] = Field(description="Every key of the tenant, revoked ones included.")


# --- identity -------------------------------------------------------------------------------

IdentifierValue = Annotated[str, Field(max_length=MAX_VALUE_LENGTH + 64)]


class IdentifierIn(WireModel):
    """An identifier as a shop sends it; `shared` marks a device many people use."""

    type: IdentifierType = Field(
        description="`anonymous`, `customer_ref`, `email`, `phone` or `loyalty_card`."
    )
    value: IdentifierValue = Field(
        description="The identifier's value (e-mail and phone are normalised and hashed)."
    )
    shared: Bool = Field(
        default=False,
        description="Mark it shared (admin keys): it then never links or merges customers.",
    )


class IdentifyRequest(WireModel):
    """Link these identifiers to one customer (merging customers if they belong to several)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "anonymous_id": "laptop-7f3c",
                    "email": "amy@example.com",
                    "traits": {"first_name": "Amy"},
                }
            ]
        }
    )

    anonymous_id: IdentifierValue | None = Field(
        default=None, description="A device or browser id."
    )
    customer_ref: IdentifierValue | None = Field(
        default=None, description="The shop's own account id (one per customer)."
    )
    email: IdentifierValue | None = Field(
        default=None, description="An e-mail address: normalised and stored only as a keyed hash."
    )
    phone: IdentifierValue | None = Field(
        default=None,
        description=(
            "A phone number (E.164, or national with the tenant's country code): stored only as a "
            "keyed hash."
        ),
    )
    loyalty_card: IdentifierValue | None = Field(default=None, description="A loyalty card number.")
    identifiers: list[IdentifierIn] = Field(
        description="More identifiers, as type and value.", default_factory=list, max_length=20
    )
    traits: Annotated[dict[str, Any], AfterValidator(shallow), AfterValidator(strict)] = Field(
        description="Facts about the customer to store (merged key by key).", default_factory=dict
    )

    def all_identifiers(self) -> list[IdentifierIn]:
        named = [
            IdentifierIn(type=IdentifierType(name), value=value)
            for name, value in (
                ("anonymous", self.anonymous_id),
                ("customer_ref", self.customer_ref),
                ("email", self.email),
                ("phone", self.phone),
                ("loyalty_card", self.loyalty_card),
            )
            if value is not None
        ]
        return named + list(self.identifiers)


class CartMergeReport(WireModel):
    """How a merged customer's cart was folded into the survivor's."""

    from_customer_id: str = Field(description="The guest customer whose cart was folded in.")
    policy: str = Field(
        description="The merge policy used: `max`, `sum`, `guest_wins` or `customer_wins`."
    )
    from_lines: dict[str, Int] = Field(description="Line key -> quantity in the merged-in cart.")
    result: dict[str, Int] = Field(description="Line key -> quantity in the cart now.")


class IdentifyResult(WireModel):
    customer_id: str = Field(description="The customer the identifiers belong to now.")
    created: Bool = Field(description="A new customer was created for these identifiers.")
    merged: Bool = Field(description="Customers that were separate are now this one.")
    merged_customer_ids: list[str] = Field(
        description="Customers merged into this one by this call.", default_factory=list
    )
    merge_ids: list[str] = Field(
        description="The merges made (an admin can split each).", default_factory=list
    )
    dropped_identifiers: list[str] = Field(
        default_factory=list, description="Links dropped by the per-type limits (masked)."
    )
    cart_merges: list[CartMergeReport] = Field(
        description="Guest carts folded into the customer's cart.", default_factory=list
    )


class ResolveRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"type": "email", "value": "amy@example.com"}]}
    )

    type: IdentifierType = Field(description="The identifier's type.")
    value: IdentifierValue = Field(description="The identifier's value.")


class Resolution(WireModel):
    customer_id: str = Field(description="The customer the identifier belongs to.")


class SharedIdentifierRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"type": "anonymous", "value": "pos-terminal-7", "shared": True}]
        }
    )

    type: IdentifierType = Field(description="The identifier's type.")
    value: IdentifierValue = Field(description="The identifier's value.")
    shared: Bool = Field(
        default=True, description="True to mark it shared, false to clear the mark."
    )


class IdentifierView(WireModel):
    type: IdentifierType = Field(description="The identifier's type.")
    value: str = Field(description="The value; for e-mail and phone only a hash prefix.")
    shared: Bool = Field(description="Marked shared: never links or merges customers.")
    linked_at: datetime = Field(description="When it was linked to the customer.")


class Merge(WireModel):
    merge_id: str = Field(description="The merge's id.")
    survivor_id: str = Field(description="The customer that remains (the older one).")
    loser_id: str = Field(
        description="The customer merged into it; its id still resolves to the survivor."
    )
    cause: str = Field(description="The identifier that joined them (masked).")
    channel: Channel = Field(description="The channel of the request that caused the merge.")
    created_at: datetime = Field(description="When the customers were merged.")
    split_at: datetime | None = Field(
        default=None, description="When the merge was undone; null while it stands."
    )


class MergeList(WireModel):
    items: list[Merge] = Field(description="The merges, oldest first.")


# --- events and profile ---------------------------------------------------------------------


class EventIn(WireModel):
    """One event. Name the customer by `customer_id`, `anonymous_id` or an `identifier`."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "product_viewed",
                    "customer_id": "cus_4f2a9c1e7b",
                    "properties": {"sku": "TR2", "category": "running"},
                    "timestamp": "2026-11-24T09:30:00Z",
                    "event_id": "evt-0001",
                }
            ]
        }
    )

    name: str = Field(
        description=(
            "The event's name: lower-case letters, digits and `_ . : -`, such as `product_viewed`."
        ),
        max_length=64,
    )
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EVENT_ID,
        description="Makes delivery idempotent.",
    )
    customer_id: str | None = Field(
        description=(
            "The customer, by id (name exactly one of customer_id, anonymous_id, identifier)."
        ),
        default=None,
        max_length=MAX_CUSTOMER_ID,
    )
    anonymous_id: IdentifierValue | None = Field(
        default=None, description="The customer, by a device or browser id (created if new)."
    )
    identifier: IdentifierIn | None = Field(
        default=None,
        description="The customer, by another identifier (e-mail, phone, loyalty card, ...).",
    )
    properties: Annotated[dict[str, Any], AfterValidator(shallow)] = Field(
        description="The event's properties (JSON object, at most 32 KiB).", default_factory=dict
    )
    channel: Channel | None = Field(default=None, description="Defaults to the key's channel.")
    timestamp: datetime | None = Field(default=None, description="Defaults to now.")


class TrackResult(WireModel):
    """What became of one event sent with `events.send`."""

    event_id: str = Field(description="The event's id (yours, or the one the SDK gave it).")
    customer_id: str | None = Field(
        description=(
            "The customer the event is attributed to; null when it was stored without "
            "identifiers (no analytics consent when it happened)."
        )
    )
    duplicate: Bool = Field(description="True if an event with this id was already stored.")


class EventBatch(WireModel):
    events: list[EventIn] = Field(
        description="1 to 500 events.", min_length=1, max_length=MAX_BATCH
    )


class EventRejection(WireModel):
    index: Int = Field(description="The position of the event in the batch (from 0).")
    event_id: str | None = Field(description="The refused event's id, if it had one.")
    type: str = Field(description="The problem type (a URI of docs/errors.md).")
    detail: str = Field(description="Why, in words a developer can act on.")


class BatchResult(WireModel):
    accepted: Int = Field(description="How many events were stored.")
    duplicates: Int = Field(description="How many had an id already stored (not stored again).")
    rejected: list[EventRejection] = Field(
        description="The events refused, each with its index and reason.", default_factory=list
    )


class EventView(WireModel):
    event_id: str = Field(description="The event's id: an event is stored once per id.")
    name: str = Field(description="The event's name.")
    channel: Channel = Field(description="The channel it was recorded on.")
    occurred_at: datetime = Field(description="When it happened.")
    properties: dict[str, Any] = Field(description="The event's properties.")


class TimelinePage(WireModel):
    items: list[EventView] = Field(description="Events, newest first.")
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null on the last page."
    )


class AnnotationKind(StrEnum):
    NOTE = "note"
    WARNING = "warning"
    PREFERENCE = "preference"
    PROMISE = "promise"


class AnnotationVisibility(StrEnum):
    DEPARTMENT = "department"
    STAFF = "staff"
    CUSTOMER = "customer"


class AnnotationIn(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"department": "service", "author": "jonas", "text": "Prefers calls after 6 pm."}
            ]
        }
    )

    department: str = Field(
        description="The department that wrote it: `service`, `marketing` or `finance`.",
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        examples=["service"],
    )
    author: str = Field(
        description="Who wrote it (a staff name or id).", min_length=1, max_length=100
    )
    text: str = Field(description="The note's text.", min_length=1, max_length=2000)
    kind: AnnotationKind = Field(
        default=AnnotationKind.NOTE, description="`note`, `warning`, `preference` or `promise`."
    )
    visibility: AnnotationVisibility = Field(
        default=AnnotationVisibility.STAFF,
        description=(
            "`department` (only its own department's staff), `staff` (every department and shop "
            "backend) or `customer` (also in her data export)."
        ),
    )
    pinned: Bool = Field(default=False, description="Shown first, above the other notes.")
    expires_at: Instant | None = Field(
        default=None, description="From then on the note is no longer shown (it is kept)."
    )


class Annotation(AnnotationIn):
    annotation_id: str = Field(description="The note's id.")
    created_at: datetime = Field(description="When it was created (UTC, ISO 8601).")
    revision: Int = Field(default=1, description="1 when written; each edit adds one.")
    updated_at: datetime | None = Field(default=None, description="When it was last edited.")
    deleted_at: datetime | None = Field(
        default=None, description="When it was deleted (soft: the revisions stay)."
    )
    delete_reason: str | None = Field(default=None, description="Why it was deleted.")


class AnnotationEdit(WireModel):
    """What an edit changes: the members sent; the others stay."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"text": "Prefers calls after 7 pm.", "pinned": True}]}
    )

    author: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description="Who edits (staff keys: ignored, the key's staff member is the editor).",
    )
    department: str | None = Field(
        default=None,
        pattern=r"^[a-z][a-z0-9_-]{0,31}$",
        description="The editor's department (staff keys: ignored, the key's is used).",
    )
    text: str | None = Field(default=None, min_length=1, max_length=2000)
    kind: AnnotationKind | None = None
    visibility: AnnotationVisibility | None = None
    pinned: Bool | None = None
    expires_at: Instant | None = None


class AnnotationDeletion(WireModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"reason": "written on the wrong customer"}]}
    )

    reason: str = Field(
        description="Why it is deleted (kept with it).", min_length=3, max_length=500
    )
    author: str | None = Field(default=None, min_length=1, max_length=100)
    department: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_-]{0,31}$")


class AnnotationRevision(WireModel):
    revision: Int
    action: str = Field(description="`created`, `edited` or `deleted`.")
    text: str
    kind: AnnotationKind
    visibility: AnnotationVisibility
    pinned: Bool
    expires_at: datetime | None = None
    editor: str
    editor_department: str
    reason: str | None = None
    edited_at: datetime


class AnnotationList(WireModel):
    items: list[Annotation]


class AnnotationRevisionList(WireModel):
    items: list[AnnotationRevision]


class PreferredChannelIn(WireModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"channel": "sms"}]})

    channel: PreferredChannel | None = Field(
        description="The channel she says she prefers; null withdraws her declaration."
    )


class PreferredChannelView(WireModel):
    customer_id: str
    channel: PreferredChannel | None = Field(description="Her preferred channel, if any.")
    source: PreferenceSource = Field(
        description="`declared` (she said so; wins), `observed` (from engagement) or `none`."
    )


class LifetimeValue(WireModel):
    """A customer's lifetime value scores (docs/analytics.md); content rules read `ltv.*`."""

    fitted_at: datetime = Field(description="When the model was fitted.")
    p_alive: Float = Field(description="Probability that she is still an active customer.")
    purchases_90: Float = Field(description="Expected purchases in the next 90 days.")
    purchases_365: Float = Field(description="Expected purchases in the next 365 days.")
    value_per_purchase: Float = Field(description="Expected net value of one purchase.")
    clv: Float = Field(description="Expected net value of her next 12 months, discounted.")


class RfmScores(WireModel):
    """Recency, frequency and monetary quintiles: 5 is the most recent, frequent, valuable."""

    fitted_at: datetime = Field(description="When the scores were computed.")
    recency: Int = Field(ge=1, le=5)
    frequency: Int = Field(ge=1, le=5)
    monetary: Int = Field(ge=1, le=5)
    score: Int = Field(description="recency x 100 + frequency x 10 + monetary (111..555).")


class OrderSummary(WireModel):
    count: Int = Field(description="Number of orders (one per `order_id`).")
    total_value: Float = Field(description="Sum of the orders' `value`.")


class Purchases(WireModel):
    """Her orders on every channel (store sales included), net of returns and refunds."""

    net_value: Float = Field(
        default=0.0, description="What her orders are worth, less what was returned or refunded."
    )
    refunded: Float = Field(default=0.0, description="What was returned or refunded.")
    by_channel: dict[str, Int] = Field(
        default_factory=dict, description="Orders per channel (`web`, `app`, `pos`)."
    )
    gift_units: Int = Field(default=0, description="Units bought as gifts (order lines).")
    self_units: Int = Field(default=0, description="Units bought for herself (order lines).")
    last_order_at: datetime | None = Field(default=None, description="When she last ordered.")


class CartSummary(WireModel):
    lines: Int = Field(description="Number of lines in the cart.")
    units: Int = Field(description="Number of units in the cart.")
    value: Float | None = Field(description="From the shop's price snapshots, if all have one.")
    updated_at: datetime = Field(description="When the cart last changed.")
    abandoned: Bool = Field(description="Untouched for the tenant's abandoned_after_hours.")
    skus: list[str] = Field(default_factory=list, description="The products in it.")


class Profile(WireModel):
    """The single customer view."""

    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    created_at: datetime = Field(description="When the customer was first seen by the server.")
    previous_ids: list[str] = Field(description="Ids of customers merged into this one.")
    identifiers: list[IdentifierView] = Field(
        description="Identifiers linked to the customer (e-mail and phone only as keyed hashes)."
    )
    traits: dict[str, Any] = Field(
        description="The shop's facts about the customer (name, tier, ...), as it sent them."
    )
    interests: dict[str, Float] = Field(description="Category -> time-decayed score, best first.")
    first_seen: datetime | None = Field(description="The time of her first event (or creation).")
    last_seen: dict[Channel, datetime] = Field(
        description="Per channel, the time of her last event there."
    )
    orders: OrderSummary = Field(description="Her orders: count and total value.")
    lifecycle: Lifecycle = Field(
        description="`new`, `active`, `lapsing` or `lapsed` (tenant profile settings)."
    )
    buyer_type: BuyerType = Field(description="`gift`, `self` or `unknown`, from her orders.")
    annotations: list[Annotation] = Field(description="Notes departments left on the customer.")
    recent_events: list[EventView] = Field(description="Her latest events, newest first.")
    cart: CartSummary | None = Field(
        default=None, description="A summary of her cart, with whether it is abandoned."
    )
    purchased_skus: list[str] = Field(
        default_factory=list, description="SKUs of her completed orders, newest first."
    )
    ltv: LifetimeValue | None = Field(
        default=None,
        description="Her lifetime value from the shop's latest fit (BG/NBD + Gamma-Gamma).",
    )
    rfm: RfmScores | None = Field(
        default=None, description="Her recency, frequency and monetary quintiles (1-5)."
    )
    purchases: Purchases = Field(
        default_factory=Purchases,
        description="Her orders on every channel, net of returns; gift and self units.",
    )
    preferred_channel: PreferredChannel | None = Field(
        default=None, description="Her preferred channel: declared wins over observed."
    )
    preferred_channel_source: PreferenceSource = Field(
        default=PreferenceSource.NONE, description="`declared`, `observed` or `none`."
    )
    segments: list[str] = Field(
        default_factory=list, description="Names of the shop's segments she is in now."
    )


# --- tenant settings ------------------------------------------------------------------------


class IdentitySettings(WireModel):
    limits: dict[IdentifierType, Int] = Field(
        default_factory=lambda: {
            IdentifierType.ANONYMOUS: 50,
            IdentifierType.EMAIL: 5,
            IdentifierType.PHONE: 3,
            IdentifierType.LOYALTY_CARD: 3,
        },
        description="Most identifiers of a type per customer; customer_ref is always 1.",
    )
    junk_patterns: list[str] = Field(
        default_factory=list, max_length=50, description="Regular expressions of junk values."
    )
    default_country_code: str | None = Field(
        description="Country calling code for phone numbers sent without one, such as `49`.",
        default=None,
        pattern=r"^[1-9][0-9]{0,2}$",
    )


class ProfileSettings(WireModel):
    new_days: Int = Field(
        description="Days a customer counts as `new` after first seen.", default=30, ge=1
    )
    active_days: Int = Field(
        description="Days since last seen within which she is `active`.", default=90, ge=1
    )
    lapsing_days: Int = Field(
        description="Days since last seen within which she is `lapsing` (then `lapsed`).",
        default=180,
        ge=1,
    )
    interest_half_life_days: Float = Field(
        description="Days after which an interest signal weighs half.", default=30.0, gt=0
    )


class TenantSettings(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "carts": {"merge_policy": "max", "abandoned_after_hours": 24},
                    "consent": {"analytics": "opt_in"},
                }
            ]
        }
    )

    identity: IdentitySettings = Field(
        description="Identity limits, junk patterns and the phone country code.",
        default_factory=IdentitySettings,
    )
    profile: ProfileSettings = Field(
        description="Lifecycle thresholds and the interests' half-life.",
        default_factory=ProfileSettings,
    )
    carts: CartSettings = Field(
        description="The guest cart merge policy and the abandoned-cart threshold.",
        default_factory=lambda: CartSettings(),
    )
    consent: ConsentSettings = Field(
        description="Analytics basis, skew window and double opt-in settings.",
        default_factory=lambda: ConsentSettings(),
    )
    retention: RetentionSettings = Field(
        description="How long events are kept (docs/scaling.md, 'History').",
        default_factory=lambda: RetentionSettings(),
    )
    notifications: NotificationSettings = Field(
        description="Quiet hours, frequency caps, pacing and channels of stock alerts.",
        default_factory=lambda: NotificationSettings(),
    )


# --- returns --------------------------------------------------------------------------------

RefundMethod = Literal["original_payment", "card", "cash", "store_credit", "voucher", "exchange"]
LineId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:-]+$")]


def _original_payment() -> list[RefundMethod]:
    return ["original_payment"]


class OrderLineIn(WireModel):
    line_id: LineId = Field(description="The order line's id, as the shop numbers its lines.")
    sku: str = Field(
        description="The product's SKU (1-64 characters, no `|`).", min_length=1, max_length=64
    )
    quantity: Int = Field(description="Units that may be returned.", ge=1, le=999)
    name: str | None = Field(
        description="The product's name, shown to the clerk.", default=None, max_length=200
    )
    unit_price: Float | None = Field(
        description="Price of one unit, in `currency`.", default=None, ge=0, le=999_999_999_999
    )


class IssueReturnRequest(WireModel):
    """Register an order's returnable lines and get a signed return code for it."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "order_ref": "A-2001",
                    "lines": [
                        {
                            "line_id": "1",
                            "sku": "TR2-38",
                            "quantity": 2,
                            "name": "Trail runner 38",
                            "unit_price": 89.0,
                        }
                    ],
                    "return_window_days": 30,
                    "refund_methods": ["card", "store_credit"],
                    "currency": "EUR",
                }
            ]
        }
    )

    order_ref: str = Field(
        description="The shop's own order reference.",
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._:/-]+$",
    )
    lines: list[OrderLineIn] = Field(
        description="The order's returnable lines.", min_length=1, max_length=50
    )
    return_window_days: Int = Field(
        description="Days the code stays valid (1-365).", default=30, ge=1, le=365
    )
    refund_methods: list[RefundMethod] = Field(
        description=(
            "How a refund may be paid: `original_payment`, `card`, `cash`, `store_credit`, "
            "`voucher` or `exchange`."
        ),
        default_factory=_original_payment,
        min_length=1,
    )
    customer_id: str | None = Field(
        description="The customer who ordered (kept on the server, never in the code).",
        default=None,
        max_length=40,
    )
    currency: str | None = Field(
        description="The currency of the lines' prices.", default=None, pattern=r"^[A-Z]{3}$"
    )


class IssuedReturn(WireModel):
    token: str = Field(description="RT1:… — the text of the QR code.")
    token_id: str = Field(description="The return code's id (32 hexadecimal digits).")
    order_ref: str = Field(description="The order the code is for.")
    issued_at: datetime = Field(description="When it was issued (UTC).")
    expires_at: datetime = Field(description="When it expires (UTC).")
    qr_png_path: str = Field(description="Where to fetch the code as a PNG image.")
    qr_svg_path: str = Field(description="Where to fetch the code as an SVG image.")


class RedeemLine(WireModel):
    line_id: LineId = Field(description="The order line's id, as the shop numbers its lines.")
    quantity: Int = Field(description="Units of the line to take back.", ge=1, le=999)


class RedeemRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": "RT1:6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3/XIV0W23NTDEXWK",
                    "lines": [{"line_id": "1", "quantity": 1}],
                    "till_transaction_id": "till-7-000123",
                    "store_id": "berlin-1",
                    "refund_method": "card",
                }
            ]
        }
    )

    token: str = Field(
        description="A return code as scanned: `RT1:` followed by Base45 text.",
        min_length=4,
        max_length=2000,
    )
    lines: list[RedeemLine] = Field(
        description="The lines and units to take back.", min_length=1, max_length=50
    )
    till_transaction_id: str = Field(
        description="The till's own transaction id: a retry with the same id is applied once.",
        min_length=1,
        max_length=100,
    )
    store_id: str = Field(
        description="The store where the return is taken.", min_length=1, max_length=64
    )
    refund_method: RefundMethod = Field(
        description="How the refund is paid (one of the code's `refund_methods`)."
    )


class ReturnedLine(WireModel):
    line_id: str = Field(description="The order line's id, as the shop numbers its lines.")
    sku: str = Field(description="The product's SKU (1-64 characters, no `|`).")
    quantity: Int = Field(description="Units taken back.")


class Redemption(WireModel):
    redemption_id: str = Field(
        description="The redemption's id (`pending-...` while queued offline)."
    )
    token_id: str = Field(description="The return code's id (32 hexadecimal digits).")
    order_ref: str = Field(description="The order the code is for.")
    till_transaction_id: str = Field(
        description="The till's own transaction id: a retry with the same id is applied once."
    )
    store_id: str = Field(description="The store where the return is taken.")
    refund_method: RefundMethod = Field(
        description="How the refund is paid (one of the code's `refund_methods`)."
    )
    lines: list[ReturnedLine] = Field(description="What was taken back.")
    value: Float | None = Field(description="The refund's value.")
    created_at: datetime = Field(description="When the units were taken back.")
    status: Literal["confirmed", "pending"] = Field(
        default="confirmed",
        description="`confirmed` by the server, or `pending` while queued offline.",
    )


class ReturnLineStatus(WireModel):
    line_id: str = Field(description="The order line's id, as the shop numbers its lines.")
    sku: str = Field(description="The product's SKU (1-64 characters, no `|`).")
    name: str | None = Field(description="The product's name.")
    quantity: Int = Field(description="Units on the code.")
    returned: Int = Field(description="Units already taken back.")
    remaining: Int = Field(description="Units that may still be returned.")
    unit_price: Float | None = Field(description="Price of one unit, in `currency`.")


class ReturnStatus(WireModel):
    """What the till shows after a scan: lines with what remains, and what was returned where."""

    token_id: str = Field(description="The return code's id (32 hexadecimal digits).")
    order_ref: str = Field(description="The shop's own order reference.")
    issued_at: datetime = Field(description="When it was issued (UTC).")
    expires_at: datetime = Field(description="When it expires (UTC).")
    revoked: Bool = Field(description="True if the shop revoked the code.")
    refund_methods: list[RefundMethod] = Field(
        description=(
            "How a refund may be paid: `original_payment`, `card`, `cash`, `store_credit`, "
            "`voucher` or `exchange`."
        )
    )
    currency: str | None = Field(description="The currency of the prices.")
    lines: list[ReturnLineStatus] = Field(
        description="Per line: units on the code, returned, remaining."
    )
    redemptions: list[Redemption] = Field(description="Redemptions made with the code.")


class PublishedKey(WireModel):
    kid: str = Field(description="Hex of the 8-byte key id in the token's protected header.")
    alg: Literal["EdDSA"] = Field(default="EdDSA", description="The signature algorithm (`EdDSA`).")
    crv: Literal["Ed25519"] = Field(default="Ed25519", description="The curve (`Ed25519`).")
    x: str = Field(description="The raw public key, base64url without padding (as in a JWK).")
    not_before: datetime = Field(description="When the key starts signing.")
    retires_at: datetime | None = Field(
        description="When codes signed with it stop verifying; null while it is current."
    )


class PublishedKeys(WireModel):
    issuer: str = Field(description="The issuer named in the shop's codes (its tenant id).")
    keys: list[PublishedKey] = Field(description="The keys that verify the shop's codes.")

    def verification_keys(self) -> dict[bytes, VerificationKey]:
        """The keys as the token codec takes them."""
        result = {}
        for key in self.keys:
            kid = bytes.fromhex(key.kid)
            raw = base64.urlsafe_b64decode(key.x + "=" * (-len(key.x) % 4))
            result[kid] = VerificationKey(kid, raw, key.not_before, key.retires_at)
        return result


# --- carts ----------------------------------------------------------------------------------

CartMergePolicy = Literal["max", "sum", "guest_wins", "customer_wins"]


class LineRef(WireModel):
    sku: str = Field(
        description="The product's SKU.", min_length=1, max_length=64, pattern=r"^[^|]+$"
    )
    options: dict[str, str] = Field(
        description="The line's options (size, colour, ...), part of the line's identity.",
        default_factory=dict,
        max_length=10,
    )


class LineAttributes(WireModel):
    name: str | None = Field(
        description="The product's name to show.", default=None, max_length=200
    )
    unit_price: Float | None = Field(
        description="Price of one unit, in `currency`.", default=None, ge=0, lt=1e9
    )
    currency: str | None = Field(
        description="ISO 4217 currency code, such as `EUR`.", default=None, pattern=r"^[A-Z]{3}$"
    )
    image_url: str | None = Field(
        description="An image of the product, for display on every channel.",
        default=None,
        max_length=500,
    )


class CartOpIn(WireModel):
    """One cart operation. `op_id` is "replica:seq", unique per operation (it is applied once)."""

    op_id: str = Field(
        description="The operation's id, `replica:seq`: each id is applied once.",
        pattern=r"^[^\s:][^\s]{0,63}:[0-9]{1,15}$",
    )
    type: Literal["add", "remove", "clear"] = Field(
        description=(
            "`add` (a delta of units), `remove` (a line as seen) or `clear` (the cart as seen)."
        )
    )
    line: LineRef | None = Field(
        default=None, description="The line an `add` or `remove` is about."
    )
    delta: Int = Field(
        description="For `add`: units to add (negative: to take away), -999 to 999, never 0.",
        default=0,
        ge=-999,
        le=999,
    )
    attributes: LineAttributes | None = Field(
        default=None, description="For `add`: the line's display attributes (latest write wins)."
    )
    observed: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="For remove and clear: the operation ids of the adds the client saw.",
    )


class CartOps(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "ops": [
                        {
                            "op_id": "web-3f9a:1",
                            "type": "add",
                            "line": {"sku": "TR2", "options": {"size": "38"}},
                            "delta": 1,
                            "attributes": {
                                "name": "Trail runner",
                                "unit_price": 89.0,
                                "currency": "EUR",
                            },
                        }
                    ]
                }
            ]
        }
    )

    ops: list[CartOpIn] = Field(
        description="The operations, applied all or none, in order.", min_length=1, max_length=100
    )


class CartLineView(WireModel):
    key: str = Field(description="The line's key: the SKU and its options (`TR2|size=38`).")
    sku: str = Field(description="The product's SKU (1-64 characters, no `|`).")
    options: dict[str, str] = Field(
        description="The line's options (size, colour, ...), part of the line's identity."
    )
    quantity: Int = Field(description="Units of the line in the cart.")
    name: str | None = Field(description="The product's name as the shop last wrote it.")
    unit_price: Float | None = Field(description="Price of one unit, in `currency`.")
    currency: str | None = Field(description="ISO 4217 currency code, such as `EUR`.")
    image_url: str | None = Field(
        description="An image of the product, for display on every channel."
    )
    observed: list[str] = Field(description="Send these with a remove of this line.")


class CartView(WireModel):
    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    version: Int = Field(
        description="The cart's version: send it as `If-Match` to mark it ordered."
    )
    lines: list[CartLineView] = Field(description="The cart's lines.")
    updated_at: datetime | None = Field(
        description="When the cart last changed; null for a cart never written."
    )
    applied: list[str] = Field(default_factory=list, description="Op ids applied by this call.")
    duplicates: list[str] = Field(default_factory=list, description="Op ids applied before.")


class CartChange(WireModel):
    """A change of the customer's cart on the feed: the new state of the lines it touched
    (quantity 0: the line is gone), not the whole cart."""

    customer_id: str = Field(description="The customer whose cart changed.")
    version: Int = Field(description="The cart's version after the change.")
    updated_at: datetime | None = Field(default=None, description="When it changed.")
    lines: list[CartLineView] = Field(default_factory=list, description="The lines touched.")


class MarkOrdered(WireModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"order_ref": "A-2001"}]})

    order_ref: str = Field(
        description="The shop's reference of the order the cart becomes (placed once).",
        min_length=1,
        max_length=64,
    )


class CartSettings(WireModel):
    merge_policy: CartMergePolicy = Field(
        default="max",
        description=(
            "How a guest cart joins the customer's on sign-in: `max`, `sum`, `guest_wins` or "
            "`customer_wins`."
        ),
    )
    abandoned_after_hours: Float = Field(
        description="Hours without change after which a cart counts as abandoned.",
        default=24.0,
        gt=0,
    )


def _known_time_zone(name: str) -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {name!r}: use an IANA name such as Europe/Berlin"
        ) from None
    return name


MarketingChannel = Literal["email", "push", "sms"]
FALLBACK_CHANNELS: tuple[MarketingChannel, ...] = ("email", "push", "sms")


class NotificationSettings(WireModel):
    """Stock alerts and messages (docs/notifications.md)."""

    quiet_hours_start: str | None = Field(
        default=None,
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="Start of the quiet hours (HH:MM in the customer's time zone, such as "
        "21:00); null (the default): no quiet hours.",
    )
    quiet_hours_end: str | None = Field(
        default=None,
        pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$",
        description="End of the quiet hours (HH:MM); messages due inside wait until then.",
    )
    time_zone: Annotated[str, AfterValidator(_known_time_zone)] = Field(
        default="UTC",
        max_length=64,
        description="The shop's default IANA time zone, for customers with no `time_zone` trait.",
    )
    max_per_day: Int = Field(
        default=2, ge=0, description="Most messages to one customer in 24 hours (0: no cap)."
    )
    max_per_week: Int = Field(
        default=5, ge=0, description="Most messages to one customer in 7 days (0: no cap)."
    )
    low_stock_threshold: Int = Field(
        default=5, ge=1, description="Units below which an item in carts counts as low stock."
    )
    pacing_factor: Float = Field(
        default=2.0,
        gt=0,
        le=1000,
        description="A restock notifies k x units waiting subscribers per pacing interval.",
    )
    pacing_interval_seconds: Float = Field(
        default=900.0, gt=0, description="Time between two batches of a restock's notifications."
    )
    fallback_channels: list[MarketingChannel] = Field(
        default_factory=lambda: list(FALLBACK_CHANNELS),
        description="Channels tried after the customer's preferred one, in this order.",
    )
    abandoned_cart: Bool = Field(
        default=True,
        description="Whether a cart idle for carts.abandoned_after_hours triggers a message.",
    )
    window_hours: Float = Field(
        default=168.0,
        gt=0,
        description="One message per rule, customer and SKU within a window of this length.",
    )
    max_attempts: Int = Field(
        default=8, ge=1, le=50, description="Delivery attempts before a message is dead-lettered."
    )


class ConsentSettings(WireModel):
    purposes: list[Annotated[str, Field(pattern=CUSTOM_PURPOSE.pattern)]] = Field(
        default_factory=list,
        max_length=50,
        description="The shop's own purposes, besides the standard ones (e.g. 'loyalty:scoring').",
    )
    double_opt_in: list[str] = Field(
        default_factory=lambda: list(DOUBLE_OPT_IN_DEFAULT),
        description="Purposes whose grant stays pending until its confirmation token returns.",
    )
    confirmation_ttl_hours: Float = Field(
        description="Hours a double opt-in confirmation token stays valid.",
        default=168.0,
        gt=0,
        le=24 * 90,
    )
    skew_seconds: Float = Field(
        default=DEFAULT_SKEW_SECONDS,
        ge=0,
        le=3600,
        description="Decisions of merged customers this close together: deny wins, re-prompt.",
    )
    analytics: Literal["opt_in", "legitimate_interest"] = Field(
        default="opt_in",
        description=(
            "opt_in: behavioural events of a customer without `analytics` consent are stored "
            "without identifiers. legitimate_interest: they are attributed (where the law lets "
            "the shop rely on it); a refusal (denied/withdrawn) is still obeyed."
        ),
    )


class RetentionSettings(WireModel):
    events_days: Int | None = Field(
        default=None,
        ge=1,
        description="Days a customer's events are kept (by the time they happened); "
        "unset: kept for good.",
    )
    anonymous_events_days: Int | None = Field(
        default=90,
        ge=1,
        description="Days events stored without identifiers (no analytics consent) are kept; "
        "unset: as long as `events_days`.",
    )


TenantSettings.model_rebuild()


# --- sessions -------------------------------------------------------------------------------


class SessionWrite(WireModel):
    """Keys to set (a null value deletes the key), and how long they live."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entries": {"last_page": "/landing/berlin", "questionnaire": {"step": 3}},
                    "ttl_seconds": 86400,
                }
            ]
        }
    )

    entries: Annotated[dict[str, Any], AfterValidator(shallow), AfterValidator(strict)] = Field(
        description="Keys to write; null deletes a key.", min_length=1, max_length=50
    )
    ttl_seconds: Int = Field(
        description="Seconds the keys live (default: the server's session TTL).",
        default=30 * 86_400,
        ge=60,
        le=365 * 86_400,
    )


class SessionEntryView(WireModel):
    value: Any = Field(description="The value written.")
    channel: str = Field(description="The channel that wrote it.")
    written_at: datetime = Field(description="When it was written (the latest write wins).")
    expires_at: datetime = Field(description="When it expires.")


class SessionView(WireModel):
    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    entries: dict[str, SessionEntryView] = Field(
        description="Live keys of the session, with their writer."
    )


class SessionChange(WireModel):
    """A change of the customer's session document on the feed: its live keys."""

    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    entries: dict[str, SessionEntryView] = Field(
        description="Session keys and their values.", default_factory=dict
    )


class ContentChange(WireModel):
    """The shop published a ruleset or rebuilt its recommendations (one of the two is set)."""

    ruleset_version: Int | None = Field(default=None, description="The new ruleset version.")
    recommendations: str | None = Field(default=None, description="The new model's ETag.")


class ResyncChange(WireModel):
    """Changes were missed (the watcher fell behind what the server keeps): reload what you
    cache about the customer; the feed goes on from `position`."""

    type: str = Field(description="The problem type of a resync (docs/errors.md).")
    title: str = ""
    status: Int = Field(default=409, description="The HTTP status the problem stands for.")
    detail: str = Field(default="", description="Why, in words a developer can act on.")
    position: Int = Field(description="Where the feed continues from.")


# --- consent --------------------------------------------------------------------------------

ConsentSource = Literal[
    "web_banner",
    "app_settings",
    "pos_signature_pad",
    "email_double_opt_in",
    "call_centre",
    "account_settings",
    "checkout",
    "other",
]


class NoticeIn(WireModel):
    """The notice the customer saw: its id, version and a SHA-256 of its exact text."""

    id: str = Field(
        description="The notice's id in the shop's records.", min_length=1, max_length=100
    )
    version: Int = Field(description="The notice's version.", default=0, ge=0)
    text_sha256: str | None = Field(
        description="SHA-256 (hex) of the notice's exact text.",
        default=None,
        pattern=r"^[0-9a-f]{64}$",
    )


class ConsentDecisionIn(WireModel):
    purpose: str = Field(
        description=(
            "The consent purpose, such as `analytics`, `personalisation` or `marketing:email`."
        ),
        min_length=1,
        max_length=64,
    )
    status: Status = Field(
        description=(
            "`granted`, `denied` or `withdrawn` (a double opt-in grant is recorded `pending`)."
        )
    )
    scope: ConsentScope = Field(
        default=ConsentScope.PERSON,
        description=(
            "`person` (merged across her devices) or `device` (this device only, never merged)."
        ),
    )
    device_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_VALUE_LENGTH,
        description="Required for device scope: the device's anonymous id.",
    )
    source: ConsentSource = Field(
        default="other",
        description=(
            "Where the decision was taken: `web_banner`, `app_settings`, `pos_signature_pad`, "
            "`email_double_opt_in`, `call_centre` or `other`."
        ),
    )
    method: str = Field(default="", max_length=40, description="e.g. click, checkbox, signature")
    notice: NoticeIn | None = Field(
        default=None, description="The notice the customer saw when deciding."
    )
    client_time: Instant | None = Field(
        default=None,
        description="When the customer decided, by the device's clock (with its UTC offset).",
    )
    queued: Bool = Field(
        default=False,
        description=(
            "Recorded while offline and delivered later (the SDK's outbox): ordered by "
            "client_time (never later than its arrival, at most 30 days earlier), so a decision "
            "made before one that arrived first does not override it."
        ),
    )


class RecordConsentRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "decisions": [
                        {
                            "purpose": "analytics",
                            "status": "granted",
                            "source": "web_banner",
                            "method": "click",
                            "notice": {"id": "privacy-notice", "version": 3},
                        }
                    ]
                }
            ]
        }
    )

    decisions: list[ConsentDecisionIn] = Field(
        description="The decisions to append (one per purpose).", min_length=1, max_length=20
    )


class ConsentDecisionView(WireModel):
    id: str = Field(description="The decision's id.")
    purpose: str = Field(
        description=(
            "The consent purpose, such as `analytics`, `personalisation` or `marketing:email`."
        )
    )
    status: Status = Field(description="`granted`, `denied`, `withdrawn` or `pending`.")
    scope: ConsentScope = Field(
        description=(
            "`person` (merged across her devices) or `device` (this device only, never merged)."
        )
    )
    device_id: str | None = Field(
        description="For device-scoped consent: the device's anonymous id."
    )
    channel: Channel = Field(description="The channel of the key that recorded it.")
    source: str = Field(
        description=(
            "Where the decision was taken: `web_banner`, `app_settings`, `pos_signature_pad`, "
            "`email_double_opt_in`, `call_centre` or `other`."
        )
    )
    method: str = Field(description="How the customer decided (click, checkbox, signature).")
    notice_id: str | None = Field(description="The id of the notice she saw.")
    notice_version: Int = Field(description="The version of that notice.")
    notice_sha256: str | None = Field(description="SHA-256 of the notice's exact text.")
    client_time: datetime | None = Field(
        description="When she decided, by the device's clock (if sent)."
    )
    recorded_at: datetime = Field(
        description=(
            "Its place in the ledger: the server's time, or `client_time` for a decision queued "
            "offline."
        )
    )
    confirms: str | None = Field(default=None, description="The pending decision confirmed.")


class PurposeStateView(WireModel):
    granted: Bool = Field(description="Whether the purpose may be used now.")
    status: Status | None = Field(
        description="The standing decision's status; null without any decision."
    )
    decided_at: datetime | None = Field(description="When the standing decision was recorded.")
    reprompt: Bool = Field(description="Merged decisions too close to order: ask again.")


class ConsentState(WireModel):
    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    device_id: str | None = Field(
        default=None, description="The device whose own decisions were applied, if asked for one."
    )
    purposes: dict[str, PurposeStateView] = Field(
        description="Per purpose: granted or not, its status and when it was decided."
    )
    consent_mode: dict[str, Literal["granted", "denied"]] = Field(
        description="Google Consent Mode v2 signals for gtag('consent', 'update', ...)."
    )


class ConsentChange(WireModel):
    """A change of the customer's consent on the feed (`merged_ids`: customers merged into
    her, whose cached consent is hers now)."""

    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    merged_ids: list[str] = Field(default_factory=list)
    state: ConsentState | None = None


class Confirmation(WireModel):
    """Put `token` in the confirmation link of the opt-in e-mail; `confirm` it when clicked."""

    purpose: str = Field(
        description=(
            "The consent purpose, such as `analytics`, `personalisation` or `marketing:email`."
        )
    )
    decision_id: str = Field(description="The pending decision the token confirms.")
    token: str | None = Field(
        description=(
            "Put this token in the opt-in e-mail's link; `POST /v1/consent/confirmations` confirms "
            "it. None when the answer is a replay of the same request (`Idempotent-Replayed`): "
            "the token is not kept; record the decision again for a new one."
        )
    )
    expires_at: datetime = Field(
        description="When the token stops confirming (tenant setting `confirmation_ttl_hours`)."
    )


class RecordConsentResult(WireModel):
    state: ConsentState = Field(description="The customer's consent after the decisions.")
    recorded: list[ConsentDecisionView] = Field(description="The decisions as recorded.")
    confirmations: list[Confirmation] = Field(
        description="Double opt-in tokens to send, one per pending grant.", default_factory=list
    )


class ConfirmConsentRequest(WireModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"token": "cft_2b7e151628aed2a6abf7158809cf4f3c"}]}
    )

    token: str = Field(
        description="The confirmation token from the opt-in e-mail's link.",
        min_length=1,
        max_length=2000,
    )


class ConsentHistory(WireModel):
    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    items: list[ConsentDecisionView] = Field(
        description="Every decision of the ledger, oldest first."
    )


# --- privacy --------------------------------------------------------------------------------


class CustomerExport(WireModel):
    """Everything held about a customer, across every id merged into it."""

    customer_id: str = Field(
        description=(
            "The customer's id (`cus_...`); a merged-away id still resolves to its survivor."
        )
    )
    exported_at: datetime = Field(description="When the export was made.")
    customer_ids: list[str] = Field(
        description="Every id of the customer, merged-away ones included."
    )
    traits: dict[str, Any] = Field(description="The shop's facts about her.")
    identifiers: list[dict[str, Any]] = Field(
        description="Her identifiers (e-mail and phone as keyed hashes only)."
    )
    events: list[dict[str, Any]] = Field(description="Every event attributed to her.")
    annotations: list[dict[str, Any]] = Field(
        description="Notes departments left on her and meant for her to see (`customer`)."
    )
    preferred_channel_declarations: list[dict[str, Any]] = Field(
        default_factory=list, description="Every preferred channel she declared, and how."
    )
    cart: dict[str, Any] | None = Field(description="Her cart, if she has one.")
    orders: list[dict[str, Any]] = Field(description="Carts she turned into orders.")
    order_records: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Her orders on every channel (store sales included), with their lines.",
    )
    session: dict[str, Any] | None = Field(description="Her session document.")
    consent: list[ConsentDecisionView] = Field(description="Her consent ledger.")
    returns: list[dict[str, Any]] = Field(description="Return codes issued for her orders.")
    merges: list[dict[str, Any]] = Field(description="Merges she took part in.")
    alerts: dict[str, Any] = Field(
        default_factory=dict,
        description="Her stock alert subscriptions and the messages decided for her.",
    )
    scores: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Her lifetime value and RFM scores from the latest fit (docs/analytics.md).",
    )


class ErasureReceipt(WireModel):
    erasure_id: str = Field(description="The erasure's id, kept as proof.")
    erased_at: datetime = Field(description="When she was erased.")
    customers: Int = Field(description="Customer records removed (the live one and merged ids).")
    removed: dict[str, Int] = Field(description="How many records of each kind were removed.")
    kept_anonymised: dict[str, Int] = Field(
        description="Kept for the law, with nothing linking them to the person."
    )


# --- content --------------------------------------------------------------------------------


class RulesetIn(WireModel):
    """A content ruleset to publish: slots with ordered variants (see docs/content.md)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "slots": {
                        "landing.hero": {
                            "variants": [
                                {
                                    "id": "billboard",
                                    "condition": {"campaign.id": "billboard-berlin-7"},
                                    "content": {"title": "Berlin runs. So do you."},
                                }
                            ],
                            "default": {"content": {"title": "Shoes for every day"}},
                        }
                    },
                    "note": "autumn campaign",
                }
            ]
        }
    )

    slots: Annotated[dict[str, dict[str, Any]], AfterValidator(shallow)] = Field(
        description=(
            "The slots: slot name -> `{variants: [...], default: {...}}` (see docs/content.md)."
        ),
        max_length=100,
    )
    note: str = Field(default="", max_length=200, description="What changed, for the audit.")


class RulesetVersionInfo(WireModel):
    version: Int = Field(description="The version number (1, 2, ...).")
    etag: str = Field(description="The version's entity tag, for `If-Match` and `If-None-Match`.")
    created_at: datetime = Field(description="When it was published.")
    author_key_id: str | None = Field(description="The admin key that published it.")
    note: str = Field(description="A note of the author about this version.")


class RulesetVersion(RulesetVersionInfo):
    slots: dict[str, dict[str, Any]] = Field(
        description="The slots: slot name -> its variants and default."
    )


class RulesetHistory(WireModel):
    items: list[RulesetVersionInfo] = Field(description="Published versions, newest first.")


class RecommendationModel(WireModel):
    etag: str = Field(description="The version's entity tag, for `If-Match` and `If-None-Match`.")
    built_at: datetime | None = Field(description="When the model was built.")
    baskets: Int = Field(description="Number of baskets (orders and carts) it was built from.")
    together: dict[str, list[SkuCount]] = Field(
        description="Per SKU: SKUs bought together with it, best first."
    )
    popular: list[SkuCount] = Field(description="The most bought SKUs, the fallback.")


# --- jobs -------------------------------------------------------------------------------------

JobState = Literal["queued", "running", "done", "failed"]


class JobIn(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"kind": "recommendations.rebuild", "params": {"full": False}}]
        }
    )

    kind: str = Field(
        min_length=1, max_length=64, description="What to run, e.g. `recommendations.rebuild`."
    )
    params: dict[str, Any] = Field(default_factory=dict, description="The kind's parameters.")


class Job(WireModel):
    """A long-running task of the tenant, run by the server outside any request."""

    job_id: str = Field(description="The job's id (`job_...`).")
    kind: str = Field(description="What it runs.")
    state: JobState = Field(description="queued, running, done or failed.")
    params: dict[str, Any] = Field(description="The parameters it was started with.")
    done: Int = Field(description="Units of work done so far.")
    total: Int | None = Field(description="Units of work in all, when known.")
    attempts: Int = Field(description="How many runs it took (resumed after a runner died: 2+).")
    result: dict[str, Any] | None = Field(description="What it produced, once done.")
    error: str | None = Field(description="Why it failed, if it did.")
    created_at: datetime = Field(description="When it was started.")
    started_at: datetime | None = Field(description="When a runner first took it.")
    heartbeat_at: datetime | None = Field(description="The runner's last sign of life.")
    finished_at: datetime | None = Field(description="When it finished.")


class JobList(WireModel):
    items: list[Job] = Field(description="The tenant's jobs, newest first.")


# --- orders ---------------------------------------------------------------------------------

OrderChannel = Literal["web", "app", "pos"]
OrderReference = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/#-]+$")]
Amount = Annotated[float, Strict(), Field(ge=0, le=999_999_999_999)]


def _iso_text(value: Any) -> Any:
    """A time on the wire is RFC 3339 text, not a number pydantic would read as epoch seconds."""
    if isinstance(value, int | float):
        raise ValueError("a time is RFC 3339 text with its UTC offset, not a number")
    return value


SaleTime = Annotated[Instant, BeforeValidator(_iso_text)]


class SaleLineIn(WireModel):
    """One line of an order: what was bought, how many, at what price, for whom."""

    sku: str = Field(description="The product's SKU.", min_length=1, max_length=64)
    quantity: Int = Field(description="Units bought.", ge=1, le=9_999)
    unit_price: Amount = Field(description="Price of one unit, in the order's currency.")
    gift: Bool | None = Field(
        default=None,
        description="Bought as a gift for someone else (gift wrap, gift receipt); true or "
        "false decides, null lets the server classify the line (docs/orders.md).",
    )
    gift_confidence: Float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="How sure the shop is of `gift` (set: the shop's own label is kept as it "
        "is; 1: the customer said so).",
    )
    category: str | None = Field(
        default=None, min_length=1, max_length=100, description="The product's category."
    )
    size: str | None = Field(default=None, min_length=1, max_length=32, description="Its size.")
    gender: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="Whom the product is for: `women`, `men`, `unisex`, ...",
    )
    age_band: str | None = Field(
        default=None,
        min_length=1,
        max_length=32,
        description="The age it is for: `adult`, `kids`, `baby`, ...",
    )


class RecordOrderRequest(WireModel):
    """An order on any channel: an online order, or a sale at a till. Name the buyer by at most
    one of `customer_id`, `customer_code`, `loyalty_id`, `email`, `phone`, `e_receipt_email`
    (none: an unlinked store sale)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "reference": "POS-7-000123",
                    "channel": "pos",
                    "store_id": "warsaw-1",
                    "currency": "EUR",
                    "lines": [{"sku": "TR2-38", "quantity": 1, "unit_price": 120.0}],
                    "customer_code": "CC1:...",
                }
            ]
        }
    )

    reference: OrderReference = Field(description="The shop's order reference (unique).")
    channel: OrderChannel | None = Field(
        default=None, description="Where it was sold (default: the API key's channel)."
    )
    store_id: str | None = Field(
        default=None, min_length=1, max_length=64, description="The store of a till sale."
    )
    currency: str = Field(description="ISO 4217 code, e.g. `EUR`.", pattern=r"^[A-Z]{3}$")
    placed_at: SaleTime | None = Field(default=None, description="When it was sold (default: now).")
    lines: list[SaleLineIn] = Field(description="What was bought.", min_length=1, max_length=500)
    total: Amount | None = Field(
        default=None,
        description="What the buyer paid (default: the sum of the lines; less after a discount).",
    )
    ship_to_other_name: Bool = Field(
        default=False, description="Shipped to someone else's name (evidence of a gift)."
    )
    ship_to_other_address: Bool = Field(
        default=False, description="Shipped to an address not hers (weak evidence of a gift)."
    )
    customer_id: str | None = Field(
        default=None,
        max_length=MAX_CUSTOMER_ID,
        description="The buyer's customer id, when the shop knows her (signed in).",
    )
    customer_code: str | None = Field(
        default=None,
        max_length=400,
        description="The signed customer code her app showed (`CC1:...`), as scanned.",
    )
    loyalty_id: str | None = Field(
        default=None, max_length=MAX_VALUE_LENGTH, description="Her loyalty card's number."
    )
    email: str | None = Field(
        default=None, max_length=MAX_VALUE_LENGTH, description="Matched as a keyed hash only."
    )
    phone: str | None = Field(
        default=None, max_length=MAX_VALUE_LENGTH, description="Matched as a keyed hash only."
    )
    e_receipt_email: str | None = Field(
        default=None,
        max_length=MAX_VALUE_LENGTH,
        description="The address she asked the e-receipt to go to (matched as a keyed hash).",
    )


class OrderLineView(WireModel):
    line_no: Int = Field(description="The line's number in the order, from 1.")
    sku: str = Field(description="The product's SKU.")
    quantity: Int = Field(description="Units bought.")
    unit_price: Float = Field(description="Price of one unit, in the order's currency.")
    gift: Bool = Field(description="Bought as a gift.")
    gift_confidence: Float | None = Field(description="How sure the shop was of `gift`.")
    returned_quantity: Int = Field(description="Units taken back so far.")


class OrderView(WireModel):
    """An order on any channel, net of what was returned or refunded."""

    order_id: str = Field(description="The order record's id (`ord_...`).")
    reference: str = Field(description="The shop's order reference.")
    customer_id: str | None = Field(description="The buyer (None: an unlinked store sale).")
    channel: OrderChannel = Field(description="Where it was sold: `web`, `app` or `pos`.")
    store_id: str | None = Field(description="The store of a sale at a till.")
    currency: str = Field(description="ISO 4217 code.")
    total: Float = Field(description="What the buyer paid.")
    refunded: Float = Field(description="What was given back (returns at a till, refunds).")
    net: Float = Field(description="`total - refunded`.")
    placed_at: datetime = Field(description="When it was sold.")
    link_method: LinkMethod = Field(description="How the buyer was identified.")
    link_confidence: Float = Field(description="How sure that link is, 0 to 1.")
    lines: list[OrderLineView] = Field(description="What was bought, and what came back.")
    created_at: datetime = Field(description="When the server recorded it.")


class RecordedOrder(WireModel):
    order: OrderView = Field(description="The order as stored.")
    created: Bool = Field(description="False: this reference was recorded before (a retry).")
    link_refused: str | None = Field(
        default=None,
        description=(
            "Why the sale was not linked to the buyer named: `consent` (she does not allow "
            "analytics), `unknown` (nobody has that identifier), `expired_code`."
        ),
    )


class RefundLineIn(WireModel):
    line_no: Int = Field(ge=1, le=500, description="The order line's number, from 1.")
    quantity: Int = Field(ge=1, le=9_999, description="Units taken back.")


class RefundRequest(WireModel):
    """Money given back on an order (each `refund_id` once): the lines taken back, an amount,
    or both (the amount defaults to the lines' value)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"refund_id": "RF-2001-1", "lines": [{"line_no": 1, "quantity": 1}]}]
        }
    )

    refund_id: str = Field(
        description="The shop's id of this refund: sending it again changes nothing.",
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:/#-]+$",
    )
    amount: Amount | None = Field(
        default=None, description="Money given back (default: the lines' value)."
    )
    lines: list[RefundLineIn] = Field(
        default_factory=list, max_length=500, description="Units taken back, by line number."
    )


class OrderList(WireModel):
    items: list[OrderView] = Field(description="Orders, newest first.")


class CustomerCodeIssued(WireModel):
    """A signed customer code for her app to show at a till: no personal data, short-lived."""

    code: str = Field(description="`CC1:` + Base45: put it in a QR code (alphanumeric mode).")
    code_id: str = Field(description="The code's random id (hex).")
    issued_at: datetime = Field(description="When it was signed.")
    expires_at: datetime = Field(description="When it stops linking sales (minutes later).")


# --- segments (issue 19) ----------------------------------------------------------------------


class SegmentIn(WireModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "running-fans",
                    "description": "Runners who buy for themselves",
                    "condition": {"top_interest": "running", "buyer_type": "self"},
                }
            ]
        }
    )

    name: str = Field(
        description="A slug, unique in the shop; content rules target it by this name.",
        pattern=r"^[a-z][a-z0-9_-]{0,63}$",
    )
    condition: dict[str, Any] = Field(
        description="A condition in the content rules' language over her profile attributes "
        "(`traits`, `interests`, `top_interest`, `lifecycle`, `buyer_type`, `orders.count`, "
        "`orders.value`, `consent.<purpose>`, `preferred_channel`)."
    )
    description: str = Field(default="", max_length=500, description="What it is for.")


class SegmentEdit(WireModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"condition": {"orders.count": {"$gte": 2}}}]}
    )

    condition: dict[str, Any] | None = Field(
        default=None, description="A new condition: a new version, backfilled."
    )
    description: str | None = Field(default=None, max_length=500)


class SegmentView(WireModel):
    segment_id: str
    name: str
    description: str
    condition: dict[str, Any]
    version: Int = Field(description="1 when created; each condition change adds one.")
    created_at: datetime
    updated_at: datetime
    backfilled_version: Int | None = Field(
        description="The version whose backfill finished: membership is complete from then."
    )
    backfill_done: Int = Field(default=0, description="Customers the running backfill has done.")
    backfill_total: Int = Field(default=0, description="Customers it has to do.")
    members: Int = Field(description="Customers in the segment now.")


class SegmentList(WireModel):
    items: list[SegmentView]


class SegmentMember(WireModel):
    customer_id: str
    entered_at: datetime


class SegmentMemberPage(WireModel):
    items: list[SegmentMember]
    next_after: str | None = Field(
        default=None, description="Pass as `after` for the next page; null on the last."
    )


class SegmentClause(WireModel):
    clause: dict[str, Any]
    holds: Bool
    values: dict[str, Any] = Field(description="Her values of the attributes it tests.")


class SegmentExplanation(WireModel):
    customer_id: str
    segment: str
    member: Bool = Field(description="Whether the membership table has her in it now.")
    holds: Bool = Field(description="Whether her profile meets the condition now.")
    entered_at: datetime | None = None
    clauses: list[SegmentClause]


class GiftCorrection(WireModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"gift": True, "by": "customer"}]})

    gift: Bool = Field(description="True: bought for someone else; False: for herself.")
    by: Literal["staff", "customer"] = Field(
        default="staff", description="Who says so: staff, or the customer herself."
    )


class GiftLabelView(WireModel):
    reference: str
    line_no: Int
    gift: Bool
    gift_confidence: Float
