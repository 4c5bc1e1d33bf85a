"""Return tokens: `RT1:` + Base45 (RFC 9285) of a COSE_Sign1 (RFC 9052) signed with EdDSA.

    COSE_Sign1 = #6.18([ protected: bstr .cbor {1: -8 (EdDSA), 4: kid (8 bytes)},
                         unprotected: {},
                         payload: bstr .cbor claims,
                         signature: bstr (Ed25519 over Sig_structure) ])
    claims = {1: iss (tenant id), 6: iat, 4: exp, 7: cti (16-byte token id)   ; CWT, RFC 8392
              "o": order reference, "l": [line id, sku, quantity, line id, sku, ...],
              "r": [refund method code, ...]}

A QR code of version 10 at error correction M holds 311 characters, so every byte counts:
refund methods travel as small integers (REFUND_METHODS), a line id made of digits as an
integer, and the lines as one flat list of triples. A 5-line order with SKUs and an order
reference of up to 8 characters each fits version 10-M.

No personal data is in a token. Verification needs only the tenant's published public keys,
so a till verifies offline. Decoding is strict: a token is accepted only if re-encoding what
was decoded gives back exactly the bytes that were read, so nothing outside the signature
(the unprotected header, trailing bytes, another encoding of the same values) can be altered.
It is lenient only about what keyboard-wedge scanners do: surrounding whitespace, a trailing
newline, lower-cased letters (the Base45 alphabet has no lower case, so upper-casing loses
nothing).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property, lru_cache
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from omnisdk.core import base45

PREFIX = "RT1:"
COSE_SIGN1_TAG = 18
ALG_EDDSA = -8
HEADER_ALG, HEADER_KID = 1, 4
CLAIM_ISS, CLAIM_EXP, CLAIM_IAT, CLAIM_CTI = 1, 4, 6, 7
CLAIM_ORDER, CLAIM_LINES, CLAIM_REFUNDS = "o", "l", "r"
# Refund methods a token may allow, by their code in the token. Append only: codes never change.
REFUND_METHODS = ("original_payment", "card", "cash", "store_credit", "voucher", "exchange")
KID_BYTES = 8
TOKEN_ID_BYTES = 16
DEFAULT_SKEW = timedelta(minutes=5)
# The largest code the server issues: what fits QR version 25 (117 x 117 modules) at error
# correction Q, the paper medium's, in alphanumeric mode. Tills and phone cameras read it from
# a receipt or a screen (M holds more at the same size); larger orders are split (docs/returns.md).
SCANNABLE_QR_VERSION = 25
MAX_SCANNABLE_CHARS = 1041
_CLAIM_KEYS = {CLAIM_ISS, CLAIM_EXP, CLAIM_IAT, CLAIM_CTI, CLAIM_ORDER, CLAIM_LINES, CLAIM_REFUNDS}
# Exact types, checked with `type(x) in`: a bool is not a quantity, whatever isinstance says.
_MAPS = (dict, cbor2.frozendict)
_ARRAYS = (list, tuple)
_LINE_IDS = (str, int)


@dataclass(frozen=True)
class ReturnLine:
    line_id: str
    sku: str
    quantity: int

    @cached_property
    def wire_id(self) -> str | int:
        """The line id as the token carries it: digits as an integer (a byte or two shorter)."""
        line_id = self.line_id
        return int(line_id) if line_id.isdigit() and str(int(line_id)) == line_id else line_id


@dataclass(frozen=True)
class ReturnClaims:
    issuer: str
    issued_at: datetime
    expires_at: datetime
    token_id: bytes
    order_ref: str
    lines: tuple[ReturnLine, ...]
    refund_methods: tuple[str, ...]

    @property
    def token_id_hex(self) -> str:
        return self.token_id.hex()


@dataclass(frozen=True)
class VerificationKey:
    """A published public key: valid from `not_before`, no longer once `retires_at` passed."""

    kid: bytes
    public_key: bytes
    not_before: datetime
    retires_at: datetime | None = None

    def retired(self, now: datetime) -> bool:
        return self.retires_at is not None and self.retires_at <= now

    @cached_property
    def verifier(self) -> Ed25519PublicKey:
        return Ed25519PublicKey.from_public_bytes(self.public_key)


class Status(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    RETIRED_KEY = "retired_key"
    WRONG_SHOP = "wrong_shop"
    MALFORMED = "malformed"


@dataclass(frozen=True)
class Verification:
    """The outcome of checking a token, with a message a store clerk can act on."""

    status: Status
    message: str
    claims: ReturnClaims | None = None

    @property
    def valid(self) -> bool:
        return self.status is Status.VALID


class TokenError(ValueError):
    """The text is not a well-formed return token."""


def key_id(public_key: bytes) -> bytes:
    """The 8-byte key id of a raw Ed25519 public key."""
    return hashlib.sha256(public_key).digest()[:KID_BYTES]


def raw_public_key(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _bstr(data: bytes) -> bytes:
    """A CBOR byte string (major type 2) with its length in the shortest form (RFC 8949 §3)."""
    size = len(data)
    if size < 24:
        return bytes((0x40 | size,)) + data
    if size < 0x100:
        return bytes((0x58, size)) + data
    if size < 0x10000:
        return b"\x59" + size.to_bytes(2, "big") + data
    return b"\x5a" + size.to_bytes(4, "big") + data


# The constant parts of the two structures below, encoded once.
_SIG_STRUCTURE_HEAD = b"\x84" + cbor2.dumps("Signature1")  # array(4), "Signature1"
_EMPTY_AAD = b"\x40"
_COSE_SIGN1_HEAD = b"\xd2\x84"  # tag(18), array(4)
_EMPTY_MAP = b"\xa0"


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    """RFC 9052 §4.4: ["Signature1", protected, external_aad = h'', payload], as CBOR."""
    return _SIG_STRUCTURE_HEAD + _bstr(protected) + _EMPTY_AAD + _bstr(payload)


def _cose_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """#6.18([protected, {}, payload, signature]) in its one deterministic encoding."""
    return _COSE_SIGN1_HEAD + _bstr(protected) + _EMPTY_MAP + _bstr(payload) + _bstr(signature)


