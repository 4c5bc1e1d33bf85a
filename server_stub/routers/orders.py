"""Orders on every channel, refunds, and the customer codes that link a store sale."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from omnisdk.core import customer_codes as codes
from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    CustomerCodeIssued,
    OrderList,
    OrderReference,
    OrderView,
    RecordedOrder,
    RecordOrderRequest,
    RefundRequest,
)
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import customer_codes, orders, profile

router = APIRouter(tags=["orders"], route_class=ApiRoute)
MAX_LISTED = 200


@router.post(
    "/v1/orders",
    status_code=201,
    summary="Record an order on any channel (online, or a sale at a till); once per reference",
    responses={200: {"model": RecordedOrder, "description": "Recorded before: sent again."}},
    openapi_extra=needs(Scope.ORDERS_WRITE),
)
async def record(
    body: RecordOrderRequest,
    request: Request,
    response: Response,
    conn: Connection,
    context: Context,
) -> RecordedOrder:
    recorded = await orders.record(conn, context, body, principal_of(request).channel)
    if not recorded.created:
        response.status_code = 200
    return recorded


@router.get(
    "/v1/orders/{reference}",
    summary="An order by the shop's reference, net of what was returned or refunded",
    openapi_extra=needs(Scope.ORDERS_READ),
)
async def get(reference: OrderReference, request: Request, conn: Connection) -> OrderView:
    found = await orders.by_reference(conn, principal_of(request).tenant_id, reference)
    if found is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no order {reference!r}")
    return found


@router.post(
    "/v1/orders/{reference}/refunds",
    summary="Give back money on an order (lines taken back and/or an amount); once per refund_id",
    openapi_extra=needs(Scope.ORDERS_WRITE),
)
async def refund(
    reference: OrderReference, body: RefundRequest, request: Request, conn: Connection
) -> OrderView:
    return await orders.refund(conn, principal_of(request).tenant_id, reference, body)


@router.get(
    "/v1/customers/{customer_id}/orders",
    summary="A customer's orders on every channel, newest first (store sales included)",
    openapi_extra=needs(Scope.ORDERS_READ),
)
async def of_customer(
    customer_id: str,
    request: Request,
    conn: Connection,
    limit: Annotated[int, Query(ge=1, le=MAX_LISTED)] = 50,
) -> OrderList:
    tenant_id = principal_of(request).tenant_id
    live = await profile.require_customer(conn, tenant_id, customer_id)
    return OrderList(items=await orders.orders_of(conn, tenant_id, [live], limit))


@router.post(
    "/v1/customers/{customer_id}/customer-code",
    status_code=201,
    summary="A signed, short-lived customer code for her app to show at a till (no personal data)",
    openapi_extra=needs(Scope.CUSTOMER_CODES_ISSUE),
)
async def customer_code(
    customer_id: str,
    request: Request,
    conn: Connection,
    lifetime_seconds: Annotated[
        int, Query(ge=30, le=int(codes.MAX_LIFETIME.total_seconds()))
    ] = int(codes.DEFAULT_LIFETIME.total_seconds()),
) -> CustomerCodeIssued:
    return await customer_codes.issue(
        conn,
        principal_of(request).tenant_id,
        runtime_of(request).signing_keys,
        customer_id,
        timedelta(seconds=lifetime_seconds),
    )
