"""Stored outcomes of mutating requests, replayed when the same Idempotency-Key comes again.

Only successful (2xx) outcomes are stored, in the same transaction as the request's own
writes: they commit together or not at all. A failed request changed nothing, so a retry of
it simply runs again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.ids import utcnow
from server_stub.storage.tables import idempotency_records

REPLAYED_HEADERS = ("content-type", "etag", "location")
# A customer id as the server makes them (identity.py: `cus_` and hex; the benchmark's loaded
# shops use `cus_s<n>`), anywhere in a body.
CUSTOMER_ID = re.compile(rb"cus_[0-9A-Za-z]+")
ID_LENGTH = 40  # customers.id: a longer match (user text such as "focus_...") is no one's id


@dataclass(frozen=True)
class StoredOutcome:
    fingerprint: str
    status_code: int
    headers: dict[str, str]
    body: bytes
    expired: bool = False


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query.encode()):
        digest.update(part + b"\n")
    digest.update(body)
    return digest.hexdigest()


def subjects(body: bytes) -> list[str]:
    """The customer ids `body` names, each once: what erasure looks up (services/privacy.py)."""
    named = {found.decode() for found in CUSTOMER_ID.findall(body) if len(found) <= ID_LENGTH}
    return sorted(named)


async def find(
    conn: AsyncConnection, tenant_id: str, key: str, ttl_seconds: int
) -> StoredOutcome | None:
    """The stored outcome for `key`; an expired one (not yet purged) is marked so."""
    row = (
        await conn.execute(
            select(idempotency_records).where(
                idempotency_records.c.tenant_id == tenant_id,
                idempotency_records.c.idempotency_key == key,
            )
        )
    ).first()
    if row is None:
        return None
    expired = row.created_at <= utcnow() - timedelta(seconds=ttl_seconds)
    return StoredOutcome(
        row.fingerprint, row.status_code, dict(row.headers), bytes(row.body), expired
    )


async def store(
    conn: AsyncConnection,
    tenant_id: str,
    key: str,
    outcome: StoredOutcome,
    replaces_expired: bool = False,
) -> None:
    if replaces_expired:
        await conn.execute(
            delete(idempotency_records).where(
                idempotency_records.c.tenant_id == tenant_id,
                idempotency_records.c.idempotency_key == key,
            )
        )
    await conn.execute(
        insert(idempotency_records).values(
            tenant_id=tenant_id,
            idempotency_key=key,
            fingerprint=outcome.fingerprint,
            status_code=outcome.status_code,
            headers=outcome.headers,
            body=outcome.body,
            subjects=subjects(outcome.body),
            created_at=utcnow(),
        )
    )


async def purge_expired(
    conn: AsyncConnection, ttl_seconds: int, now: datetime | None = None, limit: int | None = None
) -> int:
    """Delete expired records: all of them, or at most `limit` (the oldest first), so that a
    purge running continuously keeps each of its transactions short."""
    cutoff = (now or utcnow()) - timedelta(seconds=ttl_seconds)
    expired = idempotency_records.c.created_at <= cutoff
    if limit is None:
        result = await conn.execute(delete(idempotency_records).where(expired))
        return result.rowcount or 0
    oldest = (
        select(idempotency_records.c.tenant_id, idempotency_records.c.idempotency_key)
        .where(expired)
        .order_by(idempotency_records.c.created_at)
        .limit(limit)
    )
    key = tuple_(idempotency_records.c.tenant_id, idempotency_records.c.idempotency_key)
    result = await conn.execute(delete(idempotency_records).where(key.in_(oldest)))
    return result.rowcount or 0
