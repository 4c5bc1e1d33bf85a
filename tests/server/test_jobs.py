"""Jobs (services/jobs.py): one unfinished job per tenant and kind, progress, resuming a job
whose runner died from its checkpoint, failures, and the /v1/jobs API."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import jobs
from server_stub.storage.database import Database
from server_stub.storage.tables import jobs as jobs_table
from tests.server.conftest import Harness, ShopForTest
from tests.server.interleave import interleaved

# Test kinds: counting to `to` in steps, checkpointing each step with the progress made.
STOPS: dict[str, asyncio.Event] = {}
REACHED: dict[str, asyncio.Event] = {}


class CountParams(BaseModel):
    to: int = 5
    stop_at: int | None = None  # wait there (on STOPS[tenant]) as a runner that hangs would


@jobs.register("test.count", params=CountParams)
async def count(
    database: Database, tenant_id: str, params: dict[str, Any], ctx: jobs.JobContext
) -> dict[str, Any]:
    at = (ctx.resumed_state or {}).get("at", 0)
    started_from = at
    while at < params["to"]:
        if at == params["stop_at"]:
            REACHED[tenant_id].set()
            await STOPS[tenant_id].wait()
        at += 1
        async with database.transaction(write=True) as conn:
            # The work and its checkpoint commit together (a row standing for the work).
            await ctx.checkpoint({"at": at}, conn)
        await ctx.progress(at, params["to"])
    return {"counted_to": at, "started_from": started_from}


@jobs.register("test.fail")
async def fail(
    database: Database, tenant_id: str, params: dict[str, Any], ctx: jobs.JobContext
) -> dict[str, Any]:
    raise Problem(ProblemType.CONFLICT, "the catalogue is being replaced; try again later")


@jobs.register("test.crash")
async def crash(
    database: Database, tenant_id: str, params: dict[str, Any], ctx: jobs.JobContext
) -> dict[str, Any]:
    raise RuntimeError("value=secret@example.com")  # a driver error quoting a stored value


def _row(tenant_id: str, kind: str, state: str) -> dict[str, Any]:
    return {
        "tenant_id": tenant_id,
        "id": new_id("job", 10),
        "kind": kind,
        "state": state,
        "params": {},
        "done": 0,
        "attempts": 1,
        "created_at": utcnow(),
    }


async def test_the_database_keeps_one_unfinished_job_per_tenant_and_kind(
    server: Harness, shop: ShopForTest
) -> None:
    async with server.database.transaction(write=True) as conn:
        await conn.execute(insert(jobs_table).values(**_row(shop.id, "test.x", "done")))
        await conn.execute(insert(jobs_table).values(**_row(shop.id, "test.x", "running")))
        await conn.execute(insert(jobs_table).values(**_row(shop.id, "test.y", "queued")))
    with pytest.raises(IntegrityError):
        async with server.database.transaction(write=True) as conn:
            await conn.execute(insert(jobs_table).values(**_row(shop.id, "test.x", "queued")))
    other = await server.shop("another shop")
    async with server.database.transaction(write=True) as conn:
        await conn.execute(insert(jobs_table).values(**_row(other.id, "test.x", "running")))


async def test_a_job_runs_to_its_end_with_its_progress_and_result(
    server: Harness, shop: ShopForTest
) -> None:
    seen: list[tuple[int, int | None]] = []
    claim = await jobs.start(server.database, shop.id, "test.count", {"to": 4})
    assert claim.runner is not None and claim.job.state == "queued"
    ended = await jobs.execute(
        server.database, claim, on_progress=lambda done, total: seen.append((done, total))
    )
    assert ended.state == "done"
    assert ended.result == {"counted_to": 4, "started_from": 0}
    assert (ended.done, ended.total, ended.attempts) == (4, 4, 1)
    assert ended.started_at is not None and ended.finished_at is not None
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_a_second_start_joins_the_unfinished_job(server: Harness, shop: ShopForTest) -> None:
    first = await jobs.start(server.database, shop.id, "test.count", {"to": 2})
    second = await jobs.start(server.database, shop.id, "test.count", {"to": 2})
    assert second.runner is None
    assert second.job.job_id == first.job.job_id
    with pytest.raises(ValueError):
        await jobs.execute(server.database, second)
    # Other parameters would be answered by a job that did not do that work: a conflict.
    with pytest.raises(Problem) as other:
        await jobs.start(server.database, shop.id, "test.count", {"to": 9})
    assert other.value.type is ProblemType.CONFLICT
    await jobs.execute(server.database, first)
    third = await jobs.start(server.database, shop.id, "test.count", {"to": 1})
    assert third.runner is not None and third.job.job_id != first.job.job_id


async def test_a_job_whose_runner_died_resumes_from_its_checkpoint(
    server: Harness, shop: ShopForTest
) -> None:
    STOPS[shop.id], REACHED[shop.id] = asyncio.Event(), asyncio.Event()
    claim = await jobs.start(server.database, shop.id, "test.count", {"to": 6, "stop_at": 3})
    runner = asyncio.create_task(jobs.execute(server.database, claim))
    await REACHED[shop.id].wait()
    runner.cancel()  # the process dies: nothing marks the job finished
    with pytest.raises(asyncio.CancelledError):
        await runner
    # While its heartbeat is fresh, a start joins it; once stale, a start takes it over.
    started_with = {"to": 6, "stop_at": 3}
    joined = await jobs.start(server.database, shop.id, "test.count", started_with)
    assert joined.runner is None and joined.job.state == "running"
    resumed = await jobs.start(
        server.database, shop.id, "test.count", started_with, stale_seconds=0
    )
    assert resumed.runner is not None and resumed.job.job_id == claim.job.job_id
    assert resumed.resumed_state == {"at": 3}
    # The dead runner, were it only slow, has lost its lease: it can save nothing more.
    stale_context = jobs.JobContext(server.database, shop.id, claim.job.job_id, claim.runner or "")
    with pytest.raises(jobs.LeaseLost):
        await stale_context.checkpoint({"at": 99})
    STOPS[shop.id].set()
    ended = await jobs.execute(server.database, resumed)
    # It ran with the parameters it was started with and went on from step 3, not from 0.
    assert ended.result == {"counted_to": 6, "started_from": 3}
    assert (ended.state, ended.attempts, ended.done) == ("done", 2, 6)


async def test_a_failed_job_says_why_without_stored_values(
    server: Harness, shop: ShopForTest
) -> None:
    failed = await jobs.execute(
        server.database, await jobs.start(server.database, shop.id, "test.fail")
    )
    assert failed.state == "failed"
    assert failed.error == "the catalogue is being replaced; try again later"
    crashed = await jobs.execute(
        server.database, await jobs.start(server.database, shop.id, "test.crash")
    )
    assert crashed.state == "failed"
    assert crashed.error is not None and "secret@example.com" not in crashed.error
    assert "RuntimeError" in crashed.error
    # A failed job is finished: the kind can be started again.
    again = await jobs.start(server.database, shop.id, "test.fail")
    assert again.runner is not None and again.job.job_id != failed.job_id


async def test_api_starts_a_job_and_shows_its_progress(server: Harness, shop: ShopForTest) -> None:
    started = await shop.request(
        "POST", "/v1/jobs", json={"kind": "test.count", "params": {"to": 3}}
    )
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    assert started.headers["location"] == f"/v1/jobs/{job_id}"
    ended = await server.app.state.runtime.jobs.wait(shop.id, job_id, timeout=30)
    assert ended is not None and ended.state == "done"
    shown = await shop.request("GET", f"/v1/jobs/{job_id}")
    assert shown.status_code == 200
    assert shown.json()["result"] == {"counted_to": 3, "started_from": 0}
    assert (shown.json()["done"], shown.json()["total"]) == (3, 3)
    listed = await shop.request("GET", "/v1/jobs", params={"kind": "test.count"})
    assert [item["job_id"] for item in listed.json()["items"]] == [job_id]


async def test_api_refuses_unknown_kinds_bad_params_and_other_channels(
    server: Harness, shop: ShopForTest
) -> None:
    unknown = await shop.request("POST", "/v1/jobs", json={"kind": "test.nothing"})
    assert unknown.status_code == 422
    assert unknown.json()["type"].endswith("/validation-error")
    bad = await shop.request(
        "POST", "/v1/jobs", json={"kind": "test.count", "params": {"to": "many"}}
    )
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["loc"] == ["body", "params", "to"]
    web = await shop.request("POST", "/v1/jobs", Channel.WEB, json={"kind": "test.count"})
    assert web.status_code == 403
    async with server.database.transaction(write=False) as conn:
        stored = await conn.execute(select(jobs_table).where(jobs_table.c.tenant_id == shop.id))
        assert stored.first() is None


async def test_a_tenant_sees_no_other_tenants_jobs(server: Harness, shop: ShopForTest) -> None:
    started = await shop.request("POST", "/v1/jobs", json={"kind": "test.count"})
    job_id = started.json()["job_id"]
    await server.app.state.runtime.jobs.wait(shop.id, job_id, timeout=30)
    other = await server.shop("another shop")
    assert (await other.request("GET", f"/v1/jobs/{job_id}")).status_code == 404
    assert (await other.request("GET", "/v1/jobs")).json()["items"] == []


def test_the_cli_runs_lists_and_shows_jobs(
    migrated_database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from server_stub import cli

    url = ["--database-url", migrated_database_url]
    assert cli.main(["tenant", "create", "cli jobs", *url]) == 0
    tenant = capsys.readouterr().out.split()[0]
    assert cli.main(["jobs", "run", "--tenant", tenant, "test.count", "--param", "to=3", *url]) == 0
    run = capsys.readouterr()
    assert '"counted_to": 3' in run.out
    assert "3/3" in run.err  # the progress bar, on stderr
    assert cli.main(["jobs", "list", "--tenant", tenant, *url]) == 0
    listed = capsys.readouterr().out.split("\t")
    assert listed[1:4] == ["test.count", "done", "3/3"]
    assert cli.main(["jobs", "show", "--tenant", tenant, listed[0], *url]) == 0
    assert '"state": "done"' in capsys.readouterr().out
    assert cli.main(["jobs", "run", "--tenant", tenant, "test.nothing", *url]) == 2
    assert "there is no job kind 'test.nothing'" in capsys.readouterr().err
    assert cli.main(["jobs", "run", "--tenant", tenant, "test.count", "--param", "x", *url]) == 2
    assert cli.main(["jobs", "show", "--tenant", tenant, "job_nothing", *url]) == 2


async def test_a_runner_that_beats_while_a_takeover_waits_keeps_its_job(
    server: Harness, shop: ShopForTest
) -> None:
    """A runner judged dead (its heartbeat old) commits a checkpoint while a takeover waits
    for the job's row: it lives, so the takeover joins it instead of running it a second
    time beside it (which published a rebuild's result twice)."""
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two writes cannot overlap")
    STOPS[shop.id], REACHED[shop.id] = asyncio.Event(), asyncio.Event()
    claim = await jobs.start(server.database, shop.id, "test.count", {"to": 3, "stop_at": 1})
    runner = asyncio.create_task(jobs.execute(server.database, claim))
    await REACHED[shop.id].wait()
    this_job = (jobs_table.c.tenant_id == shop.id, jobs_table.c.id == claim.job.job_id)
    async with server.database.transaction(write=True) as conn:
        long_ago = utcnow() - timedelta(hours=1)
        await conn.execute(update(jobs_table).where(*this_job).values(heartbeat_at=long_ago))
    slow = jobs.JobContext(server.database, shop.id, claim.job.job_id, claim.runner or "")
    spec = jobs._kind("test.count")

    async def beat(conn: AsyncConnection) -> None:
        await slow.checkpoint({"at": 1}, conn)

    async def take_over(conn: AsyncConnection) -> jobs.Claim | None:
        started_with = jobs._validated(spec, {"to": 3, "stop_at": 1})
        return await jobs._claim(conn, shop.id, spec, started_with, 60)

    _, taken = await interleaved(server, beat, take_over)
    assert taken is None  # not taken: the next turn of start() joins it
    joined = await jobs.start(server.database, shop.id, "test.count", {"to": 3, "stop_at": 1})
    assert joined.runner is None and joined.job.job_id == claim.job.job_id
    STOPS[shop.id].set()
    ended = await runner
    assert (ended.state, ended.attempts, ended.result) == (
        "done",
        1,
        {"counted_to": 3, "started_from": 0},
    )
