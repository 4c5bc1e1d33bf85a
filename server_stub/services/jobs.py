"""Jobs: a tenant's long-running work, run outside any request, with progress, a checkpoint to
resume from, and at most one unfinished job per tenant and kind.

A job kind is an async function registered under a name:

    @jobs.register("recommendations.rebuild", params=RebuildParams)
    async def rebuild(database, tenant_id, params, ctx) -> dict: ...

It opens its own short transactions on `database` (never one long one: a job may run for
minutes), reports `await ctx.progress(done, total)`, and saves where it is with
`await ctx.checkpoint(state, conn)`, in the same transaction as the work that state describes,
so that a resumed run (`ctx.resumed_state`) starts exactly after it.

Life of a job: `queued` (started, not yet picked up) → `running` → `done` or `failed`. The
runner holds a lease (its token in `runner`) and renews `heartbeat_at`; a job whose heartbeat
is older than the stale limit belongs to a runner that died (process killed, machine lost),
and the next start of that kind takes it over and calls the function again with its last
checkpoint. A runner that lost its lease stops. The database keeps one unfinished job per
tenant and kind (a unique partial index), so no kind ever runs twice at once for a tenant: a
second start with the same parameters joins the job that is already there, and one with other
parameters is a conflict (409) until that job has ended.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import Row, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.problems import ProblemType
from omnisdk.models import Job
from server_stub import tasks as background
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.storage.database import Database
from server_stub.storage.tables import jobs

log = logging.getLogger("omnisdk.server.jobs")

ACTIVE_STATES = ("queued", "running")
DEFAULT_STALE_SECONDS = 60.0
PROGRESS_WRITE_SECONDS = 0.5  # progress is stored at most this often (the callback sees all)
MAX_ERROR_LENGTH = 500

ProgressCallback = Callable[[int, int | None], None]
JobFunction = Callable[[Database, str, dict[str, Any], "JobContext"], Awaitable[dict[str, Any]]]


@dataclass(frozen=True)
class JobKind:
    name: str
    run: JobFunction
    params: type[BaseModel] | None


_KINDS: dict[str, JobKind] = {}
# The modules that register job kinds, imported when a kind is first looked up (a new kind of
# job: add its module here).
KIND_MODULES = ("server_stub.services.recommendations", "server_stub.services.analytics_jobs")


def register(
    kind: str, *, params: type[BaseModel] | None = None
) -> Callable[[JobFunction], JobFunction]:
    """Register `fn` as the job of this kind; `params` validates what a start passes."""

    def add(fn: JobFunction) -> JobFunction:
        _KINDS[kind] = JobKind(kind, fn, params)
        return fn

    return add


def _load_kinds() -> None:
    for module in KIND_MODULES:
        importlib.import_module(module)


def kinds() -> list[str]:
    _load_kinds()
    return sorted(_KINDS)


def _kind(kind: str) -> JobKind:
    _load_kinds()
    try:
        return _KINDS[kind]
    except KeyError:
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"there is no job kind {kind!r}; the kinds are: {', '.join(kinds()) or 'none'}",
        ) from None


def _validated(spec: JobKind, params: dict[str, Any]) -> dict[str, Any]:
    if spec.params is None:
        if params:
            raise Problem(ProblemType.VALIDATION_ERROR, f"job {spec.name} takes no parameters")
        return {}
    try:
        return spec.params.model_validate(params).model_dump(mode="json")
    except ValidationError as exc:
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"the parameters of job {spec.name} are not valid; see `errors`",
            errors=[
                {"loc": ["body", "params", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors()
            ],
        ) from None


class LeaseLost(Exception):
    """Another runner took the job over (this one was taken for dead): stop working on it."""


# --- reading -----------------------------------------------------------------------------------


def view(row: Row[Any]) -> Job:
    return Job(
        job_id=row.id,
        kind=row.kind,
        state=row.state,
        params=row.params,
        done=row.done,
        total=row.total,
        attempts=row.attempts,
        result=row.result,
        error=row.error,
        created_at=row.created_at,
        started_at=row.started_at,
        heartbeat_at=row.heartbeat_at,
        finished_at=row.finished_at,
    )


async def get(conn: AsyncConnection, tenant_id: str, job_id: str) -> Job | None:
    row = (
        await conn.execute(select(jobs).where(jobs.c.tenant_id == tenant_id, jobs.c.id == job_id))
    ).first()
    return view(row) if row else None


async def list_for_tenant(
    conn: AsyncConnection, tenant_id: str, kind: str | None = None, limit: int = 50
) -> list[Job]:
    query = select(jobs).where(jobs.c.tenant_id == tenant_id)
    if kind is not None:
        query = query.where(jobs.c.kind == kind)
    rows = await conn.execute(query.order_by(jobs.c.created_at.desc(), jobs.c.id).limit(limit))
    return [view(row) for row in rows]


def is_stale(job: Job, now: datetime, stale_seconds: float) -> bool:
    """An unfinished job whose runner has not been heard of for too long: it died."""
    beat = job.heartbeat_at or job.created_at
    return job.state in ACTIVE_STATES and now - beat > timedelta(seconds=stale_seconds)


# --- starting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    """A start's outcome: the job, and whether the caller runs it (`runner` is its lease)."""

    job: Job
    tenant_id: str
    runner: str | None = None
    resumed_state: dict[str, Any] | None = None


