"""Named segments over the profile (issue 19): definitions, membership, real-time evaluation,
backfill, counts, export and explanations.

Membership is kept in `segment_members` (one row per customer ever in a segment: entered,
exited). Two paths keep it true, and both go through `evaluate` on the same attributes
(`facts_for`), so they cannot disagree:

- real time: every profile-changing write queues the customer (segment_hook.profile_changed,
  in its transaction); `drain` — run in the background by every server process, every
  `segment_drain_interval` — takes queued customers (SKIP LOCKED on PostgreSQL, so processes
  share the work), evaluates all the tenant's segments for them and records entries and exits;
- backfill: when a segment is created or its condition edited, `backfill` streams the tenant's
  live customers in keyset batches (bounded memory), with a progress(done, total) callback.

Every entry and exit is published on the customer's change feed (`segment.entered`,
`segment.exited`). Attributes that depend on time alone (lifecycle drifting from `active` to
`lapsing`) change without a write: a periodic backfill (`omnisdk-server segments backfill`)
brings those up to date.

`facts_for` computes, for many customers at once, the same profile attributes the content
engine decides on (`omnisdk.resources.content.profile_facts` over `services.profile`), plus
her person-scoped consent and preferred channel; tests/server/test_segments.py holds them
equal.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import consent as consent_rules
from omnisdk.core import preferences as preference_rules
from omnisdk.core import profile as rules
from omnisdk.core import segments as segment_rules
from omnisdk.core.problems import ProblemType
from omnisdk.core.profile import LifecycleThresholds
from omnisdk.models import TenantSettings
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import audit, changes, named_locks, profile
from server_stub.services.consent import _rule as consent_decision
from server_stub.services.preferences import OBSERVED_DAYS, OBSERVED_SIGNALS
from server_stub.storage.database import Database
from server_stub.storage.tables import (
    ORDER_COMPLETED,
    consent_decisions,
    customers,
    events,
    order_lines,
    orders,
    preference_declarations,
    segment_members,
    segment_pending,
    segments,
    tenants,
)

BATCH = 1_000
# A claim not refreshed for this long belongs to a process that died: another may take over.
CLAIM_STALE = timedelta(minutes=2)
DRAIN_BATCH = 500
MAX_SEGMENTS = 200
Progress = Callable[[int, int], None]
NO_ORDERS: dict[str, Any] = {"count": 0, "value": 0.0, "net_value": 0.0, "by_channel": {}}


# --- attributes ----------------------------------------------------------------------------


def _top(query: Any, order: Any, limit: int) -> Any:
    """The newest `limit` rows per customer of an events query (a window function)."""
    ranked = query.add_columns(
        func.row_number().over(partition_by=events.c.customer_id, order_by=order).label("rank")
    ).subquery()
    return select(ranked).where(ranked.c.rank <= limit)


async def settings_of(conn: AsyncConnection, tenant_id: str) -> TenantSettings:
    row = (await conn.execute(select(tenants.c.settings).where(tenants.c.id == tenant_id))).first()
    return TenantSettings.model_validate((row.settings if row else None) or {})


async def facts_for(
    conn: AsyncConnection,
    tenant_id: str,
    customer_ids: Sequence[str],
    settings: TenantSettings,
    now: datetime | None = None,
    roots: frozenset[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per live customer among `customer_ids`, the attributes segments are evaluated on
    (only those under `roots`, the conditions' first path parts, when given: a backfill of a
    segment on traits reads no events). Merged-away and unknown ids are left out."""
    now = now or utcnow()
    ids = sorted(set(customer_ids))
    if not ids:
        return {}
    # Merged-away customers are dropped here, not in SQL: with `merged_into IS NULL` in the
    # query PostgreSQL may walk the merged_into index over the whole tenant (seconds at 100 k
    # customers) instead of looking up the ids by primary key.
    people = {
        row.id: row
        for row in await conn.execute(
            select(
                customers.c.id,
                customers.c.created_at,
                customers.c.traits,
                customers.c.merged_into,
            ).where(customers.c.tenant_id == tenant_id, customers.c.id.in_(ids))
        )
        if row.merged_into is None
    }
    ids = sorted(people)
    if not ids:
        return {}
    wanted = segment_rules.ATTRIBUTE_ROOTS if roots is None else roots
    mine = and_(events.c.tenant_id == tenant_id, events.c.customer_id.in_(ids))
    seen = (
        {}
        if "lifecycle" not in wanted
        else {
            row.customer_id: (row.first, row.last)
            for row in await conn.execute(
                select(
                    events.c.customer_id,
                    func.min(events.c.occurred_at).label("first"),
                    func.max(events.c.occurred_at).label("last"),
                )
                .where(mine)
                .group_by(events.c.customer_id)
            )
        }
    )
    order_counts = await _orders(conn, tenant_id, mine, ids) if "orders" in wanted else {}
    interests = (
        await _interests(conn, mine, settings, now)
        if wanted & {"interests", "top_interest"}
        else {}
    )
    buyers = await _buyer_types(conn, tenant_id, mine, ids) if "buyer_type" in wanted else {}
    consent = await _consent(conn, tenant_id, ids, settings) if "consent" in wanted else {}
    channels = (
        await _preferred_channels(conn, tenant_id, ids, now)
        if "preferred_channel" in wanted
        else {}
    )
    thresholds = LifecycleThresholds(
        settings.profile.new_days, settings.profile.active_days, settings.profile.lapsing_days
    )
    facts: dict[str, dict[str, Any]] = {}
    for customer_id in ids:
        person = people[customer_id]
        first_event, last_event = seen.get(customer_id, (None, None))
        first_seen = min(person.created_at, first_event) if first_event else person.created_at
        last = max(last_event, person.created_at) if last_event else person.created_at
        scores = interests.get(customer_id, {})
        everything = {
            "known": True,
            "traits": person.traits,
            "interests": scores,
            "top_interest": next(iter(scores), None),
            "lifecycle": rules.lifecycle(first_seen, last, now, thresholds).value,
            "buyer_type": buyers.get(customer_id, rules.BuyerType.UNKNOWN).value,
            "orders": order_counts.get(customer_id, NO_ORDERS),
            "consent": consent.get(customer_id, {}),
            "preferred_channel": channels.get(customer_id),
        }
        facts[customer_id] = {k: v for k, v in everything.items() if k in wanted}
    return facts


