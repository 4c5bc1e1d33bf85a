"""Attribution, ROPO and lifetime value over the event store and the orders.

Journeys are built per customer (customers read in keyset batches, so memory is bounded by a
batch and by the distinct paths, never by the event store) and aggregated into distinct paths
that the pure models in `server_stub.analytics` read. Finished days are kept in `journey_days`
(`refresh_days`), so a report over a long period reads the stored days and computes only the
days not stored yet.

Lifetime value is fitted on the orders (net of returns, store sales included; several orders on
one day are one purchase) and stored per customer in `customer_scores` with the fit's date; the
profile reads them as `ltv.*` and `rfm.*`.

Every long run takes `progress(done, total)`. numpy and scipy are imported only here and in the
models, after `require_numeric()` said they are installed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Awaitable, Callable, Container, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.analytics import require_numeric
from server_stub.analytics.paths import PathCounts
from server_stub.analytics.touchpoints import (
    DEFAULT_LOOKBACK,
    NOT_TOUCHES,
    Grouping,
    JourneyEnd,
    Sale,
    Touch,
    campaign_of,
    classify,
    journeys,
)
from server_stub.ids import utcnow
from server_stub.services import identity
from server_stub.services.orders import stream_orders
from server_stub.storage.tables import customer_scores, customers, events, journey_days, orders

Progress = Callable[[int, int], None]
# A job's progress is awaited (services/jobs.py JobContext.progress); a CLI bar's is not.
AnyProgress = Callable[[int, int], Awaitable[None] | None]
CUSTOMER_BATCH = 500
SCORE_BATCH = 1000  # customers' scores written per statement (and per job step)
STORE_CHANNEL = "pos"
ONLINE_CHANNELS = ("web", "app")
# The times a period may start or end at: the event store holds nothing older than 1970, and
# reading reaches back two lookbacks before a period (and a day past it), which must stay
# within the years a datetime holds (1 to 9999).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(9000, 1, 1, tzinfo=UTC)


def bounded(name: str, value: datetime) -> datetime:
    """`value` in UTC, or a ValueError naming `name` if it lies outside EARLIEST..LATEST."""
    if not EARLIEST <= value <= LATEST:  # compared before converting: year 1 +01:00 overflows
        raise ValueError(
            f"{name} must be from {EARLIEST:%Y-%m-%d} to {LATEST:%Y-%m-%d} (UTC), inclusive"
        )
    return value.astimezone(UTC)


@dataclass(frozen=True)
class JourneySetup:
    """What journeys are built with: the lookback window and the shop's channel grouping."""

    lookback: timedelta = DEFAULT_LOOKBACK
    grouping: Grouping = field(default_factory=Grouping)

    @property
    def key(self) -> str:
        described = {
            "lookback_s": self.lookback.total_seconds(),
            "channels": sorted(self.grouping.channels.items()),
            "by_campaign": self.grouping.by_campaign,
        }
        return hashlib.sha256(json.dumps(described).encode()).hexdigest()[:16]


@dataclass
class LinkCoverage:
    orders: int = 0
    revenue: float = 0.0


@dataclass
class Ropo:
    """Store revenue researched online, online revenue preceded by the store, and how much of
    the store's revenue could be linked to a customer at all (by link method)."""

    store_orders: int = 0
    store_revenue: float = 0.0
    store_orders_researched_online: int = 0
    store_revenue_researched_online: float = 0.0
    online_orders: int = 0
    online_revenue: float = 0.0
    online_orders_after_store: int = 0
    online_revenue_after_store: float = 0.0
    store_links: dict[str, LinkCoverage] = field(default_factory=dict)

    @property
    def ropo_share(self) -> float:
        return (
            self.store_revenue_researched_online / self.store_revenue if self.store_revenue else 0.0
        )

    @property
    def reverse_ropo_share(self) -> float:
        return self.online_revenue_after_store / self.online_revenue if self.online_revenue else 0.0

    @property
    def linked_share(self) -> float:
        unlinked = self.store_links.get("none", LinkCoverage()).revenue
        return (self.store_revenue - unlinked) / self.store_revenue if self.store_revenue else 0.0

    def count(self, end: JourneyEnd) -> None:
        sale = end.sale
        if sale is None:
            return
        if sale.channel == STORE_CHANNEL:
            self.store_orders += 1
            self.store_revenue += sale.value
            coverage = self.store_links.setdefault(sale.link_method, LinkCoverage())
            coverage.orders += 1
            coverage.revenue += sale.value
            if end.online:
                self.store_orders_researched_online += 1
                self.store_revenue_researched_online += sale.value
        elif sale.channel in ONLINE_CHANNELS:
            self.online_orders += 1
            self.online_revenue += sale.value
            if end.in_store:
                self.online_orders_after_store += 1
                self.online_revenue_after_store += sale.value


