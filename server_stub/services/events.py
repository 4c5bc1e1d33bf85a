"""Event ingestion: validate, attribute to a customer, store once per event id.

A batch is taken event by event: a bad event is rejected with its reason and the rest are
stored, so a sender can set the bad one aside (the outbox's dead letters) without losing the
others. An event names its customer by `customer_id`, `anonymous_id` or `identifier`; an
identifier never seen before creates a customer, exactly as `identify` with it alone would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pydantic
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel
from omnisdk.core.events import (
    MAX_EVENT_ID,
    TRANSACTIONAL_EVENTS,
    Extracted,
    InvalidEvent,
    cart_order_properties,
    check_event,
    check_names,
    order_event_id,
    without_identifiers,
)
from omnisdk.core.identifiers import (
    IdentifierKey,
    IdentifierType,
    InvalidIdentifier,
    hashed_contact_data,
)
from omnisdk.core.problems import ProblemType
from omnisdk.models import BatchResult, EventIn, EventRejection
from server_stub.ids import utcnow
from server_stub.services import consent, identity, segment_hook
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import events, identifiers

# The owner of events stored without identifiers: they count in aggregates, for no one.
ANONYMOUS = ""


class Rejected(Exception):  # an event refused, and why
    def __init__(self, type: ProblemType, detail: str) -> None:
        super().__init__(detail)
        self.type = type
        self.detail = detail


@dataclass
class _Pending:
    index: int
    event_id: str
    event: EventIn
    occurred_at: datetime
    extracted: Extracted
    customer_id: str | None = None
    key: IdentifierKey | None = None
    refusal: Rejected | None = None
    anonymous: bool = False  # stored without identifiers (no analytics consent)


@dataclass(frozen=True)
class Outcome:
    accepted: list[tuple[int, str, str]]  # index, event id, customer id ("" if stored anonymous)
    duplicates: list[tuple[int, str, str]]
    rejected: list[EventRejection]

    def summary(self) -> BatchResult:
        return BatchResult(
            accepted=len(self.accepted), duplicates=len(self.duplicates), rejected=self.rejected
        )


def _identity_of(context: TenantContext, event: EventIn) -> tuple[str | None, IdentifierKey | None]:
    named = [x for x in (event.customer_id, event.anonymous_id, event.identifier) if x is not None]
    if len(named) != 1:
        raise Rejected(
            ProblemType.INVALID_EVENT,
            "name the customer by exactly one of customer_id, anonymous_id or identifier",
        )
    if event.customer_id is not None:
        return event.customer_id, None
    item = event.identifier
    if item is not None and item.shared:
        raise Rejected(
            ProblemType.INVALID_IDENTIFIER,
            "a shared identifier cannot name the customer of an event; send customer_id",
        )
    kind, value = (
        (item.type, item.value)
        if item is not None
        else (IdentifierType.ANONYMOUS, event.anonymous_id)
    )
    try:
        return None, context.key(kind, value or "")
    except InvalidIdentifier as error:
        raise Rejected(
            ProblemType.INVALID_IDENTIFIER,
            f"{error.identifier_type} identifier refused: {error.reason}",
        ) from error


async def ingest(
    conn: AsyncConnection, context: TenantContext, channel: Channel, batch: list[EventIn]
) -> Outcome:
    """Store the valid events of `batch` (each at most once) and say what became of each."""
    now = utcnow()
    tenant_id = context.tenant_id
    rejected: list[EventRejection] = []
    pending: list[_Pending] = []
    for index, event in enumerate(batch):
        event_id = event.event_id or uuid.uuid4().hex
        try:
            occurred_at = event.timestamp or now
            check_names(event.event_id, event.customer_id)
            extracted = check_event(event.name, event.properties, occurred_at, now)
            customer_id, key = _identity_of(context, event)
        except InvalidEvent as error:
            rejected.append(_rejection(index, event_id, ProblemType.INVALID_EVENT, str(error)))
            continue
        except Rejected as error:
            rejected.append(_rejection(index, event_id, error.type, error.detail))
            continue
        pending.append(_Pending(index, event_id, event, occurred_at, extracted, customer_id, key))

    unknown = await _unknown_keys(conn, tenant_id, pending)
    await identity.lock_identity(conn, tenant_id, exclusive=bool(unknown))
    await _attribute(conn, context, pending, now)
    for item in pending:
        if item.refusal is not None:
            rejected.append(
                _rejection(item.index, item.event_id, item.refusal.type, item.refusal.detail)
            )
    attributed = [p for p in pending if p.refusal is None]
    await _apply_consent(conn, context, attributed)
    accepted, duplicates = await _store(conn, tenant_id, channel, attributed, now, context.secret)
    rejected.sort(key=lambda r: r.index)
    return Outcome(accepted, duplicates, rejected)


async def ingest_raw(
    conn: AsyncConnection, context: TenantContext, channel: Channel, batch: list[dict[str, Any]]
) -> Outcome:
    """`ingest` for a batch whose events are validated one by one: an event that breaks the
    schema is rejected with its index and reason, never the whole batch with it."""
    valid: list[EventIn] = []
    positions: list[int] = []
    refused: list[EventRejection] = []
    for index, raw in enumerate(batch):
        try:
            valid.append(EventIn.model_validate(raw))
            positions.append(index)
        except pydantic.ValidationError as error:
            refused.append(_schema_rejection(index, raw, error))
    outcome = await ingest(conn, context, channel, valid) if valid else Outcome([], [], [])
    rejected = [r.model_copy(update={"index": positions[r.index]}) for r in outcome.rejected]
    rejected = sorted(rejected + refused, key=lambda r: r.index)
    accepted = [(positions[i], event_id, owner) for i, event_id, owner in outcome.accepted]
    duplicates = [(positions[i], event_id, owner) for i, event_id, owner in outcome.duplicates]
    return Outcome(accepted, duplicates, rejected)


def _schema_rejection(
    index: int, raw: dict[str, Any], error: pydantic.ValidationError
) -> EventRejection:
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "event"
    event_id = raw.get("event_id")
    return EventRejection(
        index=index,
        event_id=event_id[:MAX_EVENT_ID] if isinstance(event_id, str) else None,
        type=ProblemType.VALIDATION_ERROR.value,
        detail=f"{where}: {first['msg']}",
    )


async def _apply_consent(
    conn: AsyncConnection, context: TenantContext, items: list[_Pending]
) -> None:
    """Behavioural events made without analytics consent keep no identifiers: each is judged
    by the consent that stood when it happened (`occurred_at`), not when it arrived."""
    behavioural = [p for p in items if p.event.name not in TRANSACTIONAL_EVENTS]
    if not behavioural:
        return
    allowed = await consent.analytics_allowed(
        conn, context, {(p.customer_id, p.occurred_at) for p in behavioural if p.customer_id}
    )
    for item in behavioural:
        item.anonymous = not allowed.get((item.customer_id or "", item.occurred_at), False)


def _rejection(index: int, event_id: str, type: ProblemType, detail: str) -> EventRejection:
    return EventRejection(index=index, event_id=event_id, type=type.value, detail=detail)


async def _unknown_keys(conn: AsyncConnection, tenant_id: str, pending: list[_Pending]) -> bool:
    keys = list({p.key for p in pending if p.key is not None})
    if not keys:
        return False
    return len(await identity.owners(conn, tenant_id, keys)) < len(keys)


async def _attribute(
    conn: AsyncConnection, context: TenantContext, pending: list[_Pending], now: datetime
) -> None:
    """Set each pending event's live customer id, or its refusal."""
    tenant_id = context.tenant_id
    keys = list({p.key for p in pending if p.key is not None})
    stored = await identity.owners(conn, tenant_id, keys)
    shared = {key for key, row in stored.items() if row.shared or row.customer_id is None}
    created: dict[IdentifierKey, str] = {}
    for key in keys:
        if key not in stored:
            created[key] = await identity.create_customer(conn, tenant_id, now)
    if created:
        await conn.execute(
            identifiers.insert(),
            [
                {
                    "tenant_id": tenant_id,
                    "type": k.type.value,
                    "value": k.value,
                    "customer_id": customer_id,
                    "shared": False,
                    "linked_at": now,
                }
                for k, customer_id in created.items()
            ],
        )
    owner_ids = {key: row.customer_id for key, row in stored.items() if row.customer_id}
    named = {p.customer_id for p in pending if p.customer_id is not None}
    live = await identity.live_ids(conn, tenant_id, [*owner_ids.values(), *named])
    for item in pending:
        if item.key in shared:
            item.refusal = Rejected(
                ProblemType.INVALID_IDENTIFIER,
                "this identifier is marked shared and names no customer; send customer_id",
            )
        elif item.key is not None:
            item.customer_id = created.get(item.key) or live.get(owner_ids.get(item.key, ""))
        else:
            named_id = item.customer_id or ""
            item.customer_id = live.get(named_id)
            if item.customer_id is None:
                item.refusal = Rejected(
                    ProblemType.NOT_FOUND, f"this tenant has no customer {named_id!r}"
                )


