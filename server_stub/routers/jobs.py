"""Jobs: start a tenant's long-running task (a rebuild, a backfill), follow its progress."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import Job, JobIn, JobList
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import jobs

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=ApiRoute)


@router.post(
    "",
    summary="Start a job (or join the tenant's unfinished one of that kind); answered at once",
    status_code=202,
    # Starting twice joins the job already there: a retry needs no stored answer (and the
    # request must hold no transaction, which the job's own would wait for on SQLite).
    openapi_extra=needs(Scope.JOBS_RUN, own_idempotency=True),
)
async def start(body: JobIn, request: Request, response: Response) -> Job:
    tenant_id = principal_of(request).tenant_id
    job = await runtime_of(request).jobs.submit(tenant_id, body.kind, body.params)
    response.headers["Location"] = f"/v1/jobs/{job.job_id}"
    return job


async def run_and_wait(
    request: Request, kind: str, what: str, params: dict[str, Any] | None = None
) -> Job | Response:
    """Start (or join) the tenant's job of `kind` and wait up to the server's job_wait_seconds:
    the finished job, or a 202 answer with the job to follow (Location /v1/jobs/{id}). A
    failed job is a conflict naming `what` failed."""
    runtime = runtime_of(request)
    tenant_id = principal_of(request).tenant_id
    job = await runtime.jobs.submit(tenant_id, kind, params)
    ended = await runtime.jobs.wait(tenant_id, job.job_id, runtime.settings.job_wait_seconds)
    if ended is not None and ended.state == "failed":
        raise Problem(ProblemType.CONFLICT, f"{what} failed: {ended.error}", job_id=job.job_id)
    if ended is None or ended.state != "done":
        return Response(
            (ended or job).model_dump_json(),
            status_code=202,
            media_type="application/json",
            headers={"Location": f"/v1/jobs/{job.job_id}"},
        )
    return ended


@router.get("", summary="The tenant's jobs, newest first", openapi_extra=needs(Scope.JOBS_RUN))
async def list_jobs(
    request: Request,
    conn: Connection,
    kind: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> JobList:
    tenant_id = principal_of(request).tenant_id
    return JobList(items=await jobs.list_for_tenant(conn, tenant_id, kind, limit))


@router.get("/{job_id}", summary="One job: state and progress", openapi_extra=needs(Scope.JOBS_RUN))
async def get_job(job_id: str, request: Request, conn: Connection) -> Job:
    job = await jobs.get(conn, principal_of(request).tenant_id, job_id)
    if job is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no job {job_id!r}")
    return job