def _recorded(tenant_id: str) -> Any:
    """References of the customer's order records (correlated with the event's customer): an
    order with a record counts by the record, its event is not counted again."""
    return select(orders.c.reference).where(
        orders.c.tenant_id == tenant_id, orders.c.customer_id == events.c.customer_id
    )


async def _orders(
    conn: AsyncConnection, tenant_id: str, mine: Any, ids: list[str]
) -> dict[str, dict[str, Any]]:
    """As services.profile: her order records (every channel) plus the orders known only by
    their `order_completed` event (one per `order_id`, its largest value); net of returns and
    refunds, and how many records per channel."""
    order = func.coalesce(events.c.properties["order_id"].as_string(), events.c.event_id)
    per_order = (
        select(
            events.c.customer_id,
            order.label("order"),
            func.max(events.c.value).label("value"),
        )
        .where(mine, ORDER_COMPLETED, order.not_in(_recorded(tenant_id)))
        .group_by(events.c.customer_id, order)
        .subquery()
    )
    rows = await conn.execute(
        select(
            per_order.c.customer_id,
            func.count(),
            func.coalesce(func.sum(per_order.c.value), 0.0),
        ).group_by(per_order.c.customer_id)
    )
    from_events = {row[0]: (int(row[1]), float(row[2])) for row in rows}
    records: dict[str, dict[str, tuple[int, float, float]]] = defaultdict(dict)
    for row in await conn.execute(
        select(
            orders.c.customer_id,
            orders.c.channel,
            func.count(),
            func.sum(orders.c.total),
            func.sum(orders.c.refunded),
        )
        .where(orders.c.tenant_id == tenant_id, orders.c.customer_id.in_(ids))
        .group_by(orders.c.customer_id, orders.c.channel)
    ):
        records[row[0]][row[1]] = (int(row[2]), float(row[3]), float(row[4]))
    found: dict[str, dict[str, Any]] = {}
    for customer_id in set(from_events) | set(records):
        count, value = from_events.get(customer_id, (0, 0.0))
        by_channel = records.get(customer_id, {})
        total = sum((t for _, t, _ in by_channel.values()), 0.0)
        refunded = sum((r for _, _, r in by_channel.values()), 0.0)
        found[customer_id] = {
            "count": count + sum(n for n, _, _ in by_channel.values()),
            "value": round(value + total, 2),
            "net_value": round(value + total - refunded, 2),
            "by_channel": {channel: n for channel, (n, _, _) in sorted(by_channel.items())},
        }
    return found


