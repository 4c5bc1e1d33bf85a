"""The identity graph: link identifiers to customers, merge customers, split merges.

Rules (DESIGN: identity):
- The survivor of a merge is the older customer; the loser keeps a redirect (`merged_into`,
  kept pointing at the live customer) so its id still resolves.
- A customer holds at most one `customer_ref`; a link or merge that would give it a second is
  refused (`identity-conflict`) and nothing changes.
- Shared identifiers (a POS terminal, a family tablet) belong to no customer and never merge.
- Per-type limits: when a customer would hold more identifiers of a type than its limit, the
  links of that type that were made longest ago are dropped (the identifiers named in the
  current request are kept). A merge records the dropped links, and a split restores them.
- Every merge records what the loser held, so that an admin can split it: the loser gets back
  its identifiers, events, annotations and traits as they were at the merge. What happened
  after the merge (events recorded for the survivor, identifiers linked later) stays with
  the survivor.

Concurrency, one locking order for every write (docs/server.md, "Locks and jobs"): locks are
no wider than the data they protect, so two customers' sign-ins never wait for each other.
1. the identifiers a write may link, create or unlink: a PostgreSQL transaction advisory lock
   per identifier (a 64-bit hash of tenant, type and value), all taken in one statement in
   ascending order (`lock_identifiers`): `identify`, `split`, `mark_shared`, erasure, and
   ingestion of an identifier never seen before;
2. the customers' rows, in id order (`lock_customer` for one; `lock_customers` for several:
   a merge locks survivor and loser, erasure the whole person). Writes lock the live row
   FOR NO KEY UPDATE; ingestion locks the rows it attributes events to FOR KEY SHARE, which
   keeps them from being erased under it without waiting for any other write;
3. that customer's state rows (cart, session), then the change feed.
What was read before a lock is read again after it: an identifier's owner may have been merged
into another customer, or erased, in between (`identify` then resolves again).
A write addressed to a merged-away id is applied to the survivor in the same transaction:
`lock_customer` resolves the id after taking the locks, so no merge can come in between.
Merges do not move the loser's events: they stay under the id they were recorded for, and
every read of a person's events reads by the person's ids (`person_ids`: the live id and every
id merged into it). On SQLite, writers are serialised anyway: the locks are no-ops there and
the logic is the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, NamedTuple

from sqlalchemy import Row, bindparam, delete, func, insert, or_, select, text, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.cart import MergePolicy
from omnisdk.core.channels import Channel
from omnisdk.core.identifiers import (
    IdentifierKey,
    IdentifierType,
    InvalidIdentifier,
    hashed_contact_data,
)
from omnisdk.core.problems import ProblemType
from omnisdk.models import CartMergeReport, IdentifierIn, IdentifyRequest, IdentifyResult, Merge
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import alerts, carts, consent, named_locks, segment_hook, sessions
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.prepared import ID_IN, Prepared, id_list
from server_stub.storage.tables import (
    annotations_table,
    customers,
    events,
    history_folds,
    identifiers,
    merges,
    moved_from,
    orders,
    preference_declarations,
)

# Keys a shop might use to smuggle contact data into traits; they go in as identifiers.
RESERVED_TRAITS = frozenset({"email", "e-mail", "e_mail", "phone", "mobile", "telephone"})
MAX_TRAITS_KEYS = 100
RowLock = Literal["read", "write", "delete"]
MAX_RESOLVE_ROUNDS = 16  # identifiers whose owners move more often than this: try again later


# Statements on every write's path, compiled once and run on the driver directly
# (storage/prepared.py): SQLAlchemy's execution machinery cost more than the SQL.
# The advisory locks are taken in ascending order: the sorted subquery feeds the aggregate.
_LOCK_IDENTIFIERS = Prepared(
    text(
        "SELECT count(pg_advisory_xact_lock(k)) FROM "
        "(SELECT k FROM unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) AS ordered"
    )
)
# The row the id redirects to (merged_into points at the live customer directly), or its own.
_REDIRECT = (
    select(customers.c.merged_into)
    .where(customers.c.tenant_id == bindparam("tenant"), customers.c.id == bindparam("customer"))
    .scalar_subquery()
)
_LIVE_CUSTOMER = select(customers.c.id, customers.c.merged_into).where(
    customers.c.tenant_id == bindparam("tenant"),
    customers.c.id == func.coalesce(_REDIRECT, bindparam("customer")),
)
_LOCK_LIVE_CUSTOMER = {
    "sqlite": Prepared(_LIVE_CUSTOMER),  # one writer at a time: nothing to lock
    # PostgreSQL: the live row only, FOR NO KEY UPDATE (ingestion's FOR KEY SHARE does not
    # wait for it). If a merge committed meanwhile, the row lock returns the row as the merge
    # left it (`merged_into` set), which the caller follows.
    "postgresql": Prepared(_LIVE_CUSTOMER.with_for_update(key_share=True)),
}


# A batch's identifiers and customers looked up in one statement whatever their number: the
# values go as arrays (PostgreSQL, whose planner sees their size) or one JSON array (SQLite;
# storage/prepared.py, ID_IN), so no list of placeholders is rendered per call (the batch
# endpoint names hundreds of them; rendering them cost more than the lookup).
_KEYS = {
    "postgresql": "SELECT * FROM unnest(CAST(:types AS text[]), CAST(:values AS text[]))",
    "sqlite": "SELECT json_extract(k.value, '$[0]'), json_extract(k.value, '$[1]') "
    "FROM json_each(:keys) AS k",
}
_OWNERS = {
    dialect: Prepared(
        text(
            "SELECT type, value, customer_id, shared FROM identifiers "
            f"WHERE tenant_id = :tenant AND (type, value) IN ({keys})"
        )
    )
    for dialect, keys in _KEYS.items()
}
# `identify`: each identifier's row and the customer it names, resolved past a merge
# (`merged_into` points at the live customer directly), in one statement.
_OWNERS_LIVE = {
    dialect: Prepared(
        text(
            "SELECT i.type, i.value, i.customer_id, i.shared, c.id, c.merged_into "
            "FROM identifiers AS i LEFT JOIN customers AS c "
            "ON c.tenant_id = i.tenant_id AND c.id = i.customer_id "
            f"WHERE i.tenant_id = :tenant AND (i.type, i.value) IN ({keys})"
        )
    )
    for dialect, keys in _KEYS.items()
}
_CUSTOMERS = "SELECT id, merged_into FROM customers WHERE tenant_id = :tenant AND {ids}"
_CUSTOMERS_IN = {
    dialect: _CUSTOMERS.format(ids=ids.format(column="id")) for dialect, ids in ID_IN.items()
}
_LIVE_IDS = {dialect: Prepared(text(sql)) for dialect, sql in _CUSTOMERS_IN.items()}
_ROW_LOCKS: dict[RowLock, str] = {
    "read": "FOR KEY SHARE",
    "write": "FOR NO KEY UPDATE",
    "delete": "FOR UPDATE",
}
# PostgreSQL: the rows locked in id order; SQLite (one writer at a time): only read.
_LOCK_CUSTOMERS: dict[tuple[str, RowLock], Prepared] = {
    ("postgresql", mode): Prepared(text(f"{_CUSTOMERS_IN['postgresql']} ORDER BY id {lock}"))
    for mode, lock in _ROW_LOCKS.items()
} | {("sqlite", mode): _LIVE_IDS["sqlite"] for mode in _ROW_LOCKS}
# `identify`'s candidates: locked FOR NO KEY UPDATE in id order as above, and read whole in the
# same statement (a merge needs their creation times and traits).
_LOCK_CANDIDATES = {
    dialect: Prepared(
        select(customers.c.id, customers.c.merged_into, customers.c.created_at, customers.c.traits)
        .where(
            customers.c.tenant_id == bindparam("tenant"), text(ids.format(column="customers.id"))
        )
        .order_by(customers.c.id)
        .with_for_update(key_share=True)
    )
    for dialect, ids in ID_IN.items()
}


def identifier_lock_key(tenant_id: str, key: IdentifierKey) -> int:
    """The advisory lock of one identifier of a tenant."""
    return named_locks.advisory_key(tenant_id, key.type.value, key.value)


async def lock_identifiers(
    conn: AsyncConnection, tenant_id: str, keys: Iterable[IdentifierKey]
) -> None:
    """Serialise the writes that may link, create or unlink these identifiers (and only
    those): taken first, before any customer row, in one ascending order."""
    if conn.dialect.name != "postgresql":
        return
    locks = sorted({identifier_lock_key(tenant_id, key) for key in keys})
    if locks:
        await _LOCK_IDENTIFIERS.fetchone(conn, {"keys": locks})


async def lock_customer(conn: AsyncConnection, tenant_id: str, customer_id: str) -> str:
    """Lock a customer for a write to its state and return the live id to write to (the
    survivor of a merge). No merge or split of it can interleave until the transaction ends."""
    parameters = {"tenant": tenant_id, "customer": customer_id}
    row = await _LOCK_LIVE_CUSTOMER[conn.dialect.name].fetchone(conn, parameters)
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no customer {customer_id!r}")
    live_customer, merged_into = row
    if merged_into is None:
        return str(live_customer)
    live = await live_id(conn, tenant_id, merged_into)  # a longer chain: follow it
    assert live is not None
    await lock_customers(conn, tenant_id, [live])
    return live


async def lock_customers(
    conn: AsyncConnection, tenant_id: str, ids: Iterable[str], *, mode: RowLock = "write"
) -> dict[str, str | None]:
    """Lock customers' rows in id order (the one order every writer follows) and return each
    found id with its `merged_into` as it is now. `mode`: "read" (FOR KEY SHARE: the rows may
    not be deleted before we commit; other writes go on), "write" (FOR NO KEY UPDATE: we
    change who they are) or "delete" (FOR UPDATE: we erase them)."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await _LOCK_CUSTOMERS[conn.dialect.name, mode].fetchall(
        conn, {"tenant": tenant_id, "ids": id_list(conn, wanted)}
    )
    return {id: merged_into for id, merged_into in rows}


