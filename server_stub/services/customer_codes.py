"""Signed customer codes (omnisdk.core.customer_codes): issued to a customer's app, scanned
at a till, resolved to the customer when the sale is recorded.

The code holds only a random id; the row here says whose it is. Rows are deleted a day after
their code expired (a sale delivered late through a till's outbox is judged by the time it
was made, within that day), and at erasure with the rest of the person.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import customer_codes as codes
from omnisdk.models import CustomerCodeIssued
from server_stub.ids import utcnow
from server_stub.services import identity
from server_stub.services.signing_keys import SigningKeys, verification_keys
from server_stub.storage.tables import customer_codes

KEPT_AFTER_EXPIRY = timedelta(days=1)
PRUNE_BATCH = 500


async def issue(
    conn: AsyncConnection,
    tenant_id: str,
    keys: SigningKeys,
    customer_id: str,
    lifetime: timedelta = codes.DEFAULT_LIFETIME,
) -> CustomerCodeIssued:
    """A fresh code for the customer's app (any current or merged id of hers)."""
    live = await identity.lock_customer(conn, tenant_id, customer_id)
    now = utcnow().replace(microsecond=0)
    key = await keys.active(conn, tenant_id)
    claims = codes.CodeClaims(tenant_id, now, now + lifetime, os.urandom(codes.CODE_ID_BYTES))
    await _prune(conn, now)
    await conn.execute(
        insert(customer_codes).values(
            tenant_id=tenant_id,
            code_id=claims.code_id_hex,
            customer_id=live,
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
        )
    )
    return CustomerCodeIssued(
        code=codes.sign(claims, key.private_key, key.kid),
        code_id=claims.code_id_hex,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
    )


async def _prune(conn: AsyncConnection, now: datetime) -> None:
    stale = (
        select(customer_codes.c.code_id)
        .where(customer_codes.c.expires_at < now - KEPT_AFTER_EXPIRY)
        .limit(PRUNE_BATCH)
    )
    ids = [row.code_id for row in await conn.execute(stale)]
    if ids:
        await conn.execute(delete(customer_codes).where(customer_codes.c.code_id.in_(ids)))


async def owner(
    conn: AsyncConnection, tenant_id: str, code: str, at: datetime
) -> tuple[str | None, codes.Status]:
    """Whose code this is, judged at `at` (the time of the sale): (her customer id or None,
    the code's status). A genuine code whose row is gone (erased, or long expired) has none."""
    outcome = codes.verify(code, await verification_keys(conn, tenant_id), issuer=tenant_id, now=at)
    if not outcome.valid or outcome.claims is None:
        return None, outcome.status
    row = (
        await conn.execute(
            select(customer_codes.c.customer_id).where(
                customer_codes.c.tenant_id == tenant_id,
                customer_codes.c.code_id == outcome.claims.code_id_hex,
            )
        )
    ).first()
    return (row.customer_id if row else None), outcome.status
