"""The cheap, bounded hook every profile-changing write calls (issue 19): it queues the
customer for re-evaluation of her segments, in the write's transaction, only when her tenant
has segments at all. The evaluator (services/segments.py) drains the queue in the background.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import bindparam, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.ids import utcnow
from server_stub.storage.prepared import Prepared
from server_stub.storage.tables import segment_members, segment_pending, segments

MAX_PER_WRITE = 1_000  # a write that touches more customers queues the first ones only
# Run by every sign-in, cart and consent write: on the driver (storage/prepared.py).
_ANY_SEGMENT = Prepared(
    select(segments.c.id).where(segments.c.tenant_id == bindparam("tenant")).limit(1)
)


# PostgreSQL, for a statement that creates the customer `:customer` of `:tenant` at `:now`
# (identity's sign-in of someone new): her queued row, where the tenant has segments, as one
# of its CTEs. A new id has no queued row for an evaluator to hold, so a plain insert.
QUEUE_NEW_CUSTOMER = (
    "INSERT INTO segment_pending (tenant_id, customer_id, queued_at) "
    "SELECT :tenant, :customer, CAST(:now AS timestamptz) "
    "WHERE EXISTS (SELECT FROM segments WHERE tenant_id = :tenant)"
)


async def profile_changed(
    conn: AsyncConnection, tenant_id: str, customer_ids: Iterable[str]
) -> None:
    """Queue these customers: one indexed lookup when the tenant has no segment, one insert
    more when it has."""
    ids = sorted({customer_id for customer_id in customer_ids if customer_id})[:MAX_PER_WRITE]
    if not ids:
        return
    if await _ANY_SEGMENT.fetchone(conn, {"tenant": tenant_id}) is None:
        return
    now = utcnow()
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(segment_pending).values(
        [{"tenant_id": tenant_id, "customer_id": id, "queued_at": now} for id in ids]
    )
    # An update, not "do nothing": while the evaluator holds a queued row (it took it and is
    # evaluating, its snapshot may predate this write), the update waits for it, finds the row
    # gone and inserts it again, so this change is evaluated next time rather than lost.
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id", "customer_id"],
            set_={"queued_at": statement.excluded.queued_at},
        )
    )


async def segments_of(conn: AsyncConnection, tenant_id: str, live: str) -> list[str]:
    """Names of the segments she is in now (for her profile and content rules)."""
    rows = await conn.execute(
        select(segments.c.name)
        .join(
            segment_members,
            (segment_members.c.tenant_id == segments.c.tenant_id)
            & (segment_members.c.segment_id == segments.c.id),
        )
        .where(
            segment_members.c.tenant_id == tenant_id,
            segment_members.c.customer_id == live,
            segment_members.c.exited_at.is_(None),
        )
        .order_by(segments.c.name)
    )
    return [row.name for row in rows]
