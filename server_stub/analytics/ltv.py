"""Customer lifetime value: BG/NBD for how often, Gamma-Gamma for how much, RFM as fallback.

The models of Fader, Hardie & Lee ("Counting your customers the easy way", 2005; "RFM and CLV",
2005). A customer is summarised by (frequency x = repeat purchases, recency t_x = time of the
last purchase since the first, age T = time since the first purchase), in weeks. Both models are
fitted by maximum likelihood over the *distinct* summaries with their counts as weights, so the
cost of a fit depends on how many different summaries there are, not on the customers. Scoring
is vectorised over arrays (hundreds of thousands of customers a second).

Purchases are days with an order (several orders on one day are one purchase), valued net of
returns, store sales included. With too few repeat buyers the parametric models are not
identified; then only RFM scores (quintiles of recency, frequency and monetary value) are given.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
else:
    FloatArray = Any

MIN_REPEAT_BUYERS = 30
WEEK_DAYS = 7.0


class FitFailed(RuntimeError):
    """The likelihood could not be maximised (too little data, or data the model cannot fit)."""


@dataclass(frozen=True)
class Summaries:
    """Per customer: repeat purchases, recency and age (weeks), mean repeat purchase value."""

    frequency: FloatArray
    recency: FloatArray
    age: FloatArray
    monetary: FloatArray

    def __len__(self) -> int:
        return len(self.frequency)


@dataclass(frozen=True)
class BgNbd:
    r: float
    alpha: float
    a: float
    b: float
    log_likelihood: float


@dataclass(frozen=True)
class GammaGamma:
    p: float
    q: float
    gamma: float
    log_likelihood: float


def summarise(
    purchases: Sequence[tuple[date, float]], calibration_end: date
) -> tuple[float, float, float, float]:
    """(frequency, recency, age, mean repeat value) from one customer's purchases up to the end
    of calibration: same-day purchases count once (their values add), values net of returns."""
    by_day: dict[date, float] = {}
    for day, value in purchases:
        if day <= calibration_end:
            by_day[day] = by_day.get(day, 0.0) + value
    if not by_day:
        raise ValueError("a customer with no purchase in the calibration period has no summary")
    days = sorted(by_day)
    first = days[0]
    frequency = len(days) - 1
    recency = (days[-1] - first).days / WEEK_DAYS
    age = (calibration_end - first).days / WEEK_DAYS
    repeat = [by_day[day] for day in days[1:]]
    monetary = sum(repeat) / len(repeat) if repeat else 0.0
    return float(frequency), recency, age, monetary


def _distinct(*columns: FloatArray) -> tuple[list[FloatArray], FloatArray]:
    """The distinct rows of the columns, and how many times each occurs."""
    import numpy as np

    stacked = np.column_stack(columns)
    rows, counts = np.unique(stacked, axis=0, return_counts=True)
    return [rows[:, i] for i in range(rows.shape[1])], counts.astype(np.float64)


def _bgnbd_log_likelihood(params: FloatArray, x: Any, t_x: Any, big_t: Any, w: Any) -> float:
    import numpy as np
    from scipy.special import betaln, gammaln

    r, alpha, a, b = np.exp(params)
    a1 = gammaln(r + x) - gammaln(r) + r * np.log(alpha)
    a2 = betaln(a, b + x) - betaln(a, b)
    a3 = -(r + x) * np.log(alpha + big_t)
    with np.errstate(divide="ignore", invalid="ignore"):
        a4 = np.where(
            x > 0,
            np.log(a) - np.log(np.maximum(b + x - 1, 1e-300)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
    return float(np.sum(w * (a1 + a2 + np.logaddexp(a3, a4))))


def fit_bgnbd(summaries: Summaries) -> BgNbd:
    """BG/NBD parameters (r, alpha, a, b) by maximum likelihood on the distinct summaries."""
    import numpy as np
    from scipy.optimize import minimize

    (x, t_x, big_t), w = _distinct(summaries.frequency, summaries.recency, summaries.age)
    if int(np.sum(w[x > 0])) < 1:
        raise FitFailed("nobody bought twice: BG/NBD cannot be fitted")
    scale = 10.0 / float(np.max(big_t)) if np.max(big_t) > 0 else 1.0

    def objective(params: FloatArray) -> float:
        return -_bgnbd_log_likelihood(params, x, t_x * scale, big_t * scale, w) / float(w.sum())

    result = minimize(
        objective,
        np.zeros(4),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
    )
    result = minimize(objective, result.x, method="BFGS", options={"gtol": 1e-9})
    if not np.all(np.isfinite(result.x)):
        raise FitFailed("the BG/NBD likelihood did not converge")
    r, alpha, a, b = np.exp(result.x)
    alpha /= scale
    params = np.log([r, alpha, a, b])
    return BgNbd(
        float(r), float(alpha), float(a), float(b), _bgnbd_log_likelihood(params, x, t_x, big_t, w)
    )


def _gg_log_likelihood(params: FloatArray, x: Any, m: Any, w: Any) -> float:
    import numpy as np
    from scipy.special import gammaln

    p, q, gamma = np.exp(params)
    px = p * x
    ll = (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(gamma)
        + (px - 1) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(gamma + m * x)
    )
    return float(np.sum(w * ll))


def fit_gamma_gamma(summaries: Summaries) -> GammaGamma:
    """Gamma-Gamma parameters (p, q, gamma) on the repeat buyers with a positive mean value."""
    import numpy as np
    from scipy.optimize import minimize

    buyers = (summaries.frequency > 0) & (summaries.monetary > 0)
    if int(buyers.sum()) < 2:
        raise FitFailed("too few repeat buyers with a positive spend for Gamma-Gamma")
    (x, m), w = _distinct(summaries.frequency[buyers], summaries.monetary[buyers])
    scale = 1.0 / float(np.mean(m))

    def objective(params: FloatArray) -> float:
        return -_gg_log_likelihood(params, x, m * scale, w) / float(w.sum())

    result = minimize(
        objective,
        np.zeros(3),
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20_000},
    )
    result = minimize(objective, result.x, method="BFGS", options={"gtol": 1e-9})
    if not np.all(np.isfinite(result.x)):
        raise FitFailed("the Gamma-Gamma likelihood did not converge")
    p, q, gamma = np.exp(result.x)
    gamma /= scale
    return GammaGamma(
        float(p), float(q), float(gamma), _gg_log_likelihood(np.log([p, q, gamma]), x, m, w)
    )


def probability_alive(model: BgNbd, x: Any, t_x: Any, big_t: Any) -> FloatArray:
    import numpy as np

    ratio = np.exp((model.r + x) * (np.log(model.alpha + big_t) - np.log(model.alpha + t_x)))
    odds = np.where(x > 0, model.a / np.maximum(model.b + x - 1, 1e-300) * ratio, 0.0)
    return 1.0 / (1.0 + odds)


def _hyp2f1(a: Any, b: Any, c: Any, z: Any) -> FloatArray:
    """Gauss's hypergeometric function; where SciPy gives no number (SciPy 1.17 answers NaN
    for parameters in the millions, which a fit on few buyers can reach, with z near 0), its
    series, summed until its terms no longer count (here 0 <= z < 1, where it converges)."""
    import numpy as np
    from scipy.special import hyp2f1

    a, b, c, z = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (a, b, c, z)))
    value = np.array(hyp2f1(a, b, c, z), np.float64)
    for i in np.flatnonzero(~np.isfinite(value)):
        total, term, n = 1.0, 1.0, 0
        while abs(term) > 1e-17 * abs(total) and n < 100_000:
            term *= (a.flat[i] + n) * (b.flat[i] + n) / ((c.flat[i] + n) * (n + 1)) * z.flat[i]
            total += term
            n += 1
        value.flat[i] = total
    return value


def expected_purchases(model: BgNbd, t: float, x: Any, t_x: Any, big_t: Any) -> FloatArray:
    """Expected purchases in the next `t` weeks given the history (FHL 2005, eq. 10)."""
    import numpy as np

    r, alpha, a, b = model.r, model.alpha, model.a, model.b
    z = t / (alpha + big_t + t)
    hyper = _hyp2f1(r + x, b + x, a + b + x - 1, z)
    first = (
        (a + b + x - 1)
        / (a - 1)
        * (1 - np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + big_t + t))) * hyper)
    )
    ratio = np.exp((r + x) * (np.log(alpha + big_t) - np.log(alpha + t_x)))
    odds = np.where(x > 0, a / np.maximum(b + x - 1, 1e-300) * ratio, 0.0)
    return np.asarray(first / (1 + odds), np.float64)


def expected_value(model: GammaGamma, x: Any, m: Any, fallback: float) -> FloatArray:
    """Expected value of a purchase: the population mean shrunk toward each buyer's own mean."""
    import numpy as np

    p, q, gamma = model.p, model.q, model.gamma
    population = p * gamma / (q - 1) if q > 1 else fallback
    weight = np.where(x > 0, p * x / (p * x + q - 1), 0.0)
    return np.asarray((1 - weight) * population + weight * np.where(x > 0, m, 0.0), np.float64)