async def _interests(
    conn: AsyncConnection, mine: Any, settings: TenantSettings, now: datetime
) -> dict[str, dict[str, float]]:
    query = select(events.c.customer_id, *profile.INTEREST_COLUMNS, events.c.occurred_at).where(
        mine, *profile.INTEREST_WHERE
    )
    top = _top(query, events.c.occurred_at.desc(), profile.INTEREST_SIGNALS)
    signals: dict[str, list[tuple[str, datetime, float]]] = defaultdict(list)
    for row in await conn.execute(top):
        signal = profile.interest_signal(row)
        if signal is not None:
            signals[row.customer_id].append(signal)
    half_life = settings.profile.interest_half_life_days
    return {who: rules.interests(found, now, half_life) for who, found in signals.items()}


async def _buyer_types(
    conn: AsyncConnection, tenant_id: str, mine: Any, ids: list[str]
) -> dict[str, rules.BuyerType]:
    """As services.profile: an order record is a gift if most of its units are; an order
    known only by its event by its flags."""
    query = select(events.c.customer_id, events.c.properties).where(
        mine,
        ORDER_COMPLETED,
        func.coalesce(events.c.properties["order_id"].as_string(), events.c.event_id).not_in(
            _recorded(tenant_id)
        ),
    )
    top = _top(query, events.c.occurred_at.desc(), profile.ORDERS_FOR_BUYER_TYPE)
    flags: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    units: dict[tuple[str, str], list[int]] = {}
    for row in await conn.execute(
        select(
            orders.c.customer_id,
            order_lines.c.order_id,
            order_lines.c.gift,
            func.sum(order_lines.c.quantity).label("units"),
        )
        .join(
            orders,
            (orders.c.tenant_id == order_lines.c.tenant_id)
            & (orders.c.id == order_lines.c.order_id),
        )
        .where(orders.c.tenant_id == tenant_id, orders.c.customer_id.in_(ids))
        .group_by(orders.c.customer_id, order_lines.c.order_id, order_lines.c.gift)
    ):
        units.setdefault((row.customer_id, row.order_id), [0, 0])[0 if row.gift else 1] += int(
            row.units
        )
    for (customer_id, _), (gift, own) in units.items():
        if len(flags[customer_id]) < profile.ORDERS_FOR_BUYER_TYPE:
            flags[customer_id].append((gift * 2 > gift + own, False))
    for row in await conn.execute(top):
        properties = row.properties or {}
        flags[row.customer_id].append(
            (
                properties.get("gift") is True,
                properties.get("shipping_differs_from_billing") is True,
            )
        )
    return {who: rules.buyer_type(found) for who, found in flags.items()}


async def _consent(
    conn: AsyncConnection, tenant_id: str, ids: list[str], settings: TenantSettings
) -> dict[str, dict[str, bool]]:
    rows = await conn.execute(
        select(consent_decisions)
        .where(consent_decisions.c.tenant_id == tenant_id, consent_decisions.c.customer_id.in_(ids))
        .order_by(consent_decisions.c.recorded_at)
    )
    ledgers: dict[str, list[consent_rules.Decision]] = defaultdict(list)
    for row in rows:
        ledgers[row.customer_id].append(consent_decision(row))
    skew = settings.consent.skew_seconds
    return {
        who: {purpose: s.granted for purpose, s in consent_rules.state(found, skew=skew).items()}
        for who, found in ledgers.items()
    }


async def _preferred_channels(
    conn: AsyncConnection, tenant_id: str, ids: list[str], now: datetime
) -> dict[str, str]:
    """As services.preferences.preferred_channel, for many customers at once."""
    declared: dict[str, str | None] = {}
    table = preference_declarations
    for row in await conn.execute(
        select(table.c.customer_id, table.c.channel)
        .where(table.c.tenant_id == tenant_id, table.c.customer_id.in_(ids))
        .order_by(table.c.declared_at, table.c.id)
    ):
        declared[row.customer_id] = row.channel  # the latest wins
    chosen = {who: channel for who, channel in declared.items() if channel}
    undecided = [who for who in ids if who not in chosen]
    if not undecided:
        return chosen
    query = select(
        events.c.customer_id,
        events.c.name,
        events.c.channel,
        events.c.properties,
        events.c.occurred_at,
    ).where(
        events.c.tenant_id == tenant_id,
        events.c.customer_id.in_(undecided),
        events.c.name.in_(sorted(preference_rules.ENGAGEMENT_EVENTS)),
        events.c.occurred_at >= now - timedelta(days=OBSERVED_DAYS),
    )
    signals: dict[str, list[preference_rules.Signal]] = defaultdict(list)
    for row in await conn.execute(_top(query, events.c.occurred_at.desc(), OBSERVED_SIGNALS)):
        properties = row.properties if isinstance(row.properties, dict) else {}
        message = properties.get("channel")
        signals[row.customer_id].append(
            preference_rules.Signal(
                row.name,
                row.channel,
                message if isinstance(message, str) else None,
                row.occurred_at,
            )
        )
    for who, found in signals.items():
        channel = preference_rules.observed_channel(found, now)
        if channel is not None:
            chosen[who] = channel.value
    return chosen


