"""The customer's shared cart: read it, apply operations, turn it into an order."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from omnisdk.core.channels import Scope
from omnisdk.models import CartOps, CartView, MarkOrdered
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.services import carts, identity
from server_stub.services.profile import require_customer

router = APIRouter(prefix="/v1/carts", tags=["carts"], route_class=ApiRoute)


def _answer(cart: CartView) -> Response:
    # Serialised by pydantic straight to JSON bytes, not to a dict that is then encoded again.
    body = cart.__pydantic_serializer__.to_json(cart)
    return Response(body, media_type="application/json", headers={"ETag": f'"{cart.version}"'})


@router.get(
    "/{customer_id}",
    summary="The customer's active cart (any current or merged id), with its version as ETag",
    response_model=CartView,
    openapi_extra=needs(Scope.CARTS_READ),
)
async def get_cart(customer_id: str, request: Request, conn: Connection) -> Response:
    tenant_id = principal_of(request).tenant_id
    live = await require_customer(conn, tenant_id, customer_id)
    return _answer(await carts.read(conn, tenant_id, live))


@router.post(
    "/{customer_id}/ops",
    summary="Apply cart operations (all or none; each operation id at most once)",
    response_model=CartView,
    openapi_extra=needs(Scope.CARTS_WRITE, own_idempotency=True),
)
async def apply_ops(
    customer_id: str, body: CartOps, request: Request, conn: Connection
) -> Response:
    tenant_id = principal_of(request).tenant_id
    live = await identity.lock_customer(conn, tenant_id, customer_id)
    return _answer(await carts.apply_ops(conn, tenant_id, live, body.ops, customer_id))


@router.post(
    "/{customer_id}/mark-ordered",
    summary="Turn the cart into an order if it is the version the customer saw (If-Match)",
    response_model=CartView,
    openapi_extra=needs(Scope.CARTS_WRITE),
)
async def mark_ordered(
    customer_id: str,
    body: MarkOrdered,
    request: Request,
    conn: Connection,
    if_match: Annotated[str | None, Header()] = None,
) -> Response:
    principal = principal_of(request)
    tenant_id = principal.tenant_id
    live = await identity.lock_customer(conn, tenant_id, customer_id)
    ordered = await carts.mark_ordered(
        conn, tenant_id, live, if_match, body.order_ref, principal.channel
    )
    return _answer(ordered)