async def _store(
    conn: AsyncConnection,
    tenant_id: str,
    channel: Channel,
    items: list[_Pending],
    now: datetime,
    secret: bytes,
) -> tuple[list[tuple[int, str, str]], list[tuple[int, str, str]]]:
    seen: set[str] = set()
    if items:
        rows = await conn.execute(
            select(events.c.event_id).where(
                events.c.tenant_id == tenant_id,
                events.c.event_id.in_({item.event_id for item in items}),
            )
        )
        seen = {row.event_id for row in rows}
    accepted: list[tuple[int, str, str]] = []
    duplicates: list[tuple[int, str, str]] = []
    values: list[dict[str, Any]] = []
    for item in items:
        assert item.customer_id is not None
        # Whose event it is: no one's when it was stored without identifiers.
        outcome = (item.index, item.event_id, "" if item.anonymous else item.customer_id)
        if item.event_id in seen:
            duplicates.append(outcome)
            continue
        seen.add(item.event_id)
        accepted.append(outcome)
        owner = ANONYMOUS if item.anonymous else item.customer_id
        values.append(
            {
                "tenant_id": tenant_id,
                "event_id": item.event_id,
                "customer_id": owner,
                "origin_customer_id": owner,
                "name": item.event.name,
                "channel": (item.event.channel or channel).value,
                "occurred_at": item.occurred_at,
                "received_at": now,
                # E-mail addresses and phone numbers only as keyed hashes (docs/server.md).
                "properties": hashed_contact_data(
                    without_identifiers(item.event.properties)
                    if item.anonymous
                    else item.event.properties,
                    secret,
                ),
                "category": item.extracted.category,
                "value": item.extracted.value,
            }
        )
    if values:
        await conn.execute(_insert_ignoring_duplicates(conn), values)
        owners = {row["customer_id"] for row in values} - {ANONYMOUS}
        await segment_hook.profile_changed(conn, tenant_id, owners)
    return accepted, duplicates


async def record_order(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    channel: Channel,
    order_ref: str,
    lines: list[dict[str, Any]],
    now: datetime,
) -> None:
    """Record a cart turned into an order as its `order_completed` event, in the caller's
    transaction: the order then counts in the profile (orders, purchased skus) on every
    channel, whether or not the shop also sends its own `order_completed` (the profile counts
    one order per `order_id`)."""
    properties = cart_order_properties(order_ref, lines)
    extracted = check_event("order_completed", properties, now, now)
    await conn.execute(
        _insert_ignoring_duplicates(conn),
        [
            {
                "tenant_id": tenant_id,
                "event_id": order_event_id(order_ref),
                "customer_id": customer_id,
                "origin_customer_id": customer_id,
                "name": "order_completed",
                "channel": channel.value,
                "occurred_at": now,
                "received_at": now,
                "properties": properties,
                "category": extracted.category,
                "value": extracted.value,
            }
        ],
    )
    await segment_hook.profile_changed(conn, tenant_id, [customer_id])


def _insert_ignoring_duplicates(conn: AsyncConnection) -> Any:
    # A concurrent request may store the same event id between our check and our insert.
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(events).on_conflict_do_nothing(index_elements=["tenant_id", "event_id"])