# --- membership ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    entered: int = 0
    exited: int = 0


async def _defined(
    conn: AsyncConnection, tenant_id: str, segment_id: str | None = None, *, hold: bool = False
) -> list[segment_rules.Segment]:
    """The tenant's segments (or one); `hold`: FOR KEY SHARE, as `_still_defined` holds them."""
    query = select(segments).where(segments.c.tenant_id == tenant_id)
    if segment_id is not None:
        query = query.where(segments.c.id == segment_id)
    if hold:
        query = query.with_for_update(read=True, key_share=True)
    return [
        segment_rules.Segment.of(row.id, row.name, row.version, row.condition)
        for row in await conn.execute(query.order_by(segments.c.name))
    ]


async def _still_defined(
    conn: AsyncConnection, tenant_id: str, defined: list[segment_rules.Segment]
) -> list[segment_rules.Segment]:
    """Those of `defined` not deleted, held so until this transaction ends (FOR KEY SHARE:
    edits go on, a deletion waits): no membership is recorded for a segment deleted meanwhile."""
    if not defined:
        return defined
    query = (
        select(segments.c.id)
        .where(segments.c.tenant_id == tenant_id, segments.c.id.in_([s.id for s in defined]))
        .with_for_update(read=True, key_share=True)  # FOR KEY SHARE
    )
    kept = set((await conn.execute(query)).scalars())
    return [segment for segment in defined if segment.id in kept]


async def evaluate(
    conn: AsyncConnection,
    tenant_id: str,
    customer_ids: Sequence[str],
    *,
    only: list[segment_rules.Segment] | None = None,
    settings: TenantSettings | None = None,
    now: datetime | None = None,
) -> Outcome:
    """Bring these customers' memberships up to date (all segments, or `only` these):
    record entries and exits, publish them. A customer no longer live leaves every segment."""
    now = now or utcnow()
    if only is None:
        defined = await _defined(conn, tenant_id, hold=True)
    else:
        defined = await _still_defined(conn, tenant_id, only)
    ids = sorted(set(customer_ids))
    if not defined or not ids:
        return Outcome()
    settings = settings or await settings_of(conn, tenant_id)
    roots = frozenset().union(*(segment_rules.roots(s.condition) for s in defined))
    facts = await facts_for(conn, tenant_id, ids, settings, now, roots | {"known"})
    by_id = {segment.id: segment for segment in defined}
    members = segment_members.c
    current = {
        (row.segment_id, row.customer_id): row.exited_at is None
        for row in await conn.execute(
            select(members.segment_id, members.customer_id, members.exited_at).where(
                members.tenant_id == tenant_id,
                members.segment_id.in_(list(by_id)),
                members.customer_id.in_(ids),
            )
        )
    }
    new_rows: list[dict[str, Any]] = []
    reentering: dict[str, list[str]] = defaultdict(list)
    exiting: dict[str, list[str]] = defaultdict(list)
    for customer_id in ids:
        attributes = facts.get(customer_id)
        for segment in defined:
            wanted = attributes is not None and segment.holds(attributes)
            had = current.get((segment.id, customer_id))
            if wanted and had is None:
                new_rows.append(
                    {
                        "tenant_id": tenant_id,
                        "segment_id": segment.id,
                        "customer_id": customer_id,
                        "entered_at": now,
                        "exited_at": None,
                    }
                )
            elif wanted and had is False:
                reentering[segment.id].append(customer_id)
            elif not wanted and had:
                exiting[segment.id].append(customer_id)
    # What was read above may be stale by now: another evaluator (the background drain on
    # another process, a backfill) can take the same customer at the same moment. Each write
    # is conditional on the state it changes and returns the rows it really changed; only
    # those are published, so one entry or exit is announced once however many raced for it.
    entered: set[tuple[str, str]] = set()
    left: set[tuple[str, str]] = set()
    if new_rows:
        inserted = await conn.execute(
            _insert_members(conn).returning(members.segment_id, members.customer_id), new_rows
        )
        entered.update((row.segment_id, row.customer_id) for row in inserted)
    for segment_id, moving in reentering.items():
        entered.update(await _flip(conn, tenant_id, segment_id, moving, leaving=False, now=now))
    for segment_id, moving in exiting.items():
        left.update(await _flip(conn, tenant_id, segment_id, moving, leaving=True, now=now))
    for customer_id in ids:
        for segment in defined:
            key = (segment.id, customer_id)
            if key not in entered and key not in left:
                continue
            kind = "segment.entered" if key in entered else "segment.exited"
            payload = {
                "customer_id": customer_id,
                "segment_id": segment.id,
                "segment": segment.name,
                "version": segment.version,
            }
            await changes.publish(conn, tenant_id, customer_id, kind, payload)
    return Outcome(len(entered), len(left))


