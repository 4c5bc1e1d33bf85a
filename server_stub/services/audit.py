"""The audit log: who (which key) did what to which subject, for admin actions."""

from __future__ import annotations

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.ids import utcnow
from server_stub.storage.tables import audit_log


async def record(
    conn: AsyncConnection,
    tenant_id: str,
    actor_key_id: str | None,
    action: str,
    subject: str,
    detail: str = "",
) -> None:
    """`subject` is what the action was done to: a customer's id where it was done to her,
    which erasure replaces (through ix_audit_log_subject). `detail` never names a customer
    (no id, no personal data): erasure does not look there."""
    await conn.execute(
        insert(audit_log).values(
            tenant_id=tenant_id,
            actor_key_id=actor_key_id,
            action=action,
            subject=subject,
            detail=detail,
            created_at=utcnow(),
        )
    )
