"""The customer's rights of access and erasure (DESIGN: consent).

Both work on the whole person: the live customer and every customer id merged into it.
Erasure runs in the request's one transaction: it all happens or none of it does. What the law
makes the shop keep stays, with nothing left that links it to the person:
- return and refund records (accounting): the order loses its customer id;
- order records on every channel (accounting), with their lines and refunds: they lose their
  customer ids, so analytics still counts the sale but nothing leads to her;
- the proof of a refusal (denied and withdrawn decisions): re-keyed to the erasure's id,
  without the device id.
Everything else that names the customer (identifiers and their keyed hashes, events, carts,
sessions, merges with their snapshots, annotations, the change feed, stored idempotent answers
and audit entries naming the customer) is deleted or re-keyed to the erasure id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, String, Table, and_, delete, exists, func, literal, or_, select, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from omnisdk.core.consent import Status
from omnisdk.core.identifiers import IdentifierKey, IdentifierType
from omnisdk.core.problems import ProblemType
from omnisdk.models import CustomerExport, ErasureReceipt
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import alerts, consent, identity, named_locks
from server_stub.services import changes as change_feed
from server_stub.services import orders as order_records
from server_stub.services.identity import person_ids
from server_stub.storage.tables import (
    annotation_revisions,
    annotations_table,
    audit_log,
    carts,
    changes,
    consent_decisions,
    customer_codes,
    customer_scores,
    customers,
    events,
    history_folds,
    idempotency_records,
    identifiers,
    merges,
    moved_from,
    ordered_carts,
    orders,
    preference_declarations,
    recommendation_baskets,
    redemptions,
    return_lines,
    return_orders,
    segment_members,
    segment_pending,
    sessions,
)

REFUSALS = (Status.DENIED.value, Status.WITHDRAWN.value)
__all__ = ["ERASURE_CHANGE", "erase", "erased_since", "export", "person_ids"]


def _plain(row: Row[Any], *drop: str) -> dict[str, Any]:
    return {
        key: (value.isoformat() if hasattr(value, "isoformat") else value)
        for key, value in row._mapping.items()
        if key not in ("tenant_id", *drop)
    }


# Who wrote a note and how it was handled is the shop's, not hers.
INTERNAL_NOTE_COLUMNS = (
    "author_key_id",
    "author",
    "origin_customer_id",
    "deleted_at",
    "deleted_by",
    "delete_reason",
)


async def _rows(conn: AsyncConnection, table: Table, *where: Any) -> list[Row[Any]]:
    return list(await conn.execute(select(table).where(*where)))


async def export(conn: AsyncConnection, tenant_id: str, live: str) -> CustomerExport:
    ids = await person_ids(conn, tenant_id, live)
    person = (
        await _rows(conn, customers, customers.c.tenant_id == tenant_id, customers.c.id == live)
    )[0]
    orders = await _rows(
        conn,
        return_orders,
        return_orders.c.tenant_id == tenant_id,
        return_orders.c.customer_id.in_(ids),
    )
    returns = []
    for order in orders:
        of_order = (
            return_lines.c.tenant_id == tenant_id,
            return_lines.c.order_ref == order.order_ref,
        )
        returns.append(
            {
                **_plain(order),
                "lines": [
                    _plain(r, "order_ref") for r in await _rows(conn, return_lines, *of_order)
                ],
                "redemptions": [
                    _plain(r, "order_ref")
                    for r in await _rows(
                        conn,
                        redemptions,
                        redemptions.c.tenant_id == tenant_id,
                        redemptions.c.order_ref == order.order_ref,
                    )
                ],
            }
        )
    cart = await _rows(conn, carts, carts.c.tenant_id == tenant_id, carts.c.customer_id == live)
    session = await _rows(
        conn, sessions, sessions.c.tenant_id == tenant_id, sessions.c.customer_id == live
    )
    involved = or_(merges.c.survivor_id.in_(ids), merges.c.loser_id.in_(ids))
    return CustomerExport(
        customer_id=live,
        exported_at=utcnow(),
        customer_ids=ids,
        traits=person.traits,
        identifiers=[
            _plain(r)
            for r in await _rows(
                conn,
                identifiers,
                identifiers.c.tenant_id == tenant_id,
                identifiers.c.customer_id.in_(ids),
            )
        ],
        events=[
            _plain(r, "seq")
            for r in await _rows(
                conn, events, events.c.tenant_id == tenant_id, events.c.customer_id.in_(ids)
            )
        ],
        # What departments meant her to see (issue 19): visibility `customer`, not deleted.
        annotations=[
            _plain(r, *INTERNAL_NOTE_COLUMNS)
            for r in await _rows(
                conn,
                annotations_table,
                annotations_table.c.tenant_id == tenant_id,
                annotations_table.c.customer_id.in_(ids),
                annotations_table.c.visibility == "customer",
                annotations_table.c.deleted_at.is_(None),
            )
        ],
        preferred_channel_declarations=[
            _plain(r, "origin_customer_id")
            for r in await _rows(
                conn,
                preference_declarations,
                preference_declarations.c.tenant_id == tenant_id,
                preference_declarations.c.customer_id.in_(ids),
            )
        ],
        cart=_plain(cart[0]) if cart else None,
        orders=[
            _plain(r)
            for r in await _rows(
                conn,
                ordered_carts,
                ordered_carts.c.tenant_id == tenant_id,
                ordered_carts.c.customer_id.in_(ids),
            )
        ],
        order_records=[
            order.model_dump(mode="json")
            for order in await order_records.orders_of(conn, tenant_id, ids)
        ],
        session=_plain(session[0]) if session else None,
        consent=[consent.view(r) for r in await consent.ledger(conn, tenant_id, ids)],
        returns=returns,
        merges=[
            _plain(r, "snapshot")
            for r in await _rows(conn, merges, merges.c.tenant_id == tenant_id, involved)
        ],
        alerts=await alerts.export(conn, tenant_id, ids),
        scores=[
            _plain(r)
            for r in await _rows(
                conn,
                customer_scores,
                customer_scores.c.tenant_id == tenant_id,
                customer_scores.c.customer_id.in_(ids),
            )
        ],
    )


async def _delete(conn: AsyncConnection, table: Table, tenant_id: str, *where: Any) -> int:
    """Delete the tenant's rows of `table` matching `where`; how many."""
    statement = delete(table).where(table.c.tenant_id == tenant_id, *where)
    return int((await conn.execute(statement)).rowcount or 0)


