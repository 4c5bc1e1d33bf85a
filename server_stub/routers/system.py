"""Who a key is, and a write that changes nothing (a connectivity check for writes)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omnisdk.core.channels import Scope
from omnisdk.models import PingRequest, Pong, Principal
from server_stub.auth import needs, principal_of
from server_stub.ids import utcnow
from server_stub.routing import ApiRoute

router = APIRouter(prefix="/v1/system", tags=["system"], route_class=ApiRoute)


@router.get(
    "/whoami",
    summary="The tenant, channel and scopes of the calling key",
    openapi_extra=needs(Scope.SYSTEM_READ),
)
async def whoami(request: Request) -> Principal:
    return principal_of(request)


@router.post(
    "/ping", summary="A write that changes nothing", openapi_extra=needs(Scope.SYSTEM_WRITE)
)
async def ping(body: PingRequest, request: Request) -> Pong:
    principal = principal_of(request)
    return Pong(
        message=body.message,
        sequence=body.sequence,
        tenant_id=principal.tenant_id,
        channel=principal.channel,
        received_at=utcnow(),
    )
