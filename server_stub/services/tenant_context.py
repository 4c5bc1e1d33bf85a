"""What identity rules need of a tenant: its identifier secret and its settings, cached."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import merge_patch
from omnisdk.core.identifiers import IdentifierKey, IdentifierType, JunkMatcher, identifier_key
from omnisdk.core.problems import ProblemType
from omnisdk.core.profile import LifecycleThresholds
from omnisdk.models import TenantSettings
from server_stub.errors import Problem
from server_stub.sealing import Sealer
from server_stub.services.junk_patterns import compile_patterns, compile_stored
from server_stub.services.tenants import unseal_identifier_secret
from server_stub.storage.database import after_commit
from server_stub.storage.tables import tenants


@dataclass(frozen=True)
class TenantContext:
    tenant_id: str
    secret: bytes
    settings: TenantSettings
    junk_patterns: tuple[JunkMatcher, ...]

    def key(self, type: IdentifierType | str, value: str) -> IdentifierKey:
        """The stored key of an identifier; raises InvalidIdentifier."""
        return identifier_key(
            self.secret,
            type,
            value,
            junk_patterns=self.junk_patterns,
            default_country_code=self.settings.identity.default_country_code,
        )

    def limit(self, type: IdentifierType) -> int:
        if type is IdentifierType.CUSTOMER_REF:
            return 1
        return self.settings.identity.limits.get(type, 50)

    @property
    def lifecycle(self) -> LifecycleThresholds:
        profile = self.settings.profile
        return LifecycleThresholds(profile.new_days, profile.active_days, profile.lapsing_days)


log = logging.getLogger("omnisdk.server")


class TenantContexts:
    """Tenant contexts, trusted for `ttl` seconds (a settings change here is seen at once)."""

    def __init__(self, ttl: float, sealer: Sealer) -> None:
        self.ttl = ttl
        self._sealer = sealer
        self._entries: dict[str, tuple[TenantContext, float]] = {}

    async def get(self, conn: AsyncConnection, tenant_id: str) -> TenantContext:
        cached = self._entries.get(tenant_id)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        row = (
            await conn.execute(
                select(tenants.c.identifier_secret, tenants.c.settings).where(
                    tenants.c.id == tenant_id
                )
            )
        ).one()
        settings = TenantSettings.model_validate(row.settings or {})
        context = TenantContext(
            tenant_id,
            self._unsealed(tenant_id, bytes(row.identifier_secret)),
            settings,
            compile_stored(tenant_id, settings.identity.junk_patterns),
        )
        self._entries[tenant_id] = (context, time.monotonic() + self.ttl)
        return context

    def _unsealed(self, tenant_id: str, sealed: bytes) -> bytes:
        try:
            return unseal_identifier_secret(self._sealer, tenant_id, sealed)
        except InvalidTag:
            # Not a bug of the request: the server runs with another secret key than the one
            # that sealed the tenant's secrets. Say so to the operator, and 503 to the client.
            log.error(
                "a tenant's identifier secret cannot be unsealed: OMNISDK_SECRET_KEY (or its "
                "key file) is not the one this database was sealed with",
                extra={"tenant_id": tenant_id},
            )
            raise Problem(
                ProblemType.SERVICE_UNAVAILABLE,
                "the server is misconfigured (its secret key); the operator has been told",
            ) from None

    async def patch_settings(
        self, conn: AsyncConnection, tenant_id: str, patch: dict[str, Any]
    ) -> TenantSettings:
        """Apply a JSON Merge Patch to the settings as stored now, the tenant's row locked:
        two patches take turns, and a patch never undoes one made through another process
        (which this process's cache may not have seen yet). Raises pydantic.ValidationError
        or ValueError for settings that are not valid."""
        query = select(tenants.c.settings).where(tenants.c.id == tenant_id)
        query = query.with_for_update(key_share=True)  # FOR NO KEY UPDATE: inserts go on
        stored = (await conn.execute(query)).scalar_one()
        current = TenantSettings.model_validate(stored or {}).model_dump(mode="json")
        wanted = TenantSettings.model_validate(merge_patch.apply(current, patch))
        return await self.save_settings(conn, tenant_id, wanted)

    async def save_settings(
        self, conn: AsyncConnection, tenant_id: str, settings: TenantSettings
    ) -> TenantSettings:
        compile_patterns(settings.identity.junk_patterns)
        await conn.execute(
            update(tenants)
            .where(tenants.c.id == tenant_id)
            .values(settings=settings.model_dump(mode="json"))
        )
        # Dropped now for this transaction's own reads, and again once it has committed: a
        # request of this process reading in between caches the settings as they were.
        self._entries.pop(tenant_id, None)
        after_commit(conn, lambda: self._entries.pop(tenant_id, None))
        return settings