@dataclass
class Journeys:
    """Journeys ended in a period: paths per end day, ROPO counts, unattributed sales."""

    days: dict[date, PathCounts] = field(default_factory=dict)
    ropo: Ropo = field(default_factory=Ropo)
    unattributed_orders: int = 0
    unattributed_revenue: float = 0.0
    journeys: int = 0

    def paths(self) -> PathCounts:
        merged = PathCounts()
        for day in sorted(self.days):
            merged.merge(self.days[day])
        return merged

    def add(self, end: JourneyEnd) -> None:
        self.ropo.count(end)
        if not end.touches:
            self.unattributed_orders += 1
            self.unattributed_revenue += end.sale.value if end.sale else 0.0
            return
        self.journeys += 1
        counts = self.days.setdefault(end.ended_at.date(), PathCounts())
        converted = end.sale is not None
        counts.add(
            end.labels,
            end.ages,
            conversions=1.0 if converted else 0.0,
            nulls=0.0 if converted else 1.0,
            value=end.sale.value if end.sale else 0.0,
        )


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _sale(row: Any) -> Sale:
    return Sale(
        at=row.placed_at,
        channel=row.channel,
        value=float(row.total - row.refunded),
        link_method=row.link_method,
    )


async def _id_pages(
    conn: AsyncConnection, tenant: Any, column: Any, tenant_id: str, batch: int
) -> Any:
    """The tenant's ids in `column` (a table's key, `tenant` its tenant column), in keyset
    pages of `batch`."""
    after = ""
    while True:
        rows = await conn.execute(
            select(column).where(tenant == tenant_id, column > after).order_by(column).limit(batch)
        )
        ids = [row[0] for row in rows]
        if not ids:
            return
        yield ids
        after = ids[-1]


async def collect_journeys(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    setup: JourneySetup = JourneySetup(),
    as_of: datetime | None = None,
    progress: Progress | None = None,
    batch: int = CUSTOMER_BATCH,
) -> Journeys:
    """The journeys that ended in [since, until), from events and orders. Touches are read from
    two lookback windows before `since` (a journey's older touches are not read)."""
    as_of = as_of or utcnow()
    horizon = min(until, as_of)
    first_touch = since - 2 * setup.lookback
    result = Journeys()
    total = (
        await conn.execute(
            select(func.count()).select_from(customers).where(customers.c.tenant_id == tenant_id)
        )
    ).scalar_one()
    done = 0
    async for ids in _id_pages(conn, customers.c.tenant_id, customers.c.id, tenant_id, batch):
        touches: dict[str, list[Touch]] = {}
        rows = await conn.execute(
            select(
                events.c.customer_id,
                events.c.name,
                events.c.channel,
                events.c.occurred_at,
                events.c.properties,
            )
            .where(
                events.c.tenant_id == tenant_id,
                events.c.customer_id.in_(ids),
                events.c.occurred_at >= first_touch,
                events.c.occurred_at < horizon,
                events.c.name.not_in(NOT_TOUCHES),
            )
            .order_by(events.c.customer_id, events.c.occurred_at, events.c.seq)
        )
        for row in rows:
            properties = row.properties or {}
            kind = classify(row.name, row.channel, properties)
            if kind is not None:
                label = setup.grouping.label(kind, campaign_of(properties))
                touches.setdefault(row.customer_id, []).append(Touch(row.occurred_at, kind, label))
        sales: dict[str, list[Sale]] = {}
        rows = await conn.execute(
            select(orders)
            .where(
                orders.c.tenant_id == tenant_id,
                orders.c.customer_id.in_(ids),
                orders.c.placed_at >= first_touch,
                orders.c.placed_at < horizon,
            )
            .order_by(orders.c.customer_id, orders.c.placed_at, orders.c.id)
        )
        for row in rows:
            sales.setdefault(row.customer_id, []).append(_sale(row))
        for customer_id in ids:
            for end in journeys(
                touches.get(customer_id, ()),
                sales.get(customer_id, ()),
                lookback=setup.lookback,
                as_of=as_of,
            ):
                if since <= end.ended_at < until:
                    result.add(end)
        done += len(ids)
        if progress is not None:
            progress(min(done, total), total)
    async for page in stream_orders(conn, tenant_id, since=since, until=horizon):
        for fact in page:
            if fact.customer_id is None:  # a store sale linked to nobody: no journey to credit
                sale = Sale(fact.placed_at, fact.channel, fact.net_value, fact.link_method)
                result.add(JourneyEnd(fact.placed_at, (), (), sale))
    return result