def invalid_identifier(error: InvalidIdentifier) -> Problem:
    return Problem(
        ProblemType.INVALID_IDENTIFIER,
        f"{error.identifier_type} identifier refused: {error.reason}",
        identifier_type=error.identifier_type,
    )


def keys_of(
    context: TenantContext, items: Iterable[IdentifierIn]
) -> list[tuple[IdentifierKey, bool]]:
    """Stored keys of the given identifiers (deduplicated, in order), each with its shared flag."""
    seen: dict[IdentifierKey, bool] = {}
    for item in items:
        try:
            key = context.key(item.type, item.value)
        except InvalidIdentifier as error:
            raise invalid_identifier(error) from error
        seen[key] = seen.get(key, False) or item.shared
    return list(seen.items())


# --- reading -------------------------------------------------------------------------------


async def live_id(conn: AsyncConnection, tenant_id: str, customer_id: str) -> str | None:
    """The live customer a (possibly merged) customer id stands for, or None if unknown."""
    for _ in range(64):
        row = (
            await conn.execute(
                select(customers.c.merged_into).where(
                    customers.c.tenant_id == tenant_id, customers.c.id == customer_id
                )
            )
        ).first()
        if row is None:
            return None
        if row.merged_into is None:
            return customer_id
        customer_id = row.merged_into
    raise RuntimeError("merge redirects form a cycle")


