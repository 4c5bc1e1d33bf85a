"""Content: the ruleset SDKs decide with (ETag-cached), its versions, recommendation models."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Header, Request, Response

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import Job, RecommendationModel, RulesetHistory, RulesetIn, RulesetVersion
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection
from server_stub.routers.jobs import run_and_wait
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import content, recommendations

router = APIRouter(prefix="/v1/content", tags=["content"], route_class=ApiRoute)

IfNoneMatch = Annotated[str | None, Header()]


Cached = TypeVar("Cached", RulesetVersion, RecommendationModel)


def _cached(body: Cached, response: Response, if_none_match: str | None) -> Cached | Response:
    """`body` with its ETag, or 304 Not Modified when the caller already holds that ETag."""
    if if_none_match is not None and body.etag in [t.strip() for t in if_none_match.split(",")]:
        return Response(status_code=304, headers={"ETag": body.etag})
    response.headers["ETag"] = body.etag
    return body


@router.get(
    "/ruleset",
    summary="The current content ruleset (send If-None-Match with its ETag to re-check cheaply)",
    openapi_extra=needs(Scope.CONTENT_READ),
    response_model=RulesetVersion,
    responses={304: {"description": "Not modified: the ETag you sent is current"}},
)
async def get_ruleset(
    request: Request, response: Response, conn: Connection, if_none_match: IfNoneMatch = None
) -> RulesetVersion | Response:
    ruleset = await content.current(conn, principal_of(request).tenant_id)
    if ruleset is None:
        raise Problem(ProblemType.NOT_FOUND, "no content ruleset has been published yet")
    return _cached(ruleset, response, if_none_match)


@router.put(
    "/ruleset",
    summary="Publish a new version of the ruleset (validated; If-Match guards concurrent edits)",
    openapi_extra=needs(Scope.CONTENT_WRITE),
)
async def put_ruleset(
    body: RulesetIn,
    request: Request,
    response: Response,
    conn: Connection,
    if_match: Annotated[str | None, Header()] = None,
) -> RulesetVersion:
    principal = principal_of(request)
    published = await content.publish(conn, principal.tenant_id, body, principal.key_id, if_match)
    response.headers["ETag"] = published.etag
    return published


@router.get(
    "/ruleset/versions",
    summary="Every published version: who published it, when, and why",
    openapi_extra=needs(Scope.CONTENT_WRITE),
)
async def versions(request: Request, conn: Connection) -> RulesetHistory:
    return await content.history(conn, principal_of(request).tenant_id)


@router.get(
    "/recommendations",
    summary="The co-occurrence model the SDK recommends from (ETag-cached)",
    openapi_extra=needs(Scope.CONTENT_READ),
    response_model=RecommendationModel,
    responses={304: {"description": "Not modified"}},
)
async def get_recommendations(
    request: Request, response: Response, conn: Connection, if_none_match: IfNoneMatch = None
) -> RecommendationModel | Response:
    model = await content.recommendation_model(conn, principal_of(request).tenant_id)
    return _cached(model, response, if_none_match)


@router.post(
    "/recommendations/rebuild",
    summary="Recompute the recommendation model (a job): the model once built, or 202 and the "
    "job to follow if it takes longer than the server waits",
    # The job counts only events new since the last build; starting it again joins the job
    # already running, so a retry needs no stored answer (and the request must hold no
    # transaction: the job's own would wait for it on SQLite).
    openapi_extra=needs(Scope.CONTENT_WRITE, own_idempotency=True),
    response_model=RecommendationModel,
    responses={202: {"model": Job, "description": "Still running: follow the job"}},
)
async def rebuild(request: Request) -> RecommendationModel | Response:
    ended = await run_and_wait(request, recommendations.KIND, "the rebuild")
    if isinstance(ended, Response):
        return ended
    async with runtime_of(request).database.transaction(write=False) as conn:
        return await content.recommendation_model(conn, principal_of(request).tenant_id)