async def start(
    database: Database,
    tenant_id: str,
    kind: str,
    params: dict[str, Any] | None = None,
    *,
    stale_seconds: float = DEFAULT_STALE_SECONDS,
) -> Claim:
    """Start a job of `kind`, or join the tenant's unfinished one (taking it over if its
    runner died) when it was started with the same `params`: one started with others is a
    conflict, as its result would not answer this start. `params` None joins (or resumes)
    whatever job of the kind is unfinished, or starts one with the kind's defaults. The
    caller must `execute` the claim when it holds the lease."""
    spec = _kind(kind)
    checked = None if params is None else _validated(spec, params)
    for _ in range(5):
        try:
            async with database.transaction(write=True) as conn:
                claim = await _claim(conn, tenant_id, spec, checked, stale_seconds)
            if claim is not None:
                return claim
        except IntegrityError:
            pass  # another process inserted the kind's job first: join it on the next turn
    raise Problem(ProblemType.CONFLICT, f"could not start job {kind}: try again")


async def _claim(
    conn: AsyncConnection,
    tenant_id: str,
    spec: JobKind,
    params: dict[str, Any] | None,
    stale_seconds: float,
) -> Claim | None:
    now = utcnow()
    active = (
        await conn.execute(
            select(jobs).where(
                jobs.c.tenant_id == tenant_id,
                jobs.c.kind == spec.name,
                jobs.c.state.in_(ACTIVE_STATES),
            )
        )
    ).first()
    runner = new_id("run", 8)
    if active is not None:
        job = view(active)
        stale = is_stale(job, now, stale_seconds)
        if params is not None and job.params != params:
            if not stale:
                raise _busy(job)
            # Its runner died and this start asks for other work: the dead job is given up
            # (failed, saying why), else it stood in the way of every start of its kind.
            abandoned = await conn.execute(
                update(jobs)
                .where(*_as_judged(tenant_id, active))
                .values(
                    state="failed",
                    error="abandoned: its runner stopped, and a start with other parameters "
                    "replaced it",
                    runner=None,
                    finished_at=now,
                )
            )
            if abandoned.rowcount != 1:
                return None  # it lives after all, or another start got there: next turn
            log.info("gave up a job whose runner died", extra={"job_id": active.id})
            active = None
        elif not stale:
            return Claim(job, tenant_id)
    if active is not None:
        # Take the dead runner's lease, unless another process took it meanwhile or it was
        # only slow: a beat or checkpoint it committed while this waited for the row means it
        # lives (and may be publishing its result), so this joins it on the next turn.
        taken = await conn.execute(
            update(jobs)
            .where(*_as_judged(tenant_id, active))
            .values(runner=runner, heartbeat_at=now, attempts=active.attempts + 1)
        )
        if taken.rowcount != 1:
            return None
        log.info("resuming a job whose runner died", extra={"job_id": active.id})
        resumed = job.model_copy(update={"heartbeat_at": now, "attempts": active.attempts + 1})
        return Claim(resumed, tenant_id, runner, active.checkpoint)
    job_id = new_id("job", 10)
    if params is None:
        params = _validated(spec, {})
    values: dict[str, Any] = {
        "tenant_id": tenant_id,
        "id": job_id,
        "kind": spec.name,
        "state": "queued",
        "params": params,
        "done": 0,
        "total": None,
        "attempts": 1,
        "runner": runner,
        "created_at": now,
        "heartbeat_at": now,
    }
    await conn.execute(insert(jobs).values(**values))
    row = (
        await conn.execute(select(jobs).where(jobs.c.tenant_id == tenant_id, jobs.c.id == job_id))
    ).one()
    return Claim(view(row), tenant_id, runner)