async def person_ids(conn: AsyncConnection, tenant_id: str, live: str) -> list[str]:
    """The live customer and every id merged into it (redirects point at the live id): the
    ids a person's events are stored under, since a merge moves none of them."""
    rows = await conn.execute(
        select(customers.c.id).where(
            customers.c.tenant_id == tenant_id, customers.c.merged_into == live
        )
    )
    return [live, *sorted(row.id for row in rows)]


async def live_ids(conn: AsyncConnection, tenant_id: str, ids: Iterable[str]) -> dict[str, str]:
    """Live customer for each known id (merged ids point at their live customer directly)."""
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await _LIVE_IDS[conn.dialect.name].fetchall(
        conn, {"tenant": tenant_id, "ids": id_list(conn, wanted)}
    )
    return {id: merged_into or id for id, merged_into in rows}


class Owner(NamedTuple):
    """Who an identifier names: its customer (None once erased) and whether it is shared."""

    customer_id: str | None
    shared: bool


async def owners_of(
    conn: AsyncConnection, tenant_id: str, keys: Sequence[IdentifierKey]
) -> dict[IdentifierKey, Owner]:
    """Who each of these identifier keys names, in one statement (absent keys are unknown)."""
    if not keys:
        return {}
    rows = await _OWNERS[conn.dialect.name].fetchall(conn, _key_parameters(conn, tenant_id, keys))
    types = {kind.value: kind for kind in IdentifierType}
    return {
        IdentifierKey(types[type], value): Owner(customer_id, bool(shared))
        for type, value, customer_id, shared in rows
    }


def _key_parameters(
    conn: AsyncConnection, tenant_id: str, keys: Sequence[IdentifierKey]
) -> dict[str, Any]:
    if conn.dialect.name == "postgresql":
        return {
            "tenant": tenant_id,
            "types": [key.type.value for key in keys],
            "values": [key.value for key in keys],
        }
    return {"tenant": tenant_id, "keys": json.dumps([(key.type.value, key.value) for key in keys])}


async def _owners_live(
    conn: AsyncConnection, tenant_id: str, keys: Sequence[IdentifierKey]
) -> tuple[dict[IdentifierKey, Owner], dict[str, str]]:
    """`owners_of`, with the live customer of each customer id found (absent: erased)."""
    if not keys:
        return {}, {}
    rows = await _OWNERS_LIVE[conn.dialect.name].fetchall(
        conn, _key_parameters(conn, tenant_id, keys)
    )
    types = {kind.value: kind for kind in IdentifierType}
    stored = {
        IdentifierKey(types[type], value): Owner(customer_id, bool(shared))
        for type, value, customer_id, shared, _, _ in rows
    }
    live = {found: merged_into or found for *_, found, merged_into in rows if found is not None}
    return stored, live


async def resolve(conn: AsyncConnection, context: TenantContext, key: IdentifierKey) -> str | None:
    row = (await owners_of(conn, context.tenant_id, [key])).get(key)
    if row is None or row.shared or row.customer_id is None:
        return None
    return await live_id(conn, context.tenant_id, row.customer_id)


# --- creating and linking ------------------------------------------------------------------


