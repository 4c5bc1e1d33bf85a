"""Attribution models over aggregated paths: who earned each conversion.

Every model hands out exactly the conversions (and the net revenue) that happened: the credits
of all channels sum to the total. All are deterministic: the paths come in canonical order,
sampling and bootstrap use a seeded generator, and there is no parallelism, so a rerun on the
same data is bit-identical.

- first touch, last touch, linear, position-based (40 % first, 40 % last, 20 % shared by the
  middle), time decay (a touch's weight halves every `half_life_days` before the conversion):
  rules applied to each converting path;
- Markov chain removal effects of order 1 to 3: the journeys as an absorbing chain over the last
  `order` channels; a channel's removal effect is the share of conversions lost when its states
  lead nowhere. Solved in closed form from the fundamental matrix N = (I - Q)^-1: the conversion
  probability from the start is the start row of N·R, found by one sparse linear solve per
  channel instead of by simulation;
- Shapley values of the game v(S) = total journeys x conversion rate of the journeys whose
  channels are all in S: exact (every coalition) up to 12 channels, seeded permutation sampling
  above. Credits sum to v(all channels) = the conversions.

Markov and Shapley are data-driven (they read the non-converting paths too); they get
bootstrap confidence intervals by resampling journeys.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from server_stub.analytics.paths import Paths

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]
else:
    FloatArray = Any

Progress = Callable[[int, int], None]

EXACT_SHAPLEY_MAX_CHANNELS = 12
DIRECT_SOLVE_MAX_STATES = 1_500
DEFAULT_HALF_LIFE_DAYS = 7.0
DEFAULT_SHAPLEY_PERMUTATIONS = 2_000
DEFAULT_BOOTSTRAP = 100
DEFAULT_SEED = 18


class Model(StrEnum):
    FIRST_TOUCH = "first_touch"
    LAST_TOUCH = "last_touch"
    LINEAR = "linear"
    POSITION_BASED = "position_based"
    TIME_DECAY = "time_decay"
    MARKOV_1 = "markov_1"
    MARKOV_2 = "markov_2"
    MARKOV_3 = "markov_3"
    SHAPLEY = "shapley"

    @property
    def data_driven(self) -> bool:
        return self in (Model.MARKOV_1, Model.MARKOV_2, Model.MARKOV_3, Model.SHAPLEY)


@dataclass(frozen=True)
class ChannelCredit:
    channel: str
    conversions: float
    revenue: float
    share: float
    share_low: float | None = None
    share_high: float | None = None


@dataclass(frozen=True)
class Attribution:
    """One model's credits per channel, with the totals they add up to."""

    model: Model
    credits: tuple[ChannelCredit, ...]
    conversions: float
    revenue: float
    method: str = ""

    def credit(self, channel: str) -> ChannelCredit:
        return next(c for c in self.credits if c.channel == channel)


@dataclass(frozen=True)
class Settings:
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    shapley_permutations: int = DEFAULT_SHAPLEY_PERMUTATIONS
    bootstrap: int = DEFAULT_BOOTSTRAP
    confidence: float = 0.95
    seed: int = DEFAULT_SEED


# ---------------------------------------------------------------- rule-based models


def _touch_weights(paths: Paths, model: Model, half_life_days: float) -> FloatArray:
    """Each touch's share of its path's conversion under a rule-based model (sums to 1)."""
    import numpy as np

    lengths = paths.lengths
    length = np.repeat(lengths, lengths).astype(np.float64)
    position = paths.position
    last = position == length - 1
    if model is Model.FIRST_TOUCH:
        return np.asarray(position == 0, np.float64)
    if model is Model.LAST_TOUCH:
        return np.asarray(last, np.float64)
    if model is Model.LINEAR:
        return 1.0 / length
    if model is Model.POSITION_BASED:
        ends = (position == 0) | last
        middle = np.divide(0.2, length - 2, out=np.zeros_like(length), where=length > 2)
        end_share = np.where(length == 1, 1.0, np.where(length == 2, 0.5, 0.4))
        return np.where(ends, end_share, middle)
    if model is Model.TIME_DECAY:
        raw = np.exp2(-paths.ages / half_life_days)
        per_path = np.bincount(paths.path_of_touch, weights=raw, minlength=len(paths))
        return raw / np.repeat(per_path, lengths)
    raise ValueError(f"{model} is not a rule-based model")


