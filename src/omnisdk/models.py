"""Pydantic models of the wire format, shared by the SDK (to read answers) and the server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

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
from omnisdk.core.profile import BuyerType, Lifecycle
from omnisdk.core.strict_json import strict
from omnisdk.core.tokens import VerificationKey


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

    tenant_id: str
    key_id: str
    channel: Channel
    scopes: list[Scope]


class PingRequest(WireModel):
    """A write that changes nothing: proves a key can write, and measures the stack."""

    message: str = Field(default="ping", max_length=256)
    sequence: int = Field(default=0, ge=0)


class Pong(WireModel):
    message: str
    sequence: int
    tenant_id: str
    channel: Channel
    received_at: datetime


class ApiKeyCreate(WireModel):
    channel: Channel
    name: str = Field(default="", max_length=100)
    scopes: list[Scope] | None = Field(
        default=None, description="A subset of the channel's default scopes; all of them if absent."
    )


class ApiKey(WireModel):
    """An API key as the server shows it: never the secret, except `secret` once at creation."""

    key_id: str
    tenant_id: str
    channel: Channel
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedApiKey(ApiKey):
    secret: str | None = Field(
        description="The full API key. Shown once; the server keeps only a hash. None when the "
        "answer is a replay of the same request (`Idempotent-Replayed`): the secret is not "
        "kept, so revoke that key and create another."
    )


class ApiKeyList(WireModel):
    items: list[ApiKey]


# --- identity -------------------------------------------------------------------------------

IdentifierValue = Annotated[str, Field(max_length=MAX_VALUE_LENGTH + 64)]


class IdentifierIn(WireModel):
    """An identifier as a shop sends it; `shared` marks a device many people use."""

    type: IdentifierType
    value: IdentifierValue
    shared: bool = False


class IdentifyRequest(WireModel):
    """Link these identifiers to one customer (merging customers if they belong to several)."""

    anonymous_id: IdentifierValue | None = None
    customer_ref: IdentifierValue | None = None
    email: IdentifierValue | None = None
    phone: IdentifierValue | None = None
    loyalty_card: IdentifierValue | None = None
    identifiers: list[IdentifierIn] = Field(default_factory=list, max_length=20)
    traits: Annotated[dict[str, Any], AfterValidator(shallow), AfterValidator(strict)] = Field(
        default_factory=dict
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

    from_customer_id: str
    policy: str
    from_lines: dict[str, int] = Field(description="Line key -> quantity in the merged-in cart.")
    result: dict[str, int] = Field(description="Line key -> quantity in the cart now.")


class IdentifyResult(WireModel):
    customer_id: str
    created: bool = Field(description="A new customer was created for these identifiers.")
    merged: bool = Field(description="Customers that were separate are now this one.")
    merged_customer_ids: list[str] = Field(default_factory=list)
    merge_ids: list[str] = Field(default_factory=list)
    dropped_identifiers: list[str] = Field(
        default_factory=list, description="Links dropped by the per-type limits (masked)."
    )
    cart_merges: list[CartMergeReport] = Field(default_factory=list)


class ResolveRequest(WireModel):
    type: IdentifierType
    value: IdentifierValue


class Resolution(WireModel):
    customer_id: str


class SharedIdentifierRequest(WireModel):
    type: IdentifierType
    value: IdentifierValue
    shared: bool = True


class IdentifierView(WireModel):
    type: IdentifierType
    value: str = Field(description="The value; for e-mail and phone only a hash prefix.")
    shared: bool
    linked_at: datetime


class Merge(WireModel):
    merge_id: str
    survivor_id: str
    loser_id: str
    cause: str = Field(description="The identifier that joined them (masked).")
    channel: Channel
    created_at: datetime
    split_at: datetime | None = None


class MergeList(WireModel):
    items: list[Merge]


# --- events and profile ---------------------------------------------------------------------


class EventIn(WireModel):
    """One event. Name the customer by `customer_id`, `anonymous_id` or an `identifier`."""

    name: str = Field(max_length=64)
    event_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_EVENT_ID,
        description="Makes delivery idempotent.",
    )
    customer_id: str | None = Field(default=None, max_length=MAX_CUSTOMER_ID)
    anonymous_id: IdentifierValue | None = None
    identifier: IdentifierIn | None = None
    properties: Annotated[dict[str, Any], AfterValidator(shallow)] = Field(default_factory=dict)
    channel: Channel | None = Field(default=None, description="Defaults to the key's channel.")
    timestamp: datetime | None = Field(default=None, description="Defaults to now.")


class TrackResult(WireModel):
    event_id: str
    customer_id: str
    duplicate: bool


class EventBatch(WireModel):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_BATCH)


class EventRejection(WireModel):
    index: int
    event_id: str | None
    type: str
    detail: str


class BatchResult(WireModel):
    accepted: int
    duplicates: int
    rejected: list[EventRejection] = Field(default_factory=list)


class EventView(WireModel):
    event_id: str
    name: str
    channel: Channel
    occurred_at: datetime
    properties: dict[str, Any]


class TimelinePage(WireModel):
    items: list[EventView]
    next_cursor: str | None = None


class AnnotationIn(WireModel):
    department: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$", examples=["service"])
    author: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=2000)


class Annotation(AnnotationIn):
    annotation_id: str
    created_at: datetime


class OrderSummary(WireModel):
    count: int
    total_value: float


class CartSummary(WireModel):
    lines: int
    units: int
    value: float | None = Field(description="From the shop's price snapshots, if all have one.")
    updated_at: datetime
    abandoned: bool = Field(description="Untouched for the tenant's abandoned_after_hours.")
    skus: list[str] = Field(default_factory=list, description="The products in it.")


class Profile(WireModel):
    """The single customer view."""

    customer_id: str
    created_at: datetime
    previous_ids: list[str] = Field(description="Ids of customers merged into this one.")
    identifiers: list[IdentifierView]
    traits: dict[str, Any]
    interests: dict[str, float] = Field(description="Category -> time-decayed score, best first.")
    first_seen: datetime | None
    last_seen: dict[Channel, datetime]
    orders: OrderSummary
    lifecycle: Lifecycle
    buyer_type: BuyerType
    annotations: list[Annotation]
    recent_events: list[EventView]
    cart: CartSummary | None = None
    purchased_skus: list[str] = Field(
        default_factory=list, description="SKUs of her completed orders, newest first."
    )


# --- tenant settings ------------------------------------------------------------------------


class IdentitySettings(WireModel):
    limits: dict[IdentifierType, int] = Field(
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
    default_country_code: str | None = Field(default=None, pattern=r"^[1-9][0-9]{0,2}$")


class ProfileSettings(WireModel):
    new_days: int = Field(default=30, ge=1)
    active_days: int = Field(default=90, ge=1)
    lapsing_days: int = Field(default=180, ge=1)
    interest_half_life_days: float = Field(default=30.0, gt=0)


class TenantSettings(WireModel):
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    profile: ProfileSettings = Field(default_factory=ProfileSettings)
    carts: CartSettings = Field(default_factory=lambda: CartSettings())
    consent: ConsentSettings = Field(default_factory=lambda: ConsentSettings())


# --- returns --------------------------------------------------------------------------------

RefundMethod = Literal["original_payment", "card", "cash", "store_credit", "voucher", "exchange"]
LineId = Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9._:-]+$")]


def _original_payment() -> list[RefundMethod]:
    return ["original_payment"]


class OrderLineIn(WireModel):
    line_id: LineId
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(ge=1, le=999)
    name: str | None = Field(default=None, max_length=200)
    unit_price: float | None = Field(default=None, ge=0)


class IssueReturnRequest(WireModel):
    """Register an order's returnable lines and get a signed return code for it."""

    order_ref: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:/-]+$")
    lines: list[OrderLineIn] = Field(min_length=1, max_length=50)
    return_window_days: int = Field(default=30, ge=1, le=365)
    refund_methods: list[RefundMethod] = Field(default_factory=_original_payment, min_length=1)
    customer_id: str | None = Field(default=None, max_length=40)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")


