"""Attribution models on hand-computed examples, and the laws every model obeys."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from server_stub.analytics.attribution import (
    Model,
    Settings,
    attribute,
    removal_effects,
    shapley_values,
)
from server_stub.analytics.paths import Journey, Paths

NO_BOOTSTRAP = Settings(bootstrap=0)


def textbook() -> Paths:
    # The three-journey chain found in most introductions to Markov attribution:
    # C1 > C2 > C3 converts, C1 alone does not, C2 > C3 does not.
    return Paths.from_journeys(
        [
            Journey(("C1", "C2", "C3"), (3, 2, 0), True, 90.0),
            Journey(("C1",), (0,), False),
            Journey(("C2", "C3"), (1, 0), False),
        ]
    )


def shares(paths: Paths, model: Model, settings: Settings = NO_BOOTSTRAP) -> dict[str, float]:
    return {c.channel: c.share for c in attribute(paths, model, settings).credits}


def test_markov_removal_effects_of_the_textbook_chain() -> None:
    # P(conversion) = 2/3 * 1/2 * 1 * 1/2 + 1/3 * 1 * 1/2 = 1/3; without C1 only the C2 start
    # is left (1/6): effect 1/2; without C2 or C3 nothing converts: effect 1.
    assert removal_effects(textbook(), 1) == pytest.approx([0.5, 1.0, 1.0], abs=1e-12)
    assert shares(textbook(), Model.MARKOV_1) == pytest.approx({"C1": 0.2, "C2": 0.4, "C3": 0.4})


def test_markov_of_higher_order_remembers_where_the_journey_came_from() -> None:
    # Order 3: the converting state (C1, C2, C3) is reached only through C1, so removing any
    # channel loses every conversion.
    assert removal_effects(textbook(), 3) == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_markov_matches_a_hand_computed_chain_with_a_loop() -> None:
    # A > B converts twice, A > A > B converts once, B does not convert, A does not convert.
    paths = Paths.from_journeys(
        [
            Journey(("A", "B"), (1, 0), True),
            Journey(("A", "B"), (1, 0), True),
            Journey(("A", "A", "B"), (2, 1, 0), True),
            Journey(("B",), (0,), False),
            Journey(("A",), (0,), False),
        ]
    )
    # Order 1 chain: start->A 4/5, start->B 1/5; A->A 1/5, A->B 3/5, A->null 1/5;
    # B->conv 3/4, B->null 1/4. From A: x_A = 1/5 x_A + 3/5 * 3/4 -> x_A = 9/16.
    # P = 4/5 * 9/16 + 1/5 * 3/4 = 0.6 (= 3 conversions of 5 journeys).
    # Without A: 1/5 * 3/4 = 0.15 -> effect 0.75; without B: 0 -> effect 1.
    assert removal_effects(paths, 1) == pytest.approx([0.75, 1.0], abs=1e-12)


def test_heuristic_models_on_a_hand_computed_path() -> None:
    paths = textbook()
    assert shares(paths, Model.FIRST_TOUCH) == {"C1": 1.0, "C2": 0.0, "C3": 0.0}
    assert shares(paths, Model.LAST_TOUCH) == {"C1": 0.0, "C2": 0.0, "C3": 1.0}
    assert shares(paths, Model.LINEAR) == pytest.approx({"C1": 1 / 3, "C2": 1 / 3, "C3": 1 / 3})
    assert shares(paths, Model.POSITION_BASED) == pytest.approx({"C1": 0.4, "C2": 0.2, "C3": 0.4})


def test_position_based_splits_two_touches_in_half_and_shares_the_middle() -> None:
    two = Paths.from_journeys([Journey(("A", "B"), (1, 0), True)])
    assert shares(two, Model.POSITION_BASED) == pytest.approx({"A": 0.5, "B": 0.5})
    four = Paths.from_journeys([Journey(("A", "B", "C", "D"), (3, 2, 1, 0), True)])
    assert shares(four, Model.POSITION_BASED) == pytest.approx(
        {"A": 0.4, "B": 0.1, "C": 0.1, "D": 0.4}
    )


def test_time_decay_halves_a_touch_per_half_life() -> None:
    paths = Paths.from_journeys([Journey(("email", "store"), (7, 0), True, 30.0)])
    result = attribute(paths, Model.TIME_DECAY, Settings(half_life_days=7, bootstrap=0))
    assert result.credit("email").conversions == pytest.approx(1 / 3)
    assert result.credit("store").conversions == pytest.approx(2 / 3)
    assert result.credit("store").revenue == pytest.approx(20.0)


def test_revenue_follows_the_conversion_value_of_each_path() -> None:
    paths = Paths.from_journeys(
        [Journey(("web",), (0,), True, 100.0), Journey(("pos",), (0,), True, 20.0)]
    )
    result = attribute(paths, Model.LAST_TOUCH, NO_BOOTSTRAP)
    assert result.credit("web").revenue == 100.0
    assert result.credit("pos").revenue == 20.0
    assert result.revenue == 120.0


def test_shapley_of_a_unanimity_game_splits_equally() -> None:
    phi, method = shapley_values(textbook())
    assert method == "exact"
    assert phi == pytest.approx([1 / 3, 1 / 3, 1 / 3])


def test_shapley_rewards_the_channel_that_converts_alone() -> None:
    # v({A}) = 4 journeys * 1/2 = 2, v({B}) = 0, v({A, B}) = 4 * 2/4 = 2: A gets everything.
    paths = Paths.from_journeys(
        [
            Journey(("A",), (0,), True),
            Journey(("A",), (0,), False),
            Journey(("A", "B"), (1, 0), True),
            Journey(("B",), (0,), False),
        ]
    )
    phi, _ = shapley_values(paths)
    assert phi == pytest.approx([2.0, 0.0])


def test_sampled_shapley_is_used_above_twelve_channels_and_is_close_to_exact() -> None:
    rng = np.random.default_rng(4)
    journeys = []
    channels = [f"c{i:02d}" for i in range(13)]
    for _ in range(3_000):
        size = int(rng.integers(1, 4))
        labels = tuple(str(c) for c in rng.choice(channels, size, replace=False))
        converted = bool(rng.random() < 0.2 + 0.3 * ("c00" in labels))
        journeys.append(Journey(labels, tuple(range(size - 1, -1, -1)), converted))
    paths = Paths.from_journeys(journeys)
    sampled, method = shapley_values(paths, permutations=4_000, seed=1)
    assert method.startswith("sampled")
    from server_stub.analytics import attribution

    total = paths.conversions + paths.nulls
    exact = attribution._shapley_exact(
        attribution._set_masks(paths), paths.conversions, total, len(channels)
    )
    assert sampled == pytest.approx(exact, abs=0.03 * paths.conversions.sum())
    assert int(np.argmax(sampled)) == 0


def test_bootstrap_interval_brackets_the_estimate_for_data_driven_models() -> None:
    rng = np.random.default_rng(9)
    journeys = []
    for _ in range(2_000):
        labels = tuple(
            str(c) for c in rng.choice(["ad", "email", "store"], int(rng.integers(1, 4)))
        )
        converted = bool(rng.random() < (0.5 if "email" in labels else 0.1))
        journeys.append(Journey(labels, tuple(range(len(labels) - 1, -1, -1)), converted))
    paths = Paths.from_journeys(journeys)
    result = attribute(paths, Model.MARKOV_1, Settings(bootstrap=60))
    for credit in result.credits:
        assert credit.share_low is not None and credit.share_high is not None
        assert credit.share_low <= credit.share <= credit.share_high
        assert credit.share_high - credit.share_low < 0.2
    assert result.credit("email").share > result.credit("store").share
    assert attribute(paths, Model.LINEAR).credits[0].share_low is None


# ---------------------------------------------------------------- laws of every model

labels = st.sampled_from(["ad", "email", "qr", "store", "app", "chat"])
journeys_strategy = st.lists(
    st.builds(
        lambda touches, converted, value: Journey(
            tuple(t for t, _ in touches),
            tuple(sorted((a for _, a in touches), reverse=True)),
            converted,
            value if converted else 0.0,
        ),
        st.lists(st.tuples(labels, st.integers(0, 30)), min_size=1, max_size=6),
        st.booleans(),
        st.integers(0, 50_000).map(lambda cents: cents / 100),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(journeys_strategy)
def test_credits_sum_to_the_conversions_and_revenue_for_every_model(
    journeys: list[Journey],
) -> None:
    paths = Paths.from_journeys(journeys)
    converted = sum(j.converted for j in journeys)
    revenue = sum(j.value for j in journeys)
    for model in Model:
        result = attribute(paths, model, NO_BOOTSTRAP)
        conversions = sum(c.conversions for c in result.credits)
        if model.data_driven and converted and conversions == 0:
            continue  # no channel's removal changes anything: nothing to hand out
        assert conversions == pytest.approx(converted, abs=1e-9), model
        if conversions:
            assert sum(c.revenue for c in result.credits) == pytest.approx(revenue, abs=1e-6)
        assert all(c.conversions >= -1e-9 for c in result.credits) or model is Model.SHAPLEY


@settings(max_examples=40, deadline=None)
@given(journeys_strategy)
def test_shapley_is_efficient(journeys: list[Journey]) -> None:
    paths = Paths.from_journeys(journeys)
    phi, _ = shapley_values(paths)
    assert math.fsum(phi) == pytest.approx(sum(j.converted for j in journeys), abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(journeys_strategy, st.randoms(use_true_random=False))
def test_reruns_are_bit_identical_whatever_the_order_of_the_journeys(
    journeys: list[Journey], shuffle: object
) -> None:
    shuffled = list(journeys)
    shuffle.shuffle(shuffled)  # type: ignore[attr-defined]
    run = Settings(bootstrap=3, shapley_permutations=10)
    for model in Model:
        first = attribute(Paths.from_journeys(journeys), model, run)
        again = attribute(Paths.from_journeys(shuffled), model, run)
        assert first == again, model