# ---------------------------------------------------------------- the daily aggregate


def _finished_days(since: datetime, until: datetime, as_of: datetime) -> list[date]:
    """Days in [since, until) over before `as_of`: their journeys can no longer change."""
    day = since.date() if since.time() == time() else since.date() + timedelta(days=1)
    last = min(until, as_of)
    out = []
    while day_start(day + timedelta(days=1)) <= last:
        out.append(day)
        day += timedelta(days=1)
    return out


async def stored_days(
    conn: AsyncConnection, tenant_id: str, setup: JourneySetup, days: Iterable[date]
) -> set[date]:
    wanted = [d.isoformat() for d in days]
    if not wanted:
        return set()
    rows = await conn.execute(
        select(journey_days.c.day)
        .where(
            journey_days.c.tenant_id == tenant_id,
            journey_days.c.setup == setup.key,
            journey_days.c.day.in_(wanted),
        )
        .distinct()
    )
    return {date.fromisoformat(row.day) for row in rows}


async def refresh_days(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    setup: JourneySetup = JourneySetup(),
    as_of: datetime | None = None,
    progress: Progress | None = None,
) -> list[date]:
    """Store the path counts of every finished day of [since, until) not stored yet; returns
    the days written. The same days refreshed one call per day store the same rows."""
    as_of = as_of or utcnow()
    missing = await days_to_refresh(conn, tenant_id, since, until, setup, as_of)
    for done, day in enumerate(missing, 1):
        await refresh_day(conn, tenant_id, day, setup=setup, as_of=as_of)
        if progress is not None:
            progress(done, len(missing))
    return missing


async def days_to_refresh(
    conn: AsyncConnection,
    tenant_id: str,
    since: datetime,
    until: datetime,
    setup: JourneySetup,
    as_of: datetime,
    *,
    full: bool = False,
) -> list[date]:
    """The finished days of [since, until) a refresh writes: those not stored yet (all with
    `full`)."""
    finished = _finished_days(since, until, as_of)
    if full:
        return finished
    return sorted(set(finished) - await stored_days(conn, tenant_id, setup, finished))


async def refresh_day(
    conn: AsyncConnection,
    tenant_id: str,
    day: date,
    *,
    setup: JourneySetup,
    as_of: datetime,
) -> int:
    """Store (or replace) one finished day's path counts; returns the rows written. A day with
    no journey is stored as one empty row, so it is not computed again.

    A day is computed on its own, never as part of a longer period: a journey's touches are
    read from two lookbacks before the day it ended (collect_journeys), so reading from an
    earlier start would give the long journeys of later days more touches, and what a day
    stores would depend on which days were refreshed with it."""
    computed = await collect_journeys(
        conn,
        tenant_id,
        since=day_start(day),
        until=day_start(day + timedelta(days=1)),
        setup=setup,
        as_of=as_of,
    )
    paths = computed.days.get(day, PathCounts()).items()
    rows = [
        _day_row(tenant_id, setup, day, number, [list(labels), list(ages)], values)
        for number, ((labels, ages), values) in enumerate(paths)
    ] or [_day_row(tenant_id, setup, day, 0, [[], []], (0.0, 0.0, 0.0))]
    await conn.execute(
        delete(journey_days).where(
            journey_days.c.tenant_id == tenant_id,
            journey_days.c.setup == setup.key,
            journey_days.c.day == day.isoformat(),
        )
    )
    for start in range(0, len(rows), 1000):
        await conn.execute(insert(journey_days), rows[start : start + 1000])
    return len(rows)


