"""The strict JSON policy, shared by the server's parser and the SDK's requests."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnisdk.core import strict_json
from omnisdk.core.problems import ProblemType
from omnisdk.core.strict_json import MAX_SAFE_INTEGER, MalformedJson, StrictJsonError
from omnisdk.errors import InvalidRequestError
from omnisdk.resources.identity import identify_call

_storable_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
_storable = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INTEGER, MAX_SAFE_INTEGER)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _storable_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_storable_text, children, max_size=4)
    ),
    max_leaves=20,
)


@given(_storable)
def test_everything_storable_parses_back_to_itself(value: object) -> None:
    assert strict_json.loads(json.dumps(value).encode()) == value
    assert strict_json.violations(value) == []


@pytest.mark.parametrize(
    ("text", "loc", "rule"),
    [
        ('{"a": NaN}', ("a",), "number_not_finite"),
        ('{"a": [1, -Infinity]}', ("a", 1), "number_not_finite"),
        ('{"a": 1e400}', ("a",), "number_not_finite"),
        ('{"a": -9007199254740992}', ("a",), "integer_too_large"),
        ('{"a": ' + "1" * 5000 + "}", ("a",), "integer_too_large"),
        ('{"a": {"b": "\\ud800x"}}', ("a", "b"), "string_surrogate"),
        ('{"a": "\\u0000"}', ("a",), "string_nul"),
        ('{"a": 1, "b": 2, "a": 3}', ("a",), "duplicate_key"),
    ],
)
def test_refused_values_are_named_by_location(
    text: str, loc: tuple[object, ...], rule: str
) -> None:
    with pytest.raises(StrictJsonError) as caught:
        strict_json.loads(text.encode())
    assert [(v.loc, v.type) for v in caught.value.violations] == [(loc, rule)]


def test_the_python_side_applies_the_same_rules() -> None:
    found = strict_json.violations({"a": math.nan, "b": [2**53], "c": "\udfff", "\x00": 1})
    assert sorted(v.type for v in found) == [
        "integer_too_large",
        "number_not_finite",
        "string_nul",
        "string_surrogate",
    ]


@pytest.mark.parametrize("body", [b"\xff{}", b'{"a": ', b"", b"\x1f\x8b\x08\x00"])
def test_what_is_not_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedJson):
        strict_json.loads(body)


def test_a_body_nested_beyond_the_stack_is_refused_not_crashed() -> None:
    with pytest.raises((StrictJsonError, MalformedJson)):
        strict_json.loads(b"[" * 200_000 + b"]" * 200_000)


def test_the_sdk_refuses_before_sending() -> None:
    from omnisdk._base import BaseClient, Call

    call: Call[object] = Call(
        "POST", "/v1/system/ping", lambda v: v, json={"traits": {"nick": "\udfff"}}
    )
    client = BaseClient("http://127.0.0.1:9", "osk_test", consent_watch=False)
    with pytest.raises(InvalidRequestError) as caught:
        client.prepare(call)
    assert caught.value.problem["type"] == ProblemType.VALIDATION_ERROR
    assert "traits.nick" in caught.value.problem["detail"]


def test_the_sdk_refuses_nan_traits_instead_of_sending_null() -> None:
    with pytest.raises(ValueError, match="finite"):
        identify_call("device-1", None, None, None, None, None, {"score": math.nan}, None)