def _as_judged(tenant_id: str, active: Row[Any]) -> tuple[Any, ...]:
    """The job's row only as it was when judged dead: same runner, same last beat, unfinished
    (a beat committed meanwhile means its runner lives)."""
    return (
        jobs.c.tenant_id == tenant_id,
        jobs.c.id == active.id,
        jobs.c.runner == active.runner,
        jobs.c.heartbeat_at == active.heartbeat_at,
        jobs.c.state.in_(ACTIVE_STATES),
    )


def _busy(job: Job) -> Problem:
    # Joining answers with the running job's result, which would silently stand in for work
    # with other parameters (a full recompute answered by a two-day refresh).
    return Problem(
        ProblemType.CONFLICT,
        f"job {job.job_id} of kind {job.kind} is running with other parameters "
        f"({json.dumps(job.params, sort_keys=True)}); retry when it has ended "
        f"(follow it at /v1/jobs/{job.job_id})",
        job_id=job.job_id,
        kind=job.kind,
        params=job.params,
    )


# --- running -----------------------------------------------------------------------------------


@dataclass
class JobContext:
    """What a job function gets to report progress and save its place."""

    database: Database
    tenant_id: str
    job_id: str
    runner: str
    resumed_state: dict[str, Any] | None = None
    on_progress: ProgressCallback | None = None
    done: int = 0
    total: int | None = None
    _stored_at: float = field(default=0.0, repr=False)

    async def progress(self, done: int, total: int | None = None) -> None:
        """Report `done` of `total` units (stored at most every PROGRESS_WRITE_SECONDS)."""
        self.done, self.total = done, total if total is not None else self.total
        if self.on_progress is not None:
            self.on_progress(self.done, self.total)
        if time.monotonic() - self._stored_at < PROGRESS_WRITE_SECONDS:
            return
        async with self.database.transaction(write=True) as conn:
            await self._store(conn, {})

    async def checkpoint(self, state: dict[str, Any], conn: AsyncConnection | None = None) -> None:
        """Save where the job is. Pass the transaction that did the work the state describes:
        both then commit together, and a resumed run starts exactly after it."""
        if conn is not None:
            await self._store(conn, {"checkpoint": state})
            return
        async with self.database.transaction(write=True) as own:
            await self._store(own, {"checkpoint": state})

    async def heartbeat(self) -> None:
        async with self.database.transaction(write=True) as conn:
            await self._store(conn, {})

    async def _store(self, conn: AsyncConnection, values: dict[str, Any]) -> None:
        result = await conn.execute(
            update(jobs)
            .where(
                jobs.c.tenant_id == self.tenant_id,
                jobs.c.id == self.job_id,
                jobs.c.runner == self.runner,
                jobs.c.state == "running",
            )
            .values(done=self.done, total=self.total, heartbeat_at=utcnow(), **values)
        )
        if result.rowcount != 1:
            raise LeaseLost(self.job_id)
        self._stored_at = time.monotonic()