def _rule_based(paths: Paths, model: Model, settings: Settings) -> tuple[FloatArray, FloatArray]:
    import numpy as np

    weights = _touch_weights(paths, model, settings.half_life_days)
    of = paths.path_of_touch
    n = len(paths.channels)
    conversions = np.bincount(paths.touches, weights=weights * paths.conversions[of], minlength=n)
    revenue = np.bincount(paths.touches, weights=weights * paths.value[of], minlength=n)
    return np.asarray(conversions, np.float64), np.asarray(revenue, np.float64)


# ---------------------------------------------------------------- Markov chains


def _state_codes(paths: Paths, order: int) -> Any:
    """Each touch's state: the code of its last `order` channels (earlier slots 0 = none)."""
    import numpy as np

    base = len(paths.channels) + 1
    codes = np.zeros(len(paths.touches), np.int64)
    position = paths.position
    for back in range(order):
        shifted = np.zeros(len(paths.touches), np.int64)
        if back == 0:
            shifted[:] = paths.touches + 1
        else:
            has = position >= back
            idx = np.nonzero(has)[0]
            shifted[idx] = paths.touches[idx - back] + 1
        codes = codes * base + shifted
    return codes


def removal_effects(paths: Paths, order: int = 1) -> FloatArray:
    """Per channel, the share of conversions lost when the channel is removed (Markov, order
    1..3), computed in closed form: x = (I - Q)^-1 r, the conversion probability per state."""
    import numpy as np
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    if not 1 <= order <= 3:
        raise ValueError("a Markov model's order is 1, 2 or 3")
    n_channels = len(paths.channels)
    codes = _state_codes(paths, order)
    unique, state = np.unique(codes, return_inverse=True)
    n_states = len(unique) + 1  # the last one is the start
    start = n_states - 1
    journeys = paths.conversions + paths.nulls
    of = paths.path_of_touch
    first = paths.position == 0
    previous = np.where(first, start, np.roll(state, 1))
    counts = sp.coo_matrix((journeys[of], (previous, state)), shape=(n_states, n_states)).tocsr()
    last_touch = paths.offsets[1:] - 1
    to_conversion = np.bincount(state[last_touch], weights=paths.conversions, minlength=n_states)
    to_null = np.bincount(state[last_touch], weights=paths.nulls, minlength=n_states)
    out_total = np.asarray(counts.sum(axis=1)).ravel() + to_conversion + to_null
    scale = np.divide(1.0, out_total, out=np.zeros_like(out_total), where=out_total > 0)
    transition = sp.diags(scale) @ counts
    absorb = to_conversion * scale

    def conversion_probability(keep: Any) -> float:
        q = transition[keep][:, keep]
        system = (sp.identity(q.shape[0], format="csr") - q).tocsr()
        if q.shape[0] <= DIRECT_SOLVE_MAX_STATES:
            solution = spla.spsolve(system.tocsc(), absorb[keep])
        else:
            # A large chain (order 2-3 over many channels): LU fill-in would dominate, so
            # the same system is solved by BiCGSTAB to a relative residual of 1e-12 (no
            # randomness: the same input gives the same iterates).
            solution, info = spla.bicgstab(
                system, absorb[keep], rtol=1e-12, atol=0.0, maxiter=10_000
            )
            if info != 0:
                solution = spla.spsolve(system.tocsc(), absorb[keep])
        return float(np.atleast_1d(solution)[-1])  # the start is the last kept state

    everything = np.ones(n_states, bool)
    base = conversion_probability(everything)
    effects = np.zeros(n_channels)
    if base <= 0:
        return effects
    digits = np.zeros((len(unique), order), np.int64)
    rest = unique.copy()
    width = n_channels + 1
    for slot in range(order):
        digits[:, slot] = rest % width
        rest //= width
    for channel in range(n_channels):
        keep = np.ones(n_states, bool)
        keep[:-1] = ~(digits == channel + 1).any(axis=1)
        effects[channel] = 1.0 - conversion_probability(keep) / base
    return effects