async def _rekey(
    conn: AsyncConnection, table: Table, tenant_id: str, where: Any, **values: Any
) -> int:
    """Overwrite `values` in the tenant's rows of `table` matching `where`; how many."""
    statement = update(table).where(table.c.tenant_id == tenant_id, where).values(**values)
    return int((await conn.execute(statement)).rowcount or 0)


# The kind of the tenant-wide change every erasure publishes as it commits (SDK caches drop
# what they hold); `erased_since` looks for it.
ERASURE_CHANGE = "consent"


async def erased_since(conn: AsyncConnection, tenant_id: str, position: int) -> bool:
    """Whether an erasure may have committed since the tenant's change feed stood at
    `position` (its newest, read earlier): each erasure publishes a tenant-wide change, and
    the feed numbers changes in commit order. True, to be safe, where changes after
    `position` were pruned: the horizon is read after the changes, so a prune that removed
    one between the two reads shows in the second (two snapshots on PostgreSQL)."""
    found = await conn.scalar(
        select(changes.c.position)
        .where(
            changes.c.tenant_id == tenant_id,
            changes.c.customer_id == change_feed.TENANT_WIDE,
            changes.c.kind == ERASURE_CHANGE,
            changes.c.position > position,
        )
        .limit(1)
    )
    if found is not None:
        return True
    return (await change_feed.horizon(conn, tenant_id)).pruned_through > position


