"""`omnisdk-server analytics ...`: attribution, ROPO, lifetime value and the HTML report.

    omnisdk-server analytics attribution --tenant T [--since D] [--until D] [--lookback-days N]
        [--model M ...] [--group kind=channel ...] [--by-campaign] [--bootstrap N]
        [--format table|csv|json]
    omnisdk-server analytics ropo --tenant T [--since D] [--until D] [--format ...]
    omnisdk-server analytics ltv --tenant T [--holdout-days N] [--months N] [--format ...]
    omnisdk-server analytics refresh --tenant T [--days N]      (the daily journey aggregate)
    omnisdk-server analytics report --tenant T --output FILE.html [--holdout-days N]

Long runs draw a progress bar on stderr (when it is a terminal, or with --progress).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from server_stub.analytics import AnalyticsUnavailable, require_numeric
from server_stub.analytics.attribution import Model
from server_stub.analytics.touchpoints import Grouping


class ProgressBar:
    """`[#####.....]  50%  done/total label` redrawn in place on a terminal stream."""

    def __init__(self, label: str, stream: TextIO, width: int = 30) -> None:
        self.label, self.stream, self.width = label, stream, width
        self.drawn = False

    def __call__(self, done: int, total: int) -> None:
        share = done / total if total else 1.0
        filled = round(share * self.width)
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\r[{bar}] {share:4.0%} {done}/{total} {self.label}")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()


def _when(option: str, text: str) -> datetime:
    """An ISO date or time in UTC (one without a zone is taken as UTC), within the bounds."""
    from server_stub.cli import CommandError
    from server_stub.services.analytics import bounded

    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"{option} is an ISO 8601 date or time, like 2026-11-01 or 2026-11-01T00:00:00Z"
        ) from None
    try:
        return bounded(option, value if value.tzinfo else value.replace(tzinfo=UTC))
    except ValueError as bad:
        raise CommandError(str(bad)) from None


def _period(args: argparse.Namespace) -> tuple[datetime, datetime]:
    until = _when("--until", args.until) if args.until else datetime.now(UTC)
    since = _when("--since", args.since) if args.since else until - timedelta(days=30)
    if not since < until:
        from server_stub.cli import CommandError

        raise CommandError("--since must be before --until")
    return since, until


def _days(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number of days from `low` to `high`, as the API allows."""

    def parse(text: str) -> int:
        try:
            days = int(text)
        except ValueError:
            days = low - 1
        if not low <= days <= high:
            raise argparse.ArgumentTypeError(f"give a whole number of days from {low} to {high}")
        return days

    return parse


