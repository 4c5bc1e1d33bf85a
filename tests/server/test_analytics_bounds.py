"""Analytics input at the edges: dates outside 1970..9000 are refused with a 422 naming the
parameter (never a 5xx), and a job start is answered only by a job with its own parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server_stub import cli
from server_stub.services import analytics_jobs, jobs
from tests.server.conftest import TEST_SECRET_KEY, Harness, ShopForTest, start_harness

READ_ROUTES = ["/v1/analytics/ropo", "/v1/analytics/attribution", "/v1/analytics/report"]
HOSTILE_PERIODS = [
    ({"until": "0001-01-01T00:00Z"}, "until"),
    ({"since": "0001-01-10T00:00Z", "until": "0001-02-01T00:00Z"}, "until"),
    ({"since": "0001-01-10T00:00Z", "until": "2026-01-01T00:00Z"}, "since"),
    ({"since": "0001-01-01T00:00+01:00", "until": "2026-01-01T00:00Z"}, "since"),
    ({"until": "9999-12-31T23:59-01:00"}, "until"),
    ({"since": "9999-12-01T00:00Z", "until": "9999-12-31T23:59Z"}, "until"),
    ({"since": "8999-12-31T00:00Z"}, "since"),  # after the default until (now)
]


@pytest.mark.parametrize("route", READ_ROUTES)
async def test_a_date_outside_1970_to_9000_is_a_422_naming_it(
    shop: ShopForTest, route: str
) -> None:
    for params, name in HOSTILE_PERIODS:
        answer = await shop.request("GET", route, params=params)
        assert answer.status_code == 422, (params, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        problem = answer.json()
        assert problem["type"].endswith("/validation-error")
        assert [error["loc"] for error in problem["errors"]] == [["query", name]], params


async def test_a_period_at_the_earliest_bound_is_reported(shop: ShopForTest) -> None:
    period = {"since": "1970-01-01T00:00Z", "until": "1970-01-31T00:00+01:00", "lookback_days": 90}
    answer = await shop.request("GET", "/v1/analytics/ropo", params=period)
    assert answer.status_code == 200, answer.text
    assert answer.json()["until"] == "1970-01-30T23:00:00+00:00"


def test_the_cli_refuses_dates_outside_the_bounds_and_reads_offsets_as_utc(
    migrated_database_url: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OMNISDK_SECRET_KEY", TEST_SECRET_KEY)  # the servers' key: one database
    url = ["--database-url", migrated_database_url]
    assert cli.main(["tenant", "create", "cli bounds", *url]) == 0
    tenant = ["--tenant", capsys.readouterr().out.split()[0], "--no-progress", *url]
    for dates, named in (
        (["--until", "0001-01-01"], "--until"),
        (["--since", "0001-01-10", "--until", "0001-02-01"], "--until"),
        (["--since", "0001-01-01T00:00+01:00", "--until", "2026-01-01"], "--since"),
        (["--until", "9999-12-31T23:59-01:00"], "--until"),
        (["--until", "yesterday"], "--until"),
    ):
        assert cli.main(["analytics", "ropo", *tenant, *dates]) == 2, dates
        assert f"omnisdk-server: {named} " in capsys.readouterr().err, dates
    for days in (["--lookback-days", "999999999"], ["--holdout-days", "0"]):
        with pytest.raises(SystemExit) as refused:
            cli.main(["analytics", "report", *tenant, "--output", str(tmp_path / "r.html"), *days])
        assert refused.value.code == 2 and days[0] in capsys.readouterr().err
    period = ["--since", "2026-11-01T01:00+01:00", "--until", "2026-11-02T00:00-05:00"]
    assert cli.main(["analytics", "ropo", *tenant, *period, "--format", "json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["since"], report["until"]) == (
        "2026-11-01T00:00:00+00:00",
        "2026-11-02T05:00:00+00:00",
    )


async def unfinished_refresh(server: Harness, shop: ShopForTest, **params: object) -> jobs.Claim:
    """The tenant's refresh job, started and held by a live runner that has not finished."""
    return await jobs.start(server.database, shop.id, analytics_jobs.REFRESH_KIND, params)


