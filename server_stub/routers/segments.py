"""Named segments: define, edit, delete, count, list members, explain (issue 19).

Defining and editing are the shop's administration (`content:write`, as content rules are);
reading them is `profile:read`. A new or changed condition is backfilled in the background
by the server (services/segments.py); `backfilled_version` says when it is complete.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request

from omnisdk.core.channels import Scope
from omnisdk.models import (
    SegmentClause,
    SegmentEdit,
    SegmentExplanation,
    SegmentIn,
    SegmentList,
    SegmentMember,
    SegmentMemberPage,
    SegmentView,
)
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.services import profile, segments

router = APIRouter(prefix="/v1/segments", tags=["segments"], route_class=ApiRoute)
MAX_PAGE = 1_000


def _view(record: segments.SegmentRecord) -> SegmentView:
    return SegmentView(
        segment_id=record.id,
        name=record.name,
        description=record.description,
        condition=record.condition,
        version=record.version,
        created_at=record.created_at,
        updated_at=record.updated_at,
        backfilled_version=record.backfilled_version,
        backfill_done=record.backfill_done,
        backfill_total=record.backfill_total,
        members=record.members,
    )


@router.post(
    "",
    status_code=201,
    summary="Define a segment (backfilled in the background)",
    openapi_extra=needs(Scope.CONTENT_WRITE),
)
async def create(body: SegmentIn, request: Request, conn: Connection) -> SegmentView:
    principal = principal_of(request)
    record = await segments.create(
        conn, principal.tenant_id, body.name, body.condition, body.description, principal.key_id
    )
    return _view(record)


@router.get(
    "", summary="The shop's segments with their counts", openapi_extra=needs(Scope.PROFILE_READ)
)
async def listed(request: Request, conn: Connection) -> SegmentList:
    items = await segments.listed(conn, principal_of(request).tenant_id)
    return SegmentList(items=[_view(record) for record in items])


@router.get(
    "/{segment}", summary="A segment, by id or name", openapi_extra=needs(Scope.PROFILE_READ)
)
async def get(segment: str, request: Request, conn: Connection) -> SegmentView:
    return _view(await segments.get(conn, principal_of(request).tenant_id, segment))


@router.patch(
    "/{segment}",
    summary="Change a segment's condition (a new version, backfilled) or description",
    openapi_extra=needs(Scope.CONTENT_WRITE),
)
async def edit(segment: str, body: SegmentEdit, request: Request, conn: Connection) -> SegmentView:
    principal = principal_of(request)
    record, _ = await segments.edit(
        conn, principal.tenant_id, segment, body.condition, body.description, principal.key_id
    )
    return _view(record)


@router.delete(
    "/{segment}",
    summary="Delete a segment: its members exit",
    openapi_extra=needs(Scope.CONTENT_WRITE),
)
async def remove(segment: str, request: Request, conn: Connection) -> SegmentView:
    principal = principal_of(request)
    return _view(await segments.remove(conn, principal.tenant_id, segment, principal.key_id))


@router.get(
    "/{segment}/members",
    summary="Her current members, in pages (export)",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def members(
    segment: str,
    request: Request,
    conn: Connection,
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 500,
) -> SegmentMemberPage:
    tenant_id = principal_of(request).tenant_id
    record = await segments.get(conn, tenant_id, segment)
    page = await segments.members_page(conn, tenant_id, record.id, after, limit)
    return SegmentMemberPage(
        items=[SegmentMember(customer_id=m.customer_id, entered_at=m.entered_at) for m in page],
        next_after=page[-1].customer_id if len(page) == limit else None,
    )


@router.get(
    "/{segment}/explain/{customer_id}",
    summary="Why she is (or is not) in the segment",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def explain(
    segment: str, customer_id: str, request: Request, conn: Connection
) -> SegmentExplanation:
    tenant_id = principal_of(request).tenant_id
    live = await profile.require_customer(conn, tenant_id, customer_id)
    found = await segments.explain(conn, tenant_id, segment, live)
    return SegmentExplanation(
        customer_id=found.customer_id,
        segment=found.segment,
        member=found.member,
        holds=found.holds,
        entered_at=found.entered_at,
        clauses=[
            SegmentClause(clause=c.clause, holds=c.holds, values=c.values) for c in found.clauses
        ],
    )
