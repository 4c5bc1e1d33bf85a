"""Tenants: the shops a server holds. Created by an operator, never through the HTTP API."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.ids import new_id, utcnow
from server_stub.sealing import Sealer
from server_stub.storage.tables import tenants


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    created_at: datetime


IDENTIFIER_SECRET_BYTES = 32


def identifier_secret_context(tenant_id: str) -> str:
    """What a sealed identifier secret is bound to: it cannot be moved to another tenant."""
    return f"identifier-secret:{tenant_id}"


def seal_identifier_secret(sealer: Sealer, tenant_id: str, secret: bytes) -> bytes:
    return sealer.seal(secret, identifier_secret_context(tenant_id))


def unseal_identifier_secret(sealer: Sealer, tenant_id: str, sealed: bytes) -> bytes:
    """The tenant's HMAC key for e-mail and phone hashes (sealed at rest since 0011)."""
    return sealer.unseal(sealed, identifier_secret_context(tenant_id))


async def create(
    conn: AsyncConnection, name: str, settings: dict[str, Any] | None = None, *, sealer: Sealer
) -> Tenant:
    """A new tenant; `settings` (TenantSettings as JSON) are validated, defaults otherwise.
    Its identifier secret is stored sealed with the server's secret key (`sealer`)."""
    from omnisdk.models import TenantSettings

    stored = TenantSettings.model_validate(settings or {}).model_dump(mode="json")
    name = name.strip()
    if not name or len(name) > 200:
        raise ValueError("a tenant needs a name of 1 to 200 characters")
    tenant = Tenant(id=new_id("ten", 4), name=name, created_at=utcnow())
    await conn.execute(
        insert(tenants).values(
            id=tenant.id,
            name=tenant.name,
            created_at=tenant.created_at,
            identifier_secret=seal_identifier_secret(
                sealer, tenant.id, os.urandom(IDENTIFIER_SECRET_BYTES)
            ),
            settings=stored if settings else {},
        )
    )
    return tenant


async def get(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
    return Tenant(row.id, row.name, row.created_at) if row else None


async def list_all(conn: AsyncConnection) -> list[Tenant]:
    rows = await conn.execute(select(tenants).order_by(tenants.c.created_at))
    return [Tenant(row.id, row.name, row.created_at) for row in rows]
