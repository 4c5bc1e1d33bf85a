"""The content rule engine: first match wins, defaults, experiments, validation, explanations."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from omnisdk.core.bucketing import bucket_hash
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
