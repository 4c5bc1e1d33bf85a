"""The single customer view: profile, timeline, annotations, merge history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import StreamingResponse

from omnisdk.core.channels import Scope
from omnisdk.models import Annotation, AnnotationIn, MergeList, Profile, TimelinePage
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import changes, identity, profile
from server_stub.sse import resume_position, sse_stream

router = APIRouter(prefix="/v1/customers", tags=["customers"], route_class=ApiRoute)


@router.get(
    "/{customer_id}/profile",
    summary="The single customer view (any current or merged id)",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def get_profile(customer_id: str, conn: Connection, context: Context) -> Profile:
    return await profile.get_profile(conn, context, customer_id)


@router.get(
    "/{customer_id}/timeline",
    summary="All the customer's events across channels, newest first",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def timeline(
    customer_id: str,
    request: Request,
    conn: Connection,
    limit: Annotated[int, Query(ge=1, le=profile.MAX_TIMELINE_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> TimelinePage:
    tenant_id = principal_of(request).tenant_id
    live = await profile.require_customer(conn, tenant_id, customer_id)
    return await profile.timeline(conn, tenant_id, live, limit, cursor)


@router.post(
    "/{customer_id}/annotations",
    status_code=201,
    summary="Leave a department's note on the customer",
    openapi_extra=needs(Scope.PROFILE_ANNOTATE),
)
async def annotate(
    customer_id: str, body: AnnotationIn, request: Request, conn: Connection
) -> Annotation:
    return await profile.annotate(conn, principal_of(request).tenant_id, customer_id, body)


@router.get(
    "/{customer_id}/merges",
    summary="The merges this customer took part in",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def merges(customer_id: str, request: Request, conn: Connection) -> MergeList:
    tenant_id = principal_of(request).tenant_id
    await profile.require_customer(conn, tenant_id, customer_id)
    return MergeList(items=await identity.merges_of(conn, tenant_id, customer_id))


@router.get(
    "/{customer_id}/changes",
    summary="Server-Sent Events: the customer's cart, session and consent changes, live",
    response_class=StreamingResponse,
    openapi_extra=needs(Scope.CARTS_READ),
)
async def watch_changes(
    customer_id: str,
    request: Request,
    conn: Connection,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    tenant_id = principal_of(request).tenant_id
    live = await profile.require_customer(conn, tenant_id, customer_id)
    after = await resume_position(conn, tenant_id, last_event_id)

    async def read(reader: AsyncConnection, position: int) -> changes.FeedPage:
        return await changes.read_page(reader, tenant_id, position, customer_id=live)

    return sse_stream(request, f"{tenant_id}:{live}", after, read)
