"""API-key authentication and scope checks.

Every route under /v1 authenticates (see `routing.ApiRoute`), and every route declares the one
scope it needs with `Depends(requires(Scope.X))`; a test walks the routes to keep it so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import Principal
from server_stub.errors import Problem
from server_stub.services import keys as key_store
from server_stub.storage.database import Database

CHANNEL_HEADER = "x-omnisdk-channel"


@dataclass
class _Cached:
    key: key_store.StoredKey
    until: float


class KeyCache:
    """Looked-up keys, trusted for `ttl` seconds so a request need not read the key table."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, _Cached] = {}

    def get(self, key_id: str) -> key_store.StoredKey | None:
        entry = self._entries.get(key_id)
        if entry is None or entry.until < time.monotonic():
            return None
        return entry.key

    def put(self, key: key_store.StoredKey) -> None:
        if self.ttl > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key.key_id] = _Cached(key, time.monotonic() + self.ttl)

    def forget(self, key_id: str) -> None:
        self._entries.pop(key_id, None)


def _presented_key(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise Problem(
            ProblemType.AUTHENTICATION_REQUIRED,
            "send an API key as `Authorization: Bearer osk_...`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Problem(
            ProblemType.AUTHENTICATION_REQUIRED,
            "the Authorization header must be `Bearer <API key>`",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return value.strip()


async def authenticate(request: Request, database: Database, cache: KeyCache) -> Principal:
    """The principal of the request's API key, or a 401 problem."""
    parsed = key_store.parse(_presented_key(request))
    invalid = Problem(
        ProblemType.INVALID_API_KEY,
        "the API key is not valid for this server (mistyped, revoked or from another server)",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )
    if parsed is None:
        raise invalid
    key = cache.get(parsed.key_id)
    if key is None:
        async with database.transaction(write=False) as conn:
            key = await key_store.get(conn, parsed.key_id)
        if key is None:
            raise invalid
        cache.put(key)
    if key.revoked_at is not None or not key.matches(parsed.secret):
        raise invalid
    declared = request.headers.get(CHANNEL_HEADER)
    if declared is not None and declared != key.channel.value:
        raise Problem(
            ProblemType.INSUFFICIENT_SCOPE,
            f"this is a {key.channel.value} key but the client says it is the {declared} "
            f"channel; use a key made for {declared}",
        )
    return Principal(
        tenant_id=key.tenant_id,
        key_id=key.key_id,
        channel=key.channel,
        scopes=sorted(key.scopes),
    )


def principal_of(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise RuntimeError("route is not an ApiRoute: it was not authenticated")
    return principal


class Requires:
    """A dependency that checks the principal holds `scope`, and returns the principal."""

    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def __call__(self, request: Request) -> Principal:
        principal = principal_of(request)
        if self.scope not in principal.scopes:
            raise Problem(
                ProblemType.INSUFFICIENT_SCOPE,
                f"this operation needs the scope {self.scope.value!r}, which "
                f"{principal.channel.value} keys do not have",
                required_scope=self.scope.value,
            )
        return principal


def requires(scope: Scope) -> Callable[[Request], Principal]:
    return Requires(scope)
