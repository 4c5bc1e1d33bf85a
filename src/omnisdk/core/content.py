"""The content rule engine (DESIGN: personalised content), pure.

A ruleset maps slots (`landing.hero`, …) to ordered variants. Each variant has a condition in
the GrowthBook operator language and either content or an experiment (arms with content,
weights, coverage, a hash attribute). For each slot the first variant whose condition holds
wins; an experiment variant wins only for visitors its coverage takes in (the others go on to
the next variant). When nothing matches, the slot's default is served.

Everything that can be done once is done when the ruleset is compiled: conditions become
closures, bucket ranges are computed, explanations are written. A decision then only runs the
comparisons and hashes it needs, which keeps it in microseconds.

Ruleset JSON (what the server stores and the SDK caches):
    {"slots": {"landing.hero": {
        "default": {...content...},
        "source": "static" | "recommendations", "limit": 4,
        "variants": [
            {"id": "billboard", "condition": {"campaign.id": "billboard-7"}, "content": {...}},
            {"id": "cta-test", "condition": {}, "experiment": {
                "key": "cta-2026", "hash_attribute": "id", "hash_version": 2, "coverage": 1.0,
                "arms": [{"id": "a", "weight": 0.5, "content": {...}}, ...]}}]}}}
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from omnisdk.core.bucketing import bucket_hash, bucket_ranges
from omnisdk.core.conditions import InvalidCondition, Test, compile_condition, get_path, validate

SLOT_NAME = re.compile(r"^[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)*$")
VARIANT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SOURCES = ("static", "recommendations")
MAX_SLOTS = 100
MAX_VARIANTS = 100
NO_GROUPS: Mapping[str, list[Any]] = {}


class InvalidRuleset(ValueError):
    """A ruleset that must not be saved; `errors` lists each problem with where it is."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class SlotDecision:
    slot: str
    variant: str  # the variant id; "<variant>/<arm>" for an experiment arm; "default"
    content: Mapping[str, Any]
    reason: str  # "matched", "experiment" or "default"
    explanation: str
    source: str = "static"
    limit: int = 0
    experiment: tuple[str, str] | None = None  # (experiment key, arm id): an exposure


@dataclass(frozen=True, slots=True)
class _Arm:
    decision: SlotDecision
    range: tuple[float, float]


@dataclass(frozen=True, slots=True)
class _Experiment:
    key: str
    seed: str
    path: str
    version: int
    arms: tuple[_Arm, ...]


@dataclass(frozen=True, slots=True)
class _Variant:
    id: str
    test: Test | None  # None: always
    decision: SlotDecision | None  # None for an experiment variant
    experiment: _Experiment | None
    # A string the condition requires at a path (`{"campaign.id": "poster-7", ...}`): checked
    # first against the value looked up once per decision, so the many variants that differ
    # only there are passed over without running their condition. None: no such clause.
    guard: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Slot:
    name: str
    variants: tuple[_Variant, ...]
    default: SlotDecision


@dataclass(frozen=True)
class CompiledRuleset:
    slots: dict[str, _Slot] = field(default_factory=dict)

    @property
    def slot_names(self) -> list[str]:
        return list(self.slots)

    def decide(
        self, attributes: Mapping[str, Any], slots: list[str] | None = None
    ) -> dict[str, SlotDecision]:
        """Per slot (all when `slots` is None; unknown names are skipped) the decision."""
        chosen: dict[str, SlotDecision] = {}
        looked_up: dict[str, Any] = {}  # guard paths' values, looked up once per decision
        for name in self.slots if slots is None else slots:
            slot = self.slots.get(name)
            if slot is not None:
                chosen[name] = _decide_slot(slot, attributes, looked_up)
        return chosen


def _decide_slot(
    slot: _Slot, attributes: Mapping[str, Any], looked_up: dict[str, Any]
) -> SlotDecision:
    for variant in slot.variants:
        if variant.guard is not None:
            path, wanted = variant.guard
            if path in looked_up:
                value = looked_up[path]
            else:
                value = looked_up[path] = _value_at(attributes, path)
            if value != wanted:  # the condition would compare the same value: it fails
                continue
        if variant.test is not None and not variant.test(attributes, NO_GROUPS):
            continue
        if variant.experiment is None:
            assert variant.decision is not None
            return variant.decision
        arm = _assign(variant.experiment, attributes)
        if arm is not None:
            return arm
    return slot.default


