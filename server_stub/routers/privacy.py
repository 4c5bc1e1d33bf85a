"""The customer's rights: export everything held, erase it everywhere (admin keys only)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omnisdk.core.channels import Scope
from omnisdk.models import CustomerExport, ErasureReceipt
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.services import audit, privacy
from server_stub.services.profile import require_customer

router = APIRouter(prefix="/v1/privacy", tags=["privacy"], route_class=ApiRoute)


@router.post(
    "/{customer_id}/export",
    summary="Everything held about the customer, across every linked identifier, as JSON",
    # Not stored under its Idempotency-Key: a copy of the export must not linger there.
    openapi_extra=needs(Scope.PRIVACY_EXPORT, own_idempotency=True),
)
async def export(customer_id: str, request: Request, conn: Connection) -> CustomerExport:
    principal = principal_of(request)
    live = await require_customer(conn, principal.tenant_id, customer_id)
    result = await privacy.export(conn, principal.tenant_id, live)
    await audit.record(conn, principal.tenant_id, principal.key_id, "privacy.export", live)
    return result


@router.post(
    "/{customer_id}/erase",
    summary="Erase the customer everywhere, keeping only anonymised legal records",
    openapi_extra=needs(Scope.PRIVACY_ERASE),
)
async def erase(customer_id: str, request: Request, conn: Connection) -> ErasureReceipt:
    principal = principal_of(request)
    live = await require_customer(conn, principal.tenant_id, customer_id)
    receipt = await privacy.erase(conn, principal.tenant_id, live)
    await audit.record(
        conn,
        principal.tenant_id,
        principal.key_id,
        "privacy.erase",
        receipt.erasure_id,
        f"{receipt.customers} customer records",
    )
    return receipt
