"""The GrowthBook specification's conformance cases for conditions (../shared/conformance)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from omnisdk.core.bucketing import bucket_hash, bucket_ranges, choose_variation
from omnisdk.core.conditions import evaluate

CASES = json.loads(
    (
        Path(__file__).resolve().parents[3] / "shared" / "conformance" / "growthbook-cases.json"
    ).read_text()
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
