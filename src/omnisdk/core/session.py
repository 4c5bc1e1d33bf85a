"""The session document a customer shares across channels (DESIGN: session): recently viewed
products, the last landing page and campaign, a half-filled form, the open chat thread.

Each key is last-writer-wins by (time, channel); an entry expires after its time to live; the
document is bounded in keys and in the size of a value. Merging two documents (when customers
merge) keeps, per key, the later write: commutative, associative, idempotent. Pure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Set
from dataclasses import dataclass, replace
from typing import Any

MAX_KEYS = 50
MAX_VALUE_BYTES = 4_096
DEFAULT_TTL_SECONDS = 30 * 86_400
_KEY = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")


class SessionError(ValueError):
    """A write the session refuses; the message says why."""


@dataclass(frozen=True)
class Entry:
    value: Any  # None: deleted (kept as a tombstone so an older write cannot bring it back)
    channel: str
    at: float
    expires_at: float
    # The merged-away customer id the write named, when it was applied to the survivor: a
    # split of that merge gives the entry back to it. Not part of the entry's rank.
    addressed: str | None = None

    def wins_over(self, other: Entry) -> bool:
        # Ties (same time, same channel) are broken by the value, so merging is commutative.
        return self._rank() > other._rank()

    def _rank(self) -> tuple[float, str, str]:
        return (self.at, self.channel, json.dumps(self.value, sort_keys=True, default=str))


Document = dict[str, Entry]


def check(key: str, value: Any) -> None:
    if not _KEY.fullmatch(key):
        raise SessionError(
            f"session keys are 1-64 characters: lower-case letters, digits and _ . : -, not {key!r}"
        )
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > MAX_VALUE_BYTES:
        raise SessionError(
            f"the value of {key!r} takes {size} bytes; the limit is {MAX_VALUE_BYTES}"
        )


def write(
    document: Document,
    entries: dict[str, Any],
    channel: str,
    at: float,
    ttl: float,
    addressed: str | None = None,
) -> Document:
    """The document after writing `entries` (a None value deletes the key); `addressed`, the
    merged-away id the writer named, if any."""
    for key, value in entries.items():
        check(key, value)
    result = dict(document)
    for key, value in entries.items():
        entry = Entry(value, channel, at, at + ttl, addressed)
        if key not in result or entry.wins_over(result[key]):
            result[key] = entry
    if len([k for k, e in result.items() if e.value is not None]) > MAX_KEYS:
        raise SessionError(f"a session holds at most {MAX_KEYS} keys")
    return result


def merge(a: Document, b: Document) -> Document:
    result = dict(a)
    for key, entry in b.items():
        if key not in result or entry.wins_over(result[key]):
            result[key] = entry
    return result


def hand_back(document: Document, ids: Set[str]) -> tuple[Document, Document]:
    """Split a survivor's document: (what it keeps, the entries written to one of `ids`
    after the merge, unmarked)."""
    kept = {key: entry for key, entry in document.items() if entry.addressed not in ids}
    given = {
        key: replace(entry, addressed=None)
        for key, entry in document.items()
        if entry.addressed in ids
    }
    return kept, given


def live(document: Document, now: float) -> dict[str, Entry]:
    """The entries that hold a value and have not expired."""
    return {k: e for k, e in sorted(document.items()) if e.value is not None and e.expires_at > now}


def prune(document: Document, now: float) -> Document:
    """Drop expired entries (tombstones too, once expired)."""
    return {k: e for k, e in document.items() if e.expires_at > now}


def to_json(document: Document) -> dict[str, Any]:
    return {k: _stored(e) for k, e in sorted(document.items())}


def _stored(entry: Entry) -> list[Any]:
    stored = [entry.value, entry.channel, entry.at, entry.expires_at]
    return stored if entry.addressed is None else [*stored, entry.addressed]


def from_json(data: dict[str, Any]) -> Document:
    return {
        k: Entry(v[0], str(v[1]), float(v[2]), float(v[3]), str(v[4]) if len(v) > 4 else None)
        for k, v in data.items()
    }
