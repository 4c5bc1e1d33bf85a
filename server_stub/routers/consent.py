"""The consent ledger: record decisions, read the state, confirm double opt-ins, follow changes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from omnisdk.core.channels import Scope
from omnisdk.models import (
    ConfirmConsentRequest,
    ConsentHistory,
    ConsentState,
    RecordConsentRequest,
    RecordConsentResult,
)
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import consent, identity
from server_stub.services.profile import require_customer

router = APIRouter(prefix="/v1/consent", tags=["consent"], route_class=ApiRoute)

DeviceId = Annotated[str | None, Query(min_length=1, max_length=300)]


@router.post(
    "/confirmations",
    summary="Confirm a double opt-in with the token from the confirmation e-mail",
    openapi_extra=needs(Scope.CONSENT_WRITE),
)
async def confirm(
    body: ConfirmConsentRequest, request: Request, conn: Connection, context: Context
) -> RecordConsentResult:
    return await consent.confirm(conn, context, body.token, principal_of(request).channel)


@router.get(
    "/{customer_id}",
    summary="The customer's consent state (with a device's own decisions, if named)",
    openapi_extra=needs(Scope.CONSENT_READ),
)
async def get_state(
    customer_id: str, conn: Connection, context: Context, device_id: DeviceId = None
) -> ConsentState:
    live = await require_customer(conn, context.tenant_id, customer_id)
    return await consent.read_state(conn, context, live, device_id)


@router.post(
    "/{customer_id}",
    summary="Record consent decisions (append-only); grants of double opt-in purposes pend",
    openapi_extra=needs(Scope.CONSENT_WRITE, replay_redacts=("confirmations.*.token",)),
)
async def record(
    customer_id: str,
    body: RecordConsentRequest,
    request: Request,
    conn: Connection,
    context: Context,
) -> RecordConsentResult:
    live = await identity.lock_customer(conn, context.tenant_id, customer_id)
    return await consent.record(conn, context, live, body.decisions, principal_of(request).channel)


@router.get(
    "/{customer_id}/history",
    summary="Every consent decision on record for the customer, oldest first",
    openapi_extra=needs(Scope.CONSENT_READ),
)
async def history(customer_id: str, conn: Connection, context: Context) -> ConsentHistory:
    live = await require_customer(conn, context.tenant_id, customer_id)
    return await consent.history(conn, context.tenant_id, live)
