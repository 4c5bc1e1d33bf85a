"""The calling tenant's settings (identity limits and junk patterns, profile thresholds)."""

from __future__ import annotations

from fastapi import APIRouter, Request

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
