"""The journey refresh and the lifetime value fit as jobs (services/jobs.py): run outside the
request, one at a time per tenant, with progress, resumable after their runner died.

The journey refresh stores one day per step, each day's rows committed with the checkpoint, so
a resumed run goes on with the next day. It refreshes only the days not stored yet (every day
of the period with `full`, after a change of history such as an erasure).

The lifetime value fit reads the orders in keyset pages into per-buyer arrays, fits, and saves
the fit (its parameters, JSON) as the checkpoint; then it writes the scores SCORE_BATCH
customers per transaction, each with the checkpoint. A resumed run reads the buyers again up
to the fit's date (the same buyers: orders are dated), does not refit, and goes on writing
after the last batch stored.
"""

from __future__ import annotations

import bisect
from datetime import date, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omnisdk.core.problems import ProblemType
from omnisdk.models import Bool, Float, Int
from server_stub.analytics import AnalyticsUnavailable, require_numeric
from server_stub.analytics.touchpoints import Grouping
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.services import analytics, analytics_reports, jobs
from server_stub.storage.database import Database

REFRESH_KIND = "analytics.journeys.refresh"
LTV_KIND = "analytics.ltv.fit"


class RefreshParams(BaseModel):
    """Which days to add to the daily journey aggregate."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"days": 30, "lookback_days": 30, "group": ["qr_scan=offline ads"]}]
        },
    )

    days: Int = Field(default=30, ge=1, le=731, description="The last N finished days.")
    lookback_days: Int = Field(default=30, ge=1, le=90)
    group: list[str] = Field(default_factory=list, max_length=20)
    by_campaign: Bool = False
    full: Bool = Field(
        default=False, description="Compute every day of the period again, stored or not."
    )

    @field_validator("group")
    @classmethod
    def _parses(cls, group: list[str]) -> list[str]:
        Grouping.parse(group, False)  # a ValueError here is the caller's validation error
        return group

    def setup(self) -> analytics.JourneySetup:
        grouping = Grouping.parse(self.group, self.by_campaign)
        return analytics.JourneySetup(timedelta(days=self.lookback_days), grouping)


@jobs.register(REFRESH_KIND, params=RefreshParams)
async def refresh_journeys(
    database: Database, tenant_id: str, params: dict[str, Any], ctx: jobs.JobContext
) -> dict[str, Any]:
    """Store the period's days not stored yet (all with `full`), a day per transaction."""
    asked = RefreshParams.model_validate(params)
    setup = asked.setup()
    resumed = ctx.resumed_state or {}
    as_of = utcnow()
    # The period is fixed when the job first runs: a resumed run finishes the same days.
    until = date.fromisoformat(resumed.get("until") or as_of.date().isoformat())
    written: list[str] = list(resumed.get("written", []))
    end = analytics.day_start(until)
    since = end - timedelta(days=asked.days)
    async with database.transaction(write=False) as conn:
        period = await analytics.days_to_refresh(
            conn, tenant_id, since, end, setup, as_of, full=True
        )
        days = await analytics.days_to_refresh(
            conn, tenant_id, since, end, setup, as_of, full=asked.full
        )
    days = [day for day in days if day.isoformat() not in written]
    total = len(written) + len(days)
    await ctx.progress(len(written), total)
    for day in days:
        async with database.transaction(write=True) as conn:
            await analytics.refresh_day(conn, tenant_id, day, setup=setup, as_of=as_of)
            written.append(day.isoformat())
            await ctx.checkpoint({"until": until.isoformat(), "written": written}, conn)
        await ctx.progress(len(written), total)
    # What the aggregate holds once done, the same whichever run wrote it: the answer a
    # retried request (its first answer lost) can count on.
    return {"days_written": written, "days_stored": [day.isoformat() for day in period]}


class LtvParams(BaseModel):
    """How to fit lifetime value."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"holdout_days": 90, "months": 12, "annual_discount_rate": 0.1}]
        },
    )

    holdout_days: Int | None = Field(
        default=None,
        ge=7,
        le=365,
        description="Also fit without the last N days and report how it predicted them.",
    )
    months: Int = Field(default=12, ge=1, le=60, description="CLV horizon in months.")
    annual_discount_rate: Float = Field(
        default=0.10, ge=0.0, le=1.0, description="Discount rate per year for CLV."
    )


@jobs.register(LTV_KIND, params=LtvParams)
async def fit_ltv(
    database: Database, tenant_id: str, params: dict[str, Any], ctx: jobs.JobContext
) -> dict[str, Any]:
    """Fit lifetime value on the orders and store every buyer's scores, in batches."""
    try:
        require_numeric()
    except AnalyticsUnavailable as missing:  # the job's error then says what to install
        raise Problem(ProblemType.ANALYTICS_UNAVAILABLE, str(missing)) from None
    asked = LtvParams.model_validate(params)
    resumed = ctx.resumed_state or {}
    saved = resumed.get("fit")
    fitted_at = analytics.FittedModels.from_json(saved).fitted_at if saved else utcnow()
    async with database.transaction(write=False) as conn:
        orders = await analytics.order_count(conn, tenant_id, fitted_at)
        buyers = await analytics.read_buyers(conn, tenant_id, fitted_at, ctx.progress)
    total = orders + len(buyers)
    if saved is None:
        fit = analytics.fit_models(buyers, fitted_at)
        calibration = None
        if asked.holdout_days is not None and fit.frequency is not None:
            async with database.transaction(write=False) as conn:
                calibration = await analytics.calibrate(
                    conn, tenant_id, fitted_at, timedelta(days=asked.holdout_days)
                )
        await ctx.checkpoint({"fit": fit.as_json(), "calibration": calibration})
    else:
        fit, calibration = analytics.FittedModels.from_json(saved), resumed["calibration"]
    table = analytics.score_buyers(
        buyers, fit, months=asked.months, annual_discount_rate=asked.annual_discount_rate
    )
    # Go on after the last customer written (by id, not by position: an order recorded late
    # may have added a buyer since, anywhere in the order of ids).
    written = bisect.bisect_right(buyers.ids, resumed.get("written_through", ""))
    await ctx.progress(orders + written, total)
    while written < len(buyers):
        rows = table.rows(tenant_id, written, written + analytics.SCORE_BATCH)
        written += len(rows)
        async with database.transaction(write=True) as conn:
            await analytics.write_scores(conn, rows)
            state = {
                "fit": fit.as_json(),
                "calibration": calibration,
                "written_through": rows[-1]["customer_id"],
            }
            await ctx.checkpoint(state, conn)
        await ctx.progress(orders + written, total)
    async with database.transaction(write=True) as conn:
        await analytics.drop_stale_scores(conn, tenant_id, set(buyers.ids))
    return analytics_reports.ltv_json(analytics.ltv_fit_of(table, calibration))
