"""Identity: link identifiers to customers, resolve them, mark shared devices, split merges."""

from __future__ import annotations

from fastapi import APIRouter, Request

from omnisdk.core.channels import Scope
from omnisdk.core.identifiers import InvalidIdentifier
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    IdentifyRequest,
    IdentifyResult,
    Merge,
    Resolution,
    ResolveRequest,
    SharedIdentifierRequest,
)
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import identity

router = APIRouter(prefix="/v1/identity", tags=["identity"], route_class=ApiRoute)
merges_router = APIRouter(prefix="/v1/merges", tags=["identity"], route_class=ApiRoute)


@router.post(
    "/identify",
    summary="Link identifiers to one customer, merging customers that share them",
    openapi_extra=needs(Scope.IDENTITY_WRITE),
)
async def identify(
    body: IdentifyRequest, request: Request, conn: Connection, context: Context
) -> IdentifyResult:
    return await identity.identify(conn, context, body, principal_of(request).channel)


@router.post(
    "/resolve",
    summary="The customer an identifier belongs to (POST: identifiers stay out of URLs)",
    openapi_extra=needs(Scope.PROFILE_READ, read_only=True),
)
async def resolve(body: ResolveRequest, conn: Connection, context: Context) -> Resolution:
    try:
        key = context.key(body.type, body.value)
    except InvalidIdentifier as error:
        raise identity.invalid_identifier(error) from error
    customer_id = await identity.resolve(conn, context, key)
    if customer_id is None:
        raise Problem(ProblemType.NOT_FOUND, f"no customer has this {body.type.value} identifier")
    return Resolution(customer_id=customer_id)


@router.post(
    "/shared",
    summary="Mark an identifier shared (a till, a family tablet): it never links or merges",
    openapi_extra=needs(Scope.IDENTITY_ADMIN),
)
async def mark_shared(
    body: SharedIdentifierRequest, conn: Connection, context: Context
) -> SharedIdentifierRequest:
    try:
        key = context.key(body.type, body.value)
    except InvalidIdentifier as error:
        raise identity.invalid_identifier(error) from error
    await identity.mark_shared(conn, context, key, body.shared)
    return SharedIdentifierRequest(
        type=body.type, value=key.masked().split(":", 1)[1], shared=body.shared
    )


@merges_router.post(
    "/{merge_id}/split",
    summary="Undo a merge: both customers back as they were",
    openapi_extra=needs(Scope.IDENTITY_ADMIN),
)
async def split(merge_id: str, conn: Connection, context: Context) -> Merge:
    return await identity.split(conn, context, merge_id)
