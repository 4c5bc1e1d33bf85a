"""Identifier rules shared by the SDK and the server (DESIGN: identity).

An identifier is `(type, value)`. Values are normalised here, junk values are refused here,
and e-mail addresses and phone numbers are turned into keyed hashes here, so that the SDK and
the server agree on what "the same identifier" means. Nothing in this module does I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class IdentifierType(StrEnum):
    ANONYMOUS = "anonymous"  # a device or browser id
    CUSTOMER_REF = "customer_ref"  # the shop's own account id
    EMAIL = "email"
    PHONE = "phone"
    LOYALTY_CARD = "loyalty_card"


# Stored only as keyed hashes: the server can match them, never show them.
HASHED_TYPES = frozenset({IdentifierType.EMAIL, IdentifierType.PHONE})

# Values shops send by mistake that would glue strangers together (compared case-insensitively
# after trimming). Tenants add their own patterns in their identity settings.
JUNK_VALUES = frozenset(
    {
        "",
        "0",
        "-1",
        "null",
        "nil",
        "none",
        "undefined",
        "nan",
        "anonymous",
        "unknown",
        "guest",
        "n/a",
        "na",
        "test",
        "[object object]",
        "00000000-0000-0000-0000-000000000000",
    }
)

MAX_VALUE_LENGTH = 256
_EMAIL = re.compile(r"[^@\s]{1,64}@[^@\s.]+(\.[^@\s.]+)+")
_PHONE_SEPARATORS = re.compile(r"[\s().\-/]")
_DIGITS = re.compile(r"[0-9]+")


class JunkMatcher(Protocol):
    """A shop's junk pattern, compiled (the server uses RE2, which runs in linear time)."""

    def fullmatch(self, text: str, /) -> object: ...


class InvalidIdentifier(ValueError):
    """A value that cannot identify a customer; the message says why and what to send."""

    def __init__(self, type: IdentifierType | str, reason: str) -> None:
        super().__init__(f"{type}: {reason}")
        self.identifier_type = str(type)
        self.reason = reason


@dataclass(frozen=True, order=True)
class IdentifierKey:
    """How an identifier is stored and matched: its type and normalised (or hashed) value."""

    type: IdentifierType
    value: str

    def masked(self) -> str:
        """A form safe to show and log: hashed types show only a hash prefix."""
        if self.type in HASHED_TYPES:
            return f"{self.type.value}:#{self.value[:8]}"
        return f"{self.type.value}:{self.value}"


def normalise_email(value: str) -> str:
    address = value.strip().lower()
    if len(address) > 254 or not _EMAIL.fullmatch(address):
        raise InvalidIdentifier(IdentifierType.EMAIL, "not an e-mail address (name@domain.tld)")
    return address


def normalise_phone(value: str, default_country_code: str | None = None) -> str:
    """E.164: `+` and 8 to 15 digits. A national number (leading 0) needs a country code."""
    raw = _ascii_digits(_PHONE_SEPARATORS.sub("", value.strip()))
    if raw.startswith("00"):
        raw = "+" + raw[2:]
    elif raw.startswith("0") and default_country_code:
        raw = f"+{default_country_code}{raw[1:]}"
    if not raw.startswith("+"):
        raise InvalidIdentifier(
            IdentifierType.PHONE,
            "not an international number: send it as +<country code><number>",
        )
    digits = raw[1:]
    if not _DIGITS.fullmatch(digits) or not 8 <= len(digits) <= 15 or digits[0] == "0":
        raise InvalidIdentifier(IdentifierType.PHONE, "not a phone number in E.164 form")
    return "+" + digits


def _ascii_digits(text: str) -> str:
    """Decimal digits of any script as ASCII digits: `+٤٩١٥١٢٣٤٥٦٧٨` is the same number as
    `+4915112345678`, and must hash the same (else it became a second customer)."""
    if text.isascii():
        return text
    return "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in text)