def _markov(paths: Paths, order: int) -> tuple[FloatArray, FloatArray]:
    import numpy as np

    effects = removal_effects(paths, order)
    total = effects.sum()
    share = effects / total if total > 0 else np.zeros_like(effects)
    return share * paths.conversions.sum(), share * paths.value.sum()


# ---------------------------------------------------------------- Shapley values


def _set_masks(paths: Paths) -> Any:
    """For each path, the bit mask of the channels it touches."""
    import numpy as np

    bits = np.left_shift(np.int64(1), paths.touches)
    return np.bitwise_or.reduceat(bits, paths.offsets[:-1]) if len(paths) else bits


def _coalition_values_exact(masks: Any, conv: Any, total: Any, n: int, journeys: float) -> Any:
    """v(S) for every coalition S: journeys x conversion rate of journeys within S."""
    import numpy as np

    size = 1 << n
    conv_within = np.bincount(masks, weights=conv, minlength=size)
    all_within = np.bincount(masks, weights=total, minlength=size)
    for bit in range(n):  # subset sums (zeta transform): within S = sum over subsets of S
        has = (np.arange(size) >> bit) & 1 == 1
        conv_within[has] += conv_within[~has]
        all_within[has] += all_within[~has]
    rate = np.divide(conv_within, all_within, out=np.zeros(size), where=all_within > 0)
    return journeys * rate


def _shapley_exact(masks: Any, conv: Any, total: Any, n: int) -> FloatArray:
    import numpy as np

    journeys = float(total.sum())
    values = _coalition_values_exact(masks, conv, total, n, journeys)
    coalitions = np.arange(1 << n)
    popcount = np.zeros(1 << n, np.int64)
    for bit in range(n):
        popcount += (coalitions >> bit) & 1
    weight = np.array(
        [math.factorial(s) * math.factorial(n - s - 1) / math.factorial(n) for s in range(n)]
    )
    phi = np.zeros(n)
    for i in range(n):
        without = coalitions[(coalitions >> i) & 1 == 0]
        gains = values[without | (1 << i)] - values[without]
        phi[i] = float(np.dot(weight[popcount[without]], gains))
    return phi


