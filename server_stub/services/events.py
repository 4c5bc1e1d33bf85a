"""Event ingestion: validate, attribute to a customer, store once per event id.

A batch is taken event by event: a bad event is rejected with its reason and the rest are
stored, so a sender can set the bad one aside (the outbox's dead letters) without losing the
others. An event names its customer by `customer_id`, `anonymous_id` or `identifier`; an
identifier never seen before creates a customer, exactly as `identify` with it alone would.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pydantic
from sqlalchemy import bindparam, select, text
from sqlalchemy.dialects import sqlite
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
from server_stub.ids import time_ordered_id, utcnow
from server_stub.services import consent, identity, segment_hook
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.database import dumps
from server_stub.storage.prepared import ID_IN, Prepared, id_list
from server_stub.storage.tables import events, identifiers

# Events stored without identifiers count in aggregates, for no one: they are kept under a
# bucket per day of their time (`~anon-2026-12-03`), never one customer id for all, so that
# each tenant's anonymous history is pruned on its own retention by an index range
# (services/maintenance.py) and no one id collects millions of rows.
ANONYMOUS_PREFIX = "~anon-"

# An event id seen within this long of a new event's time makes it a duplicate (docs/events.md).
DEDUPE_WINDOW = timedelta(days=1)


def anonymous_bucket(occurred_at: datetime) -> str:
    """The owner of an event stored without identifiers."""
    return _bucket_of_day(occurred_at.date())


@functools.lru_cache(maxsize=64)
def _bucket_of_day(day: date) -> str:
    return f"{ANONYMOUS_PREFIX}{day:%Y-%m-%d}"


def is_anonymous(customer_id: str) -> bool:
    return customer_id.startswith(ANONYMOUS_PREFIX) or customer_id == ""


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


class _NamedKeys:
    """The stored keys of the identifiers a batch names, each worked out once per batch
    (a batch names the same few visitors again and again)."""

    def __init__(self, context: TenantContext) -> None:
        self._context = context
        self._known: dict[tuple[IdentifierType, str], IdentifierKey] = {}

    def key(self, kind: IdentifierType, value: str) -> IdentifierKey:
        """As TenantContext.key: raises InvalidIdentifier (each time) for a refused value."""
        known = self._known.get((kind, value))
        if known is None:
            known = self._known[kind, value] = self._context.key(kind, value)
        return known


def _identity_of(named: _NamedKeys, event: EventIn) -> tuple[str | None, IdentifierKey | None]:
    given = [x for x in (event.customer_id, event.anonymous_id, event.identifier) if x is not None]
    if len(given) != 1:
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
        return None, named.key(kind, value or "")
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
    named = _NamedKeys(context)
    for index, event in enumerate(batch):
        # Time-ordered, so the index of ids made here grows at its end (issue 21).
        event_id = event.event_id or time_ordered_id(now)
        try:
            occurred_at = event.timestamp or now
            check_names(event.event_id, event.customer_id)
            extracted = check_event(event.name, event.properties, occurred_at, now)
            # Stored in UTC: PostgreSQL's parser refuses offsets past ±15:59 (a 500 that sank
            # the whole batch), where SQLite took them. Within three years of now: no overflow.
            occurred_at = occurred_at.astimezone(UTC)
            customer_id, key = _identity_of(named, event)
        except InvalidEvent as error:
            rejected.append(_rejection(index, event_id, ProblemType.INVALID_EVENT, str(error)))
            continue
        except Rejected as error:
            rejected.append(_rejection(index, event_id, error.type, error.detail))
            continue
        pending.append(_Pending(index, event_id, event, occurred_at, extracted, customer_id, key))

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
    """`ingest` for a batch whose events are judged one by one: an event that breaks the
    schema is rejected with its index and reason, never the whole batch with it."""
    valid, positions, refused = _validated(batch)
    outcome = await ingest(conn, context, channel, valid) if valid else Outcome([], [], [])
    rejected = [r.model_copy(update={"index": positions[r.index]}) for r in outcome.rejected]
    rejected = sorted(rejected + refused, key=lambda r: r.index)
    accepted = [(positions[i], event_id, owner) for i, event_id, owner in outcome.accepted]
    duplicates = [(positions[i], event_id, owner) for i, event_id, owner in outcome.duplicates]
    return Outcome(accepted, duplicates, rejected)


# One pass over the whole batch (pydantic's loop, not ours); only a batch holding an invalid
# event is validated again one event at a time, to reject that one with its index.
_BATCH = pydantic.TypeAdapter(list[EventIn])


def _validated(
    batch: list[dict[str, Any]],
) -> tuple[list[EventIn], list[int], list[EventRejection]]:
    """The batch's valid events, their positions in it, and a rejection for each other one."""
    try:
        return _BATCH.validate_python(batch), list(range(len(batch))), []
    except pydantic.ValidationError:
        pass
    valid: list[EventIn] = []
    positions: list[int] = []
    refused: list[EventRejection] = []
    for index, raw in enumerate(batch):
        try:
            valid.append(EventIn.model_validate(raw))
            positions.append(index)
        except pydantic.ValidationError as error:
            refused.append(_schema_rejection(index, raw, error))
    return valid, positions, refused


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


