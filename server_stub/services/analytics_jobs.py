"""The journey refresh and the lifetime value fit as jobs (services/jobs.py): run outside the
request, one at a time per tenant, with progress, resumable after their runner died.

The journey refresh stores one day per step, each day's rows committed with the checkpoint, so
a resumed run goes on with the next day. It refreshes only the days not stored yet (every day
of the period with `full`, after a change of history such as an erasure).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from omnisdk.models import Bool, Int
from server_stub.analytics.touchpoints import Grouping
from server_stub.ids import utcnow
from server_stub.services import analytics, jobs
from server_stub.storage.database import Database

REFRESH_KIND = "analytics.journeys.refresh"


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