def _day_row(
    tenant_id: str,
    setup: JourneySetup,
    day: date,
    number: int,
    path: list[list[Any]],
    values: Iterable[float],
) -> dict[str, Any]:
    conversions, nulls, value = values
    return {
        "tenant_id": tenant_id,
        "day": day.isoformat(),
        "setup": setup.key,
        "path_no": number,
        "path": path,
        "conversions": conversions,
        "nulls": nulls,
        "value": value,
    }


async def journeys_for(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    since: datetime,
    until: datetime,
    setup: JourneySetup = JourneySetup(),
    as_of: datetime | None = None,
    progress: Progress | None = None,
) -> tuple[PathCounts, int]:
    """The paths of [since, until): the stored days read from the aggregate, the days after
    the last stored one computed from the events. Returns the paths and the days read stored."""
    as_of = as_of or utcnow()
    finished = _finished_days(since, until, as_of)
    stored = await stored_days(conn, tenant_id, setup, finished)
    counts = PathCounts()
    if stored:
        rows = await conn.execute(
            select(journey_days)
            .where(
                journey_days.c.tenant_id == tenant_id,
                journey_days.c.setup == setup.key,
                journey_days.c.day.in_([d.isoformat() for d in stored]),
            )
            .order_by(journey_days.c.day, journey_days.c.path_no)
        )
        for row in rows:
            labels, ages = row.path
            if labels:
                counts.add(
                    labels, ages, conversions=row.conversions, nulls=row.nulls, value=row.value
                )
    # Computed from the events: the part of the first day before `since` left it unfinished
    # (never stored: a period from 14:23 lost 14:23 to midnight), and everything from the first
    # day not stored (a gap inside the period is computed too).
    first_missing = next((d for d in finished if d not in stored), None)
    live_since = since
    if first_missing is not None:
        live_since = max(since, day_start(first_missing))
    elif finished:
        live_since = max(since, day_start(finished[-1] + timedelta(days=1)))
    ranges = [(live_since, until)]
    head_end = day_start(finished[0]) if finished else since
    if since < head_end:  # `since` falls inside a day
        if live_since <= head_end:  # and the first whole day is not stored: one range
            ranges = [(since, until)]
        else:
            ranges.insert(0, (since, head_end))
    for start, end in ranges:
        if not start < end:
            continue
        live = await collect_journeys(
            conn, tenant_id, since=start, until=end, setup=setup, as_of=as_of, progress=progress
        )
        for day in sorted(live.days):
            if day not in stored:
                counts.merge(live.days[day])
    return counts, len(stored)


# ---------------------------------------------------------------- lifetime value


@dataclass(frozen=True)
class Buyers:
    """Per linked customer (sorted by id), her purchase days: compact arrays, one entry per
    buyer, never an object per buyer or per order. Days are proleptic ordinals."""

    ids: list[str]
    first: Any  # int64 arrays
    last: Any
    days: Any
    first_value: Any  # float64 arrays
    total: Any

    def __len__(self) -> int:
        return len(self.ids)


class _BuyerBook:
    """Buyers as they are read, oldest order first: arrays grown by doubling."""

    def __init__(self) -> None:
        import numpy as np

        self.row: dict[str, int] = {}
        self.ints = np.zeros((3, 1024), np.int64)  # first, last, days
        self.money = np.zeros((2, 1024), np.float64)  # first_value, total

    def add(self, customer_id: str, day: int, value: float) -> None:
        import numpy as np

        at = self.row.get(customer_id)
        if at is None:
            at = self.row[customer_id] = len(self.row)
            if at == self.ints.shape[1]:
                self.ints = np.concatenate([self.ints, np.zeros_like(self.ints)], axis=1)
                self.money = np.concatenate([self.money, np.zeros_like(self.money)], axis=1)
            self.ints[:, at] = (day, day, 1)
            self.money[:, at] = (value, value)
            return
        if day != self.ints[1, at]:
            self.ints[1, at] = day
            self.ints[2, at] += 1
        elif self.ints[2, at] == 1:
            self.money[0, at] += value
        self.money[1, at] += value

    def sorted(self) -> Buyers:
        import numpy as np

        ids = sorted(self.row)
        order = np.array([self.row[i] for i in ids], np.int64)
        first, last, days = self.ints[:, order]
        first_value, total = self.money[:, order]
        return Buyers(ids, first, last, days, first_value, total)


