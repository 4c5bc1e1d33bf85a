"""The single customer view: profile, timeline, annotations, merge history."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import StreamingResponse

from omnisdk.core.channels import Channel, Scope
from omnisdk.models import (
    Annotation,
    AnnotationIn,
    AnnotationList,
    MergeList,
    PreferredChannelIn,
    PreferredChannelView,
    Profile,
    TimelinePage,
)
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import changes, identity, notes, preferences, profile, staff
from server_stub.sse import resume_position, sse_stream

router = APIRouter(prefix="/v1/customers", tags=["customers"], route_class=ApiRoute)


@router.get(
    "/{customer_id}/profile",
    summary="The single customer view (any current or merged id)",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def get_profile(
    customer_id: str, request: Request, conn: Connection, context: Context
) -> Profile:
    principal = principal_of(request)
    # Department-only notes: an admin-channel key (staff, the shop's admin) reads as itself;
    # a shop backend's key sees the notes meant for all staff.
    reader = await notes.author_of(conn, principal) if principal.channel is Channel.ADMIN else None
    return await profile.get_profile(conn, context, customer_id, reader)


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
    principal = principal_of(request)
    author = await notes.author_of(conn, principal, body.author, body.department)
    return await notes.create(conn, principal.tenant_id, customer_id, body, author)


@router.get(
    "/{customer_id}/annotations",
    summary="The notes on the customer the caller may see (pinned first, then newest)",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def list_annotations(
    customer_id: str,
    request: Request,
    conn: Connection,
    department: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z][a-z0-9_-]{0,31}$",
            description="Ignored, kept for older clients: a staff key reads as her department, "
            "an admin key every note, a shop backend's key the notes for all staff",
        ),
    ] = None,
    include_deleted: bool = False,
) -> AnnotationList:
    principal = principal_of(request)
    live = await profile.require_customer(conn, principal.tenant_id, customer_id)
    reader = await notes.reader_of(conn, principal)
    items = await notes.listed(
        conn, principal.tenant_id, live, reader, include_deleted=include_deleted
    )
    return AnnotationList(items=items)


@router.get(
    "/{customer_id}/preferred-channel",
    summary="Her preferred channel: declared (wins) or observed from engagement",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def preferred_channel(
    customer_id: str, request: Request, conn: Connection
) -> PreferredChannelView:
    tenant_id = principal_of(request).tenant_id
    live = await profile.require_customer(conn, tenant_id, customer_id)
    channel, source = await preferences.preferred_channel(conn, tenant_id, [live])
    return PreferredChannelView.model_validate(
        {"customer_id": live, "channel": channel, "source": source}
    )


@router.put(
    "/{customer_id}/preferred-channel",
    summary="Record the channel she says she prefers (null withdraws it)",
    openapi_extra=needs(Scope.PROFILE_ANNOTATE),
)
async def declare_preferred_channel(
    customer_id: str, body: PreferredChannelIn, request: Request, conn: Connection
) -> PreferredChannelView:
    principal = principal_of(request)
    member = await staff.of_key(conn, principal.tenant_id, principal.key_id)
    live, _ = await preferences.declare(
        conn,
        principal.tenant_id,
        customer_id,
        body.channel,
        via="console" if member else principal.channel.value,
        actor=member.name if member else principal.key_id,
        actor_key_id=principal.key_id,
    )
    channel, source = await preferences.preferred_channel(conn, principal.tenant_id, [live])
    return PreferredChannelView.model_validate(
        {"customer_id": live, "channel": channel, "source": source}
    )


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
