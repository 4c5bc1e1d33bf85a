"""API keys: `osk_<channel>_<key id>_<secret>`. The server keeps the key id and a SHA-256
of the secret; the secret has 256 random bits, so a fast hash cannot be brute-forced."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Row, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel, Scope, scopes_for
from server_stub.ids import utcnow
from server_stub.storage.tables import api_keys

KEY_PREFIX = "osk"


@dataclass(frozen=True)
class StoredKey:
    key_id: str
    tenant_id: str
    channel: Channel
    name: str
    scopes: frozenset[Scope]
    secret_sha256: str
    created_at: datetime
    revoked_at: datetime | None

    def matches(self, secret: str) -> bool:
        return hmac.compare_digest(self.secret_sha256, _digest(secret))


@dataclass(frozen=True)
class ParsedKey:
    key_id: str
    secret: str


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


_CHANNELS = "|".join(c.value for c in Channel)
_KEY_SHAPE = re.compile(rf"{KEY_PREFIX}_(?:{_CHANNELS})_([0-9a-f]{{16}})_([A-Za-z0-9_-]{{32,128}})")


def parse(presented: str) -> ParsedKey | None:
    """The key id and secret of a presented key, or None if it is not shaped like one."""
    match = _KEY_SHAPE.fullmatch(presented)
    if match is None:
        return None
    return ParsedKey(key_id=f"key_{match[1]}", secret=match[2])


def _row_to_key(row: Row[Any]) -> StoredKey:
    return StoredKey(
        key_id=row.key_id,
        tenant_id=row.tenant_id,
        channel=Channel(row.channel),
        name=row.name,
        scopes=scopes_for(
            Channel(row.channel),
            None if row.scopes is None else frozenset(Scope(s) for s in row.scopes),
            strict=False,
        ),
        secret_sha256=row.secret_sha256,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


async def create(
    conn: AsyncConnection,
    tenant_id: str,
    channel: Channel,
    name: str = "",
    scopes: frozenset[Scope] | None = None,
) -> tuple[StoredKey, str]:
    """A new key and its full secret text, which is returned here and never again."""
    granted = scopes_for(channel, scopes)
    key_hex = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    key = StoredKey(
        key_id=f"key_{key_hex}",
        tenant_id=tenant_id,
        channel=channel,
        name=name,
        scopes=granted,
        secret_sha256=_digest(secret),
        created_at=utcnow(),
        revoked_at=None,
    )
    await conn.execute(
        insert(api_keys).values(
            key_id=key.key_id,
            tenant_id=tenant_id,
            channel=channel.value,
            name=name,
            scopes=None if scopes is None else sorted(s.value for s in granted),
            secret_sha256=key.secret_sha256,
            created_at=key.created_at,
        )
    )
    return key, f"{KEY_PREFIX}_{channel.value}_{key_hex}_{secret}"


async def get(conn: AsyncConnection, key_id: str, tenant_id: str | None = None) -> StoredKey | None:
    query = select(api_keys).where(api_keys.c.key_id == key_id)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    row = (await conn.execute(query)).first()
    return _row_to_key(row) if row else None


async def list_for_tenant(conn: AsyncConnection, tenant_id: str) -> list[StoredKey]:
    rows = await conn.execute(
        select(api_keys).where(api_keys.c.tenant_id == tenant_id).order_by(api_keys.c.created_at)
    )
    return [_row_to_key(row) for row in rows]


async def revoke(
    conn: AsyncConnection, tenant_id: str, key_id: str
) -> tuple[StoredKey | None, bool]:
    """Revoke the tenant's key: (the key, None if the tenant has none; whether this call
    revoked it). Revoking twice, or twice at once, revokes it once."""
    key = await get(conn, key_id, tenant_id)
    if key is None or key.revoked_at is not None:
        return key, False
    revoked = await conn.execute(
        update(api_keys)
        .where(
            api_keys.c.key_id == key_id,
            api_keys.c.tenant_id == tenant_id,
            api_keys.c.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
        .returning(api_keys.c.revoked_at)
    )
    row = revoked.first()
    if row is None:  # revoked meanwhile by another request: as it is now
        return await get(conn, key_id, tenant_id), False
    return StoredKey(**{**key.__dict__, "revoked_at": row.revoked_at}), True
