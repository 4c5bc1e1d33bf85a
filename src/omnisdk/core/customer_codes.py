"""Customer codes: what a customer's app shows at a till so that the sale is linked to her
without any personal data at the till. Same machinery as return codes (omnisdk.core.tokens):

    "CC1:" + Base45(COSE_Sign1 signed with EdDSA by the shop's current signing key)
    protected = {1: -8 (EdDSA), 3: "omnisdk/customer-code" (content type), 4: kid (8 bytes)}
    claims    = {1: iss (tenant id), 4: exp, 6: iat, 7: cti (16 random bytes)}

The code names no one: the server keeps which customer each code id was issued to. It lives
minutes (the app shows a fresh one), and a till verifies it offline with the keys it already
caches for return codes.

A return code can never pass as a customer code, nor the reverse: the prefix differs, the
content type sits in the signed protected header (a return code's header has none, and the
return-code parser accepts only its own exact header), and the claims differ in shape. Each
parser is strict: re-encoding what was read must give back the bytes read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from omnisdk.core import base45
from omnisdk.core.tokens import (
    ALG_EDDSA,
    CLAIM_CTI,
    CLAIM_EXP,
    CLAIM_IAT,
    CLAIM_ISS,
    DEFAULT_SKEW,
    HEADER_ALG,
    HEADER_KID,
    KID_BYTES,
    VerificationKey,
    cbor_loads,
    cose_sign1,
    open_sign1,
    sig_structure,
)

PREFIX = "CC1:"
HEADER_CONTENT_TYPE = 3
CONTENT_TYPE = "omnisdk/customer-code"
CODE_ID_BYTES = 16
DEFAULT_LIFETIME = timedelta(minutes=10)
MAX_LIFETIME = timedelta(days=1)
COSE_SIGN1_TAG = 18


class Status(StrEnum):
    VALID = "valid"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    RETIRED_KEY = "retired_key"
    WRONG_SHOP = "wrong_shop"
    MALFORMED = "malformed"


MESSAGES = {
    Status.VALID: "Customer code accepted: the sale will be added to her account.",
    Status.EXPIRED: "This customer code has expired: ask her to open the app again.",
    Status.NOT_YET_VALID: "This customer code is dated in the future: check the till's clock.",
    Status.BAD_SIGNATURE: "This customer code is not genuine: sell without it.",
    Status.UNKNOWN_KEY: "The till does not know this code's key yet: connect it, then scan again.",
    Status.RETIRED_KEY: "This customer code was signed with a withdrawn key: sell without it.",
    Status.WRONG_SHOP: "This is another shop's customer code.",
    Status.MALFORMED: "This is not a customer code (a return code goes to returns).",
}


@dataclass(frozen=True)
class CodeClaims:
    issuer: str
    issued_at: datetime
    expires_at: datetime
    code_id: bytes

    @property
    def code_id_hex(self) -> str:
        return self.code_id.hex()


@dataclass(frozen=True)
class CodeVerification:
    status: Status
    claims: CodeClaims | None = None

    @property
    def valid(self) -> bool:
        return self.status is Status.VALID

    @property
    def message(self) -> str:
        """What to tell the person at the till."""
        return MESSAGES[self.status]


class CodeError(ValueError):
    """The text is not a well-formed customer code."""


def _protected(kid: bytes) -> bytes:
    # Deterministic CBOR: keys 1, 3, 4 in order (RFC 8949 §4.2.1).
    return cbor2.dumps({HEADER_ALG: ALG_EDDSA, HEADER_CONTENT_TYPE: CONTENT_TYPE, HEADER_KID: kid})


def _payload(claims: CodeClaims) -> bytes:
    return cbor2.dumps(
        {
            CLAIM_ISS: claims.issuer,
            CLAIM_EXP: int(claims.expires_at.timestamp()),
            CLAIM_IAT: int(claims.issued_at.timestamp()),
            CLAIM_CTI: claims.code_id,
        }
    )


def sign(claims: CodeClaims, private_key: Ed25519PrivateKey, kid: bytes) -> str:
    """The code text for `claims`, signed with the shop's key `kid`."""
    if len(kid) != KID_BYTES or len(claims.code_id) != CODE_ID_BYTES:
        raise ValueError("a key id has 8 bytes and a code id 16")
    protected = _protected(kid)
    payload = _payload(claims)
    signature = private_key.sign(sig_structure(protected, payload))
    return PREFIX + base45.encode(cose_sign1(protected, payload, signature))


def _loads(data: bytes) -> object:
    return cbor_loads(data, CodeError)


def _parts(code: str) -> tuple[bytes, bytes, bytes, bytes]:
    """(protected, payload, signature, kid) of a well-formed code, or CodeError."""
    protected, payload, signature = open_sign1(code, PREFIX, CodeError, "customer code", "code")
    kid = protected[-KID_BYTES:]
    if len(protected) < KID_BYTES or protected != _protected(kid):
        raise CodeError("the protected header is not that of a customer code")
    return protected, payload, signature, kid


def _claims(payload: bytes) -> CodeClaims:
    data = _loads(payload)
    if not isinstance(data, dict | cbor2.frozendict) or set(data) != {
        CLAIM_ISS,
        CLAIM_EXP,
        CLAIM_IAT,
        CLAIM_CTI,
    }:
        raise CodeError("the claims are not those of a customer code")
    issuer, exp, iat, cti = data[CLAIM_ISS], data[CLAIM_EXP], data[CLAIM_IAT], data[CLAIM_CTI]
    if not (
        type(issuer) is str
        and type(exp) is int
        and type(iat) is int
        and type(cti) is bytes
        and len(cti) == CODE_ID_BYTES
    ):
        raise CodeError("the claims have the wrong types")
    claims = CodeClaims(
        issuer, datetime.fromtimestamp(iat, UTC), datetime.fromtimestamp(exp, UTC), cti
    )
    if _payload(claims) != payload:
        raise CodeError("not in the one encoding this code format allows")
    return claims


def verify(
    code: str,
    keys: Mapping[bytes, VerificationKey],
    *,
    issuer: str,
    now: datetime,
    skew: timedelta = DEFAULT_SKEW,
) -> CodeVerification:
    """Check a scanned customer code offline against the shop's published keys at `now`."""
    try:
        protected, payload, signature, kid = _parts(code)
        claims = _claims(payload)
    except CodeError:
        return CodeVerification(Status.MALFORMED)
    if claims.issuer != issuer:
        return CodeVerification(Status.WRONG_SHOP)
    key = keys.get(kid)
    if key is None:
        return CodeVerification(Status.UNKNOWN_KEY)
    if key.retired(now):
        return CodeVerification(Status.RETIRED_KEY)
    try:
        key.verifier.verify(signature, sig_structure(protected, payload))
    except InvalidSignature:
        return CodeVerification(Status.BAD_SIGNATURE)
    if claims.issued_at > now + skew:
        return CodeVerification(Status.NOT_YET_VALID)
    if claims.expires_at < now - skew:
        return CodeVerification(Status.EXPIRED)
    return CodeVerification(Status.VALID, claims)