async def _flip(
    conn: AsyncConnection,
    tenant_id: str,
    segment_id: str,
    customer_ids: list[str],
    *,
    leaving: bool,
    now: datetime,
) -> set[tuple[str, str]]:
    """Mark these members as left (or back in) where they are not already; the pairs that
    changed. The condition on `exited_at` is checked again on the row as it is when written."""
    members = segment_members.c
    still = members.exited_at.is_(None) if leaving else members.exited_at.is_not(None)
    values: dict[str, Any] = (
        {"exited_at": now} if leaving else {"entered_at": now, "exited_at": None}
    )
    statement = (
        update(segment_members)
        .where(
            members.tenant_id == tenant_id,
            members.segment_id == segment_id,
            members.customer_id.in_(customer_ids),
            still,
        )
        .values(**values)
        .returning(members.customer_id)
    )
    return {(segment_id, customer_id) for customer_id in (await conn.execute(statement)).scalars()}


async def drain(database: Database, limit: int = DRAIN_BATCH) -> int:
    """Evaluate the customers queued by profile changes (one batch); how many were taken."""
    async with database.transaction(write=True) as conn:
        query = select(segment_pending).order_by(segment_pending.c.queued_at).limit(limit)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        taken = list(await conn.execute(query))
        if not taken:
            return 0
        by_tenant: dict[str, list[str]] = defaultdict(list)
        for row in taken:
            by_tenant[row.tenant_id].append(row.customer_id)
        for tenant_id, ids in sorted(by_tenant.items()):
            await conn.execute(
                delete(segment_pending).where(
                    segment_pending.c.tenant_id == tenant_id,
                    segment_pending.c.customer_id.in_(ids),
                )
            )
            await evaluate(conn, tenant_id, ids)
    return len(taken)


async def backfill(
    database: Database,
    tenant_id: str,
    segment_id: str,
    progress: Progress | None = None,
    batch: int = BATCH,
) -> Outcome:
    """Evaluate one segment over every live customer of the tenant, in keyset batches (one
    transaction each, recording how far it got), then mark its version backfilled."""
    async with database.transaction(write=False) as conn:
        found = await _defined(conn, tenant_id, segment_id)
        if not found:
            raise Problem(ProblemType.NOT_FOUND, f"this tenant has no segment {segment_id!r}")
        settings = await settings_of(conn, tenant_id)
        total = (
            await conn.execute(
                select(func.count()).where(
                    customers.c.tenant_id == tenant_id, customers.c.merged_into.is_(None)
                )
            )
        ).scalar_one()
    segment = found[0]
    this = and_(segments.c.tenant_id == tenant_id, segments.c.id == segment_id)
    done = entered = exited = batches = 0
    after = ""
    if progress:
        progress(0, total)
    while True:
        async with database.transaction(write=True) as conn:
            page = list(
                await conn.execute(
                    select(customers.c.id, customers.c.merged_into)
                    .where(customers.c.tenant_id == tenant_id, customers.c.id > after)
                    .order_by(customers.c.id)
                    .limit(batch)
                )
            )
            if not page:
                break
            ids = [row.id for row in page if row.merged_into is None]
            outcome = await evaluate(conn, tenant_id, ids, only=[segment], settings=settings)
            done += len(ids)
            total = max(total, done)
            await conn.execute(
                update(segments)
                .where(this)
                .values(backfill_done=done, backfill_total=total, backfill_claimed_at=utcnow())
            )
        entered, exited = entered + outcome.entered, exited + outcome.exited
        after = page[-1].id
        batches += 1
        if batches in ANALYZE_AFTER_BATCHES:
            await _analyze(database)
        if progress:
            progress(done, total)
    async with database.transaction(write=True) as conn:
        exited += await _exit_gone(conn, tenant_id, segment)
        await conn.execute(update(segments).where(this).values(backfill_claimed_at=None))
        # Only the version evaluated: an edit made meanwhile leaves the segment due again.
        await conn.execute(
            update(segments)
            .where(this, segments.c.version == segment.version)
            .values(backfilled_version=segment.version, backfilled_at=utcnow())
        )
    return Outcome(entered, exited)


