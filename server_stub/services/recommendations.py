"""The recommendations rebuild, as a job (services/jobs.py): streamed, incremental, resumable.

The model (omnisdk.core.recs) is cut from co-occurrence counts that are kept between builds
in `recommendation_pairs`, with how far they have got (`recommendation_progress`: every
basket event up to `counted_through`, an `events.seq`). A build reads only the events after
that mark, in keyset batches of BATCH_EVENTS, into a window of counts held in memory (at most
WINDOW_PAIRS pairs and WINDOW_CUSTOMERS customers), and writes each window in one transaction
with the mark and the job's checkpoint: memory stays bounded by a window whatever the history,
a pair counted in many batches is written once, a day's events cost a day's work, and a build
cut short (the process killed) goes on from its last written window. On PostgreSQL a window's
counts are appended to `recommendation_pair_deltas` (upserting them into the counts cost a
random descent of their key per pair, and every window wrote the popular pairs again); the
build sums them per pair into the counts once, in the transaction that cuts the model.
Every transaction that writes also stores the job's checkpoint, which fails (LeaseLost) for a
runner whose lease was taken over (services/jobs.py): a runner that stalled past the stale
limit and was taken for dead neither writes a window nor folds and publishes after the runner
that took its place has begun.

What a basket is does not change (omnisdk.core.recs): an order's SKUs; and a customer's
added SKUs (by the customer id each event was recorded under). An order's SKUs are those she
bought for herself: not those of its gift lines (`gift_skus`, omnisdk.core.events), nor any
of an event sent as a gift (`"gift": true`). An order is one basket however many
`order_completed` name its `order_id` (the server's for an order recorded through
/v1/orders, and the shop's own): the first event of an order claims its id
(`recommendation_orders`) in the transaction that adds its counts, and a later one, in this
build or any other, adds nothing; an event with no `order_id` is a basket of its own.

Each customer's cart basket as counted so far is kept (`recommendation_baskets`); when a
window holds her cart adds, that basket is taken out of the counts and the basket grown by the
new adds put in, so a build in many steps gives the very model one pass over everything would,
and an incremental build reads one stored row per customer whose cart changed, never her
history. A first build counts cart adds the same way, in the order they were stored (walking
customers with cart adds in customer order read, at 10 M customers, every event of the
partitions that held none, once per 500 customers). (A basket is at most the MAX_BASKET first
SKUs in order: those of the grown basket are all among the stored ones and the new adds.)
Erasure deletes her stored basket; her adds stay in the counts (numbers per pair of products,
nothing about a person) until a build with `full` recounts from nothing. A window that read
her adds before she was erased may be written after: each window's transaction takes the lock
erasures share (named_locks.ERASURES), so none is under way while it writes and none starts
before it commits, then drops the adds of customers no longer there, so no basket is written
back for her. It looks them up only when an erasure committed after the window's first read
began, which the change feed shows (privacy.erased_since): one that committed before left no
adds of hers to read. (A customer-row lock on every adder, as lifetime-value scores take, would
write a lock into each of up to a million rows per window; one advisory lock is one.)

Which events are safe to count (PostgreSQL): `seq` is taken when a row is inserted, not when
its transaction commits, so a row with a lower seq may still become visible after one with a
higher seq was counted. The build therefore fixes its ceiling (the highest seq it sees), then
waits until every transaction that was writing in its database at that moment has ended;
then no row at or below the ceiling can appear any more. (It waits at most
SETTLE_LIMIT_SECONDS: a transaction open longer than that is no request, and what it may add
is counted by the next full build.)
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import chain, permutations, product
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import recs
from server_stub import memory
from server_stub.ids import utcnow
from server_stub.services import changes, jobs, named_locks, privacy
from server_stub.services.content import etag_of
from server_stub.services.events import is_anonymous
from server_stub.storage.database import Database
from server_stub.storage.prepared import ID_IN, Prepared, copy_rows, id_list
from server_stub.storage.tables import (
    customers,
    events,
    recommendation_baskets,
    recommendation_models,
    recommendation_orders,
    recommendation_pair_deltas,
    recommendation_pairs,
    recommendation_progress,
)

log = logging.getLogger("omnisdk.server.jobs")

KIND = "recommendations.rebuild"
BASKET_EVENTS = ("order_completed", "product_added")
BATCH_EVENTS = 5_000
WINDOW_PAIRS = 200_000  # distinct pair counts held in memory before they are written
ADD_ROWS = 20_000  # pairs added by one statement
WINDOW_CUSTOMERS = 20_000  # customers whose cart baskets wait to be written
WINDOW_ORDERS = 20_000  # orders whose baskets wait for their claim to be written
CLAIM_ROWS = 1_000  # order ids claimed by one statement
CUSTOMERS_PER_QUERY = 500
# A window that stores this many baskets has the table analysed (PostgreSQL): a table grown
# from nothing has no statistics, and the planner then reads every basket of the tenant for
# each lookup of 500 (seconds each at 200,000 baskets) instead of taking them by key.
ANALYZE_AFTER_BASKETS = 10_000
SETTLE_LIMIT_SECONDS = 60.0  # the longest wait for transactions open when a build begins
_pause = asyncio.sleep  # between looks at the writers still open
MAX_SKU_LENGTH = 200  # longer is no product code (and would not fit the counts' key)
MAX_ORDER_ID = 200  # what recommendation_orders holds; a longer id is kept by its hash
PairKey = tuple[str, str]
_SKU_TYPES = (str, int)  # what a product code may be sent as (bool is no int here: `type` is)
# A window's counts are appended beside the counts (PostgreSQL, by COPY); baskets go as one
# JSON array of [customer_id, skus]. The stored counts are upserted once a build,
# from these summed per pair (_fold), not once a window. Upserts are sorted along the key by
# PostgreSQL: each index page is visited once per statement. The fold sums exactly the rows
# its DELETE takes (one statement, one snapshot): a row committed meanwhile is neither
# deleted uncounted nor counted twice, and a fold that waited on another's deleted rows skips
# them.
_FOLD_PAIRS = text(
    "WITH folded AS (DELETE FROM recommendation_pair_deltas WHERE tenant_id = :tenant "
    "RETURNING tenant_id, sku, other, n) "
    "INSERT INTO recommendation_pairs (tenant_id, sku, other, n) "
    "SELECT tenant_id, sku, other, sum(n) FROM folded "
    "GROUP BY tenant_id, sku, other HAVING sum(n) <> 0 "
    "ORDER BY sku, other "
    "ON CONFLICT (tenant_id, sku, other) DO UPDATE SET n = recommendation_pairs.n + excluded.n"
)
_STORE_BASKETS = text(
    "INSERT INTO recommendation_baskets (tenant_id, customer_id, skus) "
    "SELECT :tenant, r.value ->> 0, r.value -> 1 "
    "FROM json_array_elements(CAST(:rows AS json)) AS r ORDER BY 2 "
    "ON CONFLICT (tenant_id, customer_id) DO UPDATE SET skus = excluded.skus"
)


# Whether an event's `gift` is JSON true: SQLite's JSON path reads true back as 1.
_SENT_AS_GIFT = {
    "postgresql": "CAST(events.properties -> 'gift' AS text) = 'true'",
    "sqlite": "coalesce(json_type(events.properties, '$.gift') = 'true', 0)",
}
# The next batch of basket events after a mark, in stored order, with only the properties a
# basket is made of (the rest of an event is never decoded); prepared once per database.
_BASKET_EVENTS = {
    dialect: Prepared(
        select(
            events.c.seq,
            events.c.name,
            events.c.customer_id,
            events.c.properties["skus"],
            events.c.properties["gift_skus"],
            text(_SENT_AS_GIFT[dialect]),
            events.c.properties["order_id"],
            events.c.properties["sku"],
        )
        .where(
            events.c.tenant_id == bindparam("tenant"),
            events.c.seq > bindparam("after"),
            events.c.seq <= bindparam("ceiling"),
            text("events.name IN ({})".format(", ".join(f"'{n}'" for n in BASKET_EVENTS))),
        )
        .order_by(events.c.seq)
        .limit(bindparam("limit"))
    )
    for dialect in ID_IN
}
# Claim some orders' ids: those no build claimed before come back. One statement text per
# database, prepared once (a multi-row INSERT built per chunk was compiled again each time:
# a third of the job's own time in an incremental build).
_CLAIM_ORDERS = {
    dialect: Prepared(
        text(
            "INSERT INTO recommendation_orders (tenant_id, order_id) "
            f"SELECT :tenant, {ids} "
            "ON CONFLICT (tenant_id, order_id) DO NOTHING RETURNING order_id"
        )
    )
    for dialect, ids in (
        # Along the key: each index page is visited once a statement.
        ("postgresql", "k FROM unnest(CAST(:ids AS text[])) AS k ORDER BY k"),
        # WHERE: SQLite would read ON as a join's (its documented parsing ambiguity).
        ("sqlite", "value FROM json_each(:ids) WHERE true"),
    )
}
# The stored baskets of some customers, in one statement whatever their number.
_STORED_BASKETS = {
    dialect: Prepared(
        select(recommendation_baskets.c.customer_id, recommendation_baskets.c.skus).where(
            recommendation_baskets.c.tenant_id == bindparam("tenant"),
            text(ids.format(column="recommendation_baskets.customer_id")),
        )
    )
    for dialect, ids in ID_IN.items()
}
# The same, with which of them are still there (a basket of NULL: none stored yet): an
# erased customer has no row. Read only where an erasure may have run since the window's
# read (a lookup in every customer's key for each adder: half a window's time at 10 M).
_ADDERS = {
    dialect: Prepared(
        select(customers.c.id, recommendation_baskets.c.skus)
        .select_from(
            customers.outerjoin(
                recommendation_baskets,
                (recommendation_baskets.c.tenant_id == customers.c.tenant_id)
                & (recommendation_baskets.c.customer_id == customers.c.id),
            )
        )
        .where(
            customers.c.tenant_id == bindparam("tenant"),
            text(ids.format(column="customers.id")),
        )
    )
    for dialect, ids in ID_IN.items()
}


class RebuildParams(BaseModel):
    full: bool = Field(
        default=False,
        description="Forget the counts and count every event again (after erasures, say).",
    )


def _items(skus: Iterable[Any]) -> list[str]:
    """A basket as omnisdk.core.recs.build takes it: distinct, sorted, at most MAX_BASKET
    (strings and integers only: a bool is no product code). Kept SKUs are interned: the
    counts hold each product's code once, however many pairs name it."""
    found = {sku if type(sku) is str else str(sku) for sku in skus if type(sku) in _SKU_TYPES}
    kept = sorted(sku for sku in found if sku and len(sku) <= MAX_SKU_LENGTH)
    return [sys.intern(sku) for sku in kept[: recs.MAX_BASKET]]


