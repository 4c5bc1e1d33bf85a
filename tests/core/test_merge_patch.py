"""JSON Merge Patch (RFC 7396), with the examples of its appendix A."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnisdk.core.merge_patch import apply

APPENDIX_A = [
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
]


@pytest.mark.parametrize(("target", "patch", "result"), APPENDIX_A)
def test_the_rfc_examples(target: Any, patch: Any, result: Any) -> None:
    assert apply(target, patch) == result


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner),
    max_leaves=10,
)
null_free_objects = st.dictionaries(
    st.text(max_size=2), st.booleans() | st.integers() | st.text(max_size=3), max_size=4
)


@given(json_values, null_free_objects)
def test_a_patch_applied_twice_changes_nothing_more(target: Any, patch: dict[str, Any]) -> None:
    once = apply(target, patch)
    assert apply(once, patch) == once


@given(json_values)
def test_an_empty_patch_keeps_an_object_as_it_is(target: Any) -> None:
    if isinstance(target, dict):
        assert apply(target, {}) == target


def test_the_target_is_not_changed_in_place() -> None:
    target = {"a": {"b": 1}}
    apply(target, {"a": {"b": 2}})
    assert target == {"a": {"b": 1}}
