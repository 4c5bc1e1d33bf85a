"""Each tenant's Ed25519 signing keys: created on first use, rotated, retired, published.

The newest key that has not begun to retire signs. A rotation makes a new key and schedules
the previous ones to retire after a grace period, so codes already handed out keep verifying
until they can no longer be used anyway. Retiring a key at once (it leaked) makes every code
signed with it fail as "retired key". Private keys are stored sealed (server_stub.sealing).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from sqlalchemy import insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import tokens
from omnisdk.models import PublishedKey, PublishedKeys
from server_stub.ids import utcnow
from server_stub.sealing import Sealer
from server_stub.services import named_locks
from server_stub.storage.tables import signing_keys


class SecretKeyMismatch(RuntimeError):
    """The server's secret key cannot open the signing keys stored in the database."""


@dataclass(frozen=True)
class SigningKey:
    kid: bytes
    private_key: Ed25519PrivateKey


def _context(tenant_id: str, kid_hex: str) -> str:
    return f"signing-key:{tenant_id}:{kid_hex}"


class SigningKeys:
    """Signing keys of every tenant; unsealed private keys are kept in memory once used."""

    def __init__(self, sealer: Sealer) -> None:
        self._sealer = sealer
        self._unsealed: dict[tuple[str, str], Ed25519PrivateKey] = {}

    async def create(self, conn: AsyncConnection, tenant_id: str, now: datetime) -> SigningKey:
        private = Ed25519PrivateKey.generate()
        public = tokens.raw_public_key(private)
        kid = tokens.key_id(public)
        raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        await conn.execute(
            insert(signing_keys).values(
                tenant_id=tenant_id,
                kid=kid.hex(),
                public_key=public,
                sealed_private_key=self._sealer.seal(raw, _context(tenant_id, kid.hex())),
                created_at=now,
            )
        )
        self._unsealed[tenant_id, kid.hex()] = private
        return SigningKey(kid, private)

    async def active(self, conn: AsyncConnection, tenant_id: str) -> SigningKey:
        """The key that signs now (created the first time a tenant needs one, once: two
        first needs at once take turns, and the second finds the first's key)."""
        row = await self._current(conn, tenant_id)
        if row is None:
            await named_locks.take(conn, tenant_id, "signing_keys")
            row = await self._current(conn, tenant_id)
            if row is None:
                return await self.create(conn, tenant_id, utcnow())
        private = self._unsealed.get((tenant_id, row.kid))
        if private is None:
            raw = self._sealer.unseal(row.sealed_private_key, _context(tenant_id, row.kid))
            private = Ed25519PrivateKey.from_private_bytes(raw)
            self._unsealed[tenant_id, row.kid] = private
        return SigningKey(bytes.fromhex(row.kid), private)

    async def _current(self, conn: AsyncConnection, tenant_id: str) -> Any:
        return (
            await conn.execute(
                select(signing_keys.c.kid, signing_keys.c.sealed_private_key)
                .where(signing_keys.c.tenant_id == tenant_id, signing_keys.c.retires_at.is_(None))
                .order_by(signing_keys.c.created_at.desc())
                .limit(1)
            )
        ).first()

    async def rotate(self, conn: AsyncConnection, tenant_id: str, grace: timedelta) -> SigningKey:
        """A new signing key; the current ones retire after `grace`. Two rotations at once
        take turns: the second retires the first's key, one key is left current."""
        await named_locks.take(conn, tenant_id, "signing_keys")
        now = utcnow()
        await conn.execute(
            update(signing_keys)
            .where(signing_keys.c.tenant_id == tenant_id, signing_keys.c.retires_at.is_(None))
            .values(retires_at=now + grace)
        )
        return await self.create(conn, tenant_id, now)

    async def retire(self, conn: AsyncConnection, tenant_id: str, kid_hex: str) -> bool:
        """Retire a key now (it leaked): its codes fail from now on. False if unknown."""
        now = utcnow()
        result = await conn.execute(
            update(signing_keys)
            .where(
                signing_keys.c.tenant_id == tenant_id,
                signing_keys.c.kid == kid_hex,
                or_(signing_keys.c.retires_at.is_(None), signing_keys.c.retires_at > now),
            )
            .values(retires_at=now)
        )
        return bool(result.rowcount)


async def verification_keys(
    conn: AsyncConnection, tenant_id: str
) -> dict[bytes, tokens.VerificationKey]:
    rows = await conn.execute(
        select(
            signing_keys.c.kid,
            signing_keys.c.public_key,
            signing_keys.c.created_at,
            signing_keys.c.retires_at,
        ).where(signing_keys.c.tenant_id == tenant_id)
    )
    return {
        bytes.fromhex(row.kid): tokens.VerificationKey(
            bytes.fromhex(row.kid), bytes(row.public_key), row.created_at, row.retires_at
        )
        for row in rows
    }


async def published(conn: AsyncConnection, tenant_id: str) -> PublishedKeys:
    keys = await verification_keys(conn, tenant_id)
    return PublishedKeys(
        issuer=tenant_id,
        keys=[
            PublishedKey(
                kid=key.kid.hex(),
                x=base64.urlsafe_b64encode(key.public_key).rstrip(b"=").decode(),
                not_before=key.not_before,
                retires_at=key.retires_at,
            )
            for key in sorted(keys.values(), key=lambda k: k.not_before)
        ],
    )


async def any_sealed(conn: AsyncConnection) -> bool:
    """Whether the database already holds sealed signing keys (of any tenant)."""
    return (await conn.execute(select(signing_keys.c.kid).limit(1))).first() is not None


async def check_secret(conn: AsyncConnection, sealer: Sealer) -> None:
    """Refuse to serve with a secret key that cannot open the stored signing keys: every issue
    would fail. The newest key is the one that signs, so it is the one tried."""
    row = (
        await conn.execute(
            select(signing_keys.c.tenant_id, signing_keys.c.kid, signing_keys.c.sealed_private_key)
            .order_by(signing_keys.c.created_at.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return
    try:
        sealer.unseal(row.sealed_private_key, _context(row.tenant_id, row.kid))
    except InvalidTag:
        raise SecretKeyMismatch(
            "the server's secret key cannot open the signing keys in the database: start the "
            "server with the secret key it was set up with (OMNISDK_SECRET_KEY or the file "
            "named by OMNISDK_SECRET_KEY_FILE), from your backup if need be"
        ) from None
