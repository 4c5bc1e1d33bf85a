"""The analytics reports as the API, the CLI and the HTML page give them.

Glue between the journeys and fits of `services.analytics` and the pure models: one function
per report, each returning plain data (JSON-ready) so the three outlets show the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.analytics.attribution import Attribution, Model, Progress, Settings, attribute
from server_stub.services.analytics import (
    JourneySetup,
    LtvFit,
    collect_journeys,
    journeys_for,
    refresh_days,
)
from server_stub.storage.tables import customer_scores

__all__ = [
    "AttributionReport",
    "JourneySetup",
    "attribution_report",
    "html_report",
    "ltv_json",
    "refresh_days",
    "ropo_report",
]


@dataclass(frozen=True)
class AttributionReport:
    since: datetime
    until: datetime
    lookback_days: float
    paths: int
    journeys: float
    results: list[Attribution]
    stored_days: int

    def as_json(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "lookback_days": self.lookback_days,
            "distinct_paths": self.paths,
            "journeys": self.journeys,
            "days_from_aggregate": self.stored_days,
            "models": [
                {
                    "model": result.model.value,
                    "method": result.method,
                    "conversions": result.conversions,
                    "revenue": round(result.revenue, 2),
                    "credits": [
                        {
                            "channel": c.channel,
                            "conversions": c.conversions,
                            "revenue": round(c.revenue, 2),
                            "share": c.share,
                            "share_low": c.share_low,
                            "share_high": c.share_high,
                        }
                        for c in result.credits
                    ],
                }
                for result in self.results
            ],
        }


async def attribution_report(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    setup: JourneySetup,
    models: list[Model],
    half_life_days: float = 7.0,
    bootstrap: int = 100,
    seed: int = 18,
    progress: Progress | None = None,
) -> AttributionReport:
    """Every requested model over the journeys that ended in [since, until)."""
    counts, stored = await journeys_for(
        conn, tenant_id, since=since, until=until, setup=setup, progress=progress
    )
    paths = counts.freeze()
    settings = Settings(half_life_days=half_life_days, bootstrap=bootstrap, seed=seed)
    results = [attribute(paths, model, settings) for model in models]
    return AttributionReport(
        since=since,
        until=until,
        lookback_days=setup.lookback.total_seconds() / 86400,
        paths=len(paths),
        journeys=float(paths.conversions.sum() + paths.nulls.sum()),
        results=results,
        stored_days=stored,
    )


async def ropo_report(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    setup: JourneySetup,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """ROPO and reverse ROPO shares, and store revenue by how its buyer was linked."""
    found = await collect_journeys(
        conn, tenant_id, since=since, until=until, setup=setup, progress=progress
    )
    ropo = found.ropo
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "lookback_days": setup.lookback.total_seconds() / 86400,
        "store": {
            "orders": ropo.store_orders,
            "revenue": round(ropo.store_revenue, 2),
            "researched_online_orders": ropo.store_orders_researched_online,
            "researched_online_revenue": round(ropo.store_revenue_researched_online, 2),
            "ropo_share": ropo.ropo_share,
            "linked_share": ropo.linked_share,
            "links": {
                method: {"orders": c.orders, "revenue": round(c.revenue, 2)}
                for method, c in sorted(ropo.store_links.items())
            },
        },
        "online": {
            "orders": ropo.online_orders,
            "revenue": round(ropo.online_revenue, 2),
            "after_store_orders": ropo.online_orders_after_store,
            "after_store_revenue": round(ropo.online_revenue_after_store, 2),
            "reverse_ropo_share": ropo.reverse_ropo_share,
        },
        "unattributed": {
            "orders": found.unattributed_orders,
            "revenue": round(found.unattributed_revenue, 2),
        },
    }


def ltv_json(fit: LtvFit) -> dict[str, Any]:
    return {
        "fitted_at": fit.fitted_at.isoformat(),
        "model": fit.model,
        "customers": fit.customers,
        "repeat_buyers": fit.repeat_buyers,
        "parameters": fit.parameters,
        "clv_total": round(fit.clv_total, 2),
        "clv_histogram": [
            {"from": round(low, 2), "to": round(high, 2), "customers": n}
            for low, high, n in fit.clv_histogram
        ],
        "calibration": fit.calibration,
        "note": fit.note,
    }


async def stored_ltv(conn: AsyncConnection, tenant_id: str) -> dict[str, Any] | None:
    """The latest stored fit's summary, from the scores (no refit): for the HTML report."""
    import numpy as np

    from server_stub.services.analytics import clv_histogram

    rows = list(
        await conn.execute(
            select(customer_scores.c.clv, customer_scores.c.fitted_at, customer_scores.c.model)
            .where(customer_scores.c.tenant_id == tenant_id)
            .order_by(customer_scores.c.customer_id)
        )
    )
    if not rows:
        return None
    clv = np.array([row.clv for row in rows if row.clv is not None], np.float64)
    count = (
        await conn.execute(
            select(func.count())
            .select_from(customer_scores)
            .where(customer_scores.c.tenant_id == tenant_id)
        )
    ).scalar_one()
    return {
        "fitted_at": rows[0].fitted_at.isoformat(),
        "model": rows[0].model,
        "customers": count,
        "clv_total": float(clv.sum()),
        "clv_histogram": clv_histogram(clv),
    }


async def html_report(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    setup: JourneySetup,
    holdout: timedelta | None = None,
    bootstrap: int = 50,
) -> str:
    """The whole report as one self-contained HTML page."""
    from server_stub.analytics.report import render
    from server_stub.services.analytics import calibrate

    attribution = await attribution_report(
        conn,
        tenant_id,
        since=since,
        until=until,
        setup=setup,
        models=list(Model),
        bootstrap=bootstrap,
    )
    ropo = await ropo_report(conn, tenant_id, since=since, until=until, setup=setup)
    ltv = await stored_ltv(conn, tenant_id)
    calibration = None
    if holdout is not None:
        calibration = await calibrate(conn, tenant_id, until, holdout)
    return render(attribution.as_json(), ropo, ltv, calibration)
