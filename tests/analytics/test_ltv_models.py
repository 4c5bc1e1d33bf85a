"""BG/NBD and Gamma-Gamma against the published CDNOW results, and the scores' laws."""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from datetime import date
from pathlib import Path

import numpy as np
import pytest

from server_stub.analytics import ltv

CDNOW = Path(__file__).resolve().parents[1] / "data" / "cdnow"
CALIBRATION_END = date(1997, 9, 30)  # 39 weeks from 1 January 1997 (FHL 2005)
HOLDOUT_END = date(1998, 6, 30)


def cdnow_purchases() -> dict[str, list[tuple[date, float]]]:
    purchases: dict[str, list[tuple[date, float]]] = defaultdict(list)
    with (CDNOW / "CDNOW_sample.txt").open() as lines:
        for line in lines:
            customer, _, day, _, value = line.split()
            purchases[customer].append(
                (date(int(day[:4]), int(day[4:6]), int(day[6:])), float(value))
            )
    return purchases


@pytest.fixture(scope="module")
def cdnow() -> tuple[ltv.Summaries, np.ndarray]:
    rows = []
    holdout = []
    for purchases in cdnow_purchases().values():
        rows.append(ltv.summarise(purchases, CALIBRATION_END))
        holdout.append(len({day for day, _ in purchases if day > CALIBRATION_END}))
    table = np.array(rows)
    return ltv.Summaries(table[:, 0], table[:, 1], table[:, 2], table[:, 3]), np.array(holdout)


def test_summaries_from_transactions_equal_the_published_summary(
    cdnow: tuple[ltv.Summaries, np.ndarray],
) -> None:
    summaries, _ = cdnow
    with (CDNOW / "cdnow_customers_summary_with_transactions.csv").open() as f:
        published = list(csv.DictReader(f))
    assert len(summaries) == len(published) == 2357
    assert summaries.frequency == pytest.approx([float(r["x"]) for r in published])
    assert summaries.recency == pytest.approx([float(r["t_x"]) for r in published], abs=0.006)
    assert summaries.age == pytest.approx([float(r["T"]) for r in published], abs=0.006)
    assert summaries.monetary == pytest.approx([float(r["zbar"]) for r in published], abs=0.006)


def test_bgnbd_reproduces_fader_hardie_lee_2005_on_cdnow(
    cdnow: tuple[ltv.Summaries, np.ndarray],
) -> None:
    model = ltv.fit_bgnbd(cdnow[0])
    assert model.r == pytest.approx(0.243, rel=0.01)
    assert model.alpha == pytest.approx(4.414, rel=0.01)
    assert model.a == pytest.approx(0.793, rel=0.01)
    assert model.b == pytest.approx(2.426, rel=0.01)
    assert model.log_likelihood == pytest.approx(-9582.4, abs=0.1)


def test_gamma_gamma_reproduces_fader_hardie_lee_rfm_and_clv_on_cdnow(
    cdnow: tuple[ltv.Summaries, np.ndarray],
) -> None:
    model = ltv.fit_gamma_gamma(cdnow[0])
    assert model.p == pytest.approx(6.25, rel=0.01)
    assert model.q == pytest.approx(3.74, rel=0.01)
    assert model.gamma == pytest.approx(15.44, rel=0.01)


def test_the_likelihood_of_weighted_distinct_summaries_is_that_of_every_customer() -> None:
    x = np.array([0.0, 0.0, 2.0, 2.0, 1.0, 5.0, 0.0])
    t_x = np.array([0.0, 0.0, 10.0, 10.0, 3.0, 30.0, 0.0])
    big_t = np.array([40.0, 40.0, 40.0, 40.0, 20.0, 38.0, 12.0])
    params = np.log([0.243, 4.414, 0.793, 2.426])
    (dx, dt_x, dbig_t), weights = ltv._distinct(x, t_x, big_t)
    assert len(weights) == 5 and weights.sum() == 7
    one_by_one = ltv._bgnbd_log_likelihood(params, x, t_x, big_t, np.ones(7))
    distinct = ltv._bgnbd_log_likelihood(params, dx, dt_x, dbig_t, weights)
    assert distinct == pytest.approx(one_by_one, rel=1e-12)