def _shapley_sampled(
    masks: Any, conv: Any, total: Any, n: int, permutations: int, seed: int
) -> FloatArray:
    """Mean marginal contributions over seeded random orders of the channels."""
    import numpy as np

    rng = np.random.default_rng(seed)
    journeys = float(total.sum())
    distinct, inverse = np.unique(masks, return_inverse=True)
    conv_by_set = np.bincount(inverse, weights=conv)
    all_by_set = np.bincount(inverse, weights=total)
    # A set of channels is within the first k channels of an order when the latest of its
    # channels in that order comes at most k-th: one pass over the sets per order.
    members = ((distinct[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
    phi = np.zeros(n)
    for _ in range(permutations):
        order = rng.permutation(n)
        place = np.empty(n, np.int64)
        place[order] = np.arange(n)
        latest = np.where(members, place[None, :], -1).max(axis=1)
        conv_within = np.cumsum(np.bincount(latest, weights=conv_by_set, minlength=n))
        all_within = np.cumsum(np.bincount(latest, weights=all_by_set, minlength=n))
        rate = np.divide(conv_within, all_within, out=np.zeros(n), where=all_within > 0)
        values = journeys * rate
        phi[order] += np.diff(values, prepend=0.0)
    return phi / permutations


def shapley_values(
    paths: Paths, *, permutations: int = DEFAULT_SHAPLEY_PERMUTATIONS, seed: int = DEFAULT_SEED
) -> tuple[FloatArray, str]:
    """Per channel, its Shapley value (sums to the conversions), and how it was computed."""
    n = len(paths.channels)
    masks = _set_masks(paths)
    total = paths.conversions + paths.nulls
    if n <= EXACT_SHAPLEY_MAX_CHANNELS:
        return _shapley_exact(masks, paths.conversions, total, n), "exact"
    return (
        _shapley_sampled(masks, paths.conversions, total, n, permutations, seed),
        f"sampled ({permutations} permutations, seed {seed})",
    )


def _shapley(paths: Paths, settings: Settings) -> tuple[FloatArray, FloatArray, str]:
    import numpy as np

    phi, method = shapley_values(
        paths, permutations=settings.shapley_permutations, seed=settings.seed
    )
    conversions = paths.conversions.sum()
    share = phi / conversions if conversions > 0 else np.zeros_like(phi)
    return phi, share * paths.value.sum(), method


# ---------------------------------------------------------------- running models


def _credits(paths: Paths, model: Model, settings: Settings) -> tuple[FloatArray, FloatArray, str]:
    if model.data_driven:
        if model is Model.SHAPLEY:
            return _shapley(paths, settings)
        conversions, revenue = _markov(paths, int(model.value[-1]))
        return conversions, revenue, "closed form (fundamental matrix)"
    conversions, revenue = _rule_based(paths, model, settings)
    return conversions, revenue, "rule"


def _bootstrap_shares(
    paths: Paths, model: Model, settings: Settings, progress: Progress | None
) -> tuple[FloatArray, FloatArray]:
    """Percentile intervals of each channel's credit share over journeys resampled with
    replacement (a multinomial draw of the same number of journeys over the path outcomes)."""
    import numpy as np

    rng = np.random.default_rng(settings.seed)
    cells = np.concatenate([paths.conversions, paths.nulls])
    journeys = round(float(cells.sum()))
    probabilities = cells / cells.sum()
    shares = np.zeros((settings.bootstrap, len(paths.channels)))
    quiet = Settings(
        half_life_days=settings.half_life_days,
        shapley_permutations=max(1, settings.shapley_permutations // 10),
        bootstrap=0,
        seed=settings.seed,
    )
    for b in range(settings.bootstrap):
        draw = rng.multinomial(journeys, probabilities).astype(np.float64)
        resampled = paths.with_counts(draw[: len(paths)], draw[len(paths) :])
        conversions, _, _ = _credits(resampled, model, quiet)
        total = conversions.sum()
        shares[b] = conversions / total if total > 0 else 0.0
        if progress is not None:
            progress(b + 1, settings.bootstrap)
    tail = (1.0 - settings.confidence) / 2 * 100
    low, high = np.percentile(shares, [tail, 100 - tail], axis=0)
    return low, high


def attribute(
    paths: Paths,
    model: Model,
    settings: Settings = Settings(),
    progress: Progress | None = None,
) -> Attribution:
    """One model's credits per channel (with bootstrap intervals for data-driven models)."""
    import numpy as np

    total_conversions = float(paths.conversions.sum())
    total_revenue = float(paths.value.sum())
    if len(paths) == 0:
        return Attribution(model, (), 0.0, 0.0, "no journeys")
    conversions, revenue, method = _credits(paths, model, settings)
    low = high = None
    if model.data_driven and settings.bootstrap > 0 and total_conversions > 0:
        low, high = _bootstrap_shares(paths, model, settings, progress)
    shares = (
        conversions / total_conversions if total_conversions > 0 else np.zeros_like(conversions)
    )
    credits = tuple(
        ChannelCredit(
            channel=channel,
            conversions=float(conversions[i]),
            revenue=float(revenue[i]),
            share=float(shares[i]),
            share_low=None if low is None else float(low[i]),
            share_high=None if high is None else float(high[i]),
        )
        for i, channel in enumerate(paths.channels)
    )
    return Attribution(model, credits, total_conversions, total_revenue, method)


def attribute_all(
    paths: Paths,
    models: Sequence[Model] = tuple(Model),
    settings: Settings = Settings(),
    progress: Progress | None = None,
) -> list[Attribution]:
    """Several models over the same paths; `progress(done, total)` after each model."""
    results = []
    for done, model in enumerate(models, start=1):
        results.append(attribute(paths, model, settings))
        if progress is not None:
            progress(done, len(models))
    return results