def _order_items(skus: Any, gift_skus: Any, sent_as_gift: Any) -> list[str] | None:
    """An order event's basket: the SKUs it lists less its gift lines' (all of them for an
    order sent as a gift); None when it lists no product at all."""
    listed = _items(skus) if isinstance(skus, list) else []
    if not listed:
        return None
    if sent_as_gift:
        return []
    given = set(_items(gift_skus)) if isinstance(gift_skus, list) else set()
    if not given:
        return listed
    # Cut at MAX_BASKET after the gifts are taken out, as a basket of only hers would be.
    return _items(sku for sku in skus if _code(sku) not in given)


def _code(sku: Any) -> str | None:
    return sku if type(sku) is str else str(sku) if type(sku) in _SKU_TYPES else None


def _order_key(order_id: Any) -> str | None:
    """The key an order is claimed by: its id, or the SHA-256 of an id too long to store."""
    if not isinstance(order_id, str) or not order_id:
        return None
    if len(order_id) <= MAX_ORDER_ID:
        return order_id
    return "sha256:" + hashlib.sha256(order_id.encode()).hexdigest()


def _count(items: Sequence[str], into: Counter[PairKey]) -> None:
    """Each SKU with itself and with every other, both ways (counted by Counter, in C)."""
    into.update(chain(zip(items, items, strict=True), permutations(items, 2)))