def _insert_named(table: Any, *columns: str) -> Prepared:
    """An insert of these columns, each value passed by its column's name, run on the driver
    (storage/prepared.py): a sign-in's inserts."""
    return Prepared(insert(table).values({column: bindparam(column) for column in columns}))


_INSERT_CUSTOMER = _insert_named(customers, "tenant_id", "id", "created_at", "traits")
_INSERT_IDENTIFIER = _insert_named(
    identifiers, "tenant_id", "type", "value", "customer_id", "shared", "linked_at"
)


async def create_customer(conn: AsyncConnection, tenant_id: str, now: datetime) -> str:
    return (await create_customers(conn, tenant_id, 1, now))[0]


async def create_customers(
    conn: AsyncConnection, tenant_id: str, count: int, now: datetime
) -> list[str]:
    """`count` new customers, in one statement (a batch of events from new visitors)."""
    ids = [new_id("cus", 10) for _ in range(count)]
    rows = [{"tenant_id": tenant_id, "id": id, "created_at": now, "traits": {}} for id in ids]
    if ids:
        await _INSERT_CUSTOMER.executemany(conn, rows)
        await segment_hook.profile_changed(conn, tenant_id, ids)  # new customers
    return ids


# PostgreSQL: a new customer, her identifiers and her place in the segment queue (where the
# tenant has segments) in one statement (the sign-in of someone the shop has not met): one
# round trip where there were two or three.
_CREATE_LINKED = Prepared(
    text(
        "WITH created AS (INSERT INTO customers (tenant_id, id, created_at, traits) "
        "VALUES (:tenant, :customer, CAST(:now AS timestamptz), CAST('{}' AS json))), "
        f"queued AS ({segment_hook.QUEUE_NEW_CUSTOMER}) "
        "INSERT INTO identifiers (tenant_id, type, value, customer_id, shared, linked_at) "
        "SELECT :tenant, key.type, key.value, :customer, false, CAST(:now AS timestamptz) "
        "FROM unnest(CAST(:types AS text[]), CAST(:values AS text[])) AS key(type, value)"
    )
)


async def _create_linked(
    conn: AsyncConnection, tenant_id: str, keys: Sequence[IdentifierKey], now: datetime
) -> str:
    """A new customer holding `keys` (locked by the caller, owned by no one)."""
    if conn.dialect.name != "postgresql":
        customer_id = await create_customer(conn, tenant_id, now)
        await _link(conn, tenant_id, customer_id, keys, now)
        return customer_id
    customer_id = new_id("cus", 10)
    await _CREATE_LINKED.execute(
        conn,
        {
            "tenant": tenant_id,
            "customer": customer_id,
            "now": now,
            "types": [key.type.value for key in keys],
            "values": [key.value for key in keys],
        },
    )
    return customer_id


async def _link(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    keys: Iterable[IdentifierKey],
    now: datetime,
) -> None:
    rows = [
        {
            "tenant_id": tenant_id,
            "type": k.type.value,
            "value": k.value,
            "customer_id": customer_id,
            "shared": False,
            "linked_at": now,
        }
        for k in keys
    ]
    if rows:
        await _INSERT_IDENTIFIER.executemany(conn, rows)


async def _held(conn: AsyncConnection, tenant_id: str, customer_id: str) -> list[Row[Any]]:
    rows = await conn.execute(
        select(identifiers)
        .where(identifiers.c.tenant_id == tenant_id, identifiers.c.customer_id == customer_id)
        .order_by(identifiers.c.linked_at, identifiers.c.type, identifiers.c.value)
    )
    return list(rows)


async def _enforce_limits(
    conn: AsyncConnection, context: TenantContext, customer_id: str, keep: set[IdentifierKey]
) -> list[Row[Any]]:
    """Drop the oldest links of each type beyond its limit; return the dropped rows."""
    held = await _held(conn, context.tenant_id, customer_id)
    dropped: list[Row[Any]] = []
    for type in IdentifierType:
        of_type = [row for row in held if row.type == type.value]
        excess = len(of_type) - context.limit(type)
        if excess <= 0:
            continue
        candidates = [r for r in of_type if IdentifierKey(type, r.value) not in keep]
        dropped.extend(candidates[:excess])
    if dropped:
        await conn.execute(
            delete(identifiers).where(
                identifiers.c.tenant_id == context.tenant_id,
                tuple_(identifiers.c.type, identifiers.c.value).in_(
                    [(row.type, row.value) for row in dropped]
                ),
            )
        )
    return dropped


def _row_json(row: Row[Any]) -> list[Any]:
    return [row.type, row.value, row.linked_at.isoformat()]


def _check_traits(traits: dict[str, Any]) -> None:
    reserved = RESERVED_TRAITS & {key.lower() for key in traits}
    if reserved:
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"traits may not hold {', '.join(sorted(reserved))}: send contact details as "
            "identifiers (email=..., phone=...), which are stored only as keyed hashes",
        )
    if len(traits) > MAX_TRAITS_KEYS:
        raise Problem(ProblemType.VALIDATION_ERROR, f"at most {MAX_TRAITS_KEYS} traits")