# A backfill fills `segment_members` (and the change feed) from nothing: PostgreSQL's
# statistics of a table that grew from empty say it is empty until autovacuum comes by, and
# it then plans each batch's lookups as scans of the whole table (each batch slower than the
# last). Refreshing them as the table grows keeps every batch on the indexes.
ANALYZE_AFTER_BATCHES = frozenset({2, 8, 32, 128, 512})


async def _analyze(database: Database) -> None:
    async with database.transaction(write=True) as conn:
        if conn.dialect.name == "postgresql":
            await conn.execute(text("ANALYZE segment_members"))
            await conn.execute(text("ANALYZE changes"))


REFRESH = timedelta(hours=24)  # the default of Settings.segment_refresh_hours
REFRESH_CANDIDATES = 50


async def claim_due(
    database: Database, now: datetime | None = None, refresh: timedelta = REFRESH
) -> tuple[str, str] | None:
    """A segment that no live process is backfilling and that needs a backfill, claimed for
    this one: (tenant id, segment id). Due: a version not backfilled yet, else a segment over
    attributes that change with time alone whose last backfill is older than `refresh`."""
    now = now or utcnow()
    stale = now - CLAIM_STALE
    free = (segments.c.backfill_claimed_at.is_(None)) | (segments.c.backfill_claimed_at < stale)
    async with database.transaction(write=True) as conn:
        due = (
            await conn.execute(
                select(segments.c.tenant_id, segments.c.id)
                .where(
                    (segments.c.backfilled_version.is_(None))
                    | (segments.c.backfilled_version != segments.c.version),
                    free,
                )
                .order_by(segments.c.updated_at)
                .limit(1)
            )
        ).first()
        if due is None:
            due = await _refresh_due(conn, now - refresh, free)
        if due is None:
            return None
        claimed = await conn.execute(
            update(segments)
            .where(
                segments.c.tenant_id == due.tenant_id,
                segments.c.id == due.id,
                (segments.c.backfill_claimed_at.is_(None))
                | (segments.c.backfill_claimed_at < stale),
            )
            .values(backfill_claimed_at=now, backfill_done=0, backfill_total=0)
        )
        return (due.tenant_id, due.id) if claimed.rowcount == 1 else None


async def _refresh_due(conn: AsyncConnection, before: datetime, free: Any) -> Any:
    """The segment over time-dependent attributes backfilled longest ago, before `before`."""
    rows = await conn.execute(
        select(segments.c.tenant_id, segments.c.id, segments.c.condition)
        .where(
            segments.c.backfilled_version == segments.c.version,
            (segments.c.backfilled_at.is_(None)) | (segments.c.backfilled_at < before),
            free,
        )
        .order_by(segments.c.backfilled_at.is_not(None), segments.c.backfilled_at)
        .limit(REFRESH_CANDIDATES)
    )
    return next((row for row in rows if segment_rules.depends_on_time(row.condition)), None)


async def backfill_due(
    database: Database, now: datetime | None = None, refresh: timedelta = REFRESH
) -> int:
    """Backfill every segment that needs it, one after the other; how many were done. The
    round's time is fixed at its start: a segment refreshed in it is not due again in it."""
    count, now = 0, now or utcnow()
    while (claimed := await claim_due(database, now, refresh)) is not None:
        with contextlib.suppress(Problem):  # deleted meanwhile
            await backfill(database, *claimed)
        count += 1
    return count