@dataclass(frozen=True)
class LtvFit:
    """What a lifetime value fit found, for the API, the CLI and the report."""

    fitted_at: datetime
    model: str  # "bgnbd+gamma_gamma" or "rfm"
    customers: int
    repeat_buyers: int
    parameters: dict[str, float]
    clv_histogram: list[tuple[float, float, int]]
    clv_total: float
    calibration: dict[str, Any] | None
    note: str = ""


async def order_count(conn: AsyncConnection, tenant_id: str, until: datetime) -> int:
    return int(
        (
            await conn.execute(
                select(func.count())
                .select_from(orders)
                .where(orders.c.tenant_id == tenant_id, orders.c.placed_at < until)
            )
        ).scalar_one()
    )


async def read_buyers(
    conn: AsyncConnection, tenant_id: str, until: datetime, progress: AnyProgress | None
) -> Buyers:
    """Per linked customer, her purchase days up to `until` (orders with a positive net value;
    same-day orders are one purchase), from the orders streamed oldest first in pages."""
    book = _BuyerBook()
    total = await order_count(conn, tenant_id, until) if progress is not None else 0
    done = 0
    async for page in stream_orders(conn, tenant_id, until=until):
        for fact in page:
            if fact.customer_id is not None and fact.net_value > 0:
                book.add(fact.customer_id, fact.placed_at.date().toordinal(), fact.net_value)
        done += len(page)
        if progress is not None:
            reported = progress(done, total)
            if reported is not None:
                await reported
    return book.sorted()


def _summaries(buyers: Buyers, end: date) -> Any:
    import numpy as np

    from server_stub.analytics import ltv

    frequency = (buyers.days - 1).astype(np.float64)
    recency = (buyers.last - buyers.first).astype(np.float64) / ltv.WEEK_DAYS
    age = (end.toordinal() - buyers.first).astype(np.float64) / ltv.WEEK_DAYS
    repeat_value = buyers.total - buyers.first_value
    monetary = np.divide(repeat_value, frequency, out=np.zeros_like(frequency), where=frequency > 0)
    return ltv.Summaries(frequency, recency, age, monetary)


def clv_histogram(values: Any, bins: int = 12) -> list[tuple[float, float, int]]:
    import numpy as np

    if len(values) == 0:
        return []
    top = float(np.percentile(values, 99)) or float(values.max()) or 1.0
    counts, edges = np.histogram(np.clip(values, 0, top), bins=bins, range=(0, top))
    return [(float(edges[i]), float(edges[i + 1]), int(counts[i])) for i in range(bins)]


def _number(value: float) -> float | None:
    """JSON has no NaN (a rank correlation over constant values is undefined): null instead."""
    return float(value) if math.isfinite(value) else None


async def calibrate(
    conn: AsyncConnection, tenant_id: str, as_of: datetime, holdout: timedelta
) -> dict[str, Any] | None:
    import numpy as np

    from server_stub.analytics import ltv

    split = as_of - holdout
    buyers = await read_buyers(conn, tenant_id, split, None)
    if int(np.sum(buyers.days > 1)) < ltv.MIN_REPEAT_BUYERS:
        return None
    summaries = _summaries(buyers, split.date())
    model = ltv.fit_bgnbd(summaries)
    row = {customer_id: n for n, customer_id in enumerate(buyers.ids)}
    later: dict[str, set[date]] = {}
    async for page in stream_orders(conn, tenant_id, since=split, until=as_of):
        for fact in page:
            if fact.customer_id in row and fact.net_value > 0:
                later.setdefault(fact.customer_id, set()).add(fact.placed_at.date())
    actual = np.array([len(later.get(i, ())) for i in buyers.ids], np.float64)
    report = ltv.calibration_report(model, summaries, actual, holdout.days / ltv.WEEK_DAYS)
    return {
        "split_at": split.isoformat(),
        "holdout_days": holdout.days,
        "customers": report.customers,
        "mean_absolute_error": _number(report.mean_absolute_error),
        "rank_correlation": _number(report.rank_correlation),
        "top_decile_capture": report.top_decile_capture,
        "predicted_purchases": report.predicted_total,
        "actual_purchases": report.actual_total,
        "by_frequency": [
            {"frequency": k, "predicted": p, "actual": a} for k, p, a in report.by_frequency
        ],
    }


