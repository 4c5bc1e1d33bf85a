"""The content rule engine: first match wins, defaults, experiments, validation, explanations."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omnisdk.core.bucketing import bucket_hash
from omnisdk.core.conditions import evaluate
from omnisdk.core.content import InvalidRuleset, compile_ruleset, validate_ruleset
from omnisdk.core.recs import build, recommend

HERO: dict[str, Any] = {
    "default": {"title": "Shoes for every day"},
    "variants": [
        {
            "id": "billboard",
            "condition": {"campaign.id": "billboard-berlin-7"},
            "content": {"title": "Berlin runs"},
        },
        {
            "id": "runner",
            "condition": {"consent.personalisation": True, "top_interest": "running"},
            "content": {"title": "Your next trail", "media": {"type": "video", "url": "/t.mp4"}},
        },
    ],
}
CTA: dict[str, Any] = {
    "default": {"cta": {"label": "Take the quiz", "url": "/quiz"}},
    "variants": [
        {
            "id": "known-buyer",
            "condition": {"lifecycle": {"$in": ["active", "loyal"]}},
            "experiment": {
                "key": "cta-2026",
                "coverage": 0.5,
                "arms": [
                    {"id": "buy", "content": {"cta": {"label": "Buy now"}}},
                    {"id": "trial", "content": {"cta": {"label": "Try 30 days"}}},
                ],
            },
        }
    ],
}


def ruleset() -> dict[str, Any]:
    return {"slots": {"landing.hero": HERO, "landing.cta": CTA}}


def test_the_first_matching_variant_wins_and_says_why() -> None:
    engine = compile_ruleset(ruleset())
    both = {
        "campaign": {"id": "billboard-berlin-7"},
        "consent": {"personalisation": True},
        "top_interest": "running",
    }
    hero = engine.decide(both)["landing.hero"]
    assert (hero.variant, hero.content["title"], hero.reason) == (
        "billboard",
        "Berlin runs",
        "matched",
    )
    assert hero.explanation == (
        'variant \'billboard\' (rule 1) matched {"campaign.id":"billboard-berlin-7"}'
    )
    assert engine.decide({**both, "campaign": {}})["landing.hero"].variant == "runner"
    generic = engine.decide({"campaign": {}})["landing.hero"]
    assert (generic.variant, generic.reason) == ("default", "default")
    assert "no variant" in generic.explanation


def test_only_the_asked_slots_are_decided() -> None:
    engine = compile_ruleset(ruleset())
    assert list(engine.decide({}, ["landing.cta", "nope"])) == ["landing.cta"]


def test_experiments_bucket_deterministically_and_coverage_falls_through() -> None:
    engine = compile_ruleset(ruleset())
    outcomes: Counter[str] = Counter()
    for n in range(2_000):
        visitor = {"id": f"visitor-{n}", "lifecycle": "active"}
        first = engine.decide(visitor)["landing.cta"]
        assert engine.decide(visitor)["landing.cta"] == first  # the same visitor, the same arm
        outcomes[first.variant] += 1
        expected_n = bucket_hash("cta-2026", f"visitor-{n}", 2)
        assert expected_n is not None
        if expected_n < 0.25:
            assert first.variant == "known-buyer/buy" and first.experiment == ("cta-2026", "buy")
        elif 0.5 <= expected_n < 0.75:
            assert first.variant == "known-buyer/trial"
        else:
            assert first.variant == "default" and first.experiment is None
    assert 0.2 < outcomes["known-buyer/buy"] / 2_000 < 0.3
    no_id = engine.decide({"lifecycle": "active"})["landing.cta"]
    assert no_id.variant == "default"  # nothing to hash: not in the experiment


def test_invalid_rulesets_list_every_problem_with_its_place() -> None:
    bad = {
        "slots": {
            "Landing Hero": {"default": {}},
            "landing.hero": {
                "variants": [
                    {"id": "a", "condition": {"age": {"$regx": "1"}}, "content": {}},
                    {"id": "b", "content": {}},
                    {"id": "b", "content": {}},
                    {"id": "c"},
                    {
                        "id": "d",
                        "experiment": {
                            "key": "x",
                            "arms": [{"id": "1", "weight": 0.9}, {"id": "2", "weight": 0.9}],
                        },
                    },
                ]
            },
        }
    }
    errors = validate_ruleset(bad)
    assert any("slots.Landing Hero" in e for e in errors)
    assert any("slots.landing.hero.default is required" in e for e in errors)
    assert any("variants[0].condition.age: unknown operator $regx" in e for e in errors)
    assert any("variants[2].id 'b' is used twice" in e for e in errors)
    assert any("variants[3] needs content or an experiment" in e for e in errors)
    assert any("add up to 1" in e for e in errors)
    with pytest.raises(InvalidRuleset):
        compile_ruleset(bad)
    assert validate_ruleset(ruleset()) == []
    assert validate_ruleset([]) == ['a ruleset is an object with "slots": {name: slot}']


def test_recommendations_cross_sell_the_cart_and_never_repeat_it_or_purchases() -> None:
    model = build(
        [
            ["shoe", "sock", "insole"],
            ["shoe", "sock"],
            ["shoe", "laces"],
            ["shirt", "cap"],
            ["shirt"],
            ["cap"],
        ]
    )
    assert model["together"]["shoe"][0] == ["sock", 2]
    picks = recommend(model, cart=["shoe"], purchased=["sock"], limit=4)
    assert picks[:2] == [("insole", "bought together"), ("laces", "bought together")]
    assert {sku for sku, _ in picks}.isdisjoint({"shoe", "sock"})
    assert [why for _, why in picks[2:]] == ["popular", "popular"]
    assert recommend(model, limit=2) == [("shoe", "popular"), ("cap", "popular")]
    # Nothing in the cart: what goes with what she bought.
    assert recommend(model, purchased=["shirt"], limit=1) == [("cap", "bought together")]


_TEXT = st.sampled_from(["a", "b", "", "1"])
_VALUE = st.one_of(st.none(), _TEXT, st.integers(0, 2), st.booleans(), st.lists(_TEXT, max_size=2))
_NESTED = st.one_of(_VALUE, st.dictionaries(st.sampled_from(["id", "x"]), _VALUE, max_size=2))
_CLAUSE_VALUE = st.one_of(
    _TEXT,
    st.integers(0, 2),
    st.builds(lambda v: {"$ne": v}, _TEXT),
    st.builds(lambda v: {"$in": v}, st.lists(_TEXT, max_size=2)),
    st.builds(lambda v: {"$exists": v}, st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(
    conditions=st.lists(
        st.dictionaries(st.sampled_from(["c.id", "c", "d", "c.x"]), _CLAUSE_VALUE, max_size=3),
        min_size=1,
        max_size=6,
    ),
    attributes=st.dictionaries(st.sampled_from(["c", "d"]), _NESTED, max_size=2),
)
def test_the_first_matching_variant_wins_as_the_conditions_say(
    conditions: list[dict[str, Any]], attributes: dict[str, Any]
) -> None:
    """Compiled decisions (string clauses checked first, against values looked up once per
    decision) choose exactly the variant the plain condition evaluator picks."""
    variants = [
        {"id": f"v{n}", "condition": condition, "content": {"n": n}}
        for n, condition in enumerate(conditions)
    ]
    compiled = compile_ruleset({"slots": {"s": {"default": {}, "variants": variants}}})
    expected = next(
        (f"v{n}" for n, condition in enumerate(conditions) if evaluate(condition, attributes)),
        "default",
    )
    assert compiled.decide(attributes)["s"].variant == expected