# --- the job -----------------------------------------------------------------------------------


@jobs.register(KIND, params=RebuildParams)
async def rebuild(
    database: Database, tenant_id: str, params: dict[str, Any], ctx: jobs.JobContext
) -> dict[str, Any]:
    """Count the basket events since the last build, then cut and publish the model."""
    resumed = ctx.resumed_state or {}
    # A build checkpointed by a version that counted carts in a pass of its own ("carts_after")
    # cannot be finished by this one: it counts from nothing.
    full = params["full"] or "carts_after" in resumed
    if full and not (resumed.get("reset") and "carts_after" not in resumed):
        async with database.transaction(write=True) as conn:
            await _reset(conn, tenant_id)
            await ctx.checkpoint({"reset": True}, conn)
    async with database.transaction(write=False) as conn:
        start = await _counted_through(conn, tenant_id)
    ceiling = await _settled_ceiling(database, tenant_id)
    state: dict[str, Any] = {"reset": True}
    at, counted = start, 0
    while at < ceiling:
        # Read batches into one window of counts in memory, then write the window, its mark
        # and the checkpoint in one transaction: a pair counted in many batches is written
        # once, and each customer's cart basket is grown once per window.
        window = _Window()
        while at < ceiling and not window.full():
            async with database.transaction(write=False) as conn:
                if window.read_from is None:
                    # Before the batch, so an erasure this read misses has a later position
                    # (each statement its own snapshot: an erasure may commit in between).
                    window.read_from = (await changes.horizon(conn, tenant_id)).newest
                at, read = await _read_batch(conn, tenant_id, at, ceiling, window)
            counted += read
            await ctx.progress(at - start, ceiling - start)
        async with database.transaction(write=True) as conn:
            await _write(conn, tenant_id, window, at)
            await ctx.checkpoint({**state, "counted_through": at}, conn)
        del window
        memory.give_back()  # the window's batches, freed: resident size stays a window's
    async with database.transaction(write=True) as conn:
        # Fenced first, like every window (the jobs row is locked until this commits): a
        # runner taken for dead stops here with LeaseLost instead of folding the counts the
        # runner that took over folds too, and a takeover waits until this one has committed.
        await ctx.checkpoint({**state, "counted_through": at}, conn)
        document = await _cut(conn, tenant_id)
        etag = await _publish(conn, tenant_id, document)
    return {
        "etag": etag,
        "baskets": document["baskets"],
        "products": len(document["together"]),
        "events_counted": counted,
        "counted_through": at,
    }


