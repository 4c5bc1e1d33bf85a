"""Identifiers the server hands out: a short type prefix and random hex (no meaning inside),
and time-ordered ids for events stored without one."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def utcnow() -> datetime:
    return datetime.now(UTC)


def time_ordered_id(now: datetime | None = None) -> str:
    """A 128-bit id in hex whose first 48 bits are the Unix time in milliseconds (the layout
    of UUIDv7, RFC 9562): ids made close together sort together, so an index of them grows at
    its end instead of at random pages. The other 80 bits are random."""
    millis = int((now or utcnow()).timestamp() * 1000)
    return f"{millis & 0xFFFF_FFFF_FFFF:012x}{secrets.token_hex(10)}"
