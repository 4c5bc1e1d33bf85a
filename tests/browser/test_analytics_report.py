"""The analytics report in a real Chromium with the network cut: every chart draws, nothing
is fetched. With OMNISDK_DOCS_SCREENSHOTS set, the screenshot is written to docs/images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from server_stub.analytics import ltv
from server_stub.analytics.attribution import Model, Settings, attribute_all
from server_stub.analytics.paths import Journey, Paths
from server_stub.analytics.report import render
from server_stub.services.analytics_reports import AttributionReport
from tests.analytics.test_ltv_models import CALIBRATION_END, cdnow_purchases

DOCS_IMAGES = Path(__file__).resolve().parents[2] / "docs" / "images"


def sample_page() -> str:
    rng = np.random.default_rng(7)
    channels = ["qr_scan", "ad_click", "email_click", "site_visit", "app_visit", "store_visit"]
    lift = {"email_click": 0.25, "store_visit": 0.2, "qr_scan": 0.1}
    journeys = []
    for _ in range(4_000):
        size = int(rng.integers(1, 5))
        labels = tuple(str(c) for c in rng.choice(channels, size))
        p = 0.05 + sum(lift.get(label, 0.0) for label in set(labels))
        converted = bool(rng.random() < min(p, 0.9))
        journeys.append(Journey(labels, tuple(range(3 * size, 0, -3)), converted, 80.0))
    paths = Paths.from_journeys(journeys)
    results = attribute_all(paths, list(Model), Settings(bootstrap=30))
    from datetime import UTC, datetime

    attribution = AttributionReport(
        since=datetime(2026, 11, 1, tzinfo=UTC),
        until=datetime(2026, 12, 1, tzinfo=UTC),
        lookback_days=30,
        paths=len(paths),
        journeys=float(len(journeys)),
        results=results,
        stored_days=0,
    ).as_json()
    ropo = {
        "store": {
            "orders": 120,
            "revenue": 9_600.0,
            "researched_online_orders": 48,
            "researched_online_revenue": 3_840.0,
            "ropo_share": 0.4,
            "linked_share": 0.55,
            "links": {
                "customer_code": {"orders": 40, "revenue": 3_200.0},
                "loyalty_id": {"orders": 20, "revenue": 1_600.0},
                "email_hash": {"orders": 6, "revenue": 480.0},
                "none": {"orders": 54, "revenue": 4_320.0},
            },
        },
        "online": {
            "orders": 300,
            "revenue": 24_000.0,
            "after_store_orders": 45,
            "after_store_revenue": 3_600.0,
            "reverse_ropo_share": 0.15,
        },
        "unattributed": {"orders": 54, "revenue": 4_320.0},
    }
    rows, holdout = [], []
    for purchases in cdnow_purchases().values():
        rows.append(ltv.summarise(purchases, CALIBRATION_END))
        holdout.append(len({day for day, _ in purchases if day > CALIBRATION_END}))
    table = np.array(rows)
    summaries = ltv.Summaries(table[:, 0], table[:, 1], table[:, 2], table[:, 3])
    frequency, spend = ltv.fit_bgnbd(summaries), ltv.fit_gamma_gamma(summaries)
    scores = ltv.score(frequency, spend, summaries)
    from server_stub.services.analytics import clv_histogram

    report = ltv.calibration_report(frequency, summaries, np.array(holdout, float), 39)
    calibration = {
        "customers": report.customers,
        "mean_absolute_error": report.mean_absolute_error,
        "rank_correlation": report.rank_correlation,
        "top_decile_capture": report.top_decile_capture,
        "predicted_purchases": report.predicted_total,
        "actual_purchases": report.actual_total,
        "by_frequency": [
            {"frequency": k, "predicted": p, "actual": a} for k, p, a in report.by_frequency
        ],
    }
    lifetime = {
        "fitted_at": "1997-09-30T00:00:00+00:00",
        "model": "bgnbd+gamma_gamma",
        "customers": len(summaries),
        "clv_total": float(scores.clv.sum()),
        "clv_histogram": clv_histogram(scores.clv),
    }
    return render(attribution, ropo, lifetime, calibration)


def test_the_report_draws_every_chart_with_the_network_cut(browser: object, shots: Path) -> None:
    page = browser.new_page(viewport={"width": 860, "height": 900})  # type: ignore[attr-defined]
    requested: list[str] = []

    def refuse(route: object) -> None:
        requested.append(route.request.url)  # type: ignore[attr-defined]
        route.abort()  # type: ignore[attr-defined]

    page.route("**/*", refuse)
    page.set_content(sample_page())
    charts = page.locator("svg")
    assert charts.count() == 6  # heatmap, Markov and Shapley bars, ROPO, CLV, calibration
    for i in range(charts.count()):
        box = charts.nth(i).bounding_box()
        assert box is not None and box["width"] > 600 and box["height"] > 25
    assert page.locator("svg rect").count() > 100
    assert "of store revenue came from buyers with an online touchpoint" in page.inner_text("body")
    assert requested == []
    page.screenshot(path=shots / "analytics-report.png", full_page=True)
    if os.environ.get("OMNISDK_DOCS_SCREENSHOTS"):
        page.screenshot(path=DOCS_IMAGES / "analytics-report.png", full_page=True)
    page.close()