class IssuedReturn(WireModel):
    token: str = Field(description="RT1:… — the text of the QR code.")
    token_id: str
    order_ref: str
    issued_at: datetime
    expires_at: datetime
    qr_png_path: str
    qr_svg_path: str


class RedeemLine(WireModel):
    line_id: LineId
    quantity: int = Field(ge=1, le=999)


class RedeemRequest(WireModel):
    token: str = Field(min_length=4, max_length=2000)
    lines: list[RedeemLine] = Field(min_length=1, max_length=50)
    till_transaction_id: str = Field(min_length=1, max_length=100)
    store_id: str = Field(min_length=1, max_length=64)
    refund_method: RefundMethod


class ReturnedLine(WireModel):
    line_id: str
    sku: str
    quantity: int


class Redemption(WireModel):
    redemption_id: str
    token_id: str
    order_ref: str
    till_transaction_id: str
    store_id: str
    refund_method: RefundMethod
    lines: list[ReturnedLine]
    value: float | None
    created_at: datetime
    status: Literal["confirmed", "pending"] = "confirmed"


class ReturnLineStatus(WireModel):
    line_id: str
    sku: str
    name: str | None
    quantity: int
    returned: int
    remaining: int
    unit_price: float | None


class ReturnStatus(WireModel):
    """What the till shows after a scan: lines with what remains, and what was returned where."""

    token_id: str
    order_ref: str
    issued_at: datetime
    expires_at: datetime
    revoked: bool
    refund_methods: list[RefundMethod]
    currency: str | None
    lines: list[ReturnLineStatus]
    redemptions: list[Redemption]


