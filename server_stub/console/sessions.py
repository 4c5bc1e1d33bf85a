"""Console sign-in: a staff member's key opens a session kept in the database (every server
process sees it); the cookie is a random token stored only as its SHA-256."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.ids import utcnow
from server_stub.services import keys, staff
from server_stub.services.staff import Staff
from server_stub.storage.tables import api_keys, console_sessions

SESSION_LIFETIME = timedelta(hours=10)  # a working day


@dataclass(frozen=True)
class ConsoleSession:
    member: Staff
    csrf: str


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def sign_in(conn: AsyncConnection, presented: str) -> tuple[str, ConsoleSession] | None:
    """(cookie token, session) for a valid staff key, else None."""
    parsed = keys.parse(presented.strip())
    if parsed is None:
        return None
    stored = await keys.get(conn, parsed.key_id)
    if stored is None or stored.revoked_at is not None or not stored.matches(parsed.secret):
        return None
    member = await staff.of_key(conn, stored.tenant_id, stored.key_id)
    if member is None:
        return None
    token, csrf, now = secrets.token_urlsafe(32), secrets.token_urlsafe(24), utcnow()
    await conn.execute(delete(console_sessions).where(console_sessions.c.expires_at < now))
    await conn.execute(
        insert(console_sessions).values(
            token_sha256=_digest(token),
            tenant_id=member.tenant_id,
            key_id=member.key_id,
            csrf=csrf,
            created_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
    )
    return token, ConsoleSession(member, csrf)


async def current(conn: AsyncConnection, token: str) -> ConsoleSession | None:
    """The session of a cookie: unexpired, its key not revoked, its member still staff."""
    if not token:
        return None
    row = (
        await conn.execute(
            select(console_sessions, api_keys.c.revoked_at)
            .join(api_keys, api_keys.c.key_id == console_sessions.c.key_id)
            .where(console_sessions.c.token_sha256 == _digest(token))
        )
    ).first()
    if row is None or row.expires_at < utcnow() or row.revoked_at is not None:
        return None
    member = await staff.of_key(conn, row.tenant_id, row.key_id)
    return ConsoleSession(member, row.csrf) if member else None


async def sign_out(conn: AsyncConnection, token: str) -> None:
    await conn.execute(
        delete(console_sessions).where(console_sessions.c.token_sha256 == _digest(token))
    )
