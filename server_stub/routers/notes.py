"""Annotations by id: edit, delete (soft, with a reason), revisions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from omnisdk.core.channels import Scope
from omnisdk.models import (
    Annotation,
    AnnotationDeletion,
    AnnotationEdit,
    AnnotationRevisionList,
    GiftCorrection,
    GiftLabelView,
)
from server_stub.auth import needs, principal_of
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.services import gifts, notes

router = APIRouter(prefix="/v1/annotations", tags=["customers"], route_class=ApiRoute)


@router.patch(
    "/{annotation_id}",
    summary="Edit a note (its author within the edit window, a lead of its department, an admin)",
    openapi_extra=needs(Scope.PROFILE_ANNOTATE),
)
async def edit(
    annotation_id: str, body: AnnotationEdit, request: Request, conn: Connection
) -> Annotation:
    principal = principal_of(request)
    actor = await notes.author_of(conn, principal, body.author, body.department)
    return await notes.edit(conn, principal.tenant_id, annotation_id, body, actor)


@router.post(
    "/{annotation_id}/delete",
    summary="Delete a note, softly and with a reason (the same people as edit)",
    openapi_extra=needs(Scope.PROFILE_ANNOTATE),
)
async def delete(
    annotation_id: str, body: AnnotationDeletion, request: Request, conn: Connection
) -> Annotation:
    principal = principal_of(request)
    actor = await notes.author_of(conn, principal, body.author, body.department)
    return await notes.delete(conn, principal.tenant_id, annotation_id, body, actor)


@router.get(
    "/{annotation_id}/revisions",
    summary="Every state the note had, the first included",
    openapi_extra=needs(Scope.PROFILE_READ),
)
async def revisions(
    annotation_id: str,
    request: Request,
    conn: Connection,
    department: Annotated[
        str | None, Query(description="Ignored, kept for older clients (see the list of notes)")
    ] = None,
) -> AnnotationRevisionList:
    principal = principal_of(request)
    reader = await notes.reader_of(conn, principal)
    items = await notes.revisions(conn, principal.tenant_id, annotation_id, reader)
    return AnnotationRevisionList(items=items)


gift_router = APIRouter(prefix="/v1/orders", tags=["orders"], route_class=ApiRoute)


@gift_router.put(
    "/{reference}/lines/{line_no}/gift",
    summary="Correct a line's gift-or-self label (staff, or the customer through the shop)",
    openapi_extra=needs(Scope.PROFILE_ANNOTATE),
)
async def correct_gift(
    reference: Annotated[str, Path(max_length=64)],
    line_no: Annotated[int, Path(ge=1, le=100_000)],
    body: GiftCorrection,
    request: Request,
    conn: Connection,
) -> GiftLabelView:
    principal = principal_of(request)
    await gifts.correct(
        conn,
        principal.tenant_id,
        reference,
        line_no,
        body.gift,
        by=body.by,
        actor_key_id=principal.key_id,
    )
    return GiftLabelView(reference=reference, line_no=line_no, gift=body.gift, gift_confidence=1.0)