# --- merging -------------------------------------------------------------------------------


@dataclass
class _Customer:
    id: str
    created_at: datetime
    traits: dict[str, Any]
    merged_into: str | None


async def _customers(
    conn: AsyncConnection, tenant_id: str, ids: Iterable[str]
) -> dict[str, _Customer]:
    rows = await conn.execute(
        select(customers).where(customers.c.tenant_id == tenant_id, customers.c.id.in_(set(ids)))
    )
    return {
        row.id: _Customer(row.id, row.created_at, dict(row.traits), row.merged_into) for row in rows
    }


async def _customer_refs(conn: AsyncConnection, tenant_id: str, ids: Iterable[str]) -> set[str]:
    rows = await conn.execute(
        select(identifiers.c.value).where(
            identifiers.c.tenant_id == tenant_id,
            identifiers.c.customer_id.in_(set(ids)),
            identifiers.c.type == IdentifierType.CUSTOMER_REF.value,
        )
    )
    return {row.value for row in rows}


@dataclass
class _MergeOutcome:
    merge_id: str
    dropped: list[Row[Any]] = field(default_factory=list)
    cart: CartMergeReport | None = None


async def _merge(
    conn: AsyncConnection,
    context: TenantContext,
    survivor: _Customer,
    loser: _Customer,
    cause: IdentifierKey,
    channel: Channel,
    keep: set[IdentifierKey],
    now: datetime,
) -> _MergeOutcome:
    tenant_id = context.tenant_id
    # The caller holds the identifiers' locks and both customers' rows (identify).
    absorbed = [
        row.id
        for row in await conn.execute(
            select(customers.c.id).where(
                customers.c.tenant_id == tenant_id, customers.c.merged_into == loser.id
            )
        )
    ]
    snapshot: dict[str, Any] = {
        "loser_identifiers": [_row_json(row) for row in await _held(conn, tenant_id, loser.id)],
        "loser_traits": loser.traits,
        "survivor_traits": survivor.traits,
        "absorbed": absorbed,
        "dropped": [],
    }
    await conn.execute(
        update(identifiers)
        .where(identifiers.c.tenant_id == tenant_id, identifiers.c.customer_id == loser.id)
        .values(customer_id=survivor.id)
    )
    # Annotations, orders and declared preferences (a few rows each) follow the survivor.
    # Events stay under the id they were recorded for: reads go by the person's ids
    # (person_ids), so merging a customer with ten thousand events costs what merging one
    # with none does.
    for table in (annotations_table, orders, preference_declarations):
        await conn.execute(
            update(table)
            .where(table.c.tenant_id == tenant_id, table.c.customer_id == loser.id)
            .values(customer_id=survivor.id)
        )
    # ...and are folded into the survivor's id in the background, in bounded batches.
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    await conn.execute(
        dialect.insert(history_folds)
        .values(tenant_id=tenant_id, customer_id=loser.id, queued_at=now)
        .on_conflict_do_nothing()
    )
    await conn.execute(
        update(customers)
        .where(customers.c.tenant_id == tenant_id, customers.c.merged_into == loser.id)
        .values(merged_into=survivor.id)
    )
    await conn.execute(
        update(customers)
        .where(customers.c.tenant_id == tenant_id, customers.c.id == loser.id)
        .values(merged_into=survivor.id, merged_at=now)
    )
    survivor.traits = {**loser.traits, **survivor.traits}
    await conn.execute(
        update(customers)
        .where(customers.c.tenant_id == tenant_id, customers.c.id == survivor.id)
        .values(traits=survivor.traits)
    )
    dropped = await _enforce_limits(conn, context, survivor.id, keep)
    snapshot["dropped"] = [_row_json(row) for row in dropped]
    merge_id = new_id("mrg", 10)
    policy = MergePolicy(context.settings.carts.merge_policy)
    folded = await carts.merge(conn, tenant_id, survivor.id, loser.id, policy, merge_id)
    snapshot["loser_cart"] = folded["loser_state"] if folded else None
    snapshot["loser_session"] = await sessions.merge(conn, tenant_id, survivor.id, loser.id)
    await consent.merge(conn, tenant_id, survivor.id, loser.id)
    await alerts.merge(conn, tenant_id, survivor.id, loser.id)
    # Caches keyed by either id must re-read: the survivor's consent now comes from both.
    await consent.publish(conn, tenant_id, survivor.id, None, also=[loser.id, *absorbed])
    report = (
        CartMergeReport(
            from_customer_id=loser.id,
            policy=policy.value,
            from_lines=folded["lines"],
            result=folded["result"],
        )
        if folded
        else None
    )
    await conn.execute(
        insert(merges).values(
            tenant_id=tenant_id,
            id=merge_id,
            survivor_id=survivor.id,
            loser_id=loser.id,
            cause=cause.masked(),
            channel=channel.value,
            created_at=now,
            snapshot=snapshot,
        )
    )
    loser.merged_into = survivor.id
    await segment_hook.profile_changed(conn, tenant_id, [survivor.id, loser.id, *absorbed])
    return _MergeOutcome(merge_id, dropped, report)


