"""Customer codes: signed, short-lived, no personal data, verified offline, and never
interchangeable with return codes."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from omnisdk.core import base45, customer_codes, tokens
from omnisdk.core.customer_codes import CodeClaims, Status

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
PRIVATE = Ed25519PrivateKey.generate()
PUBLIC = tokens.raw_public_key(PRIVATE)
KID = tokens.key_id(PUBLIC)
KEYS = {KID: tokens.VerificationKey(KID, PUBLIC, NOW - timedelta(days=30))}


def claims(issuer: str = "ten_shop", minutes: int = 10) -> CodeClaims:
    return CodeClaims(issuer, NOW, NOW + timedelta(minutes=minutes), os.urandom(16))


def test_a_code_verifies_offline_and_names_no_one() -> None:
    issued = claims()
    code = customer_codes.sign(issued, PRIVATE, KID)
    outcome = customer_codes.verify(code, KEYS, issuer="ten_shop", now=NOW + timedelta(minutes=5))
    assert outcome.valid and outcome.claims == issued
    assert code.startswith("CC1:") and len(code) < 300
    message = cbor2.loads(base45.decode(code[4:]))
    payload = cbor2.loads(message.value[2])
    # Issuer, times and a random id: whose code it is stays on the server.
    assert payload == {
        1: "ten_shop",
        4: int(issued.expires_at.timestamp()),
        6: int(issued.issued_at.timestamp()),
        7: issued.code_id,
    }


def test_an_expired_code_is_refused_after_the_clock_skew() -> None:
    code = customer_codes.sign(claims(minutes=10), PRIVATE, KID)
    late = NOW + timedelta(minutes=10) + tokens.DEFAULT_SKEW + timedelta(seconds=1)
    assert customer_codes.verify(code, KEYS, issuer="ten_shop", now=late).status is Status.EXPIRED


def test_another_shops_code_and_an_unknown_key_are_told_apart() -> None:
    code = customer_codes.sign(claims(issuer="ten_other"), PRIVATE, KID)
    assert customer_codes.verify(code, KEYS, issuer="ten_shop", now=NOW).status is Status.WRONG_SHOP
    stranger = Ed25519PrivateKey.generate()
    kid = tokens.key_id(tokens.raw_public_key(stranger))
    forged = customer_codes.sign(claims(), stranger, kid)
    assert customer_codes.verify(forged, KEYS, issuer="ten_shop", now=NOW).status is (
        Status.UNKNOWN_KEY
    )


def test_a_return_code_is_not_a_customer_code_nor_the_reverse() -> None:
    return_claims = tokens.ReturnClaims(
        issuer="ten_shop",
        issued_at=NOW,
        expires_at=NOW + timedelta(days=30),
        token_id=os.urandom(16),
        order_ref="A-1",
        lines=(tokens.ReturnLine("1", "TR2-38", 1),),
        refund_methods=("original_payment",),
    )
    return_code = tokens.sign(return_claims, PRIVATE, KID)
    customer_code = customer_codes.sign(claims(), PRIVATE, KID)
    # As scanned, and with the other's prefix swapped in: the signed header tells them apart.
    for text in (return_code, "CC1:" + return_code[4:]):
        outcome = customer_codes.verify(text, KEYS, issuer="ten_shop", now=NOW)
        assert outcome.status is Status.MALFORMED
    for text in (customer_code, "RT1:" + customer_code[4:]):
        outcome = tokens.verify(text, KEYS, issuer="ten_shop", now=NOW)
        assert outcome.status is tokens.Status.MALFORMED


@given(st.integers(min_value=0), st.integers(min_value=0, max_value=255))
def test_any_changed_byte_is_never_a_valid_code(position: int, value: int) -> None:
    code = customer_codes.sign(claims(), PRIVATE, KID)
    raw = bytearray(base45.decode(code[4:]))
    index = position % len(raw)
    if raw[index] == value:
        return
    raw[index] = value
    tampered = "CC1:" + base45.encode(bytes(raw))
    outcome = customer_codes.verify(tampered, KEYS, issuer="ten_shop", now=NOW)
    assert not outcome.valid


@pytest.mark.parametrize("text", ["", "CC1:", "CC1:%%%", "hello", "CC1:" + "A" * 50])
def test_garbage_is_malformed(text: str) -> None:
    assert customer_codes.verify(text, KEYS, issuer="ten_shop", now=NOW).status is (
        Status.MALFORMED
    )


def test_the_staff_guide_shows_the_tills_own_words() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "orders.md").read_text()
    shown = (Status.VALID, Status.EXPIRED, Status.MALFORMED, Status.BAD_SIGNATURE)
    for status in (*shown, Status.UNKNOWN_KEY):
        assert customer_codes.MESSAGES[status] in guide, status