async def _reset(conn: AsyncConnection, tenant_id: str) -> None:
    for table in (
        recommendation_pairs,
        recommendation_pair_deltas,
        recommendation_progress,
        recommendation_baskets,
        recommendation_orders,
    ):
        await conn.execute(delete(table).where(table.c.tenant_id == tenant_id))


async def _counted_through(conn: AsyncConnection, tenant_id: str) -> int:
    mark = await conn.scalar(
        select(recommendation_progress.c.counted_through).where(
            recommendation_progress.c.tenant_id == tenant_id
        )
    )
    return int(mark or 0)


async def _settled_ceiling(database: Database, tenant_id: str) -> int:
    """The highest event seq below which no row can still appear (see the module docstring)."""
    async with database.transaction(write=False) as conn:
        ceiling = await conn.scalar(
            select(func.max(events.c.seq)).where(events.c.tenant_id == tenant_id)
        )
        if conn.dialect.name != "postgresql":
            return int(ceiling or 0)  # SQLite: one writer at a time, rows visible in seq order
        writing = list(await conn.scalars(_WRITERS_HERE))
    pause, deadline = 0.01, time.monotonic() + SETTLE_LIMIT_SECONDS
    while writing:
        async with database.transaction(write=False) as conn:
            writing = list(await conn.scalars(_STILL_WRITING, {"xids": writing}))
        if not writing:
            break
        if time.monotonic() > deadline:
            # A transaction open this long is no request of ours: go on; an event it may
            # still add below the ceiling waits for a full build.
            log.warning("rebuild did not wait longer for an open transaction")
            break
        await _pause(pause)  # a writer still open: requests end within seconds
        pause = min(pause * 2, 0.5)
    return int(ceiling or 0)


