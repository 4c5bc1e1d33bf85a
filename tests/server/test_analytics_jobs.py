"""The journey refresh and the lifetime value fit as jobs (services/analytics_jobs.py): a day
per step, resumable, one at a time per tenant, and behind the old endpoints."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from server_stub.ids import utcnow
from server_stub.services import analytics, analytics_jobs, analytics_reports, jobs
from server_stub.storage.tables import customer_scores, journey_days, orders
from tests.server.conftest import Harness, ShopForTest
from tests.server.test_analytics_service import (
    AS_OF,
    T0,
    amy_and_friends,
    customer,
    sell,
    sixty_buyers,
    touch,
)


async def long_chain(server: Harness, shop: ShopForTest) -> None:
    """Journeys that reach further back than two lookbacks: where reading starts matters."""
    await amy_and_friends(server, shop)
    fay = await customer(server, shop)
    for n in range(6):  # a touch every 20 days: one journey of 100 days, ended unconverted
        kind = "email_clicked" if n % 2 else "campaign_scanned"
        await touch(server, shop, fay, kind, "web", T0 + timedelta(days=20 * n), campaign="c")
    gus = await customer(server, shop)
    for n in range(5):  # the same, ended by a sale
        await touch(server, shop, gus, "email_clicked", "web", T0 + timedelta(days=15 * n))
    await sell(server, shop, gus, "web", T0 + timedelta(days=61), "40.00")


async def stored_rows(server: Harness, tenant_id: str) -> list[tuple[Any, ...]]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(journey_days)
            .where(journey_days.c.tenant_id == tenant_id)
            .order_by(journey_days.c.day, journey_days.c.path_no)
        )
        return [(r.day, r.setup, r.path_no, r.path, r.conversions, r.nulls, r.value) for r in rows]


async def test_refreshing_day_by_day_stores_what_one_range_refresh_stores(
    server: Harness,
) -> None:
    whole, daily = await server.shop(), await server.shop()
    await long_chain(server, whole)
    await long_chain(server, daily)
    since, until = AS_OF - timedelta(days=10), AS_OF + timedelta(days=80)
    as_of = until + timedelta(days=1)
    async with server.database.transaction(write=True) as conn:
        written = await analytics.refresh_days(
            conn, whole.id, since=since, until=until, as_of=as_of
        )
    day = since
    while day < until:
        async with server.database.transaction(write=True) as conn:
            await analytics.refresh_days(
                conn, daily.id, since=day, until=day + timedelta(days=1), as_of=as_of
            )
        day += timedelta(days=1)
    assert len(written) == (until - since).days
    stored = await stored_rows(server, whole.id)
    # Both long journeys end in the period: Fay's unconverted, Gus's with his order.
    assert sum(row[4] for row in stored) == 1 and sum(row[5] for row in stored) == 1
    assert stored == await stored_rows(server, daily.id)


async def run(server: Harness, tenant_id: str, kind: str, **params: Any) -> jobs.Job:
    claim = await jobs.start(server.database, tenant_id, kind, params)
    return await jobs.execute(server.database, claim)


class ProcessDied(BaseException):
    """Stands for the process being killed: not an Exception, so no handler sees it."""


async def test_the_refresh_job_stores_a_day_per_step_what_a_range_refresh_stores(
    server: Harness,
) -> None:
    by_job, by_range = await server.shop(), await server.shop()
    await long_chain(server, by_job)
    await long_chain(server, by_range)
    job = await run(server, by_job.id, analytics_jobs.REFRESH_KIND, days=90)
    assert job.state == "done", job.error
    assert job.result is not None and len(job.result["days_written"]) == 90
    assert (job.done, job.total) == (90, 90)
    today = analytics.day_start(utcnow().date())
    async with server.database.transaction(write=True) as conn:
        await analytics.refresh_days(
            conn, by_range.id, since=today - timedelta(days=90), until=today
        )
    assert await stored_rows(server, by_job.id) == await stored_rows(server, by_range.id)
    # Incremental: nothing left to do; `full` computes every day again, to the same rows.
    again = await run(server, by_job.id, analytics_jobs.REFRESH_KIND, days=90)
    assert again.result is not None and again.result["days_written"] == []
    assert again.result["days_stored"] == job.result["days_written"]
    full = await run(server, by_job.id, analytics_jobs.REFRESH_KIND, days=90, full=True)
    assert full.result is not None and len(full.result["days_written"]) == 90
    assert await stored_rows(server, by_job.id) == await stored_rows(server, by_range.id)


async def test_a_refresh_cut_short_goes_on_with_the_next_day(
    server: Harness, shop: ShopForTest
) -> None:
    await long_chain(server, shop)
    claim = await jobs.start(server.database, shop.id, analytics_jobs.REFRESH_KIND, {"days": 20})

    def die_after_five_days(done: int, total: int | None) -> None:
        if done >= 5:
            raise ProcessDied

    with pytest.raises(ProcessDied):
        await jobs.execute(server.database, claim, on_progress=die_after_five_days)
    assert len(await stored_rows(server, shop.id)) >= 5
    # One at a time per tenant: a start while the runner is alive joins its job.
    joined = await jobs.start(server.database, shop.id, analytics_jobs.REFRESH_KIND)
    assert joined.runner is None and joined.job.job_id == claim.job.job_id
    resumed = await jobs.start(
        server.database, shop.id, analytics_jobs.REFRESH_KIND, stale_seconds=0
    )
    assert resumed.runner is not None and resumed.resumed_state is not None
    assert len(resumed.resumed_state["written"]) == 5
    ended = await jobs.execute(server.database, resumed)
    assert ended.state == "done" and ended.attempts == 2
    assert ended.result is not None and len(ended.result["days_written"]) == 20
    assert len(set(ended.result["days_written"])) == 20


async def test_the_refresh_endpoint_answers_with_the_days_or_202_and_the_job(
    migrated_database_url: str,
) -> None:
    from tests.server.conftest import start_harness

    async for server in start_harness(migrated_database_url, job_wait_seconds=0):
        shop = await server.shop()
        answer = await shop.request("POST", "/v1/analytics/journeys/refresh", json={"days": 3})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert answer.headers["location"] == f"/v1/jobs/{job_id}"
        ended = await server.app.state.runtime.jobs.wait(shop.id, job_id, timeout=60)
        assert ended is not None and ended.state == "done"
        assert ended.result is not None and len(ended.result["days_written"]) == 3


async def test_the_refresh_endpoint_answers_200_with_the_days_written(
    server: Harness, shop: ShopForTest
) -> None:
    answer = await shop.request("POST", "/v1/analytics/journeys/refresh", json={"days": 4})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["days_written"]) == 4
    first = answer.json()
    answer = await shop.request("POST", "/v1/analytics/journeys/refresh", json={"days": 4})
    assert answer.json() == {"days_written": [], "days_stored": first["days_written"]}
    bad = await shop.request("POST", "/v1/analytics/journeys/refresh", json={"group": ["x"]})
    assert bad.status_code == 422 and bad.headers["content-type"] == "application/problem+json"


async def stored_scores(server: Harness, tenant_id: str) -> list[tuple[Any, ...]]:
    async with server.database.transaction(write=False) as conn:
        rows = await conn.execute(
            select(customer_scores)
            .where(customer_scores.c.tenant_id == tenant_id)
            .order_by(customer_scores.c.customer_id)
        )
        return [tuple(row) for row in rows]


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(analytics, "SCORE_BATCH", 7)  # 60 buyers: 9 batches


@pytest.mark.usefixtures("small_batches")
async def test_the_fit_job_stores_in_batches_the_scores_one_pass_stores(
    server: Harness, shop: ShopForTest
) -> None:
    await sixty_buyers(server, shop)
    job = await run(server, shop.id, analytics_jobs.LTV_KIND, holdout_days=60)
    assert job.state == "done", job.error
    assert job.result is not None and job.result["model"] == "bgnbd+gamma_gamma"
    assert job.result["customers"] == 60 and job.result["calibration"] is not None
    by_job = await stored_scores(server, shop.id)
    assert len(by_job) == 60
    fitted_at = datetime.fromisoformat(job.result["fitted_at"])
    async with server.database.transaction(write=True) as conn:
        fit = await analytics.fit_lifetime_value(
            conn, shop.id, as_of=fitted_at, holdout=timedelta(days=60)
        )
    assert await stored_scores(server, shop.id) == by_job
    assert analytics_reports.ltv_json(fit) == job.result


@pytest.mark.usefixtures("small_batches")
async def test_a_fit_cut_short_goes_on_writing_without_fitting_again(
    server: Harness, shop: ShopForTest
) -> None:
    buyers = await sixty_buyers(server, shop)
    orders = sum(n % 4 + 1 for n in range(60))
    claim = await jobs.start(server.database, shop.id, analytics_jobs.LTV_KIND)

    def die_after_two_batches(done: int, total: int | None) -> None:
        if done >= orders + 14:
            raise ProcessDied

    with pytest.raises(ProcessDied):
        await jobs.execute(server.database, claim, on_progress=die_after_two_batches)
    assert len(await stored_scores(server, shop.id)) == 14
    joined = await jobs.start(server.database, shop.id, analytics_jobs.LTV_KIND)
    assert joined.runner is None and joined.job.job_id == claim.job.job_id  # one at a time
    resumed = await jobs.start(server.database, shop.id, analytics_jobs.LTV_KIND, stale_seconds=0)
    assert resumed.resumed_state is not None
    assert resumed.resumed_state["written_through"] == sorted(buyers)[13]
    saved = resumed.resumed_state["fit"]
    ended = await jobs.execute(server.database, resumed)
    assert ended.state == "done" and ended.attempts == 2 and ended.result is not None
    # The saved fit was used: a new fit would carry the time it was made.
    assert ended.result["fitted_at"] == saved["fitted_at"]
    assert ended.result["customers"] == 60
    assert len(await stored_scores(server, shop.id)) == 60


async def test_the_fit_endpoint_answers_202_with_the_job_when_it_stops_waiting(
    migrated_database_url: str,
) -> None:
    from tests.server.conftest import start_harness

    async for server in start_harness(migrated_database_url, job_wait_seconds=0):
        shop = await server.shop()
        await sell(server, shop, await customer(server, shop), "web", T0, "10.00")
        answer = await shop.request("POST", "/v1/analytics/ltv", json={})
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert answer.headers["location"] == f"/v1/jobs/{job_id}"
        ended = await server.app.state.runtime.jobs.wait(shop.id, job_id, timeout=60)
        assert ended is not None and ended.state == "done"
        assert ended.result is not None and ended.result["model"] == "rfm"
        assert len(await stored_scores(server, shop.id)) == 1


@pytest.mark.usefixtures("small_batches")
async def test_a_resumed_fit_skips_nobody_when_a_buyer_before_the_cut_is_gone(
    server: Harness, shop: ShopForTest
) -> None:
    buyers = sorted(await sixty_buyers(server, shop))
    count = sum(n % 4 + 1 for n in range(60))
    claim = await jobs.start(server.database, shop.id, analytics_jobs.LTV_KIND)

    def die_after_two_batches(done: int, total: int | None) -> None:
        if done >= count + 14:
            raise ProcessDied

    with pytest.raises(ProcessDied):
        await jobs.execute(server.database, claim, on_progress=die_after_two_batches)
    # The first buyer's orders are unlinked from her (a till's link undone) before the resume:
    # every buyer after her moves one place up in the order of ids.
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(orders)
            .where(orders.c.tenant_id == shop.id, orders.c.customer_id == buyers[0])
            .values(customer_id=None)
        )
    resumed = await jobs.start(server.database, shop.id, analytics_jobs.LTV_KIND, stale_seconds=0)
    ended = await jobs.execute(server.database, resumed)
    assert ended.state == "done" and ended.result is not None
    stored = await stored_scores(server, shop.id)
    # Every other buyer scored, none skipped; hers dropped as she is no buyer any more.
    assert [row[1] for row in stored] == buyers[1:]
    assert {row[2] for row in stored} == {datetime.fromisoformat(ended.result["fitted_at"])}