def _value_at(attributes: Any, path: str) -> Any:
    """The value a condition's clause on `path` compares (conditions.py walks it alike: a
    step into anything but a dict is a missing value)."""
    current = attributes
    for segment in path.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(segment)
    return current


def _guard(condition: Mapping[str, Any]) -> tuple[str, str] | None:
    """The first clause of `condition` that requires a plain string at a path, if any."""
    for key, value in condition.items():
        if isinstance(value, str) and not key.startswith("$"):
            return key, value
    return None


def _assign(experiment: _Experiment, attributes: Mapping[str, Any]) -> SlotDecision | None:
    value = get_path(attributes, experiment.path)
    if value is None or value == "":
        return None
    n = bucket_hash(experiment.seed, str(value), experiment.version)
    if n is None:
        return None
    for arm in experiment.arms:
        start, end = arm.range
        if start <= n < end:
            return arm.decision
    return None


# --- compiling and validating ---------------------------------------------------------------


def _compact(condition: Any) -> str:
    return json.dumps(condition, separators=(",", ":"), sort_keys=True)


def _content(value: Any, where: str, errors: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        errors.append(f"{where} must be an object (title, body, media, cta, fields, …)")
        return {}
    return value


def validate_ruleset(document: Any) -> list[str]:
    """Every problem of the ruleset, each with where it is (empty: valid)."""
    errors: list[str] = []
    _compile(document, errors)
    return errors


def compile_ruleset(document: Any) -> CompiledRuleset:
    """The ruleset ready for decisions; raises InvalidRuleset listing every problem."""
    errors: list[str] = []
    compiled = _compile(document, errors)
    if errors:
        raise InvalidRuleset(errors)
    return compiled


def _compile(document: Any, errors: list[str]) -> CompiledRuleset:
    if not isinstance(document, dict) or not isinstance(document.get("slots"), dict):
        errors.append('a ruleset is an object with "slots": {name: slot}')
        return CompiledRuleset()
    slots = document["slots"]
    if len(slots) > MAX_SLOTS:
        errors.append(f"at most {MAX_SLOTS} slots")
    compiled: dict[str, _Slot] = {}
    for name, slot in slots.items():
        where = f"slots.{name}"
        if not isinstance(name, str) or not SLOT_NAME.match(name):
            errors.append(f"{where}: a slot name is lower case words joined by dots")
            continue
        if not isinstance(slot, dict):
            errors.append(f"{where} must be an object")
            continue
        result = _compile_slot(name, slot, where, errors)
        if result is not None:
            compiled[name] = result
    return CompiledRuleset(compiled)


def _compile_slot(name: str, slot: dict[str, Any], where: str, errors: list[str]) -> _Slot | None:
    source = slot.get("source", "static")
    if source not in SOURCES:
        errors.append(f"{where}.source must be one of {', '.join(SOURCES)}")
    limit = slot.get("limit", 4)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 50:
        errors.append(f"{where}.limit must be a whole number from 1 to 50")
        limit = 4
    if "default" not in slot:
        errors.append(f"{where}.default is required: what to serve when no variant matches")
    default = SlotDecision(
        name,
        "default",
        _content(slot.get("default", {}), f"{where}.default", errors),
        "default",
        "no variant's condition matched: the slot's default",
        source,
        limit,
    )
    variants = slot.get("variants", [])
    if not isinstance(variants, list) or len(variants) > MAX_VARIANTS:
        errors.append(f"{where}.variants must be a list of at most {MAX_VARIANTS}")
        return None
    seen: set[str] = set()
    compiled = []
    for index, variant in enumerate(variants):
        place = f"{where}.variants[{index}]"
        if not isinstance(variant, dict):
            errors.append(f"{place} must be an object")
            continue
        variant_id = variant.get("id")
        if not isinstance(variant_id, str) or not VARIANT_ID.match(variant_id):
            errors.append(f"{place}.id must be 1-64 letters, digits, '.', '_' or '-'")
            continue
        if variant_id in seen or variant_id == "default":
            errors.append(f"{place}.id {variant_id!r} is used twice (or is 'default')")
        seen.add(variant_id)
        condition = variant.get("condition") or {}
        try:
            validate(condition, f"{place}.condition")
            test = compile_condition(condition) if condition else None
        except InvalidCondition as error:
            errors.append(str(error))
            continue
        rule = f"variant {variant_id!r} (rule {index + 1}) matched " + (
            _compact(condition) if condition else "(no condition)"
        )
        experiment = variant.get("experiment")
        if experiment is None:
            if "content" not in variant:
                errors.append(f"{place} needs content or an experiment")
            decision = SlotDecision(
                name,
                variant_id,
                _content(variant.get("content", {}), f"{place}.content", errors),
                "matched",
                rule,
                source,
                limit,
            )
            compiled.append(_Variant(variant_id, test, decision, None, _guard(condition)))
        else:
            built = _compile_experiment(
                name, variant_id, experiment, f"{place}.experiment", rule, source, limit, errors
            )
            if built is not None:
                compiled.append(_Variant(variant_id, test, None, built, _guard(condition)))
    return _Slot(name, tuple(compiled), default)


def _compile_experiment(
    slot: str,
    variant_id: str,
    experiment: Any,
    where: str,
    rule: str,
    source: str,
    limit: int,
    errors: list[str],
) -> _Experiment | None:
    if not isinstance(experiment, dict):
        errors.append(f"{where} must be an object")
        return None
    key = experiment.get("key")
    if not isinstance(key, str) or not key:
        errors.append(f"{where}.key is required (it names the experiment in exposure events)")
        return None
    arms = experiment.get("arms")
    if not isinstance(arms, list) or not 2 <= len(arms) <= 20:
        errors.append(f"{where}.arms must list 2 to 20 arms")
        return None
    coverage = experiment.get("coverage", 1.0)
    if not isinstance(coverage, int | float) or not 0 <= coverage <= 1:
        errors.append(f"{where}.coverage must be between 0 and 1")
        coverage = 1.0
    version = experiment.get("hash_version", 2)
    if version not in (1, 2):
        errors.append(f"{where}.hash_version must be 1 or 2")
    weights = [arm.get("weight") if isinstance(arm, dict) else None for arm in arms]
    if all(w is None for w in weights):
        chosen_weights = None
    elif any(not isinstance(w, int | float) or w < 0 for w in weights) or not (
        0.99 <= sum(weights) <= 1.01  # type: ignore[arg-type]
    ):
        errors.append(f"{where}: arm weights must all be given, be ≥ 0 and add up to 1")
        chosen_weights = None
    else:
        chosen_weights = [float(w) for w in weights]  # type: ignore[arg-type]
    ranges = bucket_ranges(len(arms), float(coverage), chosen_weights)
    built = []
    arm_ids: set[str] = set()
    for index, (arm, span) in enumerate(zip(arms, ranges, strict=True)):
        place = f"{where}.arms[{index}]"
        if not isinstance(arm, dict) or not isinstance(arm.get("id"), str):
            errors.append(f"{place} needs an id and content")
            continue
        if arm["id"] in arm_ids:
            errors.append(f"{place}.id {arm['id']!r} is used twice")
        arm_ids.add(arm["id"])
        explanation = f"{rule}; experiment {key!r} assigned arm {arm['id']!r}"
        decision = SlotDecision(
            slot,
            f"{variant_id}/{arm['id']}",
            _content(arm.get("content", {}), f"{place}.content", errors),
            "experiment",
            explanation,
            source,
            limit,
            (key, arm["id"]),
        )
        built.append(_Arm(decision, span))
    return _Experiment(
        key,
        str(experiment.get("seed") or key),
        str(experiment.get("hash_attribute", "id")),
        int(version) if version in (1, 2) else 2,
        tuple(built),
    )


__all__ = [
    "CompiledRuleset",
    "InvalidRuleset",
    "SlotDecision",
    "compile_ruleset",
    "validate_ruleset",
]