# The transactions with a transaction id (those that wrote) open in this database: each holds
# the lock on its own id. Another database's transactions store no events of ours, so a long
# one there (a bulk load, another application) does not hold a build back.
_WRITERS_HERE = text(
    "SELECT l.transactionid::text FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'transactionid' AND l.mode = 'ExclusiveLock' AND l.granted "
    "AND a.datname = current_database() AND l.pid <> pg_backend_pid()"
)
_STILL_WRITING = text(
    "SELECT l.transactionid::text FROM pg_locks l WHERE l.locktype = 'transactionid' "
    "AND l.mode = 'ExclusiveLock' AND l.granted "
    "AND l.transactionid::text = ANY(CAST(:xids AS text[]))"
)


class _Window:
    """Counts read and not yet written."""

    def __init__(self) -> None:
        self.delta: Counter[PairKey] = Counter()  # pairs counted in
        self.removed: Counter[PairKey] = Counter()  # and out (baskets replaced by grown ones)
        self.baskets = 0
        self.added: dict[str, set[str]] = {}  # customer → SKUs she added in the window
        self.grown: dict[str, list[str]] = {}  # customer → her basket, to be stored
        # order id → the basket of its first event here, counted if no build claimed it yet
        self.orders: dict[str, list[str]] = {}
        self.order_pairs = 0  # the pairs those baskets will count at most
        # The change feed's newest position before the window's first read: an erasure
        # committed since shows after it (privacy.erased_since).
        self.read_from: int | None = None

    def full(self) -> bool:
        customers = max(len(self.added), len(self.grown))
        pairs = len(self.delta) + len(self.removed) + self.order_pairs
        return (
            pairs >= WINDOW_PAIRS
            or customers >= WINDOW_CUSTOMERS
            or len(self.orders) >= WINDOW_ORDERS
        )

    def order(self, order_id: Any, items: list[str]) -> None:
        """An order event's basket: counted now if it names no order, else kept until its
        order is claimed (one basket per order: the first event of it here)."""
        key = _order_key(order_id)
        if key is None:
            if items:
                self.baskets += 1
                _count(items, self.delta)
        elif key not in self.orders:
            self.orders[key] = items
            self.order_pairs += len(items) ** 2

    def changes(self) -> list[tuple[PairKey, int]]:
        """Each pair's net change, those that changed."""
        added, removed = self.delta, self.removed
        net = [(pair, n - removed.get(pair, 0)) for pair, n in added.items()]
        net += [(pair, -n) for pair, n in removed.items() if pair not in added]
        return [(pair, n) for pair, n in net if n]


async def _read_batch(
    conn: AsyncConnection,
    tenant_id: str,
    after: int,
    ceiling: int,
    window: _Window,
) -> tuple[int, int]:
    """Count the orders of the next batch of basket events after `after` into the window and
    note the cart adds; return the new mark and how many events were read."""
    rows = await _BASKET_EVENTS[conn.dialect.name].fetchall(
        conn, {"tenant": tenant_id, "after": after, "ceiling": ceiling, "limit": BATCH_EVENTS}
    )
    for _, name, customer_id, skus, gift_skus, sent_as_gift, order_id, sku in rows:
        if name == "order_completed":
            items = _order_items(skus, gift_skus, sent_as_gift)
            if items is not None:
                window.order(order_id, items)
        elif not is_anonymous(customer_id) and isinstance(sku, str):
            window.added.setdefault(customer_id, set()).add(sku)
    return (rows[-1][0] if len(rows) == BATCH_EVENTS else ceiling), len(rows)


async def _write(conn: AsyncConnection, tenant_id: str, window: _Window, through: int) -> None:
    """Claim the window's orders and grow its cart baskets, then add its counts, store the
    baskets and move the mark to `through`, in the caller's transaction."""
    if window.added:  # baskets to write: not while an erasure is under way (ERASURES)
        await named_locks.take(conn, tenant_id, named_locks.ERASURES)
    baskets = window.baskets + await _claim_orders(conn, tenant_id, window)
    baskets += await _grow_baskets(conn, tenant_id, window)
    await _add(conn, tenant_id, window, through)
    await _store_baskets(conn, tenant_id, window.grown)
    await _advance(conn, tenant_id, through, baskets)