def cose_sign1(protected: bytes, payload: bytes, signature: bytes) -> bytes:
    """The COSE_Sign1 message of these parts, in its one deterministic encoding (shared with
    omnisdk.core.customer_codes)."""
    return _cose_sign1(protected, payload, signature)


@lru_cache(maxsize=64)
def _protected_header(kid: bytes) -> bytes:
    return cbor2.dumps({HEADER_ALG: ALG_EDDSA, HEADER_KID: kid})


@lru_cache(maxsize=64)
def _protected_bstr(kid: bytes) -> bytes:
    return _bstr(_protected_header(kid))


class _RefundCodes(dict[str, int]):
    def __missing__(self, method: str) -> int:
        raise ValueError(f"unknown refund method {method!r}; use one of {REFUND_METHODS}")


_REFUND_CODES = _RefundCodes({method: code for code, method in enumerate(REFUND_METHODS)})


def _encode_claims(claims: ReturnClaims) -> bytes:
    """The claims map in deterministic CBOR (RFC 8949 §4.2.1): cbor2 keeps insertion order,
    and the keys are inserted in the order their encodings sort in."""
    lines: list[str | int] = []
    for line in claims.lines:
        lines += (line.wire_id, line.sku, line.quantity)
    return cbor2.dumps(
        {
            CLAIM_ISS: claims.issuer,
            CLAIM_EXP: int(claims.expires_at.timestamp()),
            CLAIM_IAT: int(claims.issued_at.timestamp()),
            CLAIM_CTI: claims.token_id,
            CLAIM_LINES: lines,
            CLAIM_ORDER: claims.order_ref,
            CLAIM_REFUNDS: list(map(_REFUND_CODES.__getitem__, claims.refund_methods)),
        }
    )


@lru_cache(maxsize=64)
def _signing_heads(kid: bytes) -> tuple[bytes, str]:
    """What every token of key `kid` starts with: the Sig_structure up to the payload, and
    the token text up to the unprotected header. The COSE_Sign1 head (tag, array, protected
    header) is 16 bytes, an even number, so its Base45 text is a prefix of every token's."""
    protected = _protected_bstr(kid)
    head = _COSE_SIGN1_HEAD + protected
    assert len(head) % 2 == 0, "the token head must end on a Base45 group"
    return _SIG_STRUCTURE_HEAD + protected + _EMPTY_AAD, PREFIX + base45.encode(head)