@dataclass(frozen=True)
class FittedModels:
    """The fit's outcome, all of it JSON (a job's checkpoint keeps it): the two models'
    parameters, or none when only RFM could be scored, and why."""

    fitted_at: datetime
    repeat_buyers: int
    frequency: dict[str, float] | None = None  # ltv.BgNbd's fields
    spend: dict[str, float] | None = None  # ltv.GammaGamma's fields
    note: str = ""

    @property
    def model(self) -> str:
        return "rfm" if self.frequency is None else "bgnbd+gamma_gamma"

    @property
    def parameters(self) -> dict[str, float]:
        if self.frequency is None or self.spend is None:
            return {}
        skip = "log_likelihood"
        return {k: v for k, v in {**self.frequency, **self.spend}.items() if k != skip}

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "fitted_at": self.fitted_at.isoformat()}

    @classmethod
    def from_json(cls, state: dict[str, Any]) -> FittedModels:
        return cls(**{**state, "fitted_at": datetime.fromisoformat(state["fitted_at"])})


def fit_models(buyers: Buyers, fitted_at: datetime) -> FittedModels:
    """Fit BG/NBD + Gamma-Gamma on the buyers' summaries (none with too few repeat buyers)."""
    import numpy as np

    from server_stub.analytics import ltv

    summaries = _summaries(buyers, fitted_at.date())
    repeat_buyers = int(np.sum(summaries.frequency > 0))
    if repeat_buyers < ltv.MIN_REPEAT_BUYERS:
        note = (
            f"RFM only: {repeat_buyers} repeat buyers, the models need at least "
            f"{ltv.MIN_REPEAT_BUYERS}"
        )
        return FittedModels(fitted_at, repeat_buyers, note=note)
    try:
        frequency_model = ltv.fit_bgnbd(summaries)
        spend_model = ltv.fit_gamma_gamma(summaries)
    except ltv.FitFailed as failed:
        return FittedModels(fitted_at, repeat_buyers, note=f"RFM only: {failed}")
    return FittedModels(fitted_at, repeat_buyers, asdict(frequency_model), asdict(spend_model))


@dataclass(frozen=True)
class ScoreTable:
    """Every buyer's scores under a fit, as arrays in the buyers' order."""

    fit: FittedModels
    ids: list[str]
    scores: Any  # ltv.Scores, or None with RFM only
    rfm: Any  # ltv.Rfm

    @property
    def clv(self) -> Any:
        import numpy as np

        return self.scores.clv if self.scores is not None else np.zeros(0)

    def rows(self, tenant_id: str, start: int, stop: int) -> list[dict[str, Any]]:
        scores, rfm = self.scores, self.rfm

        def value(name: str, i: int) -> float | None:
            return None if scores is None else float(getattr(scores, name)[i])

        return [
            {
                "tenant_id": tenant_id,
                "customer_id": self.ids[i],
                "fitted_at": self.fit.fitted_at,
                "model": self.fit.model,
                "p_alive": value("p_alive", i),
                "purchases_90": value("purchases_90", i),
                "purchases_365": value("purchases_365", i),
                "value_per_purchase": value("value_per_purchase", i),
                "clv": value("clv", i),
                "rfm_recency": int(rfm.recency[i]),
                "rfm_frequency": int(rfm.frequency[i]),
                "rfm_monetary": int(rfm.monetary[i]),
            }
            for i in range(start, min(stop, len(self.ids)))
        ]


