from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from omnisdk.core.identifiers import (
    JUNK_VALUES,
    IdentifierType,
    InvalidIdentifier,
    identifier_key,
    normalise,
)

SECRET = b"k" * 32


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalise("email", "  Amy.Doe@Example.COM\n") == "amy.doe@example.com"


@pytest.mark.parametrize("raw", ["+49 30 1234 5678", "0049-30-12345678", "+49 (30) 1234.5678"])
def test_phone_numbers_become_e164(raw: str) -> None:
    assert normalise("phone", raw) == "+493012345678"


def test_national_phone_number_needs_a_country_code() -> None:
    with pytest.raises(InvalidIdentifier, match="international"):
        normalise("phone", "030 12345678")
    assert normalise("phone", "030 12345678", default_country_code="49") == "+493012345678"


@pytest.mark.parametrize("value", sorted(JUNK_VALUES))
def test_junk_values_are_refused_for_every_type(value: str) -> None:
    for kind in ("anonymous", "customer_ref", "loyalty_card"):
        with pytest.raises(InvalidIdentifier):
            normalise(kind, value.upper())


def test_tenant_patterns_are_refused() -> None:
    patterns = [re.compile(r"pos-\d+", re.I)]
    with pytest.raises(InvalidIdentifier, match="junk"):
        normalise("anonymous", "POS-12", junk_patterns=patterns)
    assert normalise("anonymous", "pos-12-amy", junk_patterns=patterns) == "pos-12-amy"


def test_unknown_type_is_refused_with_the_known_ones_named() -> None:
    with pytest.raises(InvalidIdentifier, match="customer_ref"):
        normalise("passport", "X")


def test_email_and_phone_are_stored_only_as_keyed_hashes() -> None:
    key = identifier_key(SECRET, "email", "Amy@example.com")
    assert "amy" not in key.value and len(key.value) == 64
    assert key == identifier_key(SECRET, "email", " amy@EXAMPLE.com")
    assert key != identifier_key(b"x" * 32, "email", "amy@example.com")
    assert key.masked().startswith("email:#") and "amy" not in key.masked()
    assert identifier_key(SECRET, "anonymous", " dev-1 ").value == "dev-1"


@given(st.text(min_size=1, max_size=40))
def test_normalising_is_idempotent(value: str) -> None:
    for kind in IdentifierType:
        try:
            once = normalise(kind, value)
        except InvalidIdentifier:
            continue
        assert normalise(kind, once) == once