async def _claim_orders(conn: AsyncConnection, tenant_id: str, window: _Window) -> int:
    """Claim the window's order ids not claimed before and count their baskets in; return
    how many baskets that counted. An order claimed by an earlier window or build, or by an
    event sent again, adds nothing (the claim commits with the counts it stands for)."""
    counted = 0
    keys = sorted(window.orders)  # along the key: each index page visited once a statement
    for start in range(0, len(keys), CLAIM_ROWS):
        chunk = keys[start : start + CLAIM_ROWS]
        claimed = await _CLAIM_ORDERS[conn.dialect.name].fetchall(
            conn, {"tenant": tenant_id, "ids": id_list(conn, chunk)}
        )
        for (key,) in claimed:
            items = window.orders[key]
            if items:
                counted += 1
                _count(items, window.delta)
    return counted


async def _grow_baskets(conn: AsyncConnection, tenant_id: str, window: _Window) -> int:
    """Each stored basket of the window's adders out of the counts, the basket grown by her
    new adds in (into `window.grown`, to be stored); return how many baskets are new. The
    adds of a customer erased since the window read them are dropped: the caller holds
    ERASURES, so one present now stays until it commits."""
    new_baskets = 0
    adders = sorted(window.added)
    if not adders:
        return 0
    assert window.read_from is not None  # read before the window's first batch
    erasures = await privacy.erased_since(conn, tenant_id, window.read_from)
    statement = (_ADDERS if erasures else _STORED_BASKETS)[conn.dialect.name]
    for start in range(0, len(adders), CUSTOMERS_PER_QUERY):
        chunk = adders[start : start + CUSTOMERS_PER_QUERY]
        stored = {
            customer_id: list(skus or [])
            for customer_id, skus in await statement.fetchall(
                conn, {"tenant": tenant_id, "ids": id_list(conn, chunk)}
            )
        }
        for customer_id in chunk:
            if erasures and customer_id not in stored:  # erased since the window read her adds
                del window.added[customer_id]
                continue
            was = stored.get(customer_id, [])  # none stored yet: she starts one
            is_ = _items([*was, *window.added[customer_id]])
            if was == is_:
                continue
            _regrow(was, is_, window)
            window.grown[customer_id] = is_
            new_baskets += not was
    return new_baskets


def _regrow(was: list[str], is_: list[str], window: _Window) -> None:
    """Count basket `was` out and `is_` in. When `is_` only added SKUs (none cut by
    MAX_BASKET), only the pairs naming a new SKU change: each new one with every SKU of the
    basket (itself included), and every old one with each new one."""
    old = set(was)
    if not old.issubset(is_):
        _count(was, window.removed)
        _count(is_, window.delta)
        return
    new = [sku for sku in is_ if sku not in old]
    window.delta.update(product(new, is_))
    window.delta.update(product(was, new))


async def _store_baskets(
    conn: AsyncConnection, tenant_id: str, baskets: dict[str, list[str]]
) -> None:
    await _store_basket_rows(conn, tenant_id, baskets)
    if len(baskets) >= ANALYZE_AFTER_BASKETS and conn.dialect.name == "postgresql":
        await conn.execute(text("ANALYZE recommendation_baskets"))


async def _store_basket_rows(
    conn: AsyncConnection, tenant_id: str, baskets: dict[str, list[str]]
) -> None:
    rows = list(baskets.items())  # PostgreSQL sorts each statement
    for start in range(0, len(rows), ADD_ROWS):
        chunk = rows[start : start + ADD_ROWS]
        if conn.dialect.name == "postgresql":
            await conn.execute(_STORE_BASKETS, {"tenant": tenant_id, "rows": json.dumps(chunk)})
            continue
        statement = _insert(conn)(recommendation_baskets)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_id", "customer_id"],
                set_={"skus": statement.excluded.skus},
            ),
            [{"tenant_id": tenant_id, "customer_id": c, "skus": skus} for c, skus in chunk],
        )


def _insert(conn: AsyncConnection) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


