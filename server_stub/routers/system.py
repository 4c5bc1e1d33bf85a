"""Who a key is, and a write that changes nothing (a connectivity check for writes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from omnisdk.core.channels import Scope
from omnisdk.models import PingRequest, Pong, Principal
from server_stub.auth import requires
from server_stub.ids import utcnow
from server_stub.routing import ApiRoute

router = APIRouter(prefix="/v1/system", tags=["system"], route_class=ApiRoute)


@router.get("/whoami", summary="The tenant, channel and scopes of the calling key")
async def whoami(
    principal: Annotated[Principal, Depends(requires(Scope.SYSTEM_READ))],
) -> Principal:
    return principal


@router.post("/ping", summary="A write that changes nothing")
async def ping(
    body: PingRequest,
    principal: Annotated[Principal, Depends(requires(Scope.SYSTEM_WRITE))],
) -> Pong:
    return Pong(
        message=body.message,
        sequence=body.sequence,
        tenant_id=principal.tenant_id,
        channel=principal.channel,
        received_at=utcnow(),
    )
