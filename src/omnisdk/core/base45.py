"""Base45 (RFC 9285): bytes as text in the QR alphanumeric alphabet, 3 characters per 2 bytes.

Table-driven, because a return code is encoded on every issue and decoded on every scan: a
two-byte group maps to its three characters by one lookup in a table built on first use.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from functools import cache, lru_cache
from operator import itemgetter

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_INVALID = 255
# Byte value of a character -> its Base45 value, or 255 for a character not in the alphabet.
_VALUES = bytes(ALPHABET.find(chr(c)) if chr(c) in ALPHABET else _INVALID for c in range(256))


class Base45Error(ValueError):
    """The text is not Base45."""


@cache
def _triples() -> tuple[str, ...]:
    return tuple(
        ALPHABET[n % 45] + ALPHABET[n // 45 % 45] + ALPHABET[n // 2025] for n in range(65536)
    )


@lru_cache(maxsize=1024)
def _pairs_reader(pairs: int) -> Callable[[bytes], tuple[int, ...]]:
    """The compiled reader of `pairs` big-endian 16-bit groups: building the format string
    and looking it up in struct's cache cost more than the lookup here."""
    return struct.Struct(f">{pairs}H").unpack_from


def encode(data: bytes) -> str:
    """Base45 of `data`. Encoding is group-wise, so the text of bytes split at an even
    offset is the concatenation of the texts of the two parts."""
    pairs = len(data) >> 1
    # One C call picks every pair's three characters: the pairs read big-endian (RFC 9285)
    # straight from the bytes, then one itemgetter over the table.
    if pairs > 1:
        text = "".join(itemgetter(*_pairs_reader(pairs)(data))(_triples()))
    elif pairs:
        text = _triples()[data[0] << 8 | data[1]]
    else:
        text = ""
    if len(data) & 1:
        last = data[-1]
        text += ALPHABET[last % 45] + ALPHABET[last // 45]
    return text


def _spread(digits: bytes, slots: int) -> int:
    """The digits as one integer with each digit in the low byte of its own 3-byte slot."""
    spread = bytearray(3 * slots)
    spread[2::3] = digits
    return int.from_bytes(spread, "big")


def _groups(values: bytes, full: int) -> bytes:
    """Every 3-digit group c + 45d + 2025e as 2 bytes, computed for all groups at once.

    Each group's value (at most 91124) fits in a 3-byte slot of one big integer, so the sum
    of the three spread digit strings has no carries between slots: C does the work that a
    Python loop over groups would. A slot whose top byte is not zero overflows two bytes.
    """
    if full == 0:
        return b""
    total = (
        _spread(values[0 : 3 * full : 3], full)
        + 45 * _spread(values[1 : 3 * full : 3], full)
        + 2025 * _spread(values[2 : 3 * full : 3], full)
    )
    slots = total.to_bytes(3 * full, "big")
    if slots[0::3].count(0) != full:
        raise Base45Error("a Base45 group overflows two bytes")
    out = bytearray(2 * full)
    out[0::2] = slots[1::3]
    out[1::2] = slots[2::3]
    return bytes(out)


def decode(text: str) -> bytes:
    """Decode strictly: RFC 9285 §4 — a group whose value overflows is an error."""
    try:
        values = text.encode("ascii").translate(_VALUES)
    except UnicodeEncodeError:
        raise Base45Error("Base45 text is ASCII") from None
    if _INVALID in values:
        bad = text[values.index(_INVALID)]
        raise Base45Error(f"{bad!r} is not a Base45 character")
    full, rest = divmod(len(values), 3)
    if rest == 1:
        raise Base45Error("Base45 text cannot have a length of 3n+1")
    out = _groups(values, full)
    if rest == 2:
        last = values[-2] + values[-1] * 45
        if last > 0xFF:
            raise Base45Error("the last Base45 group overflows a byte")
        out += bytes((last,))
    return out
