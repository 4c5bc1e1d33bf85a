"""API keys of the calling tenant. Admin keys only; every change is audited."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import ApiKey, ApiKeyCreate, ApiKeyList, CreatedApiKey
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import audit
from server_stub.services import keys as key_store

router = APIRouter(prefix="/v1/keys", tags=["keys"], route_class=ApiRoute)

MANAGE = needs(Scope.KEYS_MANAGE)


def _public(key: key_store.StoredKey) -> ApiKey:
    return ApiKey(
        key_id=key.key_id,
        tenant_id=key.tenant_id,
        channel=key.channel,
        name=key.name,
        scopes=sorted(key.scopes),
        created_at=key.created_at,
        revoked_at=key.revoked_at,
    )


@router.post(
    "",
    status_code=201,
    summary="Create a key; its secret is shown this once",
    openapi_extra=needs(Scope.KEYS_MANAGE, replay_redacts=("secret",)),
)
async def create_key(body: ApiKeyCreate, request: Request, conn: Connection) -> CreatedApiKey:
    principal = principal_of(request)
    requested = frozenset(body.scopes) if body.scopes is not None else None
    try:
        key, secret = await key_store.create(
            conn, principal.tenant_id, body.channel, body.name, requested
        )
    except ValueError as exc:
        raise Problem(ProblemType.VALIDATION_ERROR, str(exc)) from exc
    await audit.record(
        conn,
        principal.tenant_id,
        principal.key_id,
        "key.create",
        key.key_id,
        f"channel={key.channel.value}",
    )
    return CreatedApiKey(**_public(key).model_dump(), secret=secret)


@router.get("", summary="List the tenant's keys (never their secrets)", openapi_extra=MANAGE)
async def list_keys(request: Request, conn: Connection) -> ApiKeyList:
    principal = principal_of(request)
    return ApiKeyList(
        items=[_public(k) for k in await key_store.list_for_tenant(conn, principal.tenant_id)]
    )


@router.get("/{key_id}", summary="One key of the tenant", openapi_extra=MANAGE)
async def get_key(key_id: str, request: Request, conn: Connection) -> ApiKey:
    principal = principal_of(request)
    key = await key_store.get(conn, key_id, principal.tenant_id)
    if key is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no API key {key_id!r}")
    return _public(key)


@router.delete("/{key_id}", summary="Revoke a key", openapi_extra=MANAGE)
async def revoke_key(key_id: str, request: Request, conn: Connection) -> ApiKey:
    principal = principal_of(request)
    key, revoked = await key_store.revoke(conn, principal.tenant_id, key_id)
    if key is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no API key {key_id!r}")
    if revoked:  # audited once, however often it is asked
        await audit.record(conn, principal.tenant_id, principal.key_id, "key.revoke", key_id)
    runtime_of(request).key_cache.forget(key_id)
    return _public(key)
