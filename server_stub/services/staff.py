"""Console staff: a person of a department with a role, signed in with her own API key.

A staff key is an `admin`-channel key narrowed to what the console needs (reading the customer
view, annotating, declaring a preference; splitting a merge for admins), registered here with
the department and role that decide what she may see and change (services/annotations.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel, Scope
from server_stub.ids import utcnow
from server_stub.services import keys
from server_stub.storage.tables import staff_members


class Role(StrEnum):
    AGENT = "agent"  # changes her own notes within the edit window
    LEAD = "lead"  # also changes every note of her department
    ADMIN = "admin"  # changes every note, splits wrong merges


# What a staff key may do through the API as well: read the customer view, annotate it and
# declare her preferred channel (profile:annotate). Not identify (a merge of her own device
# into a customer) nor issue return codes (a signed code for an order of any lines): the
# console calls the services it needs itself (migration 0029 narrowed keys made before).
STAFF_SCOPES = frozenset(
    {Scope.PROFILE_READ, Scope.PROFILE_ANNOTATE, Scope.CONSENT_READ, Scope.CARTS_READ}
)
ADMIN_SCOPES = STAFF_SCOPES | {Scope.IDENTITY_ADMIN}


@dataclass(frozen=True)
class Staff:
    key_id: str
    tenant_id: str
    name: str
    department: str
    role: Role


async def create(
    conn: AsyncConnection, tenant_id: str, name: str, department: str, role: Role
) -> tuple[Staff, str]:
    """A staff member and her key's full secret text (shown once)."""
    scopes = ADMIN_SCOPES if role is Role.ADMIN else STAFF_SCOPES
    key, secret = await keys.create(
        conn, tenant_id, Channel.ADMIN, f"console: {name} ({department})", scopes
    )
    await conn.execute(
        insert(staff_members).values(
            key_id=key.key_id,
            tenant_id=tenant_id,
            name=name,
            department=department,
            role=role.value,
            created_at=utcnow(),
        )
    )
    return Staff(key.key_id, tenant_id, name, department, role), secret


async def of_key(conn: AsyncConnection, tenant_id: str, key_id: str) -> Staff | None:
    """The staff member an API key belongs to, or None for a shop backend's key."""
    row = (
        await conn.execute(
            select(staff_members).where(
                staff_members.c.key_id == key_id, staff_members.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
        return None
    return Staff(row.key_id, row.tenant_id, row.name, row.department, Role(row.role))
