"""Attribution and lifetime value (issue 18), side by side with their peers in one run.

- every attribution model (Shapley sampled, 20 channels) over 1 M generated journeys,
  aggregation included, against the 10 s goal;
- Markov removal effects (order 1) in closed form against ChannelAttribution's `markov_model`
  (simulation) and against a plain power-iteration ceiling, on the same paths; the largest gap
  in credit share is reported;
- the BG/NBD fit on CDNOW against `lifetimes`' BetaGeoFitter, and scoring 1 M customers
  (expected purchases in 90 days and P(alive)) against `lifetimes` on the same arrays.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.report import Figure
from server_stub.analytics import ltv
from server_stub.analytics.attribution import Model, Settings, attribute, removal_effects
from server_stub.analytics.paths import PathCounts, Paths

JOURNEYS = 1_000_000
CHANNELS = 20


def _timed(work: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = work()
    return time.perf_counter() - start, result


def generate(journeys: int = JOURNEYS, channels: int = CHANNELS, seed: int = 18) -> PathCounts:
    """Journeys of 1-6 touches over `channels` channels with Zipf-like popularity, ages in
    days, conversion more likely with a few strong channels; aggregated as they come."""
    rng = np.random.default_rng(seed)
    names = [f"ch{i:02d}" for i in range(channels)]
    popularity = 1.0 / np.arange(1, channels + 1)
    popularity /= popularity.sum()
    strength = np.linspace(0.12, 0.0, channels)
    lengths = rng.integers(1, 7, journeys)
    touches = rng.choice(channels, int(lengths.sum()), p=popularity)
    ages = rng.integers(0, 30, int(lengths.sum()))
    uplift = np.add.reduceat(strength[touches], np.concatenate([[0], np.cumsum(lengths)[:-1]]))
    converted = rng.random(journeys) < np.minimum(0.02 + uplift, 0.9)
    values = np.round(rng.gamma(2.0, 40.0, journeys), 2)
    counts = PathCounts()
    offset = 0
    for i in range(journeys):
        n = int(lengths[i])
        labels = [names[t] for t in touches[offset : offset + n]]
        order = sorted(ages[offset : offset + n].tolist(), reverse=True)
        ok = bool(converted[i])
        counts.add(
            labels,
            order,
            conversions=1.0 if ok else 0.0,
            nulls=0.0 if ok else 1.0,
            value=float(values[i]) if ok else 0.0,
        )
        offset += n
    return counts


def _by_channels(paths: Paths) -> Paths:
    """The same journeys with the ages dropped (Markov and Shapley read only the channels)."""
    merged = PathCounts()
    for (labels, ages), (conv, null, value) in paths.rows():
        merged.add(labels, [0] * len(ages), conversions=conv, nulls=null, value=value)
    return merged.freeze()


def power_iteration_effects(paths: Paths, tolerance: float = 1e-10) -> np.ndarray:
    """The ceiling: the same absorbing chain solved by pushing probability mass until it has
    nearly all been absorbed, once per removed channel."""
    import scipy.sparse as sp

    n = len(paths.channels)
    lengths = paths.lengths
    starts = paths.offsets[:-1]
    first = paths.touches[starts]
    journeys = paths.conversions + paths.nulls
    prev = paths.touches[np.arange(len(paths.touches)) - 1]
    inner = paths.position > 0
    of = paths.path_of_touch
    size = n + 3  # channels, start, conversion, null
    start, conv, null = n, n + 1, n + 2
    last = paths.touches[starts + lengths - 1]
    rows = np.concatenate([np.full(len(first), start), prev[inner], last])
    cols = np.concatenate([first, paths.touches[inner], np.full(len(paths), conv)])
    weights = np.concatenate([journeys, journeys[of][inner], paths.conversions])
    rows = np.concatenate([rows, paths.touches[starts + lengths - 1]])
    cols = np.concatenate([cols, np.full(len(paths), null)])
    weights = np.concatenate([weights, paths.nulls])
    counts = sp.coo_matrix((weights, (rows, cols)), shape=(size, size)).tocsr()
    totals = np.asarray(counts.sum(axis=1)).ravel()
    matrix = sp.diags(np.divide(1.0, totals, out=np.zeros(size), where=totals > 0)) @ counts

    def absorbed(removed: int | None) -> float:
        m = matrix.tolil(copy=True)
        if removed is not None:
            m[:, removed] = 0
            m[:, null] = matrix[:, null] + matrix[:, removed]
        transposed = m.tocsr().T.tocsr()
        mass = np.zeros(size)
        mass[start] = 1.0
        converted = 0.0
        while True:
            mass = transposed @ mass
            converted += mass[conv]
            mass[conv] = 0.0
            mass[null] = 0.0
            if mass.sum() < tolerance:
                return converted

    base = absorbed(None)
    return np.array([1 - absorbed(c) / base for c in range(n)])


def _channelattribution(paths: Paths) -> tuple[float, np.ndarray] | None:
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import pandas as pd
            from ChannelAttribution import markov_model
    except Exception:
        return None
    frame = pd.DataFrame(
        {
            "path": [" > ".join(labels) for (labels, _), _ in paths.rows()],
            "conv": paths.conversions,
            "null": paths.nulls,
        }
    )
    with contextlib.redirect_stdout(io.StringIO()):
        seconds, result = _timed(
            lambda: markov_model(frame, "path", "conv", var_null="null", order=1, verbose=False)
        )
    credit = dict(zip(result["channel_name"], result["total_conversions"], strict=True))
    total = sum(credit.values())
    return seconds, np.array([credit.get(c, 0.0) / total for c in paths.channels])


def _cdnow() -> ltv.Summaries:
    from tests.analytics.test_ltv_models import CALIBRATION_END, cdnow_purchases

    table = np.array([ltv.summarise(p, CALIBRATION_END) for p in cdnow_purchases().values()])
    return ltv.Summaries(table[:, 0], table[:, 1], table[:, 2], table[:, 3])


def run() -> list[Figure]:
    figures = []
    _, counts = _timed(generate)  # generating and counting the journeys: the journey build's part
    total, paths = _timed(counts.freeze)
    steps = [f"paths {total:.1f}"]
    settings = Settings(bootstrap=0, shapley_permutations=200)
    for model in Model:
        seconds, _ = _timed(lambda m=model: attribute(paths, m, settings))
        total += seconds
        steps.append(f"{model.value} {seconds:.1f}")
    channel_paths = _by_channels(paths)
    ours_markov, ours = _timed(lambda: removal_effects(channel_paths, 1))
    ours_share = ours / ours.sum()
    peer = _channelattribution(channel_paths)
    peer_seconds = peer[0] if peer else float("nan")
    figures.append(
        Figure(
            f"Attribution, {JOURNEYS:,} journeys x {CHANNELS} channels, 9 models "
            f"({len(paths):,} distinct paths)",
            total,
            peer_seconds,
            "ChannelAttribution markov_model alone",
            "s",
            peer_seconds / total if peer else float("nan"),
            "< 10 s",
            total < 10,
            "paths layout + 9 models (s: " + ", ".join(steps) + "); generating and counting "
            "the journeys not included; Shapley sampled (200 permutations); no bootstrap",
        )
    )
    if peer is not None:
        gap = float(np.max(np.abs(peer[1] - ours_share)))
        figures.append(
            Figure(
                "Markov order 1 removal effects (closed form)",
                ours_markov,
                peer[0],
                "ChannelAttribution markov_model (simulation)",
                "s",
                peer[0] / ours_markov,
                "faster, shares within its convergence tolerance (5 %)",
                peer[0] > ours_markov and gap < 0.05,
                f"largest share gap {gap:.4f}",
            )
        )
    ceiling_seconds, ceiling = _timed(lambda: power_iteration_effects(channel_paths))
    gap = float(np.max(np.abs(ceiling / ceiling.sum() - ours_share)))
    figures.append(
        Figure(
            "Markov order 1 removal effects vs power iteration",
            ours_markov,
            ceiling_seconds,
            "power iteration (ceiling)",
            "s",
            ceiling_seconds / ours_markov,
            "same effects",
            gap < 1e-6,
            f"largest share gap {gap:.2e}",
        )
    )
    summaries = _cdnow()
    fit_seconds = min(_timed(lambda: ltv.fit_bgnbd(summaries))[0] for _ in range(3))
    model = ltv.fit_bgnbd(summaries)
    try:
        from lifetimes import BetaGeoFitter

        def theirs() -> Any:
            return BetaGeoFitter().fit(summaries.frequency, summaries.recency, summaries.age)

        peer_fit = min(_timed(theirs)[0] for _ in range(3))
    except Exception:
        peer_fit = float("nan")
    figures.append(
        Figure(
            "BG/NBD fit on CDNOW (2,357 customers)",
            fit_seconds,
            peer_fit,
            "lifetimes BetaGeoFitter",
            "s",
            peer_fit / fit_seconds,
            "reported",
            None,
            f"r={model.r:.3f} alpha={model.alpha:.3f} a={model.a:.3f} b={model.b:.3f}",
        )
    )
    rng = np.random.default_rng(1)
    n = 1_000_000
    x = rng.poisson(1.5, n).astype(float)
    big_t = rng.uniform(1, 78, n)
    t_x = np.where(x > 0, rng.uniform(0, 1, n) * big_t, 0.0)
    seconds, _ = _timed(
        lambda: (
            ltv.expected_purchases(model, 90 / 7, x, t_x, big_t),
            ltv.probability_alive(model, x, t_x, big_t),
        )
    )
    ours_rate = n / seconds
    try:
        peer_model = BetaGeoFitter().fit(summaries.frequency, summaries.recency, summaries.age)
        peer_seconds, _ = _timed(
            lambda: (
                peer_model.conditional_expected_number_of_purchases_up_to_time(
                    90 / 7, x, t_x, big_t
                ),
                peer_model.conditional_probability_alive(x, t_x, big_t),
            )
        )
        peer_rate = n / peer_seconds
    except Exception:
        peer_rate = float("nan")
    figures.append(
        Figure(
            "Scoring 1 M customers (expected purchases in 90 days + P(alive))",
            ours_rate,
            peer_rate,
            "lifetimes BetaGeoFitter",
            "customers/s",
            ours_rate / peer_rate,
            ">= 100,000 customers/s",
            ours_rate >= 100_000,
        )
    )
    return figures


if __name__ == "__main__":
    for figure in run():
        print(figure.row())
