"""Operational endpoints: liveness, readiness, metrics. They carry no tenant data."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse, Response

from omnisdk.core.problems import ProblemType
from server_stub.errors import Problem
from server_stub.runtime import runtime_of
from server_stub.storage.migrate import head_revision

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: the database answers and its schema is current")
async def readyz(request: Request) -> Response:
    runtime = runtime_of(request)
    try:
        await runtime.database.ping()
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    revision = request.app.state.schema_revision
    if revision != head_revision():
        return JSONResponse(
            {"status": "unavailable", "database": "schema not migrated"}, status_code=503
        )
    return JSONResponse({"status": "ok", "database": "ok", "schema": revision})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    runtime = runtime_of(request)
    token = runtime.settings.metrics_token
    if token is not None:
        presented = request.headers.get("authorization", "")
        expected = f"Bearer {token.get_secret_value()}"
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise Problem(
                ProblemType.AUTHENTICATION_REQUIRED,
                "send the metrics token as `Authorization: Bearer <OMNISDK_METRICS_TOKEN>`",
            )
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)