@dataclass(frozen=True)
class Scores:
    """Per customer scores, in the order of the summaries given."""

    p_alive: FloatArray
    purchases_90: FloatArray
    purchases_365: FloatArray
    value_per_purchase: FloatArray
    clv: FloatArray


def score(
    frequency: BgNbd,
    spend: GammaGamma,
    summaries: Summaries,
    *,
    months: int = 12,
    annual_discount_rate: float = 0.10,
) -> Scores:
    """Lifetime value over `months`: each month's expected purchases x expected value,
    discounted at `annual_discount_rate` (the lifetimes package's definition)."""
    import numpy as np

    x, t_x, big_t = summaries.frequency, summaries.recency, summaries.age
    value = expected_value(
        spend, x, summaries.monetary, fallback=float(np.mean(summaries.monetary))
    )
    monthly_rate = (1 + annual_discount_rate) ** (1 / 12) - 1
    weeks_per_month = 365.25 / 12 / WEEK_DAYS
    clv = np.zeros(len(summaries))
    before = np.zeros(len(summaries))
    for month in range(1, months + 1):
        upto = expected_purchases(frequency, month * weeks_per_month, x, t_x, big_t)
        clv += (upto - before) * value / (1 + monthly_rate) ** month
        before = upto
    return Scores(
        p_alive=probability_alive(frequency, x, t_x, big_t),
        purchases_90=expected_purchases(frequency, 90 / WEEK_DAYS, x, t_x, big_t),
        purchases_365=expected_purchases(frequency, 365 / WEEK_DAYS, x, t_x, big_t),
        value_per_purchase=value,
        clv=clv,
    )