async def _exit_gone(conn: AsyncConnection, tenant_id: str, segment: segment_rules.Segment) -> int:
    """Members that are no longer live customers (merged away, erased) leave."""
    members = segment_members.c
    # NOT EXISTS, an anti-join: `NOT IN (subquery)` makes PostgreSQL compare every member with
    # every customer once the customers no longer fit its work memory.
    live = (
        select(customers.c.id)
        .where(
            customers.c.tenant_id == tenant_id,
            customers.c.id == members.customer_id,
            customers.c.merged_into.is_(None),
        )
        .exists()
    )
    gone = list(
        (
            await conn.execute(
                select(members.customer_id).where(
                    members.tenant_id == tenant_id,
                    members.segment_id == segment.id,
                    members.exited_at.is_(None),
                    ~live,
                )
            )
        ).scalars()
    )
    if not gone:
        return 0
    return (await evaluate(conn, tenant_id, gone, only=[segment])).exited  # what it made


# --- definitions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SegmentRecord:
    id: str
    name: str
    description: str
    condition: dict[str, Any]
    version: int
    created_at: datetime
    updated_at: datetime
    backfilled_version: int | None
    backfill_done: int
    backfill_total: int
    members: int


def _invalid(errors: list[str]) -> Problem:
    return Problem(ProblemType.INVALID_SEGMENT, "; ".join(errors), errors=errors)


def _checked(name: str, condition: Any) -> None:
    try:
        segment_rules.check(name, condition)
    except segment_rules.InvalidSegment as error:
        raise _invalid(error.errors) from error


async def _count(conn: AsyncConnection, tenant_id: str, segment_id: str) -> int:
    members = segment_members.c
    return int(
        (
            await conn.execute(
                select(func.count()).where(
                    members.tenant_id == tenant_id,
                    members.segment_id == segment_id,
                    members.exited_at.is_(None),
                )
            )
        ).scalar_one()
    )


async def _record(conn: AsyncConnection, row: Any) -> SegmentRecord:
    return SegmentRecord(
        row.id,
        row.name,
        row.description,
        row.condition,
        row.version,
        row.created_at,
        row.updated_at,
        row.backfilled_version,
        row.backfill_done,
        row.backfill_total,
        await _count(conn, row.tenant_id, row.id),
    )


async def get(
    conn: AsyncConnection, tenant_id: str, segment: str, *, lock: str | None = None
) -> SegmentRecord:
    """A segment by id or by name; `lock`: "edit" or "delete", the row locked (and read as
    committed once the lock is ours): edits take turns with each other and with a deletion,
    while evaluations (FOR KEY SHARE) go on beside an edit and hold a deletion back."""
    query = select(segments).where(
        segments.c.tenant_id == tenant_id,
        (segments.c.id == segment) | (segments.c.name == segment),
    )
    if lock is not None:
        query = query.with_for_update(key_share=lock == "edit")  # FOR [NO KEY] UPDATE
    row = (await conn.execute(query)).first()
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no segment {segment!r}")
    return await _record(conn, row)


async def listed(conn: AsyncConnection, tenant_id: str) -> list[SegmentRecord]:
    rows = await conn.execute(
        select(segments).where(segments.c.tenant_id == tenant_id).order_by(segments.c.name)
    )
    return [await _record(conn, row) for row in rows]


async def create(
    conn: AsyncConnection,
    tenant_id: str,
    name: str,
    condition: dict[str, Any],
    description: str,
    actor_key_id: str | None,
) -> SegmentRecord:
    """A new segment (its membership fills by a backfill, which the caller starts)."""
    _checked(name, condition)
    await named_locks.take(conn, tenant_id, "segments")  # its name and the count: one at a time
    taken = await conn.execute(
        select(segments.c.id).where(segments.c.tenant_id == tenant_id, segments.c.name == name)
    )
    if taken.first() is not None:
        raise _invalid([f"name: another segment is called {name!r}"])
    count = (
        await conn.execute(select(func.count()).where(segments.c.tenant_id == tenant_id))
    ).scalar_one()
    if count >= MAX_SEGMENTS:
        raise _invalid([f"a shop has at most {MAX_SEGMENTS} segments"])
    now = utcnow()
    segment_id = new_id("seg", 10)
    await conn.execute(
        insert(segments).values(
            tenant_id=tenant_id,
            id=segment_id,
            name=name,
            description=description,
            condition=condition,
            version=1,
            created_at=now,
            updated_at=now,
            backfilled_version=None,
            backfill_done=0,
            backfill_total=0,
        )
    )
    await audit.record(conn, tenant_id, actor_key_id, "segment.created", segment_id, name)
    return await get(conn, tenant_id, segment_id)