async def test_a_start_with_other_parameters_is_a_conflict_naming_the_running_job(
    migrated_database_url: str,
) -> None:
    async for server in start_harness(migrated_database_url, job_wait_seconds=0):
        shop = await server.shop()
        daily = await unfinished_refresh(server, shop, days=2)
        for path, body in [
            ("/v1/analytics/journeys/refresh", {"days": 30, "full": True}),
            ("/v1/analytics/journeys/refresh", {"days": 2, "lookback_days": 14}),
            ("/v1/analytics/journeys/refresh", {"days": 2, "group": ["qr_scan=offline ads"]}),
            ("/v1/jobs", {"kind": analytics_jobs.REFRESH_KIND, "params": {"full": True}}),
        ]:
            answer = await shop.request("POST", path, json=body)
            assert answer.status_code == 409, (body, answer.text)
            assert answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert problem["type"].endswith("/conflict")
            assert problem["job_id"] == daily.job.job_id
            assert problem["kind"] == analytics_jobs.REFRESH_KIND
            assert problem["params"]["days"] == 2
            assert daily.job.job_id in problem["detail"] and "retry" in problem["detail"]
        # Refused, not queued: once the daily run has ended the full recompute starts.
        assert (await jobs.execute(server.database, daily)).state == "done"
        full = await shop.request(
            "POST", "/v1/analytics/journeys/refresh", json={"days": 30, "full": True}
        )
        assert full.status_code == 202 and full.json()["job_id"] != daily.job.job_id
        assert full.json()["params"]["full"] is True


async def test_a_fit_start_with_another_horizon_is_a_conflict(
    server: Harness, shop: ShopForTest
) -> None:
    running = await jobs.start(server.database, shop.id, analytics_jobs.LTV_KIND, {"months": 6})
    answer = await shop.request("POST", "/v1/analytics/ltv", json={"months": 24})
    assert answer.status_code == 409, answer.text
    assert answer.json()["job_id"] == running.job.job_id


async def test_a_start_with_the_same_parameters_joins_the_running_job(
    migrated_database_url: str,
) -> None:
    async for server in start_harness(migrated_database_url, job_wait_seconds=0):
        shop = await server.shop()
        daily = await unfinished_refresh(server, shop, days=2)
        key = {"Idempotency-Key": "refresh-2026-11-02"}
        for _ in range(2):  # the request, then its replay
            answer = await shop.request(
                "POST", "/v1/analytics/journeys/refresh", json={"days": 2}, headers=key
            )
            assert answer.status_code == 202, answer.text
            assert answer.json()["job_id"] == daily.job.job_id
        joined = await jobs.start(
            server.database, shop.id, analytics_jobs.REFRESH_KIND, {"days": 2, "full": False}
        )
        assert joined.runner is None and joined.job.job_id == daily.job.job_id


async def test_a_dead_job_is_resumed_by_its_parameters_and_given_up_for_others(
    server: Harness, shop: ShopForTest
) -> None:
    """A job whose runner died goes on when started again with its parameters; a start with
    others gives it up (failed, saying why) and runs its own, where it used to be refused as
    long as the dead job stood (the daily two-day refresh failing every day after a crashed
    full recompute)."""
    dead = await unfinished_refresh(server, shop, days=2)
    resumed = await jobs.start(
        server.database, shop.id, analytics_jobs.REFRESH_KIND, {"days": 2}, stale_seconds=0
    )
    assert resumed.runner is not None and resumed.job.job_id == dead.job.job_id
    other = await jobs.start(
        server.database, shop.id, analytics_jobs.REFRESH_KIND, {"days": 30}, stale_seconds=0
    )
    assert other.runner is not None and other.job.job_id != dead.job.job_id
    assert other.job.params["days"] == 30
    async with server.database.transaction(write=False) as conn:
        gone = await jobs.get(conn, shop.id, dead.job.job_id)
    assert gone is not None and gone.state == "failed" and "abandoned" in (gone.error or "")
