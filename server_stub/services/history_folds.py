"""A merged customer's events folded into the survivor: in the background, in bounded batches.

A merge (identity._merge) moves none of the loser's events, so merging a customer with ten
thousand events costs what merging one with none does (issue 21); the profile, timeline,
export and erasure read a person by all her ids (identity.person_ids) and are exact at once.
Readers that group events by customer id over many customers at a time — segments, analytics
journeys, the recommendations rebuild, the observed preferred channel, "bought since" — see the
loser's events as the survivor's once they are folded here: the merge queues the loser in its
own transaction, and every server process drains the queue, FOLD_BATCH events per transaction.

Each batch locks the loser's row (the lock a split takes too), reads who it is merged into now
and moves the next batch of its events to that live id; a loser that a split gave back in the
meantime is dropped from the queue with nothing moved. A folded event keeps the id it was
recorded for (`origin_customer_id`), so a later split gives it back exactly as before.
"""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.services import identity, segment_hook
from server_stub.storage.database import Database
from server_stub.storage.tables import events, history_folds

FOLD_BATCH = 5_000


async def drain_one(database: Database, batch: int = FOLD_BATCH) -> bool:
    """Fold the next batch of the oldest queued loser; False when nothing is queued."""
    async with database.transaction(write=True) as conn:
        claim = (
            select(history_folds.c.tenant_id, history_folds.c.customer_id)
            .order_by(history_folds.c.queued_at)
            .limit(1)
        )
        if conn.dialect.name == "postgresql":
            claim = claim.with_for_update(skip_locked=True)
        row = (await conn.execute(claim)).first()
        if row is None:
            return False
        tenant_id, loser = row.tenant_id, row.customer_id
        merged_into = (await identity.lock_customers(conn, tenant_id, [loser])).get(loser)
        live = await identity.live_id(conn, tenant_id, loser) if merged_into else None
        if live is None or live == loser:  # split since, or erased: nothing to fold
            await _done(conn, tenant_id, loser)
            return True
        seqs = [
            found.seq
            for found in await conn.execute(
                select(events.c.seq)
                .where(events.c.tenant_id == tenant_id, events.c.customer_id == loser)
                .limit(batch)
            )
        ]
        if seqs:
            await conn.execute(
                update(events)
                .where(
                    events.c.tenant_id == tenant_id,
                    events.c.customer_id == loser,
                    events.c.seq.in_(seqs),
                )
                .values(customer_id=live)
            )
        if len(seqs) < batch:
            await _done(conn, tenant_id, loser)
            # Her segments are evaluated again over the whole history.
            await segment_hook.profile_changed(conn, tenant_id, [live])
        return True


async def drain(database: Database, limit: int = 100) -> int:
    """Fold up to `limit` batches; how many were done."""
    done = 0
    while done < limit and await drain_one(database):
        done += 1
    return done


async def _done(conn: AsyncConnection, tenant_id: str, loser: str) -> None:
    await conn.execute(
        delete(history_folds).where(
            history_folds.c.tenant_id == tenant_id, history_folds.c.customer_id == loser
        )
    )