def normalise(
    type: IdentifierType | str,
    value: str,
    *,
    junk_patterns: Iterable[JunkMatcher] = (),
    default_country_code: str | None = None,
) -> str:
    """The canonical form of `value`, or InvalidIdentifier if it cannot identify anyone."""
    try:
        kind = IdentifierType(type)
    except ValueError:
        known = ", ".join(t.value for t in IdentifierType)
        raise InvalidIdentifier(str(type), f"unknown identifier type; use one of {known}") from None
    if not isinstance(value, str):
        raise InvalidIdentifier(kind, "the value must be a string")
    trimmed = value.strip()
    if trimmed.lower() in JUNK_VALUES:
        raise InvalidIdentifier(kind, "a placeholder value, not an identifier")
    if len(trimmed) > MAX_VALUE_LENGTH:
        raise InvalidIdentifier(kind, f"longer than {MAX_VALUE_LENGTH} characters")
    if not trimmed.isprintable():
        raise InvalidIdentifier(kind, "contains control characters")
    for pattern in junk_patterns:
        if pattern.fullmatch(trimmed):
            raise InvalidIdentifier(kind, "matches one of the shop's junk identifier patterns")
    if kind is IdentifierType.EMAIL:
        return normalise_email(trimmed)
    if kind is IdentifierType.PHONE:
        return normalise_phone(trimmed, default_country_code)
    return trimmed


def keyed_hash(secret: bytes, type: IdentifierType, normalised: str) -> str:
    """HMAC-SHA-256 of a normalised value under the tenant's secret, as hex."""
    message = f"{type.value}\x00{normalised}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def identifier_key(
    secret: bytes,
    type: IdentifierType | str,
    value: str,
    *,
    junk_patterns: Iterable[JunkMatcher] = (),
    default_country_code: str | None = None,
) -> IdentifierKey:
    """The stored key of an identifier: normalised, and hashed for e-mail and phone."""
    normalised = normalise(
        type, value, junk_patterns=junk_patterns, default_country_code=default_country_code
    )
    kind = IdentifierType(type)
    stored = keyed_hash(secret, kind, normalised) if kind in HASHED_TYPES else normalised
    return IdentifierKey(kind, stored)


# --- contact data outside identifiers ---------------------------------------------------------

# Names under which a shop may send an e-mail address or a phone number in event properties,
# traits or session entries. Their values, and any string shaped like an address or an
# international number, are kept only as keyed hashes (docs/server.md, "Identity data").
CONTACT_NAMES = {
    "email": IdentifierType.EMAIL,
    "e-mail": IdentifierType.EMAIL,
    "e_mail": IdentifierType.EMAIL,
    "phone": IdentifierType.PHONE,
    "mobile": IdentifierType.PHONE,
    "telephone": IdentifierType.PHONE,
}
HASHED_MARK = "#"  # "email#<hex>": what stands in place of an address or a number
_ALREADY_HASHED = re.compile(r"(email|phone)#[0-9a-f]{64}")


def hashed_contact_data(value: Any, secret: bytes) -> Any:
    """`value` (JSON) with each e-mail address and phone number — by its key's name or by its
    shape — replaced by `type#<HMAC-SHA-256 under the tenant's secret>`, the same keyed hash
    identifiers are stored as: the shop can still match them, nobody can read them back."""
    if isinstance(value, dict):
        return {
            key: _hashed_named(child, CONTACT_NAMES.get(key.lower()), secret)
            if isinstance(key, str)
            else hashed_contact_data(child, secret)
            for key, child in value.items()
        }
    if isinstance(value, list):
        return [hashed_contact_data(child, secret) for child in value]
    if isinstance(value, str):
        kind = _contact_shape(value)
        return _hashed(value, kind, secret) if kind is not None else value
    return value


def _hashed_named(value: Any, named: IdentifierType | None, secret: bytes) -> Any:
    if named is None or value is None or isinstance(value, dict | list | bool):
        return hashed_contact_data(value, secret)
    return _hashed(str(value), named, secret)


def _contact_shape(text: str) -> IdentifierType | None:
    """The kind of contact data `text` looks like, if any (cheap tests first: most strings
    hold neither `@` nor a leading `+`)."""
    if "@" in text and _EMAIL.fullmatch(text.strip().lower()):
        return IdentifierType.EMAIL
    stripped = text.strip()
    if stripped[:1] == "+" or stripped[:2] == "00":
        try:
            normalise_phone(stripped)
        except InvalidIdentifier:
            return None
        return IdentifierType.PHONE
    return None


def _hashed(text: str, kind: IdentifierType, secret: bytes) -> str:
    if text.startswith(f"{kind.value}{HASHED_MARK}"):
        return text  # already a keyed hash (a value read back and written again)
    try:
        normalised = (
            normalise_email(text) if kind is IdentifierType.EMAIL else normalise_phone(text)
        )
    except InvalidIdentifier:
        normalised = text.strip().lower()  # not well-formed, but never kept in the clear
    return f"{kind.value}{HASHED_MARK}{keyed_hash(secret, kind, normalised)}"
