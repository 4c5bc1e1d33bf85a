"""The GrowthBook specification's conformance cases for conditions (tests/conformance)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnisdk.core.bucketing import bucket_hash, bucket_ranges, choose_variation
from omnisdk.core.conditions import InvalidCondition, compile_condition, evaluate, validate

CASES = json.loads(
    (Path(__file__).resolve().parents[1] / "conformance" / "growthbook-cases.json").read_text()
)


@pytest.mark.parametrize("case", CASES["evalCondition"], ids=[c[0] for c in CASES["evalCondition"]])
def test_eval_condition(case: list[Any]) -> None:
    _, condition, attributes, expected, *groups = case
    assert evaluate(condition, attributes, groups[0] if groups else None) is expected


@pytest.mark.parametrize(
    "case", CASES["hash"], ids=[f"{c[0]}|{c[1]}|v{c[2]}" for c in CASES["hash"]]
)
def test_hash(case: list[Any]) -> None:
    seed, value, version, expected = case
    assert bucket_hash(seed, value, version) == expected


@pytest.mark.parametrize(
    "case", CASES["getBucketRange"], ids=[c[0] for c in CASES["getBucketRange"]]
)
def test_bucket_ranges(case: list[Any]) -> None:
    _, (variations, coverage, weights), expected = case
    ranges = bucket_ranges(variations, coverage, weights)
    assert [(round(a, 6), round(b, 6)) for a, b in ranges] == [
        (round(a, 6), round(b, 6)) for a, b in expected
    ]


@pytest.mark.parametrize(
    "case", CASES["chooseVariation"], ids=[c[0] for c in CASES["chooseVariation"]]
)
def test_choose_variation(case: list[Any]) -> None:
    _, n, ranges, expected = case
    assert choose_variation(n, [tuple(r) for r in ranges]) == expected


@pytest.mark.parametrize("case", CASES["evalCondition"], ids=[c[0] for c in CASES["evalCondition"]])
def test_compiled_conditions_pass_the_same_cases(case: list[Any]) -> None:
    _, condition, attributes, expected, *groups = case
    assert compile_condition(condition)(attributes, groups[0] if groups else {}) is expected


paths = st.sampled_from(["age", "country", "tags", "version", "profile.tier", "missing"])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.sampled_from(["de", "DE", "us", "1.2.3", "2.0.0", "gold", "a.b"]),
)
operator_values = st.one_of(
    st.tuples(
        st.sampled_from(["$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$veq", "$vgt", "$vlt"]),
        scalars,
    ),
    st.tuples(
        st.sampled_from(["$in", "$nin", "$ini", "$nini", "$all", "$alli"]),
        st.lists(scalars, max_size=3),
    ),
    st.tuples(st.just("$exists"), st.booleans()),
    st.tuples(st.just("$type"), st.sampled_from(["string", "number", "array", "null", "boolean"])),
    st.tuples(
        st.sampled_from(["$regex", "$regexi", "$notRegex"]),
        st.sampled_from(["^d", "e$", "[0-9]", "("]),
    ),
    st.tuples(st.just("$size"), st.integers(0, 3)),
)
leaf = st.builds(lambda path, op: {path: {op[0]: op[1]}}, paths, operator_values) | st.builds(
    lambda path, value: {path: value}, paths, scalars
)
conditions = st.recursive(
    leaf,
    lambda inner: st.one_of(
        st.builds(lambda cs: {"$or": cs}, st.lists(inner, max_size=3)),
        st.builds(lambda cs: {"$and": cs}, st.lists(inner, max_size=3)),
        st.builds(lambda cs: {"$nor": cs}, st.lists(inner, max_size=3)),
        st.builds(lambda c: {"$not": c}, inner),
        st.builds(lambda path, c: {path: {"$elemMatch": c}}, st.just("orders"), inner),
    ),
    max_leaves=6,
)
contexts = st.fixed_dictionaries(
    {},
    optional={
        "age": st.one_of(st.integers(0, 40), st.text(max_size=3)),
        "country": st.sampled_from(["de", "DE", "us", ""]),
        "tags": st.lists(st.sampled_from(["de", "gold", "us", 1]), max_size=3),
        "version": st.sampled_from(["1.2.3", "2.0.0-beta", "v2.0.0", "10.0"]),
        "profile": st.fixed_dictionaries(
            {}, optional={"tier": st.sampled_from(["gold", "silver"])}
        ),
        "orders": st.lists(
            st.fixed_dictionaries(
                {"age": st.integers(0, 40), "country": st.sampled_from(["de", "us"])}
            ),
            max_size=2,
        ),
    },
)


# Generation speed depends on the machine's load; correctness does not.
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(conditions, contexts)
def test_compiled_and_interpreted_evaluation_agree(
    condition: dict[str, Any], context: dict[str, Any]
) -> None:
    assert compile_condition(condition)(context, {}) == evaluate(condition, context)


def test_invalid_conditions_are_refused_when_saved() -> None:
    for bad, words in [
        ({"age": {"$regx": "a"}}, "unknown operator $regx"),
        ({"$or": {"a": 1}}, "list of conditions"),
        ({"name": {"$regex": "("}}, "regular expression"),
        ({"tags": {"$in": "gold"}}, "takes a list"),
        ({"$where": "1"}, "not a logical operator"),
        (["a"], "must be an object"),
    ]:
        with pytest.raises(InvalidCondition, match=re.escape(words)):
            validate(bad)
    validate({"$or": [{"age": {"$gt": 18}}, {"tags": {"$elemMatch": {"$eq": "gold"}}}]})
