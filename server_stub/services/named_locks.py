"""Locks on a name within a tenant, for writes that check a fact no row holds yet and then
insert it: the next version of the ruleset, a segment's name and the tenant's count of them,
a return order not yet registered, a refund id, the tenant's signing keys. Two such writes
at once both found nothing and both inserted (a unique violation, or a duplicate where no
constraint stops one). Each takes its lock first, before any row it then locks, and reads
after it; the second waits, then finds what the first wrote, as it would a moment later.

PostgreSQL: a transaction advisory lock on a 64-bit hash of tenant and name (a collision only
makes two names share a lock). SQLite has one writer at a time: nothing to take."""

from __future__ import annotations

import hashlib

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.storage.prepared import Prepared

# Shared by every erasure, taken alone by a recommendations build while it writes a window
# of baskets (services/recommendations.py): no basket is written back for one erased.
ERASURES = "erasures"
_LOCK = Prepared(text("SELECT pg_advisory_xact_lock(CAST(:key AS bigint))"))
_SHARED_LOCK = Prepared(text("SELECT pg_advisory_xact_lock_shared(CAST(:key AS bigint))"))


def advisory_key(*parts: str) -> int:
    """A PostgreSQL advisory lock key for `parts`: a signed 64-bit hash (a collision only
    makes two of them share a lock)."""
    digest = hashlib.blake2b("\x00".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def key_of(tenant_id: str, *name: str) -> int:
    # "\x01" first: a tenant id never starts so, so these never share identity's locks.
    return advisory_key("\x01lock", tenant_id, *name)


async def take(conn: AsyncConnection, tenant_id: str, *name: str, shared: bool = False) -> None:
    """Hold the lock on `name` until this transaction ends; `shared`: with any other shared
    holders, only an exclusive one waits (and is waited for)."""
    if conn.dialect.name == "postgresql":
        await (_SHARED_LOCK if shared else _LOCK).fetchone(conn, {"key": key_of(tenant_id, *name)})