async def execute(
    database: Database,
    claim: Claim,
    *,
    stale_seconds: float = DEFAULT_STALE_SECONDS,
    on_progress: ProgressCallback | None = None,
) -> Job:
    """Run a claimed job to its end here, renewing its heartbeat; return how it ended."""
    if claim.runner is None:
        raise ValueError("this claim joined a job another runner holds; it cannot execute it")
    job = claim.job
    spec = _kind(job.kind)
    ctx = JobContext(
        database,
        claim.tenant_id,
        job.job_id,
        claim.runner,
        claim.resumed_state,
        on_progress,
        done=job.done,
        total=job.total,
    )
    now = utcnow()
    async with database.transaction(write=True) as conn:
        begun = await conn.execute(
            update(jobs)
            .where(
                jobs.c.tenant_id == ctx.tenant_id,
                jobs.c.id == job.job_id,
                jobs.c.runner == ctx.runner,
            )
            .values(state="running", started_at=job.started_at or now, heartbeat_at=now)
        )
    if begun.rowcount == 1:
        heart = asyncio.create_task(_beat(ctx, stale_seconds / 4))
        try:
            result = await spec.run(database, ctx.tenant_id, dict(job.params), ctx)
        except LeaseLost:
            pass  # taken for dead and taken over: the new runner reports the outcome
        except Exception as exc:
            await _finish(ctx, state="failed", error=_error_text(exc))
            log.warning(
                "job failed",
                extra={"job_id": job.job_id, "kind": job.kind, "error_type": type(exc).__name__},
            )
        else:
            await _finish(ctx, state="done", result=result)
        finally:
            stopped = await background.stop(heart)
            if stopped is not None and not isinstance(stopped, LeaseLost):
                raise stopped
    async with database.transaction(write=False) as conn:
        ended = await get(conn, ctx.tenant_id, job.job_id)
    assert ended is not None
    return ended


async def _beat(ctx: JobContext, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await ctx.heartbeat()
        except LeaseLost:
            return
        except Exception as exc:
            # A lost connection: the next beat tries again; the lease lasts the stale limit.
            log.warning("job heartbeat failed", extra={"error_type": type(exc).__name__})


async def _finish(
    ctx: JobContext,
    *,
    state: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    done = ctx.total if state == "done" and ctx.total is not None else ctx.done
    async with ctx.database.transaction(write=True) as conn:
        await conn.execute(
            update(jobs)
            .where(
                jobs.c.tenant_id == ctx.tenant_id,
                jobs.c.id == ctx.job_id,
                jobs.c.runner == ctx.runner,
            )
            .values(
                state=state,
                result=result,
                error=error,
                done=done,
                total=ctx.total,
                finished_at=utcnow(),
                heartbeat_at=utcnow(),
            )
        )


def _error_text(exc: Exception) -> str:
    """What a failed job shows: a Problem's detail is written for the caller; anything else
    may hold stored values (a driver error quotes parameters), so only its type is kept."""
    if isinstance(exc, Problem):
        return exc.detail[:MAX_ERROR_LENGTH]
    return f"internal error ({type(exc).__name__}); see the server log"


# --- one process's runner ------------------------------------------------------------------------


class JobRunner:
    """The server process's jobs: started by requests, run as tasks of this process."""

    def __init__(self, database: Database, stale_seconds: float = DEFAULT_STALE_SECONDS) -> None:
        self.database = database
        self.stale_seconds = stale_seconds
        self._tasks: dict[str, asyncio.Task[Job]] = {}

    async def submit(self, tenant_id: str, kind: str, params: dict[str, Any] | None = None) -> Job:
        """Start (or join) the tenant's job of `kind`; if this process holds it, run it here."""
        claim = await start(
            self.database, tenant_id, kind, params, stale_seconds=self.stale_seconds
        )
        if claim.runner is not None:
            task = asyncio.create_task(
                execute(self.database, claim, stale_seconds=self.stale_seconds)
            )
            job_id = claim.job.job_id
            self._tasks[job_id] = task
            task.add_done_callback(lambda _: self._tasks.pop(job_id, None))
        return claim.job

    async def wait(self, tenant_id: str, job_id: str, timeout: float) -> Job | None:
        """The job once finished, or as it stands after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait({task}, timeout=timeout)
        pause = 0.05
        while True:
            async with self.database.transaction(write=False) as conn:
                job = await get(conn, tenant_id, job_id)
            left = deadline - time.monotonic()
            if job is None or job.state not in ACTIVE_STATES or left <= 0:
                return job
            # Run by another process: look again, less and less often.
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)

    async def close(self) -> None:
        """Stop this process's jobs (shutting down): each keeps its checkpoint and is taken
        over by the next start once its heartbeat is stale."""
        for task in list(self._tasks.values()):
            await background.stop(task)
