"""Signed-in tills: their sessions (kept in the station's data directory, so a till stays signed
in across restarts until its key is revoked), what each till is doing (reviews waiting for a
confirm, receipts), and whether its network is known to be down.

The session file holds the tills' API keys: it is written with mode 0600 in the station's own
data directory, and the cookie's value is kept only as a SHA-256 hash, so the file alone does
not let anyone in through the browser.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import omnisdk
from omnisdk.models import Redemption
from omnisdk.resources.returns import Repriced

OFFLINE_SECONDS = 30.0  # after a network failure, pages answer from the till for this long
KEPT_REVIEWS = 20  # reviews shown and not confirmed, per till
KEPT_RECEIPTS = 200  # receipts a till can show again (pending ones are always kept)


@dataclass(frozen=True)
class LineView:
    """One line of a code as the clerk sees it: what it is, what it costs, what is left."""

    line_id: str
    sku: str
    name: str | None
    on_code: int
    remaining: int | None  # None: offline, unknown
    unit_price: float | None

    @property
    def most(self) -> int:
        return self.on_code if self.remaining is None else self.remaining

    @property
    def label(self) -> str:
        return self.name or self.sku


@dataclass(frozen=True)
class Review:
    """A return the clerk has filled in and is looking at before confirming it: the till
    transaction id is made here, so a confirm sent twice is one return."""

    transaction: str
    token: str
    order_ref: str
    units: dict[str, int]
    refund_method: str
    lines: tuple[LineView, ...]
    currency: str | None
    offline_amount: float | None  # typed by the clerk when the till is offline

    @property
    def chosen(self) -> list[tuple[LineView, int]]:
        return [
            (line, self.units[line.line_id]) for line in self.lines if line.line_id in self.units
        ]

    @property
    def total(self) -> float | None:
        """What the shop's prices make of it (None when a price is unknown)."""
        prices = [line.unit_price for line, _ in self.chosen]
        if any(price is None for price in prices):
            return None
        return round(sum((line.unit_price or 0.0) * n for line, n in self.chosen), 2)

    @property
    def refund(self) -> float | None:
        return self.offline_amount if self.offline_amount is not None else self.total


@dataclass
class Receipt:
    review: Review
    redemption: Redemption
    repriced: Repriced | None = None


@dataclass
class TillSession:
    api_key: str
    store_id: str
    till_id: str
    csrf: str
    expires: float
    client: omnisdk.AsyncClient | None = None
    reviews: dict[str, Review] = field(default_factory=dict)
    receipts: dict[str, Receipt] = field(default_factory=dict)
    offline_until: float = 0.0
    confirming: asyncio.Lock = field(default_factory=asyncio.Lock)
    syncing: asyncio.Task[None] | None = None

    def remember_review(self, review: Review) -> None:
        """Keep a review until it is confirmed; a till keeps its last few only."""
        self.reviews[review.transaction] = review
        _keep_last(self.reviews, KEPT_REVIEWS)

    def remember_receipt(self, receipt: Receipt) -> None:
        transaction = receipt.redemption.till_transaction_id
        self.reviews.pop(transaction, None)
        self.receipts[transaction] = receipt
        pending = {t for t, r in self.receipts.items() if r.redemption.status == "pending"}
        _keep_last(self.receipts, KEPT_RECEIPTS, keep=pending)

    @property
    def known_offline(self) -> bool:
        return self.offline_until > time.monotonic()

    def went_offline(self) -> None:
        self.offline_until = time.monotonic() + OFFLINE_SECONDS

    def came_online(self) -> None:
        self.offline_until = 0.0


def _keep_last(items: dict[str, Any], count: int, keep: set[str] | None = None) -> None:
    """Forget the oldest entries beyond `count` (dicts keep insertion order), except `keep`."""
    for key in list(items)[: max(0, len(items) - count)]:
        if not keep or key not in keep:
            del items[key]


def _key_hash(api_key: str) -> str:
    return hashlib.sha256(b"omnisdk-till-key:" + api_key.encode()).hexdigest()


def cookie_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TillSessions:
    """The signed-in tills, by the hash of their cookie; written through to `path` if given."""

    def __init__(self, path: Path | None, new_client: Callable[[str, str], omnisdk.AsyncClient]):
        self._path = path
        self.new_client = new_client
        self._sessions: dict[str, TillSession] = self._load()

    def remember_key(self, till_id: str, api_key: str) -> None:
        """Note (as a hash) the key that signed this till in, so the same key can sign it in
        again while the network is down."""
        if self._path is None:
            return
        self._known_keys_file(till_id).parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(
            self._known_keys_file(till_id), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        with os.fdopen(descriptor, "w") as handle:
            handle.write(_key_hash(api_key))

    def known_key(self, till_id: str, api_key: str) -> bool:
        """Whether `api_key` signed this till in before (an offline sign-in may use it: the
        shop checks it at the first request that reaches the network, and signs the till out
        if it was revoked meanwhile)."""
        if self._path is None or not self._known_keys_file(till_id).exists():
            return False
        known = self._known_keys_file(till_id).read_text().strip()
        return hmac.compare_digest(known, _key_hash(api_key))

    def _known_keys_file(self, till_id: str) -> Path:
        assert self._path is not None
        return self._path.parent / till_id / "till-key.sha256"

    def get(self, cookie: str) -> TillSession | None:
        session = self._sessions.get(cookie_hash(cookie)) if cookie else None
        if session is None or session.expires < time.time():
            return None
        if session.client is None:
            session.client = self.new_client(session.api_key, session.till_id)
        return session

    def add(self, cookie: str, session: TillSession) -> None:
        self._sessions[cookie_hash(cookie)] = session
        self._save()

    async def remove(self, cookie: str) -> None:
        session = self._sessions.pop(cookie_hash(cookie), None)
        self._save()
        if session is not None:
            if session.syncing is not None:
                session.syncing.cancel()
            if session.client is not None:
                await session.client.aclose()

    async def close(self) -> None:
        for session in self._sessions.values():
            if session.syncing is not None:
                session.syncing.cancel()
            if session.client is not None:
                await session.client.aclose()
                session.client = None

    def _load(self) -> dict[str, TillSession]:
        if self._path is None or not self._path.exists():
            return {}
        with contextlib.suppress(ValueError, KeyError, TypeError):
            stored = json.loads(self._path.read_text())
            now = time.time()
            return {
                key: TillSession(
                    value["api_key"],
                    value["store_id"],
                    value["till_id"],
                    value["csrf"],
                    float(value["expires"]),
                )
                for key, value in stored.items()
                if float(value["expires"]) > now
            }
        return {}  # an unreadable file signs every till out; it never stops the station

    def _save(self) -> None:
        if self._path is None:
            return
        stored = {
            key: {
                "api_key": s.api_key,
                "store_id": s.store_id,
                "till_id": s.till_id,
                "csrf": s.csrf,
                "expires": s.expires,
            }
            for key, s in self._sessions.items()
        }
        self._path.parent.mkdir(parents=True, exist_ok=True)
        fresh = self._path.with_suffix(".tmp")
        descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump(stored, handle)
        fresh.replace(self._path)
