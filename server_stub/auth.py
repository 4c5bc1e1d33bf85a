"""API-key authentication and scope checks.

Every route under /v1 authenticates (see `routing.ApiRoute`), and every route declares the one
scope it needs with `openapi_extra=needs(Scope.X)`; `ApiRoute` refuses a route without one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import Principal
from server_stub.errors import Problem
from server_stub.services import keys as key_store
from server_stub.services import tenants
from server_stub.storage.database import Database

CHANNEL_HEADER = "x-omnisdk-channel"


@dataclass
class _Cached:
    key: key_store.StoredKey
    principal: Principal
    until: float


def _principal(key: key_store.StoredKey) -> Principal:
    return Principal(
        tenant_id=key.tenant_id,
        key_id=key.key_id,
        channel=key.channel,
        scopes=sorted(key.scopes),
    )


class KeyCache:
    """Looked-up keys, trusted for `ttl` seconds so a request need not read the key table."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, _Cached] = {}

    def get(self, key_id: str) -> _Cached | None:
        entry = self._entries.get(key_id)
        if entry is None or entry.until < time.monotonic():
            return None
        return entry

    def put(self, key: key_store.StoredKey) -> _Cached:
        entry = _Cached(key, _principal(key), time.monotonic() + self.ttl)
        if self.ttl > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key.key_id] = entry
        return entry

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


def _invalid_key() -> Problem:
    return Problem(
        ProblemType.INVALID_API_KEY,
        "the API key is not valid for this server (mistyped, revoked or from another server)",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


async def authenticate(request: Request, database: Database, cache: KeyCache) -> Principal:
    """The principal of the request's API key, or a 401 problem."""
    parsed = key_store.parse(_presented_key(request))
    if parsed is None:
        raise _invalid_key()
    entry = cache.get(parsed.key_id)
    if entry is None:
        async with database.transaction(write=False) as conn:
            stored = await key_store.get(conn, parsed.key_id)
        if stored is None:
            raise _invalid_key()
        entry = cache.put(stored)
    key = entry.key
    if key.revoked_at is not None or not key.matches(parsed.secret):
        raise _invalid_key()
    declared = request.headers.get(CHANNEL_HEADER)
    if declared is not None and declared != key.channel.value:
        raise Problem(
            ProblemType.INSUFFICIENT_SCOPE,
            f"this is a {key.channel.value} key but the client says it is the {declared} "
            f"channel; use a key made for {declared}",
        )
    return entry.principal


async def still_valid(principal: Principal, database: Database, cache: KeyCache) -> bool:
    """Whether the key that opened a long-lived answer (a change feed) may still read: not
    revoked, not removed, its tenant still there. Trusts the key cache for its `ttl`, like
    every request does."""
    entry = cache.get(principal.key_id)
    if entry is not None:
        return entry.key.revoked_at is None
    async with database.transaction(write=False) as conn:
        stored = await key_store.get(conn, principal.key_id, principal.tenant_id)
        tenant = await tenants.get(conn, principal.tenant_id) if stored is not None else None
    if stored is None or tenant is None:
        return False
    cache.put(stored)
    return stored.revoked_at is None


def principal_of(request: Request) -> Principal:
    principal = getattr(request.state, "principal", None)
    if not isinstance(principal, Principal):
        raise RuntimeError("route is not an ApiRoute: it was not authenticated")
    return principal


SCOPE_EXTENSION = "x-required-scope"
READ_ONLY_EXTENSION = "x-read-only"
OWN_IDEMPOTENCY_EXTENSION = "x-idempotent-by-operation-ids"


ITEMS_JUDGED_ALONE_EXTENSION = "x-items-judged-alone"
REPLAY_REDACTS_EXTENSION = "x-replay-redacts"


def needs(
    scope: Scope,
    *,
    read_only: bool = False,
    own_idempotency: bool = False,
    items_judged_alone: str | None = None,
    replay_redacts: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A route's `openapi_extra`: the one scope it requires. `ApiRoute` checks it before the
    body is read, and the OpenAPI document shows it to client authors. `read_only` marks a
    POST that changes nothing (a lookup whose input must not appear in a URL)."""
    extra: dict[str, Any] = {SCOPE_EXTENSION: scope.value}
    if read_only:
        extra[READ_ONLY_EXTENSION] = True
    if own_idempotency:
        # Each operation carries its own id and is applied once: a repeated request is
        # harmless without storing its answer under the Idempotency-Key.
        extra[OWN_IDEMPOTENCY_EXTENSION] = True
    if replay_redacts:
        # Members of the answer that are secrets shown once (`secret`, `confirmations.*.token`):
        # the stored answer that an Idempotency-Key replays holds null there instead.
        extra[REPLAY_REDACTS_EXTENSION] = list(replay_redacts)
    if items_judged_alone:
        # The body's list under this member is judged item by item (an events batch): a
        # value the strict JSON policy refuses inside one item rejects that item, not the body.
        extra[ITEMS_JUDGED_ALONE_EXTENSION] = items_judged_alone
    return extra


def check_scope(principal: Principal, scope: Scope) -> None:
    if scope not in principal.scopes:
        raise Problem(
            ProblemType.INSUFFICIENT_SCOPE,
            f"this operation needs the scope {scope.value!r}, which "
            f"{principal.channel.value} keys do not have",
            required_scope=scope.value,
        )
