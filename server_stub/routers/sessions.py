"""The session document a customer shares across channels."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omnisdk.core.channels import Scope
from omnisdk.core.identifiers import hashed_contact_data
from omnisdk.models import SessionView, SessionWrite
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import identity, sessions
from server_stub.services.profile import require_customer

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], route_class=ApiRoute)


@router.get(
    "/{customer_id}", summary="The customer's session", openapi_extra=needs(Scope.CARTS_READ)
)
async def get_session(customer_id: str, request: Request, conn: Connection) -> SessionView:
    tenant_id = principal_of(request).tenant_id
    return await sessions.read(
        conn, tenant_id, await require_customer(conn, tenant_id, customer_id)
    )


@router.post(
    "/{customer_id}",
    summary="Write session keys (last writer wins per key; null deletes)",
    openapi_extra=needs(Scope.CARTS_WRITE),
)
async def write_session(
    customer_id: str, body: SessionWrite, request: Request, conn: Connection, context: Context
) -> SessionView:
    principal = principal_of(request)
    live = await identity.lock_customer(conn, principal.tenant_id, customer_id)
    # E-mail addresses and phone numbers are kept only as keyed hashes (docs/server.md).
    entries = hashed_contact_data(body.entries, context.secret)
    body = body.model_copy(update={"entries": entries})
    return await sessions.write(
        conn, principal.tenant_id, live, body, principal.channel.value, customer_id
    )