def sign(claims: ReturnClaims, private_key: Ed25519PrivateKey, kid: bytes) -> str:
    """The token text for `claims`, signed with `private_key` (whose key id is `kid`)."""
    if len(kid) != KID_BYTES or len(claims.token_id) != TOKEN_ID_BYTES:
        raise ValueError("a key id has 8 bytes and a token id 16")
    sig_head, token_head = _signing_heads(kid)
    payload = _bstr(_encode_claims(claims))
    # The Sig_structure and the COSE_Sign1 share the payload byte string, encoded once.
    signature = private_key.sign(sig_head + payload)
    return token_head + base45.encode(_EMPTY_MAP + payload + b"\x58\x40" + signature)


@dataclass(frozen=True)
class _Parts:
    protected: bytes
    payload: bytes
    signature: bytes
    kid: bytes


def cbor_loads(data: bytes, error: type[ValueError] = ValueError) -> Any:
    """Strict CBOR (no duplicate keys, no indefinite lengths); `error` if unreadable."""
    try:
        return cbor2.loads(data, allow_duplicate_keys=False, allow_indefinite=False)
    except (cbor2.CBORError, ValueError, TypeError, OverflowError) as exc:
        raise error(f"unreadable CBOR: {exc}") from exc


def _loads(data: bytes) -> Any:
    return cbor_loads(data, TokenError)


def open_sign1(
    text: str, prefix: str, error: type[ValueError], kind: str, noun: str
) -> tuple[bytes, bytes, bytes]:
    """(protected, payload, signature) of `prefix` + Base45 of a COSE_Sign1 with an Ed25519
    signature in its one deterministic encoding, or `error` naming `kind` ("return code") and
    its format's `noun` ("token")."""
    text = text.strip().upper()
    if not text.startswith(prefix):
        raise error(f"not a {kind} (no {prefix} prefix)")
    try:
        raw = base45.decode(text[len(prefix) :])
    except base45.Base45Error as exc:
        raise error(f"unreadable: {exc}") from exc
    message = cbor_loads(raw, error)
    if not (
        isinstance(message, cbor2.CBORTag)
        and message.tag == COSE_SIGN1_TAG
        and isinstance(message.value, tuple | list)
        and len(message.value) == 4
    ):
        raise error("not a COSE_Sign1 message")
    protected, unprotected, payload, signature = message.value
    if not (
        isinstance(protected, bytes)
        and unprotected == {}
        and isinstance(payload, bytes)
        and isinstance(signature, bytes)
        and len(signature) == 64
    ):
        raise error("not a COSE_Sign1 message with an Ed25519 signature")
    if _cose_sign1(protected, payload, signature) != raw:
        raise error(f"not in the one encoding this {noun} format allows")
    return protected, payload, signature


def _parts(token: str) -> _Parts:
    protected, payload, signature = open_sign1(token, PREFIX, TokenError, "return code", "token")
    # The only protected header we write: {1: -8, 4: h'<8 bytes>'} = a2 01 27 04 48 <kid>.
    if len(protected) != 5 + KID_BYTES or protected[:5] != b"\xa2\x01\x27\x04\x48":
        raise TokenError("the protected header is not {alg: EdDSA, kid: 8 bytes}")
    return _Parts(protected, payload, signature, protected[5:])