async def _owners_locked(
    conn: AsyncConnection,
    tenant_id: str,
    keys: Sequence[IdentifierKey],
    flagged: set[IdentifierKey],
) -> tuple[dict[IdentifierKey, Owner], dict[IdentifierKey, str], dict[str, _Customer]]:
    """Who owns each of `keys` (absent: unknown), the live customer owning each linkable one,
    and those customers, their rows locked. Read again after the lock until nothing moved in
    between: an owner may have been merged into another customer, split or erased meanwhile."""
    for _ in range(MAX_RESOLVE_ROUNDS):
        stored, live = await _owners_live(conn, tenant_id, keys)
        found = {
            key: owner.customer_id
            for key, owner in stored.items()
            if key not in flagged and not owner.shared and owner.customer_id is not None
        }
        owner_of = {key: live[customer] for key, customer in found.items() if customer in live}
        locked = await _lock_candidates(conn, tenant_id, owner_of.values())
        if len(owner_of) == len(found) and all(
            customer in locked and locked[customer].merged_into is None
            for customer in owner_of.values()
        ):
            return stored, owner_of, locked
    raise Problem(
        ProblemType.CONFLICT,
        "the customers holding these identifiers kept changing while this request ran; "
        "send it again",
    )


async def _lock_candidates(
    conn: AsyncConnection, tenant_id: str, ids: Iterable[str]
) -> dict[str, _Customer]:
    wanted = set(ids)
    if not wanted:
        return {}
    rows = await _LOCK_CANDIDATES[conn.dialect.name].fetchall(
        conn, {"tenant": tenant_id, "ids": id_list(conn, wanted)}
    )
    return {
        id: _Customer(id, created_at, dict(traits or {}), merged_into)
        for id, merged_into, created_at, traits in rows
    }


async def identify(
    conn: AsyncConnection, context: TenantContext, request: IdentifyRequest, channel: Channel
) -> IdentifyResult:
    """Link the request's identifiers to one customer, merging customers where needed."""
    items = request.all_identifiers()
    if not items:
        raise Problem(ProblemType.VALIDATION_ERROR, "name at least one identifier")
    _check_traits(request.traits)
    keyed = keys_of(context, items)
    tenant_id = context.tenant_id
    flagged = {key for key, flag in keyed if flag}
    # Only these identifiers, and then only the customers holding them (module docstring).
    await lock_identifiers(conn, tenant_id, [key for key, _ in keyed])
    now = utcnow()
    stored, owner_of, candidates = await _owners_locked(
        conn, tenant_id, [key for key, _ in keyed], flagged
    )
    shared = {key for key, _ in keyed if key in flagged or (key in stored and stored[key].shared)}
    linkable = [key for key, _ in keyed if key not in shared]
    await _record_shared(conn, tenant_id, [k for k in shared if k not in stored], now)
    if not linkable:
        raise Problem(
            ProblemType.INVALID_IDENTIFIER,
            "only shared identifiers were given; a shared device cannot identify a customer",
        )

    # One customer holds at most one customer_ref: the candidates' refs need reading only when
    # there is more than one of them, or when a ref no one holds yet would go to one.
    refs = {key.value for key in linkable if key.type is IdentifierType.CUSTOMER_REF}
    new_ref = any(k.type is IdentifierType.CUSTOMER_REF and k not in owner_of for k in linkable)
    if len(candidates) > 1 or (candidates and new_ref):
        refs |= await _customer_refs(conn, tenant_id, candidates)
    if len(refs) > 1:
        raise Problem(
            ProblemType.IDENTITY_CONFLICT,
            "these identifiers would give one customer two customer_ref values; a customer "
            "has one shop account. Nothing was linked.",
        )

    created = not candidates
    if created:  # no one holds any of them: she is new, and holds them all
        survivor = _Customer(await _create_linked(conn, tenant_id, linkable, now), now, {}, None)
    else:
        ordered = sorted(candidates.values(), key=lambda c: (c.created_at, c.id))
        survivor = ordered[0]
    keep = set(linkable)
    merge_ids: list[str] = []
    merged_ids: list[str] = []
    dropped: list[Row[Any]] = []
    cart_merges: list[CartMergeReport] = []
    for loser in sorted(candidates.values(), key=lambda c: (c.created_at, c.id)):
        if loser.id == survivor.id:
            continue
        cause = next(key for key, owner in owner_of.items() if owner == loser.id)
        outcome = await _merge(conn, context, survivor, loser, cause, channel, keep, now)
        merge_ids.append(outcome.merge_id)
        merged_ids.append(loser.id)
        dropped.extend(outcome.dropped)
        if outcome.cart is not None:
            cart_merges.append(outcome.cart)

    linking = [] if created else [key for key in linkable if key not in owner_of]
    await _link(conn, tenant_id, survivor.id, linking, now)
    # Limits hold after every link or merge, so with neither nothing is over; a new customer
    # holds only what this request names, which is kept whatever the limits.
    if (linking or merged_ids) and not created:
        dropped.extend(await _enforce_limits(conn, context, survivor.id, keep))
    if request.traits:
        given = hashed_contact_data(request.traits, context.secret)  # never an address in clear
        traits = {k: v for k, v in {**survivor.traits, **given}.items() if v is not None}
        await conn.execute(
            update(customers)
            .where(customers.c.tenant_id == tenant_id, customers.c.id == survivor.id)
            .values(traits=traits)
        )
        await segment_hook.profile_changed(conn, tenant_id, [survivor.id])
    return IdentifyResult(
        customer_id=survivor.id,
        created=created,
        merged=bool(merged_ids),
        merged_customer_ids=merged_ids,
        merge_ids=merge_ids,
        dropped_identifiers=[
            IdentifierKey(IdentifierType(row.type), row.value).masked() for row in dropped
        ],
        cart_merges=cart_merges,
    )