async def _add(conn: AsyncConnection, tenant_id: str, window: _Window, through: int) -> None:
    """Add the window's counts to the stored ones (PostgreSQL: beside them, to be folded in
    before the cut), ADD_ROWS pairs a statement (no row objects for the whole window: its
    memory is the window's own)."""
    changed = window.changes()
    for start in range(0, len(changed), ADD_ROWS):
        chunk = changed[start : start + ADD_ROWS]
        if conn.dialect.name == "postgresql":
            # COPY: a window appends up to WINDOW_PAIRS rows, which as one JSON document per
            # statement cost three times as long (encoded here, parsed there).
            await copy_rows(
                conn,
                "recommendation_pair_deltas",
                ("tenant_id", "through", "sku", "other", "n"),
                ((tenant_id, through, sku, other, n) for (sku, other), n in chunk),
            )
            continue
        statement = _insert(conn)(recommendation_pairs)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_id", "sku", "other"],
                set_={"n": recommendation_pairs.c.n + statement.excluded.n},
            ),
            [
                {"tenant_id": tenant_id, "sku": sku, "other": other, "n": n}
                for (sku, other), n in chunk
            ],
        )


async def _advance(conn: AsyncConnection, tenant_id: str, through: int, baskets: int) -> None:
    statement = _insert(conn)(recommendation_progress).values(
        tenant_id=tenant_id, counted_through=through, baskets=baskets, updated_at=utcnow()
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={
                "counted_through": through,
                "baskets": recommendation_progress.c.baskets + baskets,
                "updated_at": statement.excluded.updated_at,
            },
        )
    )


# --- cutting the model -------------------------------------------------------------------------


async def _fold(conn: AsyncConnection, tenant_id: str) -> None:
    """Sum the windows' appended counts per pair into the stored counts, deleting exactly
    the rows it summed (in one statement: see _FOLD_PAIRS)."""
    if conn.dialect.name != "postgresql":
        return  # SQLite: windows add to the counts directly
    await conn.execute(_FOLD_PAIRS, {"tenant": tenant_id})


async def _cut(conn: AsyncConnection, tenant_id: str) -> dict[str, Any]:
    """The model document from the counts (with every window's folded in), as
    omnisdk.core.recs.build makes it."""
    await _fold(conn, tenant_id)
    await conn.execute(
        delete(recommendation_pairs).where(
            recommendation_pairs.c.tenant_id == tenant_id, recommendation_pairs.c.n <= 0
        )
    )
    pairs = recommendation_pairs.c
    # Ties go by code point, as Python sorts: PostgreSQL's default collation may not.
    other = pairs.other.collate("C") if conn.dialect.name == "postgresql" else pairs.other
    sku = pairs.sku.collate("C") if conn.dialect.name == "postgresql" else pairs.sku
    rank = (func.row_number().over(partition_by=pairs.sku, order_by=(pairs.n.desc(), other))).label(
        "rank"
    )
    ranked = (
        select(pairs.sku, pairs.other, pairs.n, rank)
        .where(pairs.tenant_id == tenant_id, pairs.sku != pairs.other)
        .subquery()
    )
    together: dict[str, list[list[Any]]] = {}
    # At most MAX_PARTNERS rows per product: what the document holds anyway.
    partners = await conn.execute(
        select(ranked.c.sku, ranked.c.other, ranked.c.n)
        .where(ranked.c.rank <= recs.MAX_PARTNERS)
        .order_by(ranked.c.sku, ranked.c.rank)
    )
    for row in partners:
        together.setdefault(row.sku, []).append([row.other, int(row.n)])
    popular = await conn.execute(
        select(pairs.sku, pairs.n)
        .where(pairs.tenant_id == tenant_id, pairs.sku == pairs.other)
        .order_by(pairs.n.desc(), sku)
        .limit(recs.MAX_POPULAR)
    )
    baskets = await conn.scalar(
        select(recommendation_progress.c.baskets).where(
            recommendation_progress.c.tenant_id == tenant_id
        )
    )
    return {
        "baskets": int(baskets or 0),
        "together": together,
        "popular": [[row.sku, int(row.n)] for row in popular],
    }


async def _publish(conn: AsyncConnection, tenant_id: str, document: dict[str, Any]) -> str:
    etag = etag_of(document)
    values = {"etag": etag, "document": document, "built_at": utcnow()}
    await conn.execute(
        _insert(conn)(recommendation_models)
        .values(tenant_id=tenant_id, **values)
        .on_conflict_do_update(index_elements=["tenant_id"], set_=values)
    )
    await changes.publish(
        conn, tenant_id, changes.TENANT_WIDE, "content", {"recommendations": etag}
    )
    return etag
