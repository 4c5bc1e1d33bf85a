"""The tenant's change feed: what SDK caches follow to stay true (consent, content, carts)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import StreamingResponse

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.services import changes
from server_stub.sse import resume_position, sse_stream

router = APIRouter(prefix="/v1/changes", tags=["changes"], route_class=ApiRoute)

KINDS = ("consent", "content", "cart", "session")


@router.get(
    "",
    summary="Server-Sent Events: every customer's changes of the given kinds, live",
    response_class=StreamingResponse,
    openapi_extra=needs(Scope.CONSENT_READ),
)
async def watch(
    request: Request,
    conn: Connection,
    kinds: Annotated[str, Query(max_length=100)] = "consent,content",
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    wanted = [kind.strip() for kind in kinds.split(",") if kind.strip()]
    unknown = sorted(set(wanted) - set(KINDS))
    if unknown or not wanted:
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"kinds is a comma-separated list of {', '.join(KINDS)}; unknown: {unknown}",
        )
    tenant_id = principal_of(request).tenant_id
    after = await resume_position(conn, tenant_id, last_event_id)

    async def read(reader: AsyncConnection, position: int) -> changes.FeedPage:
        return await changes.read_page(reader, tenant_id, position, kinds=wanted)

    return sse_stream(request, changes.tenant_topic(tenant_id), after, read)
