"""The return token codec: signing, strict offline verification, scanner tolerance."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from omnisdk.core import base45, tokens
from omnisdk.core.tokens import ReturnClaims, ReturnLine, Status, VerificationKey

NOW = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SHOP = "ten_b2901fd0"
PRIVATE = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
PUBLIC = tokens.raw_public_key(PRIVATE)
KID = tokens.key_id(PUBLIC)
KEYS = {KID: VerificationKey(KID, PUBLIC, NOW - timedelta(days=30))}


def claims(lines: int = 2, **changes: object) -> ReturnClaims:
    base = ReturnClaims(
        issuer=SHOP,
        issued_at=NOW - timedelta(days=14),
        expires_at=NOW + timedelta(days=16),
        token_id=bytes(range(16)),
        order_ref="1042-77",
        lines=tuple(ReturnLine(f"{n + 1}", f"SKU-{1001 + n}", 2) for n in range(lines)),
        refund_methods=("card", "voucher"),
    )
    return ReturnClaims(**{**base.__dict__, **changes})  # type: ignore[arg-type]


TOKEN = tokens.sign(claims(), PRIVATE, KID)


def test_base45_matches_rfc9285_examples() -> None:
    assert base45.encode(b"AB") == "BB8"
    assert base45.encode(b"Hello!!") == "%69 VD92EX0"
    assert base45.encode(b"base-45") == "UJCLQE7W581"
    assert base45.decode("QED8WEX0") == b"ietf!"
    with pytest.raises(base45.Base45Error):
        base45.decode("GGW")  # 65536: overflows two bytes


@given(st.binary(max_size=300))
def test_base45_round_trips(data: bytes) -> None:
    assert base45.decode(base45.encode(data)) == data


# The token of `claims()` as the format was first issued (Ed25519 signatures are
# deterministic): signing may get faster, but a till must read the same bytes.
PINNED_TOKEN = (
    "RT1:RRQT 9P60GO0%7WWP59 ULW98CKC$A4807WE+.DSICFA71B6/TCFN0DODH8FWY0INDRWTR-0100KB0*M0DY0W0"
    "16C1PN1:Y1AECF.GM8DPN94W5646 86VD0%NAPYA$96846OD0Y3E$96.Q6AW5207JLEZ5027BCIEJ/M8*0V70J2S*OF"
    "07ONFU+EFKJP$N93+2T*4+CNO:A7UT-TB55UG/GQ7TQ FVIG32QE+RTX1NXI*IH-+0H LR6DDK5I/T"
)


def test_signing_gives_the_pinned_bytes_of_the_format() -> None:
    assert tokens.sign(claims(), PRIVATE, KID) == PINNED_TOKEN


@given(st.binary(max_size=300), st.binary(max_size=300))
def test_base45_of_bytes_split_at_an_even_offset_is_the_two_texts_joined(
    head: bytes, tail: bytes
) -> None:
    head = head[: len(head) - len(head) % 2]
    assert base45.encode(head + tail) == base45.encode(head) + base45.encode(tail)


def test_a_signed_token_verifies_with_its_claims() -> None:
    result = tokens.verify(TOKEN, KEYS, issuer=SHOP, now=NOW)
    assert result.status is Status.VALID
    assert result.claims == claims()
    assert "1042-77" in result.message
    assert TOKEN.startswith("RT1:")
    assert set(TOKEN[4:]) <= set(base45.ALPHABET)


def test_the_signature_checks_out_without_our_codec() -> None:
    """An independent path: cbor2 and cryptography only, per RFC 9052 §4.4."""
    raw = base45.decode(TOKEN.removeprefix("RT1:"))
    message = cbor2.loads(raw)
    assert message.tag == 18
    protected, unprotected, payload, signature = message.value
    header = cbor2.loads(protected)
    assert header[1] == -8 and len(header[4]) == 8 and not unprotected
    to_be_signed = cbor2.dumps(["Signature1", protected, b"", payload])
    Ed25519PublicKey.from_public_bytes(PUBLIC).verify(signature, to_be_signed)  # raises if bad
    cwt = cbor2.loads(payload)
    assert cwt[1] == SHOP and len(cwt[7]) == 16 and cwt[4] > cwt[6]


@pytest.mark.parametrize(
    "scanned",
    [f"  {TOKEN}\n", f"{TOKEN}\r\n", TOKEN.lower(), "\t" + TOKEN.swapcase() + " "],
)
def test_what_keyboard_wedge_scanners_do_is_tolerated(scanned: str) -> None:
    assert tokens.verify(scanned, KEYS, issuer=SHOP, now=NOW).valid


def test_every_single_character_change_is_rejected() -> None:
    alphabet = sorted(set(base45.ALPHABET) | set("RT1:") | {"_", "#"})
    accepted = []
    for position in range(len(TOKEN)):
        for replacement in alphabet:
            if replacement == TOKEN[position]:
                continue
            altered = TOKEN[:position] + replacement + TOKEN[position + 1 :]
            if tokens.verify(altered, KEYS, issuer=SHOP, now=NOW).valid:
                accepted.append((position, replacement))
    assert accepted == []


def test_dropped_or_added_characters_are_rejected() -> None:
    for position in range(len(TOKEN)):
        assert not tokens.verify(
            TOKEN[:position] + TOKEN[position + 1 :], KEYS, issuer=SHOP, now=NOW
        ).valid
    assert not tokens.verify(TOKEN + "0", KEYS, issuer=SHOP, now=NOW).valid
    assert not tokens.verify(TOKEN + "000", KEYS, issuer=SHOP, now=NOW).valid


def test_a_token_with_something_in_the_unsigned_header_is_refused() -> None:
    raw = base45.decode(TOKEN.removeprefix("RT1:"))
    protected, _, payload, signature = cbor2.loads(raw).value
    sneaky = cbor2.dumps(cbor2.CBORTag(18, [protected, {"x": 1}, payload, signature]))
    result = tokens.verify("RT1:" + base45.encode(sneaky), KEYS, issuer=SHOP, now=NOW)
    assert result.status is Status.MALFORMED


def test_expiry_allows_a_small_clock_skew() -> None:
    token = tokens.sign(claims(expires_at=NOW - timedelta(minutes=2)), PRIVATE, KID)
    assert tokens.verify(token, KEYS, issuer=SHOP, now=NOW).valid
    late = tokens.verify(token, KEYS, issuer=SHOP, now=NOW + timedelta(minutes=10))
    assert late.status is Status.EXPIRED
    assert "expired on 24 November 2026" in late.message


def test_a_token_from_the_future_is_not_yet_valid() -> None:
    token = tokens.sign(claims(issued_at=NOW + timedelta(hours=2)), PRIVATE, KID)
    result = tokens.verify(token, KEYS, issuer=SHOP, now=NOW)
    assert result.status is Status.NOT_YET_VALID
    assert "clock" in result.message
    skewed = tokens.sign(claims(issued_at=NOW + timedelta(minutes=3)), PRIVATE, KID)
    assert tokens.verify(skewed, KEYS, issuer=SHOP, now=NOW).valid


def test_another_shops_token_is_refused_as_such() -> None:
    result = tokens.verify(TOKEN, KEYS, issuer="ten_other", now=NOW)
    assert result.status is Status.WRONG_SHOP
    assert result.message == "This is not a return code of this shop."


def test_rotation_old_keys_verify_until_they_retire() -> None:
    new_private = Ed25519PrivateKey.generate()
    new_public = tokens.raw_public_key(new_private)
    new_kid = tokens.key_id(new_public)
    keys = {
        KID: VerificationKey(
            KID, PUBLIC, NOW - timedelta(days=30), retires_at=NOW + timedelta(days=60)
        ),
        new_kid: VerificationKey(new_kid, new_public, NOW),
    }
    fresh = tokens.sign(claims(), new_private, new_kid)
    assert tokens.verify(fresh, keys, issuer=SHOP, now=NOW).valid
    assert tokens.verify(TOKEN, keys, issuer=SHOP, now=NOW).valid
    later = NOW + timedelta(days=61)
    assert tokens.verify(TOKEN, keys, issuer=SHOP, now=later).status is Status.RETIRED_KEY


def test_unknown_key_and_forged_signature() -> None:
    stranger = Ed25519PrivateKey.generate()
    unknown = tokens.sign(claims(), stranger, b"\x01" * 8)
    assert tokens.verify(unknown, KEYS, issuer=SHOP, now=NOW).status is Status.UNKNOWN_KEY
    forged = tokens.sign(claims(), stranger, KID)  # claims our key id
    assert tokens.verify(forged, KEYS, issuer=SHOP, now=NOW).status is Status.BAD_SIGNATURE


@settings(max_examples=50)
@given(st.text(max_size=120))
def test_garbage_is_malformed_never_an_exception(text: str) -> None:
    result = tokens.verify(text, KEYS, issuer=SHOP, now=NOW)
    assert not result.valid


def test_decoding_without_verifying_is_for_display_only() -> None:
    assert tokens.decode_unverified(TOKEN).order_ref == "1042-77"
    with pytest.raises(tokens.TokenError):
        tokens.decode_unverified("RT1:HELLO")


def test_token_ids_are_random_and_sizes_checked() -> None:
    with pytest.raises(ValueError):
        tokens.sign(claims(token_id=os.urandom(8)), PRIVATE, KID)


def test_claims_encoding_is_the_deterministic_cbor_one() -> None:
    payload = tokens._encode_claims(claims(lines=5))
    assert payload == cbor2.dumps(cbor2.loads(payload), canonical=True)


def test_the_wire_models_refund_methods_are_the_codecs() -> None:
    from typing import get_args

    from omnisdk.models import RefundMethod

    assert set(get_args(RefundMethod)) == set(tokens.REFUND_METHODS)
