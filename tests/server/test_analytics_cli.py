"""`omnisdk-server analytics ...` as an operator types it: table, CSV and JSON, a progress bar,
the HTML report, and clear errors."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import insert

from server_stub.cli import main
from server_stub.services import identity, orders, tenants
from server_stub.services.orders import NewOrder, SaleLine
from server_stub.storage.database import Database
from server_stub.storage.migrate import upgrade
from server_stub.storage.tables import events
from tests.server.conftest import TEST_SEALER

T0 = datetime(2026, 10, 1, 9, 0, tzinfo=UTC)
PERIOD = ["--since", "2026-10-01T00:00:00Z", "--until", "2026-12-01T00:00:00Z"]


async def _seed(url: str) -> str:
    await upgrade(url)
    database = Database(url)
    try:
        async with database.transaction(write=True) as conn:
            tenant = await tenants.create(conn, "cli shop", None, sealer=TEST_SEALER)
            for n in range(6):
                who = await identity.create_customer(conn, tenant.id, T0)
                kind = ("campaign_scanned", "email_clicked", "store_visit")[n % 3]
                await conn.execute(
                    insert(events).values(
                        tenant_id=tenant.id,
                        event_id=f"e{n}",
                        customer_id=who,
                        origin_customer_id=who,
                        name=kind,
                        channel="app" if n % 3 < 2 else "pos",
                        occurred_at=T0,
                        received_at=T0,
                        properties={},
                        category=None,
                        value=None,
                    )
                )
                if n % 2 == 0:
                    await orders.store(
                        conn,
                        tenant.id,
                        NewOrder(
                            reference=f"C-{n}",
                            customer_id=who,
                            channel="pos" if n % 4 else "web",
                            store_id="s1" if n % 4 else None,
                            currency="EUR",
                            total=Decimal("50.00"),
                            placed_at=T0 + timedelta(days=1),
                            link_method="customer_code" if n % 4 else "checkout",
                            lines=(SaleLine("SKU", 1, Decimal("50.00")),),
                        ),
                    )
            return tenant.id
    finally:
        await database.dispose()


@pytest.fixture
def shop(tmp_path: Path) -> tuple[str, list[str]]:
    url = f"sqlite:///{tmp_path / 'analytics.sqlite3'}"
    return asyncio.run(_seed(url)), ["--database-url", url]


def test_attribution_as_a_table_csv_and_json(
    shop: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    tenant, db = shop
    base = ["analytics", "attribution", "--tenant", tenant, *db, *PERIOD, "--bootstrap", "5"]
    assert main([*base, "--model", "last_touch"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "model",
        "channel",
        "conversions",
        "revenue",
        "share",
        "share_low",
        "share_high",
    ]
    assert main([*base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["model"] for r in rows} >= {"first_touch", "markov_1", "shapley"}
    for model in {r["model"] for r in rows}:
        credited = sum(float(r["conversions"]) for r in rows if r["model"] == model)
        assert credited == pytest.approx(3.0)  # the three sales with a touch in the lookback
    assert main([*base, "--format", "json", "--model", "linear"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["models"][0]["revenue"] == 150.0


def test_ropo_and_ltv_and_a_progress_bar(
    shop: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    tenant, db = shop
    assert (
        main(
            [
                "analytics",
                "ropo",
                "--tenant",
                tenant,
                *db,
                *PERIOD,
                "--format",
                "json",
                "--progress",
            ]
        )
        == 0
    )
    out = capsys.readouterr()
    ropo = json.loads(out.out)
    assert ropo["store"]["revenue"] == 50.0 and ropo["online"]["revenue"] == 100.0
    assert ropo["store"]["links"] == {"customer_code": {"orders": 1, "revenue": 50.0}}
    assert "100% 6/6 customers" in out.err  # the bar drew to the end
    assert main(["analytics", "ltv", "--tenant", tenant, *db, "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "rfm" in out.out and "customers scored" in out.out and out.err == ""


def test_the_html_report_is_written(
    shop: tuple[str, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tenant, db = shop
    target = tmp_path / "report.html"
    assert (
        main(
            [
                "analytics",
                "report",
                "--tenant",
                tenant,
                *db,
                *PERIOD,
                "--output",
                str(target),
                "--bootstrap",
                "5",
            ]
        )
        == 0
    )
    assert target.read_text().count("<svg") >= 3


def test_errors_are_clear(shop: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    tenant, db = shop
    assert main(["analytics", "ropo", "--tenant", "ten_nope", *db]) == 2
    assert "no tenant 'ten_nope'" in capsys.readouterr().err
    assert (
        main(["analytics", "attribution", "--tenant", tenant, *db, "--group", "telepathy=crm"]) == 2
    )
    assert "kind=channel" in capsys.readouterr().err
    assert (
        main(
            [
                "analytics",
                "ropo",
                "--tenant",
                tenant,
                *db,
                "--since",
                "2027-01-01",
                "--until",
                "2026-01-01",
            ]
        )
        == 2
    )
    assert "--since must be before --until" in capsys.readouterr().err


def test_the_fit_and_the_refresh_run_as_jobs_with_a_progress_bar(
    shop: tuple[str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    from server_stub import cli

    tenant, db = shop
    assert cli.main(["jobs", "run", "--tenant", tenant, "analytics.ltv.fit", *db]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["model"] == "rfm"
    assert "running analytics.ltv.fit" in out.err and "━" in out.err  # the bar, on stderr
    assert main(["analytics", "refresh", "--tenant", tenant, *db, "--days", "3"]) == 0
    assert "3 day(s) added" in capsys.readouterr().out
    assert cli.main(["jobs", "list", "--tenant", tenant, *db]) == 0
    listed = [line.split("\t")[1:4] for line in capsys.readouterr().out.splitlines()]
    assert ["analytics.journeys.refresh", "done", "3/3"] in listed