def _claims(payload: bytes) -> ReturnClaims:
    data = _loads(payload)
    if type(data) not in _MAPS or len(data) != len(_CLAIM_KEYS):
        raise TokenError("the claims are not those of a return token")
    try:
        issuer, iat, exp, cti = data[CLAIM_ISS], data[CLAIM_IAT], data[CLAIM_EXP], data[CLAIM_CTI]
        order, lines, refunds = data[CLAIM_ORDER], data[CLAIM_LINES], data[CLAIM_REFUNDS]
    except KeyError:
        raise TokenError("the claims are not those of a return token") from None
    if not (
        type(issuer) is str
        and type(iat) is int
        and type(exp) is int
        and type(cti) is bytes
        and len(cti) == TOKEN_ID_BYTES
        and type(order) is str
        and type(lines) in _ARRAYS
        and type(refunds) in _ARRAYS
        and len(lines) % 3 == 0
    ):
        raise TokenError("the claims have the wrong types")
    try:
        methods = tuple(REFUND_METHODS[code] for code in refunds)
    except (IndexError, TypeError):
        raise TokenError("unknown refund method code") from None
    parsed = []
    for line_id, sku, quantity in zip(lines[0::3], lines[1::3], lines[2::3], strict=True):
        if (
            type(line_id) not in _LINE_IDS
            or type(sku) is not str
            or type(quantity) is not int
            or quantity <= 0
        ):
            raise TokenError("a returnable line is not [line id, sku, quantity]")
        parsed.append(ReturnLine(str(line_id), sku, quantity))
    return ReturnClaims(
        issuer=issuer,
        issued_at=datetime.fromtimestamp(iat, UTC),
        expires_at=datetime.fromtimestamp(exp, UTC),
        token_id=cti,
        order_ref=order,
        lines=tuple(parsed),
        refund_methods=methods,
    )


def decode_unverified(token: str) -> ReturnClaims:
    """The claims of a well-formed token, WITHOUT checking its signature (for display only)."""
    return _claims(_parts(token).payload)


def verify(
    token: str,
    keys: Mapping[bytes, VerificationKey],
    *,
    issuer: str,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
) -> Verification:
    """Check `token` offline against the shop `issuer`'s published keys at time `now`."""
    try:
        parts = _parts(token)
        claims = _claims(parts.payload)
    except TokenError:
        return _outcome(Status.MALFORMED)
    if claims.issuer != issuer:
        return _outcome(Status.WRONG_SHOP)
    key = keys.get(parts.kid)
    if key is None:
        return _outcome(Status.UNKNOWN_KEY)
    if key.retired(now):
        return _outcome(Status.RETIRED_KEY)
    try:
        key.verifier.verify(parts.signature, sig_structure(parts.protected, parts.payload))
    except InvalidSignature:
        return _outcome(Status.BAD_SIGNATURE)
    if claims.issued_at > now + skew:
        return _outcome(Status.NOT_YET_VALID, claims)
    if claims.expires_at < now - skew:
        return _outcome(Status.EXPIRED, claims)
    return _outcome(Status.VALID, claims)


def _outcome(status: Status, claims: ReturnClaims | None = None) -> Verification:
    return Verification(
        status, clerk_message(status, claims), claims if status is Status.VALID else None
    )


def clerk_message(status: Status, claims: ReturnClaims | None = None) -> str:
    """What to tell the person at the till, in plain words."""
    if status is Status.VALID and claims is not None:
        return f"Valid return code for order {claims.order_ref}."
    if status is Status.EXPIRED and claims is not None:
        return (
            f"This return code expired on {claims.expires_at:%d %B %Y}. "
            "The return period for this order is over."
        )
    if status is Status.NOT_YET_VALID and claims is not None:
        return (
            f"This return code is dated {claims.issued_at:%d %B %Y %H:%M} UTC, later than "
            "the till's clock. Check the till's date and time, then scan again."
        )
    return _MESSAGES[status]


_MESSAGES = {
    Status.VALID: "Valid return code.",
    Status.EXPIRED: "This return code has expired. The return period is over.",
    Status.NOT_YET_VALID: "This return code is not valid yet. Check the till's date and time.",
    Status.BAD_SIGNATURE: "This code has been altered or is not genuine. Do not accept the return.",
    Status.UNKNOWN_KEY: (
        "This till does not know the key this code was signed with. Connect the till to the "
        "network so it can update its keys, then scan again."
    ),
    Status.RETIRED_KEY: (
        "This code was signed with a key that is no longer valid. Do not accept it; the "
        "customer can get a new return code from the shop."
    ),
    Status.WRONG_SHOP: "This is not a return code of this shop.",
    Status.MALFORMED: (
        "This is not a readable return code. Scan it again; if it keeps failing, the code is "
        "damaged: the customer can show it again or ask the shop for a new one."
    ),
}
