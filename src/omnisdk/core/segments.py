"""Named segments (issue 19), pure: a condition in the content rules' language
(`omnisdk.core.conditions`) over a customer's profile attributes, and why she is in or out.

The attributes are the content engine's profile facts (`omnisdk.resources.content.
profile_facts`): `traits`, `interests`, `top_interest`, `lifecycle`, `buyer_type`,
`orders.count`, `orders.value`, plus `consent.<purpose>` (granted or not, her person-scoped
state) and `preferred_channel`. A segment cannot test another segment (no cycles, no order
of evaluation to get wrong).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from omnisdk.core.conditions import (
    InvalidCondition,
    Test,
    compile_condition,
    evaluate,
    get_path,
    validate,
)

NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
MAX_CONDITION_CHARS = 10_000
ATTRIBUTE_ROOTS = frozenset(
    {
        "known",
        "traits",
        "interests",
        "top_interest",
        "lifecycle",
        "buyer_type",
        "orders",
        "consent",
        "preferred_channel",
    }
)


class InvalidSegment(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _paths(condition: Mapping[str, Any]) -> list[str]:
    found: list[str] = []
    for key, value in condition.items():
        if key in ("$or", "$nor", "$and") and isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    found += _paths(item)
        elif key == "$not" and isinstance(value, dict):
            found += _paths(value)
        elif not key.startswith("$"):
            found.append(key)
    return found


def roots(condition: Mapping[str, Any]) -> frozenset[str]:
    """The attributes a condition reads (the first part of each path)."""
    return frozenset(path.split(".", 1)[0] for path in _paths(condition))


# Attributes that change with time alone, with no event of hers: her lifecycle stage drifts
# (active to lapsing), interest scores decay, and her observed preferred channel forgets
# engagement older than its window. (The ranking of decayed interests, `top_interest`, does not
# change by decay alone: every score shrinks by the same factor.)
TIME_ROOTS = frozenset({"lifecycle", "interests", "preferred_channel"})


def depends_on_time(condition: Mapping[str, Any]) -> bool:
    """Whether a customer may enter or leave a segment of this condition as time passes."""
    return bool(roots(condition) & TIME_ROOTS)


def check(name: str, condition: Any) -> None:
    """Raise InvalidSegment with every problem of a definition."""
    errors = []
    if len(json.dumps(condition, default=str)) > MAX_CONDITION_CHARS:
        raise InvalidSegment([f"condition: longer than {MAX_CONDITION_CHARS:,} characters"])
    if not isinstance(name, str) or not NAME.match(name):
        errors.append("name: a slug of lower-case letters, digits, - and _ (up to 64)")
    try:
        validate(condition, "condition")
    except InvalidCondition as error:
        errors.append(str(error))
    else:
        for path in _paths(condition):
            if path.split(".", 1)[0] not in ATTRIBUTE_ROOTS:
                roots = ", ".join(sorted(ATTRIBUTE_ROOTS))
                errors.append(f"condition.{path}: not a profile attribute (one of {roots})")
    if errors:
        raise InvalidSegment(errors)


@dataclass(frozen=True)
class Segment:
    """A segment compiled once; `test` is called for every customer evaluated."""

    id: str
    name: str
    version: int
    condition: Mapping[str, Any]
    test: Test

    @classmethod
    def of(cls, id: str, name: str, version: int, condition: Mapping[str, Any]) -> Segment:
        return cls(id, name, version, condition, compile_condition(condition))

    def holds(self, attributes: Mapping[str, Any]) -> bool:
        return self.test(attributes, {})


@dataclass(frozen=True)
class ClauseExplanation:
    clause: dict[str, Any]
    holds: bool
    values: dict[str, Any]  # the attribute values the clause looked at


def explain(condition: Mapping[str, Any], attributes: Mapping[str, Any]) -> list[ClauseExplanation]:
    """Each top-level clause of the condition: whether it holds for her, and her values."""
    return [
        ClauseExplanation(
            {key: value},
            evaluate({key: value}, attributes),
            {path: get_path(dict(attributes), path) for path in _paths({key: value})},
        )
        for key, value in condition.items()
    ]
