"""Targeting conditions: the MongoDB-style operator language of the GrowthBook SDK
specification, so content rules written for it are portable (DESIGN: personalised content).

`evaluate(condition, attributes)` interprets a condition; `compile_condition(condition)` turns it
once into a tree of closures that a decision calls many times. Both follow the same rules and
pass the specification's conformance cases (tests/core/test_conditions.py). `validate` rejects a
malformed condition when a ruleset is saved, never at decision time.

Values compare as JSON values do: a boolean is not a number, and arrays and objects compare
deeply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any

Condition = Mapping[str, Any]
Attributes = Mapping[str, Any]
SavedGroups = Mapping[str, list[Any]]
Test = Callable[[Attributes, SavedGroups], bool]

OPERATORS = frozenset(
    {
        "$eq",
        "$ne",
        "$lt",
        "$lte",
        "$gt",
        "$gte",
        "$veq",
        "$vne",
        "$vlt",
        "$vlte",
        "$vgt",
        "$vgte",
        "$in",
        "$nin",
        "$ini",
        "$nini",
        "$all",
        "$alli",
        "$elemMatch",
        "$size",
        "$exists",
        "$type",
        "$regex",
        "$regexi",
        "$notRegex",
        "$notRegexi",
        "$not",
        "$inGroup",
        "$notInGroup",
    }
)


class InvalidCondition(ValueError):
    """A condition that cannot be evaluated; the message names the part."""


# --- values -----------------------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "unknown"


def same(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers; arrays and objects compare deeply."""
    ta, tb = json_type(a), json_type(b)
    if ta != tb:
        return False
    if ta == "array":
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if ta == "object":
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return bool(a == b)


def _number(value: Any) -> float | None:
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def compare(a: Any, b: Any) -> int | None:
    """-1, 0 or 1, or None when the two cannot be ordered. A number against a non-number
    converts the other side to a number (as the specification's reference SDKs do)."""
    a_num = isinstance(a, int | float) and not isinstance(a, bool)
    b_num = isinstance(b, int | float) and not isinstance(b, bool)
    if a_num and not b_num:
        converted = _number(b)
        if converted is None:
            return None
        b = converted
    elif b_num and not a_num:
        converted = _number(a)
        if converted is None:
            return None
        a = converted
    try:
        return int((a > b) - (a < b))
    except TypeError:
        return None


@lru_cache(maxsize=4096)
def padded_version(value: str) -> str:
    """A version string that compares correctly as text: 1.2.10 > 1.2.9, 1.0.0-beta < 1.0.0."""
    version = re.sub(r"(^v|\+.*$)", "", value)
    parts = re.split(r"[-.]", version)
    if len(parts) == 3:
        parts.append("~")
    return "-".join(p.rjust(5, " ") if re.fullmatch(r"[0-9]+", p) else p for p in parts)