async def _hold_live(conn: AsyncConnection, tenant_id: str, ids: list[str]) -> dict[str, str]:
    """The live customer of each of `ids` that exists, each held until we commit so that no
    erasure deletes her before her events are stored (a key share lock: no other write waits
    for it; one erased meanwhile is absent and her events are refused). Reading and holding
    are one statement: the rows are locked as they are found, in id order (identity.py); only
    the survivors of merged ids, rare, take a second one."""
    found = await identity.lock_customers(conn, tenant_id, ids, mode="read")
    survivors = {merged_into for merged_into in found.values() if merged_into is not None}
    held = await identity.lock_customers(conn, tenant_id, survivors - found.keys(), mode="read")
    return {
        id: merged_into or id
        for id, merged_into in found.items()
        if merged_into is None or merged_into in found or merged_into in held
    }


async def _attribute(
    conn: AsyncConnection, context: TenantContext, pending: list[_Pending], now: datetime
) -> None:
    """Set each pending event's live customer id, or its refusal."""
    tenant_id = context.tenant_id
    keys = list({p.key for p in pending if p.key is not None})
    stored = await identity.owners_of(conn, tenant_id, keys)
    unknown = [key for key in keys if key not in stored]
    if unknown:
        # Identifiers never seen before create customers: lock just those (identity.py), then
        # read their owners again (an identify may have linked one meanwhile).
        await identity.lock_identifiers(conn, tenant_id, unknown)
        stored |= await identity.owners_of(conn, tenant_id, unknown)
    shared = {key for key, owner in stored.items() if owner.shared or owner.customer_id is None}
    new_keys = [key for key in keys if key not in stored]
    created = dict(
        zip(
            new_keys,
            await identity.create_customers(conn, tenant_id, len(new_keys), now),
            strict=True,
        )
    )
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
    owner_ids = {key: owner.customer_id for key, owner in stored.items() if owner.customer_id}
    named = {p.customer_id for p in pending if p.customer_id is not None}
    live = await _hold_live(conn, tenant_id, [*owner_ids.values(), *named])
    for item in pending:
        if item.key in shared:
            item.refusal = Rejected(
                ProblemType.INVALID_IDENTIFIER,
                "this identifier is marked shared and names no customer; send customer_id",
            )
        elif item.key is not None:
            item.customer_id = created.get(item.key) or live.get(owner_ids.get(item.key, ""))
            if item.customer_id is None:  # erased since her identifier was read
                item.refusal = Rejected(
                    ProblemType.NOT_FOUND, "the customer this identifier named was just erased"
                )
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
    seen = await _stored_ids(conn, tenant_id, items, now)
    accepted: list[tuple[int, str, str]] = []
    duplicates: list[tuple[int, str, str]] = []
    rows: list[dict[str, Any]] = []
    for item in items:
        assert item.customer_id is not None
        # Whose event it is: no one's when it was stored without identifiers.
        outcome = (item.index, item.event_id, "" if item.anonymous else item.customer_id)
        if item.event_id in seen:
            duplicates.append(outcome)
            continue
        seen.add(item.event_id)
        accepted.append(outcome)
        rows.append(
            {
                "event_id": item.event_id,
                "customer_id": (
                    anonymous_bucket(item.occurred_at) if item.anonymous else item.customer_id
                ),
                "name": item.event.name,
                "channel": (item.event.channel or channel).value,
                "occurred_at": item.occurred_at,
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
    if rows:
        inserted = await _insert(conn, tenant_id, now, rows)
        if inserted is not None and len(inserted) < len(rows):
            # Stored meanwhile by a concurrent request (the unique key made ours a no-op).
            duplicates += [outcome for outcome in accepted if outcome[1] not in inserted]
            duplicates.sort()
            accepted = [outcome for outcome in accepted if outcome[1] in inserted]
        owners = {row["customer_id"] for row in rows}
        await segment_hook.profile_changed(
            conn, tenant_id, [owner for owner in owners if not is_anonymous(owner)]
        )
    return accepted, duplicates


# PostgreSQL: an event sent without a time is stored at its arrival, so its replay does not
# meet it in the unique key (tenant, event id, time). Its id is claimed in `event_receipts`
# (a plain table, kept DEDUPE_WINDOW): of two concurrent deliveries one claims it, the other
# waits for that claim to commit and finds it taken. SQLite has one writer at a time: the
# lookup below suffices there.
_CLAIM_EVENT_IDS = Prepared(
    text(
        "INSERT INTO event_receipts (tenant_id, event_id, received_at) "
        "SELECT :tenant, id, CAST(:now AS timestamptz) FROM unnest(CAST(:ids AS text[])) AS id "
        "ON CONFLICT (tenant_id, event_id) DO NOTHING RETURNING event_id"
    )
)


async def _stored_ids(
    conn: AsyncConnection, tenant_id: str, items: list[_Pending], now: datetime
) -> set[str]:
    """The ids of `items` that the tenant already holds for a time within DEDUPE_WINDOW of
    the batch's times. The window keeps the lookup in the partitions of those months."""
    if not items:
        return set()
    seen: set[str] = set()
    untimed = sorted({i.event_id for i in items if i.event.timestamp is None})
    if untimed and conn.dialect.name == "postgresql":
        claimed = await _CLAIM_EVENT_IDS.fetchall(
            conn, {"tenant": tenant_id, "now": now, "ids": id_list(conn, untimed)}
        )
        seen = set(untimed) - {row[0] for row in claimed}
    times = [item.occurred_at for item in items]
    ids = sorted({item.event_id for item in items})
    since, until = min(times) - DEDUPE_WINDOW, max(times) + DEDUPE_WINDOW
    if conn.dialect.name == "postgresql":
        rows = await _STORED_ON_POSTGRESQL.fetchall(
            conn, {"tenant": tenant_id, "ids": id_list(conn, ids), "since": since, "until": until}
        )
        return seen | {row[0] for row in rows}
    found = await conn.execute(
        select(events.c.event_id).where(
            events.c.tenant_id == tenant_id,
            events.c.event_id.in_(ids),
            events.c.occurred_at >= since,
            events.c.occurred_at <= until,
        )
    )
    return seen | {row.event_id for row in found}


# PostgreSQL: the ids as one parameter (one plan, whatever the batch size).
_STORED_ON_POSTGRESQL = Prepared(
    text(
        "SELECT event_id FROM events WHERE tenant_id = :tenant "
        f"AND {ID_IN['postgresql'].format(column='event_id')} "
        "AND occurred_at >= CAST(:since AS timestamptz) "
        "AND occurred_at <= CAST(:until AS timestamptz)"
    )
)


async def record_order(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    channel: Channel,
    order_ref: str,
    lines: list[dict[str, Any]],
    placed_at: datetime,
    source: str,
) -> bool:
    """Record an order (a cart turned into one, or one sent to /v1/orders, store sales
    included) as the customer's `order_completed` event, in the caller's transaction: the
    order then shows in her timeline and counts in her profile on every channel, once per
    order whether or not the shop also sends its own `order_completed` (its event id is the
    order's, and the profile counts one order per `order_id`). An order no event may stand
    for (placed before the events' horizon, or too many skus for one event) keeps its record
    alone, which the profile counts as well; False then."""
    now = utcnow()
    properties = cart_order_properties(order_ref, lines, source)
    try:
        extracted = check_event("order_completed", properties, placed_at, now)
    except InvalidEvent:
        return False
    row = {
        "event_id": order_event_id(order_ref),
        "customer_id": customer_id,
        "name": "order_completed",
        "channel": channel.value,
        "occurred_at": placed_at,
        "properties": properties,
        "category": extracted.category,
        "value": extracted.value,
    }
    await _insert(conn, tenant_id, now, [row])
    await segment_hook.profile_changed(conn, tenant_id, [customer_id])
    return True


# PostgreSQL: a batch in one statement, its rows sent as one JSON array (one round trip, one
# plan, whatever the batch size). JSON rather than an array per column: asyncpg encodes each
# array element with an abstract-class check, two thirds of the statement's client time. A
# concurrent request may store the same event between our check and our insert: the unique
# key makes it a no-op.
_INSERT_ON_POSTGRESQL = Prepared(
    text(
        """
INSERT INTO events (tenant_id, event_id, customer_id, origin_customer_id, name, channel,
                    occurred_at, received_at, properties, category, value)
SELECT :tenant, e.event_id, e.customer_id, e.customer_id, e.name, e.channel, e.occurred_at,
       CAST(:received AS timestamptz), e.properties, e.category, e.value
FROM json_to_recordset(CAST(:rows AS json))
     AS e(event_id text, customer_id text, name text, channel text, occurred_at timestamptz,
          properties json, category text, value float8)
ON CONFLICT (tenant_id, event_id, occurred_at) DO NOTHING
RETURNING event_id
"""
    )
)

_EVENT_COLUMNS = (
    "tenant_id",
    "event_id",
    "customer_id",
    "origin_customer_id",
    "name",
    "channel",
    "occurred_at",
    "received_at",
    "properties",
    "category",
    "value",
)
# SQLite: one statement run for every row on the driver (storage/prepared.py).
_INSERT_ON_SQLITE = Prepared(
    sqlite.insert(events)
    .values({name: bindparam(name) for name in _EVENT_COLUMNS})
    .on_conflict_do_nothing(index_elements=["tenant_id", "event_id", "occurred_at"])
)


async def _insert(
    conn: AsyncConnection, tenant_id: str, now: datetime, rows: list[dict[str, Any]]
) -> set[str] | None:
    """Store `rows` (event id, owner, name, channel, time, properties, category, value) as
    events of the tenant received `now`, skipping any already stored. On PostgreSQL, returns
    the ids stored (SQLite, one writer at a time, never meets a concurrent insert)."""
    if conn.dialect.name == "postgresql":
        inserted = await _INSERT_ON_POSTGRESQL.fetchall(
            conn, {"tenant": tenant_id, "received": now, "rows": dumps(rows)}
        )
        return {row[0] for row in inserted}
    await _INSERT_ON_SQLITE.executemany(
        conn,
        [
            {
                **row,
                "tenant_id": tenant_id,
                "origin_customer_id": row["customer_id"],
                "received_at": now,
            }
            for row in rows
        ],
    )
    return None
