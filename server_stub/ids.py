"""Identifiers the server hands out: a short type prefix and random hex (no meaning inside)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime


def new_id(prefix: str, nbytes: int = 12) -> str:
    return f"{prefix}_{secrets.token_hex(nbytes)}"


def utcnow() -> datetime:
    return datetime.now(UTC)