# ---------------------------------------------------------------- RFM


@dataclass(frozen=True)
class Rfm:
    recency: Any
    frequency: Any
    monetary: Any

    @property
    def score(self) -> Any:
        return self.recency * 100 + self.frequency * 10 + self.monetary


def _quintile(values: FloatArray) -> Any:
    """1..5: the quintile of the value's rank (ties share the lower rank), 5 = highest."""
    import numpy as np
    from scipy.stats import rankdata

    if len(values) == 0:
        return np.zeros(0, np.int64)
    ranks = rankdata(values, method="min")
    return np.maximum(1, np.ceil(5 * ranks / len(values))).astype(np.int64)


def rfm(days_since_last: FloatArray, purchases: FloatArray, monetary: FloatArray) -> Rfm:
    """RFM quintile scores: recent buyers, frequent buyers and big spenders score 5."""
    return Rfm(_quintile(-days_since_last), _quintile(purchases), _quintile(monetary))


# ---------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """How well the calibration-period fit predicted the holdout period's purchases."""

    customers: int
    holdout_weeks: float
    mean_absolute_error: float
    rank_correlation: float
    top_decile_capture: float
    predicted_total: float
    actual_total: float
    by_frequency: list[tuple[int, float, float]] = field(default_factory=list)


def calibration_report(
    model: BgNbd, summaries: Summaries, holdout_purchases: FloatArray, holdout_weeks: float
) -> Calibration:
    """Mean absolute error, Spearman rank correlation and the share of holdout purchases made by
    the predicted top 10 % of customers, plus predicted vs actual by calibration frequency."""
    import numpy as np
    from scipy.stats import spearmanr

    predicted = expected_purchases(
        model, holdout_weeks, summaries.frequency, summaries.recency, summaries.age
    )
    actual = np.asarray(holdout_purchases, np.float64)
    order = np.argsort(-predicted, kind="stable")
    top = order[: max(1, math.ceil(len(order) / 10))]
    capture = float(actual[top].sum() / actual.sum()) if actual.sum() > 0 else 0.0
    varied = len(actual) > 2 and np.ptp(actual) > 0 and np.ptp(predicted) > 0
    correlation = spearmanr(predicted, actual).statistic if varied else float("nan")
    by_frequency = []
    for k in range(0, 8):
        mask = summaries.frequency == k if k < 7 else summaries.frequency >= 7
        if mask.any():
            by_frequency.append((k, float(predicted[mask].mean()), float(actual[mask].mean())))
    return Calibration(
        customers=len(actual),
        holdout_weeks=holdout_weeks,
        mean_absolute_error=float(np.mean(np.abs(predicted - actual))),
        rank_correlation=float(correlation),
        top_decile_capture=capture,
        predicted_total=float(predicted.sum()),
        actual_total=float(actual.sum()),
        by_frequency=by_frequency,
    )