def score_buyers(
    buyers: Buyers, fit: FittedModels, *, months: int, annual_discount_rate: float
) -> ScoreTable:
    """Score every buyer under `fit` (no fitting: a resumed job scores with its saved fit)."""
    from server_stub.analytics import ltv

    end = fit.fitted_at.date().toordinal()
    rfm = ltv.rfm((end - buyers.last).astype(float), buyers.days.astype(float), buyers.total)
    scores = None
    if fit.frequency is not None and fit.spend is not None:
        scores = ltv.score(
            ltv.BgNbd(**fit.frequency),
            ltv.GammaGamma(**fit.spend),
            _summaries(buyers, fit.fitted_at.date()),
            months=months,
            annual_discount_rate=annual_discount_rate,
        )
    return ScoreTable(fit, buyers.ids, scores, rfm)


async def write_scores(conn: AsyncConnection, rows: list[dict[str, Any]]) -> None:
    """Store these customers' scores in place of their earlier ones: only of customers still
    there, held (FOR KEY SHARE) until we commit. The job read its buyers long before; one
    erased (or merged away) since is not given her scores back after her erasure deleted them."""
    if not rows:
        return
    tenant_id = rows[0]["tenant_id"]
    ids = [row["customer_id"] for row in rows]
    present = await identity.lock_customers(conn, tenant_id, ids, mode="read")
    live = {id for id, merged_into in present.items() if merged_into is None}
    await conn.execute(
        delete(customer_scores).where(
            customer_scores.c.tenant_id == tenant_id, customer_scores.c.customer_id.in_(ids)
        )
    )
    kept = [row for row in rows if row["customer_id"] in live]
    if kept:
        await conn.execute(insert(customer_scores), kept)


async def drop_stale_scores(
    conn: AsyncConnection, tenant_id: str, buyers: Container[str], batch: int = SCORE_BATCH
) -> None:
    """Delete the scores of customers who are no longer buyers (orders refunded, erased),
    reading the stored scores in keyset pages."""
    scored = customer_scores.c
    async for page in _id_pages(conn, scored.tenant_id, scored.customer_id, tenant_id, batch):
        gone = [customer_id for customer_id in page if customer_id not in buyers]
        if gone:
            await conn.execute(
                delete(customer_scores).where(
                    scored.tenant_id == tenant_id, scored.customer_id.in_(gone)
                )
            )


def ltv_fit_of(table: ScoreTable, calibration: dict[str, Any] | None) -> LtvFit:
    return LtvFit(
        fitted_at=table.fit.fitted_at,
        model=table.fit.model,
        customers=len(table.ids),
        repeat_buyers=table.fit.repeat_buyers,
        parameters=table.fit.parameters,
        clv_histogram=clv_histogram(table.clv),
        clv_total=float(table.clv.sum()),
        calibration=calibration,
        note=table.fit.note,
    )


async def fit_lifetime_value(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    as_of: datetime | None = None,
    holdout: timedelta | None = None,
    months: int = 12,
    annual_discount_rate: float = 0.10,
    progress: Progress | None = None,
) -> LtvFit:
    """Fit BG/NBD + Gamma-Gamma on the orders up to `as_of` (RFM only when there are too few
    repeat buyers), store every buyer's scores with the fit's date, and, with `holdout`, report
    how a fit that stopped `holdout` earlier predicted the purchases since. All in the caller's
    transaction (the job `analytics.ltv.fit` runs the same steps in short ones)."""
    require_numeric()
    fitted_at = as_of or utcnow()
    buyers = await read_buyers(conn, tenant_id, fitted_at, progress)
    fit = fit_models(buyers, fitted_at)
    table = score_buyers(buyers, fit, months=months, annual_discount_rate=annual_discount_rate)
    for start in range(0, len(buyers), SCORE_BATCH):
        await write_scores(conn, table.rows(tenant_id, start, start + SCORE_BATCH))
    await drop_stale_scores(conn, tenant_id, set(buyers.ids))
    calibration = None
    if holdout is not None and table.scores is not None:
        calibration = await calibrate(conn, tenant_id, fitted_at, holdout)
    return ltv_fit_of(table, calibration)


async def scores_of(conn: AsyncConnection, tenant_id: str, customer_id: str) -> Any:
    """The stored scores row of one customer, or None (for the profile)."""
    rows = await conn.execute(
        select(customer_scores).where(
            customer_scores.c.tenant_id == tenant_id, customer_scores.c.customer_id == customer_id
        )
    )
    return rows.first()