async def edit(
    conn: AsyncConnection,
    tenant_id: str,
    segment: str,
    condition: dict[str, Any] | None,
    description: str | None,
    actor_key_id: str | None,
) -> tuple[SegmentRecord, bool]:
    """Change a segment's condition or description; (record, whether a backfill is due)."""
    current = await get(conn, tenant_id, segment, lock="edit")
    values: dict[str, Any] = {"updated_at": utcnow()}
    changed = condition is not None and condition != current.condition
    if condition is not None:
        _checked(current.name, condition)
        values["condition"] = condition
    if changed:
        values["version"] = current.version + 1
    if description is not None:
        values["description"] = description
    await conn.execute(
        update(segments)
        .where(segments.c.tenant_id == tenant_id, segments.c.id == current.id)
        .values(**values)
    )
    if changed:
        detail = f"{current.name} v{current.version + 1}"
        await audit.record(conn, tenant_id, actor_key_id, "segment.edited", current.id, detail)
    return await get(conn, tenant_id, current.id), changed


async def remove(
    conn: AsyncConnection, tenant_id: str, segment: str, actor_key_id: str | None
) -> SegmentRecord:
    """Delete a segment; its members exit (published), its membership rows go. The segment
    is locked first: an evaluation holds it (`_still_defined`) until it commits, so none adds
    a member after, and the exits published are those of the rows deleted, as they were."""
    current = await get(conn, tenant_id, segment, lock="delete")
    members = segment_members.c
    gone = await conn.execute(
        delete(segment_members)
        .where(members.tenant_id == tenant_id, members.segment_id == current.id)
        .returning(members.customer_id, members.exited_at)
    )
    for customer_id in sorted(row.customer_id for row in gone if row.exited_at is None):
        payload = {
            "customer_id": customer_id,
            "segment_id": current.id,
            "segment": current.name,
            "version": current.version,
        }
        await changes.publish(conn, tenant_id, customer_id, "segment.exited", payload)
    await conn.execute(
        delete(segments).where(segments.c.tenant_id == tenant_id, segments.c.id == current.id)
    )
    await audit.record(conn, tenant_id, actor_key_id, "segment.deleted", current.id, current.name)
    return current


@dataclass(frozen=True)
class Member:
    customer_id: str
    entered_at: datetime


async def members_page(
    conn: AsyncConnection, tenant_id: str, segment_id: str, after: str | None, limit: int
) -> list[Member]:
    """Current members in customer-id order (keyset pages: pass the last id as `after`)."""
    members = segment_members.c
    query = (
        select(members.customer_id, members.entered_at)
        .where(
            members.tenant_id == tenant_id,
            members.segment_id == segment_id,
            members.exited_at.is_(None),
        )
        .order_by(members.customer_id)
        .limit(limit)
    )
    if after:
        query = query.where(members.customer_id > after)
    return [Member(row.customer_id, row.entered_at) for row in await conn.execute(query)]


@dataclass(frozen=True)
class Explanation:
    customer_id: str
    segment: str
    member: bool  # what the membership table says
    holds: bool  # what her profile says now
    entered_at: datetime | None
    clauses: list[segment_rules.ClauseExplanation]


async def explain(conn: AsyncConnection, tenant_id: str, segment: str, live: str) -> Explanation:
    """Why she is (or is not) in the segment: each clause against her attributes now."""
    record = await get(conn, tenant_id, segment)
    settings = await settings_of(conn, tenant_id)
    attributes = (await facts_for(conn, tenant_id, [live], settings)).get(live, {})
    row = (
        await conn.execute(
            select(segment_members).where(
                segment_members.c.tenant_id == tenant_id,
                segment_members.c.segment_id == record.id,
                segment_members.c.customer_id == live,
            )
        )
    ).first()
    member = row is not None and row.exited_at is None
    clauses = segment_rules.explain(record.condition, attributes)
    return Explanation(
        live,
        record.name,
        member,
        all(clause.holds for clause in clauses),
        row.entered_at if member and row else None,
        clauses,
    )


def _insert_members(conn: AsyncConnection) -> Any:
    # A backfill and the real-time evaluator may record the same entry at once: one wins.
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(segment_members).on_conflict_do_nothing()
