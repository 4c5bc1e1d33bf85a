"""Base45 (RFC 9285): bytes as text in the QR alphanumeric alphabet, 3 characters per 2 bytes."""

from __future__ import annotations

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
_VALUE = {char: index for index, char in enumerate(ALPHABET)}


class Base45Error(ValueError):
    """The text is not Base45."""


def encode(data: bytes) -> str:
    out: list[str] = []
    for i in range(0, len(data) - 1, 2):
        n = data[i] * 256 + data[i + 1]
        e, rest = divmod(n, 45 * 45)
        d, c = divmod(rest, 45)
        out += (ALPHABET[c], ALPHABET[d], ALPHABET[e])
    if len(data) % 2:
        d, c = divmod(data[-1], 45)
        out += (ALPHABET[c], ALPHABET[d])
    return "".join(out)


def decode(text: str) -> bytes:
    """Decode strictly: RFC 9285 §4 — a group whose value overflows is an error."""
    try:
        values = [_VALUE[char] for char in text]
    except KeyError as exc:
        raise Base45Error(f"{exc.args[0]!r} is not a Base45 character") from None
    if len(values) % 3 == 1:
        raise Base45Error("Base45 text cannot have a length of 3n+1")
    out = bytearray()
    for i in range(0, len(values), 3):
        group = values[i : i + 3]
        if len(group) == 3:
            n = group[0] + group[1] * 45 + group[2] * 45 * 45
            if n > 0xFFFF:
                raise Base45Error("a Base45 group overflows two bytes")
            out += bytes(divmod(n, 256))
        else:
            n = group[0] + group[1] * 45
            if n > 0xFF:
                raise Base45Error("the last Base45 group overflows a byte")
            out.append(n)
    return bytes(out)
