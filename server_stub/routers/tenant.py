"""The calling tenant's settings (identity limits and junk patterns, profile thresholds)."""

from __future__ import annotations

import json
from typing import Any

import pydantic
from fastapi import APIRouter, Request

from omnisdk.core import merge_patch
from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import TenantSettings
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import audit

router = APIRouter(prefix="/v1/tenant", tags=["tenant"], route_class=ApiRoute)


@router.get(
    "/settings", summary="The tenant's settings", openapi_extra=needs(Scope.SETTINGS_MANAGE)
)
async def get_settings(context: Context) -> TenantSettings:
    return context.settings


@router.put(
    "/settings", summary="Replace the tenant's settings", openapi_extra=needs(Scope.SETTINGS_MANAGE)
)
async def put_settings(body: TenantSettings, request: Request, conn: Connection) -> TenantSettings:
    principal = principal_of(request)
    try:
        saved = await runtime_of(request).tenants.save_settings(conn, principal.tenant_id, body)
    except ValueError as exc:
        raise Problem(ProblemType.VALIDATION_ERROR, str(exc)) from exc
    await audit.record(conn, principal.tenant_id, principal.key_id, "settings.replace", "tenant")
    return saved


@router.patch(
    "/settings",
    summary="Change some of the tenant's settings (JSON Merge Patch)",
    description=(
        "A partial update (RFC 7396): send only what changes, as "
        "`application/merge-patch+json`; objects merge member by member, `null` puts a "
        "setting back to its default, anything else replaces the value. The result is "
        "validated whole: an invalid result changes nothing."
    ),
    openapi_extra=needs(Scope.SETTINGS_MANAGE)
    | {
        "requestBody": {
            "required": True,
            "content": {
                merge_patch.MEDIA_TYPE: {
                    "schema": {"type": "object"},
                    "example": {"carts": {"merge_policy": "sum"}},
                }
            },
        }
    },
)
async def patch_settings(request: Request, conn: Connection) -> TenantSettings:
    patch = await _merge_patch_of(request)
    principal = principal_of(request)
    tenants = runtime_of(request).tenants
    try:
        saved = await tenants.patch_settings(conn, principal.tenant_id, patch)
    except pydantic.ValidationError as exc:
        raise Problem(ProblemType.VALIDATION_ERROR, _first_error(exc)) from None
    except ValueError as exc:
        raise Problem(ProblemType.VALIDATION_ERROR, str(exc)) from exc
    await audit.record(conn, principal.tenant_id, principal.key_id, "settings.patch", "tenant")
    return saved


async def _merge_patch_of(request: Request) -> dict[str, Any]:
    """The request's merge patch: a JSON object (a patch of the whole settings document)."""
    try:
        patch = json.loads(await request.body())
    except ValueError:
        raise Problem(ProblemType.VALIDATION_ERROR, "the body is not valid JSON") from None
    if not isinstance(patch, dict):
        raise Problem(ProblemType.VALIDATION_ERROR, "a settings patch is a JSON object, such as {}")
    return patch


def _first_error(error: pydantic.ValidationError) -> str:
    first = error.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(part) for part in first["loc"]) or "settings"
    return f"{where}: {first['msg']}"