def test_scores_follow_the_published_conditional_expectation() -> None:
    model = ltv.BgNbd(r=0.243, alpha=4.414, a=0.793, b=2.426, log_likelihood=0.0)
    # FHL 2005 section 5: a customer with x = 2, t_x = 30.43, T = 38.86 is expected to make
    # 1.226 purchases in the next 39 weeks.
    expected = ltv.expected_purchases(
        model, 39, np.array([2.0]), np.array([30.43]), np.array([38.86])
    )
    assert expected[0] == pytest.approx(1.226, abs=0.002)
    alive = ltv.probability_alive(
        model, np.array([0.0, 5.0]), np.array([0.0, 1.0]), np.array([38.0, 38.0])
    )
    assert alive[0] == 1.0  # no repeat purchase: BG/NBD assumes she is still active
    assert 0 < alive[1] < 0.5  # five quick purchases then silence: probably gone


def test_calibration_on_the_cdnow_holdout(cdnow: tuple[ltv.Summaries, np.ndarray]) -> None:
    summaries, holdout = cdnow
    model = ltv.fit_bgnbd(summaries)
    report = ltv.calibration_report(model, summaries, holdout, holdout_weeks=39)
    assert report.customers == 2357
    assert report.actual_total == 1882  # purchase days in weeks 40-78 of the sample
    # BG/NBD under-forecasts this holdout by ~12 % (1,653 predicted): it is not a perfect model
    assert report.predicted_total == pytest.approx(report.actual_total, rel=0.15)
    assert report.rank_correlation > 0.3
    assert report.top_decile_capture > 0.4
    assert report.mean_absolute_error < 1.0


def test_clv_is_discounted_expected_purchases_times_expected_value(
    cdnow: tuple[ltv.Summaries, np.ndarray],
) -> None:
    summaries, _ = cdnow
    frequency = ltv.fit_bgnbd(summaries)
    spend = ltv.fit_gamma_gamma(summaries)
    undiscounted = ltv.score(frequency, spend, summaries, months=12, annual_discount_rate=0.0)
    discounted = ltv.score(frequency, spend, summaries, months=12, annual_discount_rate=0.1)
    year = ltv.expected_purchases(
        frequency, 12 * 365.25 / 12 / 7, summaries.frequency, summaries.recency, summaries.age
    )
    assert undiscounted.clv == pytest.approx(year * undiscounted.value_per_purchase, rel=1e-9)
    assert np.all(discounted.clv <= undiscounted.clv + 1e-12)
    assert np.all((discounted.p_alive > 0) & (discounted.p_alive <= 1))


def test_rfm_scores_are_quintiles_with_five_for_the_best() -> None:
    scores = ltv.rfm(
        days_since_last=np.array([1.0, 10, 20, 30, 40, 50, 60, 70, 80, 90]),
        purchases=np.array([9.0, 1, 1, 1, 1, 1, 1, 1, 1, 1]),
        monetary=np.arange(10.0),
    )
    assert scores.recency.tolist() == [5, 5, 4, 4, 3, 3, 2, 2, 1, 1]
    assert scores.frequency.tolist() == [5, 1, 1, 1, 1, 1, 1, 1, 1, 1]
    assert scores.monetary.tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert scores.score[0] == 551


def test_nobody_buying_twice_cannot_be_fitted() -> None:
    once = ltv.Summaries(np.zeros(5), np.zeros(5), np.full(5, 10.0), np.zeros(5))
    with pytest.raises(ltv.FitFailed):
        ltv.fit_bgnbd(once)
    with pytest.raises(ltv.FitFailed):
        ltv.fit_gamma_gamma(once)


def test_the_hypergeometric_function_has_a_value_where_scipy_gives_none() -> None:
    # A fit on few buyers can reach parameters in the millions; SciPy 1.17's hyp2f1 answers
    # NaN there (z near 0). For b = c + 1 the function has a closed form to check against:
    # 2F1(a, c + 1; c; z) = (1 - z)^-a (1 + a z / (c (1 - z))).
    a, c, z = 17_992_513.7, 27_212.0, 2.8e-8
    closed = (1 - z) ** -a * (1 + a * z / (c * (1 - z)))
    assert math.isclose(float(ltv._hyp2f1(a, c + 1, c, z)), closed, rel_tol=1e-9)
    # Where SciPy answers, its answer stands.
    assert float(ltv._hyp2f1(2.5, 3.0, 4.2, 0.3)) == pytest.approx(1.8708561066821836)
