"""Attribution, ROPO and lifetime value for the shop's marketers and operators (admin keys).

Reading needs `analytics:read`; fitting lifetime value and storing the daily journey aggregate
need `analytics:run`. Without the server's `analytics` extra every route answers the
`analytics-unavailable` problem.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import HTMLResponse

from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import Job
from server_stub.analytics import AnalyticsUnavailable, require_numeric
from server_stub.analytics.attribution import Model
from server_stub.analytics.touchpoints import Grouping
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.routers.dependencies import Connection
from server_stub.routers.jobs import run_and_wait
from server_stub.routing import ApiRoute
from server_stub.services import analytics
from server_stub.services import analytics_reports as reports
from server_stub.services.analytics_jobs import LTV_KIND, REFRESH_KIND, LtvParams, RefreshParams

router = APIRouter(prefix="/v1/analytics", tags=["analytics"], route_class=ApiRoute)

MAX_PERIOD = timedelta(days=731)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RefreshResult(_Wire):
    """The days the journey refresh stored (oldest first)."""

    days_written: list[str] = Field(description="ISO dates of the days this job computed.")
    days_stored: list[str] = Field(
        description="ISO dates of the period's days the aggregate now holds (by this job or "
        "an earlier one): the same answer for a retried request."
    )


def _numeric() -> None:
    try:
        require_numeric()
    except AnalyticsUnavailable as missing:
        raise Problem(ProblemType.ANALYTICS_UNAVAILABLE, str(missing)) from None


def _invalid(name: str, message: str) -> Problem:
    return Problem(
        ProblemType.VALIDATION_ERROR,
        message,
        errors=[{"loc": ["query", name], "msg": message, "type": "value_error"}],
    )


def _instant(name: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise _invalid(
            name, f"`{name}` is an ISO 8601 time with a time zone, like 2026-11-01T00:00:00Z"
        )
    try:
        return analytics.bounded(f"`{name}`", value)
    except ValueError as bad:
        raise _invalid(name, str(bad)) from None


def _period(since_text: str | None, until_text: str | None) -> tuple[datetime, datetime]:
    until = _instant("until", until_text) or utcnow()
    since = _instant("since", since_text) or until - timedelta(days=30)
    if not since < until or until - since > MAX_PERIOD:
        raise _invalid(
            "since" if since_text is not None else "until",
            "`since` must be before `until`, and the period at most two years",
        )
    return since, until


def _setup(lookback_days: int, group: list[str], by_campaign: bool) -> reports.JourneySetup:
    try:
        grouping = Grouping.parse(group, by_campaign)
    except ValueError as bad:
        raise Problem(ProblemType.VALIDATION_ERROR, str(bad)) from None
    return reports.JourneySetup(timedelta(days=lookback_days), grouping)


_ISO = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})$"
Since = Annotated[
    str | None,
    Query(pattern=_ISO, description="Start, ISO 8601 with a zone (default: 30 days before until)."),
]
Until = Annotated[
    str | None, Query(pattern=_ISO, description="End, exclusive, ISO 8601 (default: now).")
]
Lookback = Annotated[int, Query(ge=1, le=90, description="Lookback window in days.")]
Group = Annotated[
    list[str],
    Query(
        max_length=20, description="`kind=channel`: report touchpoint kinds as the shop's channels."
    ),
]
ByCampaign = Annotated[bool, Query(description="Credit channel:campaign instead of channels.")]


@router.get(
    "/attribution",
    summary="Credit per channel (or campaign) by every attribution model",
    openapi_extra=needs(Scope.ANALYTICS_READ),
)
async def attribution(
    request: Request,
    conn: Connection,
    since: Since = None,
    until: Until = None,
    lookback_days: Lookback = 30,
    group: Group = [],  # noqa: B006 (FastAPI reads the default, never mutates it)
    by_campaign: ByCampaign = False,
    models: Annotated[list[Model], Query(max_length=9)] = [],  # noqa: B006
    half_life_days: Annotated[float, Query(gt=0, le=365)] = 7.0,
    bootstrap: Annotated[int, Query(ge=0, le=500)] = 100,
    seed: Annotated[int, Query(ge=0, le=2**31 - 1)] = 18,
) -> dict[str, Any]:
    _numeric()
    start, end = _period(since, until)
    report = await reports.attribution_report(
        conn,
        principal_of(request).tenant_id,
        since=start,
        until=end,
        setup=_setup(lookback_days, group, by_campaign),
        models=models or list(Model),
        half_life_days=half_life_days,
        bootstrap=bootstrap,
        seed=seed,
    )
    return report.as_json()


@router.get(
    "/ropo",
    summary="ROPO, reverse ROPO and how much store revenue is linked, by link method",
    openapi_extra=needs(Scope.ANALYTICS_READ),
)
async def ropo(
    request: Request,
    conn: Connection,
    since: Since = None,
    until: Until = None,
    lookback_days: Lookback = 30,
) -> dict[str, Any]:
    start, end = _period(since, until)
    report = await reports.ropo_report(
        conn,
        principal_of(request).tenant_id,
        since=start,
        until=end,
        setup=_setup(lookback_days, [], False),
    )
    return report


@router.post(
    "/ltv",
    summary="Fit lifetime value and store every buyer's scores (ltv.* and rfm.* in profiles), "
    "a job: the fit, or 202 and the job to follow if it takes longer than the server waits",
    # Starting again joins the fit already running, and a refit stores the same scores for the
    # same orders, so a retry needs no stored answer (and the request holds no transaction).
    openapi_extra=needs(Scope.ANALYTICS_RUN, own_idempotency=True),
    response_model=dict[str, Any],
    responses={202: {"model": Job, "description": "Still running: follow the job"}},
)
async def fit_ltv(request: Request, body: LtvParams) -> dict[str, Any] | Response:
    _numeric()
    ended = await run_and_wait(
        request, LTV_KIND, "the lifetime value fit", body.model_dump(mode="json")
    )
    if isinstance(ended, Response):
        return ended
    assert ended.result is not None  # a done job of this kind always has its result
    return ended.result


@router.post(
    "/journeys/refresh",
    summary="Add the last finished days to the daily journey aggregate (a job): the days "
    "written, or 202 and the job to follow if it takes longer than the server waits",
    # A day per step; starting again joins the job already running, and a day stored is not
    # computed again, so a retry needs no stored answer (and the request holds no transaction).
    openapi_extra=needs(Scope.ANALYTICS_RUN, own_idempotency=True),
    response_model=RefreshResult,
    responses={202: {"model": Job, "description": "Still running: follow the job"}},
)
async def refresh(request: Request, body: RefreshParams) -> RefreshResult | Response:
    ended = await run_and_wait(
        request, REFRESH_KIND, "the journey refresh", body.model_dump(mode="json")
    )
    if isinstance(ended, Response):
        return ended
    return RefreshResult.model_validate(ended.result)


@router.get(
    "/report",
    summary="The analytics report as one HTML page with inline SVG charts (no network needed)",
    openapi_extra=needs(Scope.ANALYTICS_READ),
    response_class=HTMLResponse,
)
async def html_report(
    request: Request,
    conn: Connection,
    since: Since = None,
    until: Until = None,
    lookback_days: Lookback = 30,
    holdout_days: Annotated[int | None, Query(ge=7, le=365)] = None,
    bootstrap: Annotated[int, Query(ge=0, le=500)] = 50,
) -> HTMLResponse:
    _numeric()
    start, end = _period(since, until)
    page = await reports.html_report(
        conn,
        principal_of(request).tenant_id,
        since=start,
        until=end,
        setup=_setup(lookback_days, [], False),
        holdout=timedelta(days=holdout_days) if holdout_days else None,
        bootstrap=bootstrap,
    )
    return HTMLResponse(page)