async def _record_shared(
    conn: AsyncConnection, tenant_id: str, keys: Iterable[IdentifierKey], now: datetime
) -> None:
    rows = [
        {
            "tenant_id": tenant_id,
            "type": k.type.value,
            "value": k.value,
            "customer_id": None,
            "shared": True,
            "linked_at": now,
        }
        for k in keys
    ]
    if rows:
        await conn.execute(insert(identifiers), rows)


async def mark_shared(
    conn: AsyncConnection, context: TenantContext, key: IdentifierKey, shared: bool
) -> None:
    """Mark an identifier shared (detached from any customer, never merging) or not."""
    await lock_identifiers(conn, context.tenant_id, [key])
    row = (await owners_of(conn, context.tenant_id, [key])).get(key)
    if row is None:
        if shared:
            await _record_shared(conn, context.tenant_id, [key], utcnow())
        return
    if shared:
        await conn.execute(
            update(identifiers)
            .where(*_key_clause(context.tenant_id, key))
            .values(shared=True, customer_id=None)
        )
    elif row.customer_id is None:
        # No longer shared and owned by nobody: forget it; the next identify links it afresh.
        await conn.execute(delete(identifiers).where(*_key_clause(context.tenant_id, key)))


def _key_clause(tenant_id: str, key: IdentifierKey) -> tuple[Any, ...]:
    return (
        identifiers.c.tenant_id == tenant_id,
        identifiers.c.type == key.type.value,
        identifiers.c.value == key.value,
    )


# --- merges and splits ---------------------------------------------------------------------


def merge_view(row: Row[Any]) -> Merge:
    return Merge(
        merge_id=row.id,
        survivor_id=row.survivor_id,
        loser_id=row.loser_id,
        cause=row.cause,
        channel=Channel(row.channel),
        created_at=row.created_at,
        split_at=row.split_at,
    )


async def merges_of(conn: AsyncConnection, tenant_id: str, customer_id: str) -> list[Merge]:
    """Every merge this customer (or a customer merged into it) took part in, oldest first."""
    live = await live_id(conn, tenant_id, customer_id)
    if live is None:
        return []
    ids = {live} | {
        row.id
        for row in await conn.execute(
            select(customers.c.id).where(
                customers.c.tenant_id == tenant_id, customers.c.merged_into == live
            )
        )
    }
    rows = await conn.execute(
        select(merges)
        .where(
            merges.c.tenant_id == tenant_id,
            or_(merges.c.survivor_id.in_(ids), merges.c.loser_id.in_(ids)),
        )
        .order_by(merges.c.created_at, merges.c.id)
    )
    return [merge_view(row) for row in rows]