def _setup(args: argparse.Namespace) -> Any:
    from server_stub.cli import CommandError
    from server_stub.services.analytics import JourneySetup

    try:
        grouping = Grouping.parse(getattr(args, "group", None) or [], args.by_campaign)
    except ValueError as bad:
        raise CommandError(str(bad)) from None
    return JourneySetup(timedelta(days=args.lookback_days), grouping)


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _csv(headers: list[str], rows: list[list[Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(headers)
    writer.writerows(rows)
    return out.getvalue().rstrip("\n")


def _emit(args: argparse.Namespace, data: Any, headers: list[str], rows: list[list[Any]]) -> None:
    if args.format == "json":
        print(json.dumps(data, indent=2, sort_keys=True))
    elif args.format == "csv":
        print(_csv(headers, rows))
    else:
        print(_table(headers, rows))


def _run(args: argparse.Namespace, label: str, work: Callable[[Any, Any], Any]) -> Any:
    """Run `work(conn, progress)` in one transaction of the tenant's database."""
    from server_stub.cli import CommandError, _database_url, _require_tenant, _with_database

    try:
        require_numeric()
    except AnalyticsUnavailable as missing:
        raise CommandError(str(missing)) from None
    show = args.progress or (args.progress is None and sys.stderr.isatty())
    bar = ProgressBar(label, sys.stderr) if show else None

    async def job(database: Any) -> Any:
        async with database.transaction(write=True) as conn:
            await _require_tenant(conn, args.tenant)
            return await work(conn, bar)

    try:
        return asyncio.run(_with_database(_database_url(args), job))
    finally:
        if bar is not None:
            bar.close()


def cmd_attribution(args: argparse.Namespace) -> None:
    from server_stub.services import analytics_reports as reports

    since, until = _period(args)
    models = [Model(m) for m in args.model] if args.model else list(Model)
    report = _run(
        args,
        "customers",
        lambda conn, bar: reports.attribution_report(
            conn,
            args.tenant,
            since=since,
            until=until,
            setup=_setup(args),
            models=models,
            half_life_days=args.half_life_days,
            bootstrap=args.bootstrap,
            seed=args.seed,
            progress=bar,
        ),
    )
    data = report.as_json()
    rows = [
        [
            m["model"],
            c["channel"],
            c["conversions"],
            c["revenue"],
            c["share"],
            c["share_low"],
            c["share_high"],
        ]
        for m in data["models"]
        for c in m["credits"]
    ]
    headers = ["model", "channel", "conversions", "revenue", "share", "share_low", "share_high"]
    _emit(args, data, headers, rows)


def cmd_ropo(args: argparse.Namespace) -> None:
    from server_stub.services import analytics_reports as reports

    since, until = _period(args)
    data = _run(
        args,
        "customers",
        lambda conn, bar: reports.ropo_report(
            conn, args.tenant, since=since, until=until, setup=_setup(args), progress=bar
        ),
    )
    store, online = data["store"], data["online"]
    rows: list[list[Any]] = [
        ["store revenue", store["revenue"], store["orders"]],
        [
            "  researched online (ROPO)",
            store["researched_online_revenue"],
            store["researched_online_orders"],
        ],
        ["online revenue", online["revenue"], online["orders"]],
        [
            "  after a store touch (reverse ROPO)",
            online["after_store_revenue"],
            online["after_store_orders"],
        ],
    ]
    rows += [
        [f"  store revenue linked by {method}", link["revenue"], link["orders"]]
        for method, link in store["links"].items()
    ]
    rows += [
        ["ROPO share", store["ropo_share"], None],
        ["reverse ROPO share", online["reverse_ropo_share"], None],
        ["store revenue linked", store["linked_share"], None],
    ]
    _emit(args, data, ["measure", "revenue", "orders"], rows)


def _run_as_job(args: argparse.Namespace, kind: str, params: dict[str, Any]) -> dict[str, Any]:
    """Run (or resume, or follow) the tenant's job of `kind` here, as `jobs run` does."""
    from server_stub.cli import CommandError, _run_job

    try:
        require_numeric()
    except AnalyticsUnavailable as missing:
        raise CommandError(str(missing)) from None
    args.kind = kind
    args.param = [f"{name}={json.dumps(value)}" for name, value in params.items()]
    return _run_job(args).result or {}


def cmd_ltv(args: argparse.Namespace) -> None:
    from server_stub.services import analytics_jobs

    params = {"months": args.months, "annual_discount_rate": args.discount_rate}
    if args.holdout_days:
        params["holdout_days"] = args.holdout_days
    data = _run_as_job(args, analytics_jobs.LTV_KIND, params)
    rows: list[list[Any]] = [
        ["model", data["model"]],
        ["customers scored", data["customers"]],
        ["repeat buyers", data["repeat_buyers"]],
        ["total CLV", data["clv_total"]],
        *[[name, value] for name, value in data["parameters"].items()],
    ]
    if data["calibration"]:
        c = data["calibration"]
        rows += [
            ["holdout MAE", c["mean_absolute_error"]],
            ["holdout rank correlation", c["rank_correlation"]],
            ["holdout top-decile capture", c["top_decile_capture"]],
        ]
    if data["note"]:
        rows.append(["note", data["note"]])
    _emit(args, data, ["measure", "value"], rows)


def cmd_refresh(args: argparse.Namespace) -> None:
    from server_stub.services import analytics_jobs

    _setup(args)  # a bad --group is told here, before a job starts
    params = {
        "days": args.days,
        "lookback_days": args.lookback_days,
        "group": args.group or [],
        "by_campaign": args.by_campaign,
    }
    written = _run_as_job(args, analytics_jobs.REFRESH_KIND, params)["days_written"]
    print(f"journey aggregate: {len(written)} day(s) added")


def cmd_report(args: argparse.Namespace) -> None:
    from server_stub.services import analytics_reports as reports

    since, until = _period(args)
    page = _run(
        args,
        "customers",
        lambda conn, bar: reports.html_report(
            conn,
            args.tenant,
            since=since,
            until=until,
            setup=_setup(args),
            holdout=timedelta(days=args.holdout_days) if args.holdout_days else None,
            bootstrap=args.bootstrap,
        ),
    )
    with open(args.output, "w", encoding="utf-8") as out:
        out.write(page)
    print(f"report written to {args.output}")


def add_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register `analytics ...` on the top-level parser's subcommands."""
    analytics = commands.add_parser("analytics", help="attribution, ROPO and lifetime value")
    sub = analytics.add_subparsers(dest="action", required=True)

    def command(
        name: str,
        run: Callable[[argparse.Namespace], None],
        help: str,
        journeys: bool = True,
        output: bool = True,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, parents=[common], help=help)
        p.add_argument("--tenant", required=True)
        p.add_argument(
            "--progress",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="draw a progress bar on stderr (default: when it is a terminal)",
        )
        if journeys:
            p.add_argument("--since", help="ISO date/time (default: 30 days before --until)")
            p.add_argument("--until", help="ISO date/time, exclusive (default: now)")
            p.add_argument("--lookback-days", type=_days(1, 90), default=30)
            p.add_argument(
                "--group",
                action="append",
                metavar="KIND=CHANNEL",
                help="report a touchpoint kind as the shop's channel (repeat)",
            )
            p.add_argument("--by-campaign", action="store_true")
        if output:
            p.add_argument("--format", choices=["table", "csv", "json"], default="table")
        p.set_defaults(run=run)
        return p

    attribution = command("attribution", cmd_attribution, "credit per channel by model")
    attribution.add_argument("--model", action="append", choices=[m.value for m in Model])
    attribution.add_argument("--half-life-days", type=float, default=7.0)
    attribution.add_argument("--bootstrap", type=int, default=100)
    attribution.add_argument("--seed", type=int, default=18)
    command("ropo", cmd_ropo, "ROPO, reverse ROPO and store link coverage")
    ltv = command("ltv", cmd_ltv, "fit lifetime value and store the scores", journeys=False)
    ltv.add_argument("--holdout-days", type=_days(7, 365))
    ltv.add_argument("--months", type=int, default=12)
    ltv.add_argument("--discount-rate", type=float, default=0.10)
    refresh = command(
        "refresh", cmd_refresh, "add finished days to the journey aggregate", output=False
    )
    refresh.add_argument("--days", type=_days(1, 731), default=30)
    report = command("report", cmd_report, "write the HTML report", output=False)
    report.add_argument("--output", required=True)
    report.add_argument("--holdout-days", type=_days(7, 365))
    report.add_argument("--bootstrap", type=int, default=50)