class PublishedKey(WireModel):
    kid: str = Field(description="Hex of the 8-byte key id in the token's protected header.")
    alg: Literal["EdDSA"] = "EdDSA"
    crv: Literal["Ed25519"] = "Ed25519"
    x: str = Field(description="The raw public key, base64url without padding (as in a JWK).")
    not_before: datetime
    retires_at: datetime | None


class PublishedKeys(WireModel):
    issuer: str
    keys: list[PublishedKey]

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
    sku: str = Field(min_length=1, max_length=64, pattern=r"^[^|]+$")
    options: dict[str, str] = Field(default_factory=dict, max_length=10)


class LineAttributes(WireModel):
    name: str | None = Field(default=None, max_length=200)
    unit_price: float | None = Field(default=None, ge=0, lt=1e9)
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3}$")
    image_url: str | None = Field(default=None, max_length=500)


class CartOpIn(WireModel):
    """One cart operation. `op_id` is "replica:seq", unique per operation (it is applied once)."""

    op_id: str = Field(pattern=r"^[^\s:][^\s]{0,63}:[0-9]{1,15}$")
    type: Literal["add", "remove", "clear"]
    line: LineRef | None = None
    delta: int = Field(default=0, ge=-999, le=999)
    attributes: LineAttributes | None = None
    observed: list[str] = Field(
        default_factory=list,
        max_length=10_000,
        description="For remove and clear: the operation ids of the adds the client saw.",
    )


class CartOps(WireModel):
    ops: list[CartOpIn] = Field(min_length=1, max_length=100)


class CartLineView(WireModel):
    key: str
    sku: str
    options: dict[str, str]
    quantity: int
    name: str | None
    unit_price: float | None
    currency: str | None
    image_url: str | None
    observed: list[str] = Field(description="Send these with a remove of this line.")


class CartView(WireModel):
    customer_id: str
    version: int
    lines: list[CartLineView]
    updated_at: datetime | None
    applied: list[str] = Field(default_factory=list, description="Op ids applied by this call.")
    duplicates: list[str] = Field(default_factory=list, description="Op ids applied before.")


class MarkOrdered(WireModel):
    order_ref: str = Field(min_length=1, max_length=64)


class CartSettings(WireModel):
    merge_policy: CartMergePolicy = "max"
    abandoned_after_hours: float = Field(default=24.0, gt=0)


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
    confirmation_ttl_hours: float = Field(default=168.0, gt=0, le=24 * 90)
    skew_seconds: float = Field(
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


TenantSettings.model_rebuild()


# --- sessions -------------------------------------------------------------------------------


class SessionWrite(WireModel):
    """Keys to set (a null value deletes the key), and how long they live."""

    entries: Annotated[dict[str, Any], AfterValidator(shallow), AfterValidator(strict)] = Field(
        min_length=1, max_length=50
    )
    ttl_seconds: int = Field(default=30 * 86_400, ge=60, le=365 * 86_400)


class SessionEntryView(WireModel):
    value: Any
    channel: str
    written_at: datetime
    expires_at: datetime


class SessionView(WireModel):
    customer_id: str
    entries: dict[str, SessionEntryView]


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

    id: str = Field(min_length=1, max_length=100)
    version: int = Field(default=0, ge=0)
    text_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")


class ConsentDecisionIn(WireModel):
    purpose: str = Field(min_length=1, max_length=64)
    status: Status
    scope: ConsentScope = ConsentScope.PERSON
    device_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_VALUE_LENGTH,
        description="Required for device scope: the device's anonymous id.",
    )
    source: ConsentSource = "other"
    method: str = Field(default="", max_length=40, description="e.g. click, checkbox, signature")
    notice: NoticeIn | None = None
    client_time: Instant | None = Field(
        default=None,
        description="When the customer decided, by the device's clock (with its UTC offset).",
    )
    queued: bool = Field(
        default=False,
        description=(
            "Recorded while offline and delivered later (the SDK's outbox): ordered by "
            "client_time (never later than its arrival, at most 30 days earlier), so a decision "
            "made before one that arrived first does not override it."
        ),
    )