async def split(conn: AsyncConnection, context: TenantContext, merge_id: str) -> Merge:
    """Undo a merge: the loser gets back what it held at the merge (see module docstring)."""
    tenant_id = context.tenant_id
    row = (
        await conn.execute(
            select(merges).where(merges.c.tenant_id == tenant_id, merges.c.id == merge_id)
        )
    ).first()
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no merge {merge_id!r}")
    # The identifiers it gives back, then both customers (and those merged into the loser).
    held = row.snapshot["loser_identifiers"] + row.snapshot["dropped"]
    keys = [IdentifierKey(IdentifierType(type), value) for type, value, _ in held]
    await lock_identifiers(conn, tenant_id, keys)
    await lock_customers(
        conn, tenant_id, [row.survivor_id, row.loser_id, *row.snapshot["absorbed"]]
    )
    row = (
        await conn.execute(
            select(merges).where(merges.c.tenant_id == tenant_id, merges.c.id == merge_id)
        )
    ).one()
    if row.split_at is not None:  # read again under the locks: a twin split came first
        raise Problem(ProblemType.CONFLICT, f"merge {merge_id} was already split")
    people = await _customers(conn, tenant_id, [row.survivor_id, row.loser_id])
    survivor, loser = people[row.survivor_id], people[row.loser_id]
    if survivor.merged_into is not None:
        later = await _merge_absorbing(conn, tenant_id, survivor.id)
        raise Problem(
            ProblemType.CONFLICT,
            f"customer {survivor.id} was merged into {survivor.merged_into} after this merge; "
            f"split merge {later} first",
        )
    snapshot: dict[str, Any] = row.snapshot
    now = utcnow()
    await _give_back_identifiers(conn, tenant_id, survivor.id, loser.id, snapshot, now)
    origins = [loser.id, *snapshot["absorbed"]]
    # Events recorded for the loser never moved (they leave the survivor's person ids with
    # this split); those a merge made before issue 21 moved are moved back here, with the
    # rows that do follow merges.
    for table in (events, annotations_table, orders, preference_declarations):
        await conn.execute(
            update(table)
            .where(
                table.c.tenant_id == tenant_id,
                table.c.customer_id == survivor.id,
                moved_from(table, origins),
            )
            .values(customer_id=loser.id)
        )
    # The split-off customer gets its cart back as it was, with the operations addressed to it
    # since; the survivor's cart loses what the merge added.
    await carts.split(conn, tenant_id, survivor.id, loser.id, merge_id, origins, snapshot)
    await sessions.split(
        conn, tenant_id, survivor.id, loser.id, origins, snapshot.get("loser_session")
    )
    await consent.split(conn, tenant_id, survivor.id, loser.id, origins)
    await alerts.split(conn, tenant_id, survivor.id, loser.id, origins)
    await consent.publish(
        conn, tenant_id, survivor.id, None, also=[loser.id, *snapshot["absorbed"]]
    )
    if snapshot["absorbed"]:
        await conn.execute(
            update(customers)
            .where(customers.c.tenant_id == tenant_id, customers.c.id.in_(snapshot["absorbed"]))
            .values(merged_into=loser.id)
        )
    await conn.execute(
        update(customers)
        .where(customers.c.tenant_id == tenant_id, customers.c.id == loser.id)
        .values(merged_into=None, merged_at=None, traits=snapshot["loser_traits"])
    )
    await conn.execute(
        update(customers)
        .where(customers.c.tenant_id == tenant_id, customers.c.id == survivor.id)
        .values(traits=_traits_without_merged(survivor.traits, snapshot))
    )
    await conn.execute(
        update(merges)
        .where(merges.c.tenant_id == tenant_id, merges.c.id == merge_id)
        .values(split_at=now)
    )
    await segment_hook.profile_changed(
        conn, tenant_id, [survivor.id, loser.id, *snapshot["absorbed"]]
    )
    return merge_view(row).model_copy(update={"split_at": now})


async def _merge_absorbing(conn: AsyncConnection, tenant_id: str, customer_id: str) -> str:
    row = (
        await conn.execute(
            select(merges.c.id)
            .where(
                merges.c.tenant_id == tenant_id,
                merges.c.loser_id == customer_id,
                merges.c.split_at.is_(None),
            )
            .order_by(merges.c.created_at.desc())
        )
    ).first()
    return row.id if row else "?"


async def _give_back_identifiers(
    conn: AsyncConnection,
    tenant_id: str,
    survivor_id: str,
    loser_id: str,
    snapshot: dict[str, Any],
    now: datetime,
) -> None:
    held = snapshot["loser_identifiers"] + snapshot["dropped"]
    keys = [IdentifierKey(IdentifierType(type), value) for type, value, _ in held]
    present = await owners_of(conn, tenant_id, keys)
    linked_at = {(type, value): datetime.fromisoformat(when) for type, value, when in held}
    back = [key for key in keys if key in present and present[key].customer_id == survivor_id]
    if back:
        await conn.execute(
            update(identifiers)
            .where(
                identifiers.c.tenant_id == tenant_id,
                tuple_(identifiers.c.type, identifiers.c.value).in_(
                    [(k.type.value, k.value) for k in back]
                ),
            )
            .values(customer_id=loser_id)
        )
    missing = [key for key in keys if key not in present]
    if missing:
        await conn.execute(
            insert(identifiers),
            [
                {
                    "tenant_id": tenant_id,
                    "type": k.type.value,
                    "value": k.value,
                    "customer_id": loser_id,
                    "shared": False,
                    "linked_at": linked_at.get((k.type.value, k.value), now),
                }
                for k in missing
            ],
        )


def _traits_without_merged(current: dict[str, Any], snapshot: dict[str, Any]) -> dict[str, Any]:
    """The survivor's traits minus what the merge brought in and nobody changed since."""
    brought = {
        key: value
        for key, value in snapshot["loser_traits"].items()
        if key not in snapshot["survivor_traits"]
    }
    return {k: v for k, v in current.items() if not (k in brought and brought[k] == v)}