async def erase(conn: AsyncConnection, tenant_id: str, live: str) -> ErasureReceipt:
    """Erase the whole person `live` is (or, merged meanwhile, has become); NOT_FOUND if an
    erasure that went first left no one (_lock_person)."""
    # Erasures go on side by side; a recommendations build writing baskets waits for them,
    # and they for it (services/recommendations.py).
    await named_locks.take(conn, tenant_id, named_locks.ERASURES, shared=True)
    ids = await _lock_person(conn, tenant_id, live)
    erasure_id = new_id("era", 10)
    now = utcnow()
    t = tenant_id
    removed: dict[str, int] = {}
    kept: dict[str, int] = {}

    decisions = consent_decisions.c
    kept["consent_refusals"] = await _rekey(
        conn,
        consent_decisions,
        t,
        and_(decisions.customer_id.in_(ids), decisions.status.in_(REFUSALS)),
        customer_id=erasure_id,
        origin_customer_id=erasure_id,
        device_id=None,
    )
    removed["consent_decisions"] = await _delete(
        conn, consent_decisions, t, decisions.customer_id.in_(ids)
    )
    kept["return_orders"] = await _rekey(
        conn, return_orders, t, return_orders.c.customer_id.in_(ids), customer_id=None
    )
    kept["order_records"] = await _rekey(
        conn,
        orders,
        t,
        or_(orders.c.customer_id.in_(ids), orders.c.origin_customer_id.in_(ids)),
        customer_id=None,
        origin_customer_id=None,
    )
    for name, table in (
        ("customer_codes", customer_codes),
        ("identifiers", identifiers),
        ("carts", carts),
        ("orders", ordered_carts),
        ("sessions", sessions),
        ("customer_scores", customer_scores),
        ("recommendation_baskets", recommendation_baskets),
    ):
        removed[name] = await _delete(conn, table, t, table.c.customer_id.in_(ids))
    notes = annotations_table.c
    her_notes = select(notes.id).where(
        notes.tenant_id == t, or_(notes.customer_id.in_(ids), notes.origin_customer_id.in_(ids))
    )
    removed["annotation_revisions"] = await _delete(
        conn, annotation_revisions, t, annotation_revisions.c.annotation_id.in_(her_notes)
    )
    for name, table in (("segment_memberships", segment_members), ("", segment_pending)):
        count = await _delete(conn, table, t, table.c.customer_id.in_(ids))
        if name:
            removed[name] = count
    for name, table in (
        ("events", events),
        ("annotations", annotations_table),
        ("preferred_channel_declarations", preference_declarations),
    ):
        # Also what was recorded for her before a merge moved it elsewhere.
        removed[name] = await _delete(
            conn, table, t, or_(table.c.customer_id.in_(ids), moved_from(table, ids))
        )
    removed["merges"] = await _delete(
        conn, merges, t, or_(merges.c.survivor_id.in_(ids), merges.c.loser_id.in_(ids))
    )
    # Change-feed rows are blanked, not deleted: their positions stay in the tenant's feed, so
    # a watcher reading through them sees an empty change rather than a hole.
    removed["changes"] = await _rekey(
        conn, changes, t, changes.c.customer_id.in_(ids), customer_id=erasure_id, payload={}
    )
    removed["alerts"] = await alerts.erase(conn, t, ids)
    removed["stored_answers"] = await _delete_answers_naming(conn, t, ids)
    # The audit log's entries about her name the erasure instead (no entry's detail names a
    # customer: services/audit.py).
    await _rekey(conn, audit_log, t, audit_log.c.subject.in_(ids), subject=erasure_id)
    await _delete(conn, history_folds, t, history_folds.c.customer_id.in_(ids))
    removed["customers"] = await _delete(conn, customers, t, customers.c.id.in_(ids))
    # Every SDK cache must forget her now; the change names no one, so caches drop everything.
    await change_feed.publish(
        conn, t, change_feed.TENANT_WIDE, ERASURE_CHANGE, {"erasure_id": erasure_id}
    )
    return ErasureReceipt(
        erasure_id=erasure_id,
        erased_at=now,
        customers=removed.pop("customers"),
        removed=removed,
        kept_anonymised=kept,
    )


async def _lock_person(conn: AsyncConnection, tenant_id: str, live: str) -> list[str]:
    """Lock the person's identifiers, then her customer rows for deletion (identity.py's
    order), reading her ids again until no merge added one in between; return them.

    What `live` became while this waited for the locks is read under them. Erased (by an
    erasure that held them first): a NOT_FOUND problem, so that a second erasure neither
    answers as one nor publishes or audits again. Merged into another customer: the erasure
    follows her to the survivor and erases that whole person, as it would have had it come a
    moment later (DESIGN: a write addressed to a merged-away id is applied to the survivor),
    so nothing the merge moved there outlives her erasure."""
    ids: list[str] = []
    for _ in range(identity.MAX_RESOLVE_ROUNDS):
        found = await person_ids(conn, tenant_id, live)
        if found == ids:
            return ids
        ids = found
        held = await conn.execute(
            select(identifiers.c.type, identifiers.c.value).where(
                identifiers.c.tenant_id == tenant_id, identifiers.c.customer_id.in_(ids)
            )
        )
        keys = [IdentifierKey(IdentifierType(row.type), row.value) for row in held]
        await identity.lock_identifiers(conn, tenant_id, keys)
        locked = await identity.lock_customers(conn, tenant_id, ids, mode="delete")
        if live not in locked:
            raise Problem(ProblemType.NOT_FOUND, f"this tenant has no customer {live!r}")
        live = locked[live] or live  # merged meanwhile: her survivor, locked on the next round
    raise Problem(ProblemType.CONFLICT, "the customer kept changing while erasing; try again")


async def _delete_answers_naming(conn: AsyncConnection, tenant_id: str, ids: list[str]) -> int:
    """Stored idempotent answers (response bodies) that name one of the customer's ids: found
    by the ids each record's body names (its `subjects`), through an index on PostgreSQL, not
    by reading a day of bodies."""
    named, body = idempotency_records.c.subjects, idempotency_records.c.body
    by_name: ColumnElement[bool]
    if conn.dialect.name == "postgresql":
        by_name = named.bool_op("&&")(literal(ids, postgresql.ARRAY(String(40))))
        in_body = [func.encode(body, "escape").contains(customer_id) for customer_id in ids]
    else:
        each = func.json_each(named).table_valued("value")
        by_name = exists(select(each.c.value).where(each.c.value.in_(ids)))
        in_body = [func.instr(body, customer_id.encode()) > 0 for customer_id in ids]
    # A record without `subjects` was stored by a server older than migration 0031 (one still
    # running through it): its body is read, as every body was before (ix_..._unnamed).
    hit = or_(by_name, and_(named.is_(None), or_(*in_body)))
    return await _delete(conn, idempotency_records, tenant_id, hit)