def _version_of(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        value = "0"
    return padded_version(value)


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return ("__list__", tuple(_hashable(v) for v in value))
    if isinstance(value, dict):
        return ("__dict__", tuple(sorted((k, _hashable(v)) for k, v in value.items())))
    if isinstance(value, bool):
        return ("__bool__", value)
    return value


def is_in(candidates: list[Any], value: Any, fold: bool = False) -> bool:
    return membership(candidates, fold)(value)


def membership(candidates: list[Any], fold: bool = False) -> Callable[[Any], bool]:
    """`is_in` with the candidates' set built once (a compiled `$in` runs it per decision)."""

    def key(v: Any) -> Any:
        return v.lower() if fold and isinstance(v, str) else _hashable(v)

    pool = frozenset(key(c) for c in candidates)

    def holds(value: Any) -> bool:
        if isinstance(value, list):
            return any(key(v) in pool for v in value)
        return key(value) in pool

    return holds


def get_path(attributes: Any, path: str) -> Any:
    current = attributes
    for segment in path.split("."):
        if isinstance(current, dict) and segment in current:
            current = current[segment]
        else:
            return None
    return current


def is_operator_object(value: Any) -> bool:
    return isinstance(value, dict) and bool(value) and all(k.startswith("$") for k in value)


def _regex(pattern: Any, flags: int = 0) -> re.Pattern[str] | None:
    if not isinstance(pattern, str):
        return None
    try:
        return re.compile(pattern, flags)
    except re.error:
        return None


# --- interpreting -----------------------------------------------------------------------------


def evaluate(
    condition: Condition, attributes: Attributes, groups: SavedGroups | None = None
) -> bool:
    """Whether `attributes` satisfy `condition`."""
    groups = groups or {}
    return all(_clause(key, value, attributes, groups) for key, value in condition.items())


def _clause(key: str, value: Any, attributes: Attributes, groups: SavedGroups) -> bool:
    """One top-level entry of a condition: a logical operator or an attribute path."""
    if key == "$or":
        return _any(value, attributes, groups)
    if key == "$nor":
        return not _any(value, attributes, groups)
    if key == "$and":
        return all(evaluate(c, attributes, groups) for c in value)
    if key == "$not":
        return not evaluate(value, attributes, groups)
    return _value_matches(value, get_path(attributes, key), groups)


def _any(conditions: list[Condition], attributes: Attributes, groups: SavedGroups) -> bool:
    return not conditions or any(evaluate(c, attributes, groups) for c in conditions)


def _value_matches(expected: Any, actual: Any, groups: SavedGroups) -> bool:
    if is_operator_object(expected):
        return all(_operator(op, actual, arg, groups) for op, arg in expected.items())
    return same(expected, actual)


def _elem_match(condition: Any, actual: Any, groups: SavedGroups) -> bool:
    if not isinstance(actual, list):
        return False
    if is_operator_object(condition):
        return any(_value_matches(condition, item, groups) for item in actual)
    return any(isinstance(item, dict) and evaluate(condition, item, groups) for item in actual)


def _operator(op: str, actual: Any, arg: Any, groups: SavedGroups) -> bool:
    if op == "$eq":
        return same(actual, arg)
    if op == "$ne":
        return not same(actual, arg)
    if op in ("$lt", "$lte", "$gt", "$gte"):
        order = compare(actual, arg)
        return order is not None and _ORDER[op](order)
    if op in ("$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte"):
        left, right = _version_of(actual), _version_of(arg)
        order = (left > right) - (left < right)
        if op in ("$veq", "$vne"):
            return (order == 0) == (op == "$veq")
        return _ORDER["$" + op[2:]](order)
    if op in ("$in", "$ini"):
        return isinstance(arg, list) and is_in(arg, actual, fold=op == "$ini")
    if op in ("$nin", "$nini"):
        return isinstance(arg, list) and not is_in(arg, actual, fold=op == "$nini")
    if op in ("$inGroup", "$notInGroup"):
        members = groups.get(arg, []) if isinstance(arg, str) else []
        return is_in(members, actual) == (op == "$inGroup")
    if op in ("$all", "$alli"):
        if not isinstance(actual, list) or not isinstance(arg, list):
            return False
        if op == "$alli":
            return all(is_in(actual, expected, fold=True) for expected in arg)
        return all(any(_value_matches(c, item, groups) for item in actual) for c in arg)
    if op == "$elemMatch":
        return _elem_match(arg, actual, groups)
    if op == "$size":
        return isinstance(actual, list) and _value_matches(arg, len(actual), groups)
    if op == "$exists":
        return (actual is not None) if arg else actual is None
    if op == "$type":
        return bool(json_type(actual) == arg)
    if op == "$not":
        return not _value_matches(arg, actual, groups)
    if op in ("$regex", "$regexi", "$notRegex", "$notRegexi"):
        pattern = _regex(arg, re.IGNORECASE if op.endswith("i") else 0)
        if pattern is None or not isinstance(actual, str):
            return False
        found = bool(pattern.search(actual))
        return found if op in ("$regex", "$regexi") else not found
    return False  # an unknown operator matches nothing


_ORDER: dict[str, Callable[[int], bool]] = {
    "$lt": lambda o: o < 0,
    "$lte": lambda o: o <= 0,
    "$gt": lambda o: o > 0,
    "$gte": lambda o: o >= 0,
}


# --- compiling ----------------------------------------------------------------------------------


def compile_condition(condition: Condition) -> Test:
    """The condition as a tree of closures: paths split, regexes compiled, versions padded and
    sets built once, so that a decision only runs comparisons."""
    return _all_of([_compile_clause(key, value) for key, value in condition.items()])


def _all_of(tests: list[Test]) -> Test:
    """A test that holds when every one of `tests` does (true for none), stopping at the first
    that fails; small cases unrolled, since decisions run these millions of times."""
    if len(tests) == 1:
        return tests[0]
    if len(tests) == 2:
        first, second = tests
        return lambda a, g: first(a, g) and second(a, g)

    def every(attributes: Attributes, groups: SavedGroups) -> bool:
        for test in tests:  # noqa: SIM110 - a plain loop is faster than all() over a generator
            if not test(attributes, groups):
                return False
        return True

    return every


def _compile_clause(key: str, value: Any) -> Test:
    if key in ("$or", "$nor"):
        options = [compile_condition(c) for c in value]
        negate = key == "$nor"
        return lambda a, g: (not options or any(o(a, g) for o in options)) != negate
    if key == "$and":
        return _all_of([compile_condition(c) for c in value])
    if key == "$not":
        inner = compile_condition(value)
        return lambda a, g: not inner(a, g)
    path = key.split(".")
    matches = _compile_value(value)
    if len(path) == 1:
        name = path[0]

        def top_level(attributes: Attributes, groups: SavedGroups) -> bool:
            return matches(attributes.get(name) if isinstance(attributes, dict) else None, groups)

        return top_level

    def clause(attributes: Attributes, groups: SavedGroups) -> bool:
        current: Any = attributes
        for segment in path:
            if isinstance(current, dict):
                current = current.get(segment)
            else:
                return matches(None, groups)
        return matches(current, groups)

    return clause


ValueTest = Callable[[Any, SavedGroups], bool]


def _compile_value(expected: Any) -> ValueTest:
    if is_operator_object(expected):
        tests = [_compile_operator(op, arg) for op, arg in expected.items()]
        if len(tests) == 1:
            return tests[0]
        return lambda actual, groups: all(t(actual, groups) for t in tests)
    return _equals(expected)


def _equals(expected: Any) -> ValueTest:
    """JSON equality with `expected`, specialised for scalars (what `same` would decide)."""
    if expected is None:
        return lambda actual, groups: actual is None
    if isinstance(expected, bool):
        return lambda actual, groups: isinstance(actual, bool) and actual == expected
    if isinstance(expected, str):
        return lambda actual, groups: isinstance(actual, str) and actual == expected
    if isinstance(expected, int | float):
        return lambda actual, groups: (
            isinstance(actual, int | float) and not isinstance(actual, bool) and actual == expected
        )
    return lambda actual, groups: same(expected, actual)


def _compile_operator(op: str, arg: Any) -> ValueTest:
    if op in ("$lt", "$lte", "$gt", "$gte"):
        accept = _ORDER[op]

        def ordered(actual: Any, groups: SavedGroups) -> bool:
            order = compare(actual, arg)
            return order is not None and accept(order)

        return ordered
    if op in ("$veq", "$vne", "$vlt", "$vlte", "$vgt", "$vgte"):
        right = _version_of(arg)
        if op in ("$veq", "$vne"):
            want = op == "$veq"
            return lambda actual, groups: (_version_of(actual) == right) == want
        accept = _ORDER["$" + op[2:]]
        return lambda actual, groups: accept(
            (_version_of(actual) > right) - (_version_of(actual) < right)
        )
    if op in ("$in", "$ini", "$nin", "$nini"):
        if not isinstance(arg, list):
            return lambda actual, groups: False
        fold = op.endswith("i") and op != "$in"
        keep = op in ("$in", "$ini")
        holds = membership(arg, fold)
        return lambda actual, groups: holds(actual) == keep
    if op in ("$regex", "$regexi", "$notRegex", "$notRegexi"):
        pattern = _regex(arg, re.IGNORECASE if op.endswith("i") else 0)
        if pattern is None:
            return lambda actual, groups: False
        want = op in ("$regex", "$regexi")
        return lambda actual, groups: (
            isinstance(actual, str) and bool(pattern.search(actual)) == want
        )
    if op == "$elemMatch":
        if is_operator_object(arg):
            item_test = _compile_value(arg)
            return lambda actual, groups: (
                isinstance(actual, list) and any(item_test(item, groups) for item in actual)
            )
        nested = compile_condition(arg)
        return lambda actual, groups: (
            isinstance(actual, list)
            and any(isinstance(item, dict) and nested(item, groups) for item in actual)
        )
    if op == "$size":
        size_test = _compile_value(arg)
        return lambda actual, groups: isinstance(actual, list) and size_test(len(actual), groups)
    if op == "$not":
        inner = _compile_value(arg)
        return lambda actual, groups: not inner(actual, groups)
    if op == "$all":
        if not isinstance(arg, list):
            return lambda actual, groups: False
        each = [_compile_value(c) for c in arg]
        return lambda actual, groups: (
            isinstance(actual, list) and all(any(t(item, groups) for item in actual) for t in each)
        )
    # The rest need no preparation: share the interpreter's rules.
    return lambda actual, groups: _operator(op, actual, arg, groups)


# --- validating ---------------------------------------------------------------------------------


def validate(condition: Any, where: str = "condition") -> None:
    """Raise InvalidCondition for anything a ruleset must not be saved with: unknown
    operators, logical operators without a list, regular expressions that do not compile."""
    if not isinstance(condition, dict):
        raise InvalidCondition(f"{where} must be an object")
    for key, value in condition.items():
        if key in ("$or", "$nor", "$and"):
            if not isinstance(value, list):
                raise InvalidCondition(f"{where}.{key} must be a list of conditions")
            for n, item in enumerate(value):
                validate(item, f"{where}.{key}[{n}]")
        elif key == "$not":
            validate(value, f"{where}.$not")
        elif key.startswith("$"):
            raise InvalidCondition(
                f"{where}: {key} is not a logical operator ($or, $nor, $and, $not)"
            )
        else:
            _validate_value(value, f"{where}.{key}")


def _validate_value(value: Any, where: str) -> None:
    if not is_operator_object(value):
        return
    for op, arg in value.items():
        if op not in OPERATORS:
            raise InvalidCondition(f"{where}: unknown operator {op}")
        if op in ("$regex", "$regexi", "$notRegex", "$notRegexi") and _regex(arg) is None:
            raise InvalidCondition(f"{where}: {op} is not a valid regular expression")
        if op in ("$in", "$nin", "$ini", "$nini", "$all", "$alli") and not isinstance(arg, list):
            raise InvalidCondition(f"{where}: {op} takes a list")
        if op in ("$not", "$size"):
            _validate_value(arg, f"{where}.{op}")
        if op == "$elemMatch":
            if is_operator_object(arg):
                _validate_value(arg, f"{where}.$elemMatch")
            else:
                validate(arg, f"{where}.$elemMatch")