class RecordConsentRequest(WireModel):
    decisions: list[ConsentDecisionIn] = Field(min_length=1, max_length=20)


class ConsentDecisionView(WireModel):
    id: str
    purpose: str
    status: Status
    scope: ConsentScope
    device_id: str | None
    channel: Channel
    source: str
    method: str
    notice_id: str | None
    notice_version: int
    notice_sha256: str | None
    client_time: datetime | None
    recorded_at: datetime
    confirms: str | None = Field(default=None, description="The pending decision confirmed.")


class PurposeStateView(WireModel):
    granted: bool
    status: Status | None
    decided_at: datetime | None
    reprompt: bool = Field(description="Merged decisions too close to order: ask again.")


class ConsentState(WireModel):
    customer_id: str
    device_id: str | None = None
    purposes: dict[str, PurposeStateView]
    consent_mode: dict[str, Literal["granted", "denied"]] = Field(
        description="Google Consent Mode v2 signals for gtag('consent', 'update', ...)."
    )


class Confirmation(WireModel):
    """Put `token` in the confirmation link of the opt-in e-mail; `confirm` it when clicked."""

    purpose: str
    decision_id: str
    token: str | None = Field(
        description="None when the answer is a replay of the same request "
        "(`Idempotent-Replayed`): the token is not kept; record the decision again for a new one."
    )
    expires_at: datetime


class RecordConsentResult(WireModel):
    state: ConsentState
    recorded: list[ConsentDecisionView]
    confirmations: list[Confirmation] = Field(default_factory=list)


class ConfirmConsentRequest(WireModel):
    token: str = Field(min_length=1, max_length=2000)


class ConsentHistory(WireModel):
    customer_id: str
    items: list[ConsentDecisionView]


# --- privacy --------------------------------------------------------------------------------


class CustomerExport(WireModel):
    """Everything held about a customer, across every id merged into it."""

    customer_id: str
    exported_at: datetime
    customer_ids: list[str]
    traits: dict[str, Any]
    identifiers: list[dict[str, Any]]
    events: list[dict[str, Any]]
    annotations: list[dict[str, Any]]
    cart: dict[str, Any] | None
    orders: list[dict[str, Any]]
    session: dict[str, Any] | None
    consent: list[ConsentDecisionView]
    returns: list[dict[str, Any]]
    merges: list[dict[str, Any]]


class ErasureReceipt(WireModel):
    erasure_id: str
    erased_at: datetime
    customers: int = Field(description="Customer records removed (the live one and merged ids).")
    removed: dict[str, int]
    kept_anonymised: dict[str, int] = Field(
        description="Kept for the law, with nothing linking them to the person."
    )


# --- content --------------------------------------------------------------------------------


class RulesetIn(WireModel):
    """A content ruleset to publish: slots with ordered variants (see docs/content.md)."""

    slots: Annotated[dict[str, dict[str, Any]], AfterValidator(shallow)] = Field(max_length=100)
    note: str = Field(default="", max_length=200, description="What changed, for the audit.")


class RulesetVersionInfo(WireModel):
    version: int
    etag: str
    created_at: datetime
    author_key_id: str | None
    note: str


class RulesetVersion(RulesetVersionInfo):
    slots: dict[str, dict[str, Any]]


class RulesetHistory(WireModel):
    items: list[RulesetVersionInfo]


class RecommendationModel(WireModel):
    etag: str
    built_at: datetime | None
    baskets: int
    together: dict[str, list[tuple[str, int]]]
    popular: list[tuple[str, int]]
