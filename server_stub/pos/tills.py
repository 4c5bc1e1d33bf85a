"""Signed-in tills: their sessions (kept in the station's data directory, so a till stays signed
in across restarts until its key is revoked), what each till is doing (reviews waiting for a
confirm, receipts), and whether its network is known to be down.

The data directory:

    till-sessions/<sha256 of the cookie>.json   one file per session (mode 0600: it holds the
                                                till's API key; the cookie itself is not kept)
    till-sessions/<sha256 of the cookie>.d/     its reviews and receipts
    tills/<tenant>/<store>/<till>/              one till's shop keys, queued returns and the
                                                hash of the key that signed it in

One file per session lets several station processes share a data directory: each writes and
deletes only its own sessions' files, reads the others' when their tills reach it, and a till
signed out in one process is signed out in all. Till folders are named by shop and store as
well as till, since two shops (or two stores) may both have a "till-1"; folders of the older
layout (`<till>/`, and the sessions in `till-sessions.json`) are moved at start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
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
    # Taken offline, then refused by the shop when sent (its problem type's last part:
    # "already-returned", "return-revoked", ...): the refund went out, a manager settles it.
    refused: str | None = None


class TillWork:
    """What one signed-in till is doing: reviews waiting for a confirm, and its receipts.

    In memory, or with the station's data directory in the session's own folder, so every
    station process sharing the directory sees the same (a review shown by one worker can be
    confirmed through another, and the receipt shown by a third) and a restart keeps pending
    receipts. Files are read afresh each time: another process may have confirmed a receipt.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder
        self._reviews: dict[str, Review] = {}
        self._receipts: dict[str, Receipt] = {}

    def review(self, transaction: str) -> Review | None:
        if self.folder is None:
            return self._reviews.get(transaction)
        stored = _read_json(self._file("reviews", transaction))
        return _review_of(stored) if stored is not None else None

    def receipt(self, transaction: str) -> Receipt | None:
        if self.folder is None:
            return self._receipts.get(transaction)
        stored = _read_json(self._file("receipts", transaction))
        return _receipt_of(stored) if stored is not None else None

    def keep_review(self, review: Review) -> None:
        """Keep a review until it is confirmed; a till keeps its last few only."""
        if self.folder is None:
            self._reviews[review.transaction] = review
            _keep_last(self._reviews, KEPT_REVIEWS)
            return
        _write_private(self._file("reviews", review.transaction), json.dumps(asdict(review)))
        _prune(self.folder / "reviews", KEPT_REVIEWS)

    def keep_receipt(self, receipt: Receipt) -> None:
        """Keep a receipt (its review is done); a till keeps its last receipts and every
        pending one."""
        transaction = receipt.redemption.till_transaction_id
        if self.folder is None:
            self._reviews.pop(transaction, None)
            self._receipts[transaction] = receipt
            pending = {t for t, r in self._receipts.items() if r.redemption.status == "pending"}
            _keep_last(self._receipts, KEPT_RECEIPTS, keep=pending)
            return
        _write_private(self._file("receipts", transaction), _receipt_json(receipt))
        self._file("reviews", transaction).unlink(missing_ok=True)
        _prune(self.folder / "receipts", KEPT_RECEIPTS, keep=_is_pending)

    def _file(self, kind: str, transaction: str) -> Path:
        assert self.folder is not None
        return self.folder / kind / f"{_folder_name(transaction)}.json"


@dataclass
class TillSession:
    api_key: str
    store_id: str
    till_id: str
    csrf: str
    expires: float
    tenant_id: str = ""  # the shop: names the till's folder beside store and till
    client: omnisdk.AsyncClient | None = None
    work: TillWork = field(default_factory=TillWork)
    offline_until: float = 0.0
    confirming: asyncio.Lock = field(default_factory=asyncio.Lock)
    syncing: asyncio.Task[None] | None = None

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


def _prune(folder: Path, count: int, keep: Callable[[Path], bool] | None = None) -> None:
    """Delete the oldest files of `folder` beyond `count`, except those `keep` wants."""
    with contextlib.suppress(OSError):
        files = sorted(folder.glob("*.json"), key=lambda file: file.stat().st_mtime)
        for file in files[: max(0, len(files) - count)]:
            if keep is None or not keep(file):
                file.unlink(missing_ok=True)


def _read_json(file: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _review_of(stored: dict[str, Any]) -> Review | None:
    try:
        lines = tuple(LineView(**line) for line in stored["lines"])
        return Review(**{**stored, "lines": lines})
    except (KeyError, TypeError):
        return None


def _receipt_json(receipt: Receipt) -> str:
    repriced = receipt.repriced
    return json.dumps(
        {
            "review": asdict(receipt.review),
            "redemption": receipt.redemption.model_dump(mode="json"),
            "repriced": None
            if repriced is None
            else [repriced.till_transaction_id, repriced.refunded, repriced.shop_value],
            "refused": receipt.refused,
        }
    )


def _receipt_of(stored: dict[str, Any]) -> Receipt | None:
    review = _review_of(stored.get("review") or {})
    try:
        redemption = Redemption.model_validate(stored["redemption"])
        repriced = Repriced(*stored["repriced"]) if stored.get("repriced") else None
    except (KeyError, TypeError, ValueError):
        return None
    refused = stored.get("refused")
    if review is None:
        return None
    return Receipt(review, redemption, repriced, refused if isinstance(refused, str) else None)


def _is_pending(file: Path) -> bool:
    stored = _read_json(file)
    return stored is not None and stored.get("redemption", {}).get("status") == "pending"


def _key_hash(api_key: str) -> str:
    return hashlib.sha256(b"omnisdk-till-key:" + api_key.encode()).hexdigest()


def cookie_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


logger = logging.getLogger(__name__)
SESSIONS = "till-sessions"
TILLS = "tills"
LEGACY_SESSIONS = "till-sessions.json"
KEY_HASH = "till-key.sha256"
SAFE_NAME = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _folder_name(text: str) -> str:
    """A path component that cannot leave its parent (no "..", no "/")."""
    if text and len(text) <= 64 and set(text) <= SAFE_NAME and not text.startswith("."):
        return text
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_private(path: Path, text: str) -> None:
    """Write `path` whole or not at all (a reader in another process never sees half of it),
    readable by the owner only."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fresh = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)
    fresh.replace(path)


def _session_json(session: TillSession) -> str:
    return json.dumps(
        {
            "api_key": session.api_key,
            "store_id": session.store_id,
            "till_id": session.till_id,
            "tenant_id": session.tenant_id,
            "csrf": session.csrf,
            "expires": session.expires,
        }
    )


def _session_of(value: dict[str, Any]) -> TillSession:
    return TillSession(
        str(value["api_key"]),
        str(value["store_id"]),
        str(value["till_id"]),
        str(value["csrf"]),
        float(value["expires"]),
        tenant_id=str(value.get("tenant_id", "")),
    )


class TillSessions:
    """The signed-in tills, by the hash of their cookie, each kept in a file of its own in
    `data_dir` if given (shared safely by several station processes)."""

    def __init__(
        self,
        data_dir: Path | None,
        new_client: Callable[[str, Path | None], omnisdk.AsyncClient],
    ):
        self._data_dir = data_dir
        self.new_client = new_client
        self._sessions: dict[str, TillSession] = {}
        self._dropped: list[omnisdk.AsyncClient] = []
        if data_dir is not None:
            self._migrate(data_dir)

    # -- till folders -----------------------------------------------------------------------

    def folder(self, tenant_id: str, store_id: str, till_id: str) -> Path | None:
        """Where this till keeps its shop keys and queued returns (None: no data_dir)."""
        if self._data_dir is None:
            return None
        names = (_folder_name(tenant_id), _folder_name(store_id), _folder_name(till_id))
        return self._data_dir.joinpath(TILLS, *names)

    def folder_of(self, session: TillSession) -> Path | None:
        return self.folder(session.tenant_id, session.store_id, session.till_id)

    def remember_key(self, folder: Path | None, api_key: str) -> None:
        """Note (as a hash) the key that signed this till in, so the same key can sign it in
        again while the network is down."""
        if folder is not None:
            _write_private(folder / KEY_HASH, _key_hash(api_key))

    def known_tenant(self, store_id: str, till_id: str, api_key: str) -> str | None:
        """The shop whose till this is, if `api_key` signed it in before (an offline sign-in
        may use it: the shop checks the key at the first request that reaches the network,
        and signs the till out if it was revoked meanwhile)."""
        if self._data_dir is None or not (self._data_dir / TILLS).is_dir():
            return None
        for tenant in (self._data_dir / TILLS).iterdir():
            file = tenant / _folder_name(store_id) / _folder_name(till_id) / KEY_HASH
            if file.is_file() and hmac.compare_digest(file.read_text().strip(), _key_hash(api_key)):
                return _tenant_of(tenant / _folder_name(store_id) / _folder_name(till_id))
        return None

    def adopt_legacy_folder(self, tenant_id: str, store_id: str, till_id: str) -> None:
        """Move this till's folder of the older layout (`data_dir/<till>`) to its place, if it
        is this shop's (its cached keys name the shop) and the till has no folder yet: queued
        returns in it are sent from here, with the store each was taken at."""
        folder = self.folder(tenant_id, store_id, till_id)
        if folder is None or self._data_dir is None or till_id in (SESSIONS, TILLS):
            return
        legacy = self._data_dir / _folder_name(till_id)
        if folder.exists() or _tenant_of(legacy) != tenant_id:
            return
        folder.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):  # another process moved it first
            legacy.rename(folder)
            logger.info("moved a till folder to the per-shop layout: %s", folder)

    # -- sessions ---------------------------------------------------------------------------

    def get(self, cookie: str) -> TillSession | None:
        if not cookie:
            return None
        key = cookie_hash(cookie)
        session = self._current(key)
        if session is None or session.expires < time.time():
            return None
        if session.client is None:
            session.client = self.new_client(session.api_key, self.folder_of(session))
        return session

    def add(self, cookie: str, session: TillSession) -> None:
        key = cookie_hash(cookie)
        self._sessions[key] = session
        if self._data_dir is not None:
            session.work = TillWork(self._work_folder(key))
            _write_private(self._session_file(key), _session_json(session))

    async def remove(self, cookie: str) -> None:
        key = cookie_hash(cookie)
        session = self._sessions.pop(key, None)
        if self._data_dir is not None:
            self._session_file(key).unlink(missing_ok=True)
            shutil.rmtree(self._work_folder(key), ignore_errors=True)
        if session is not None:
            await _close(session)

    async def close(self) -> None:
        """Close every till's SDK client and stop its background sending."""
        for session in self._sessions.values():
            await _close(session)
        for client in self._dropped:
            await client.aclose()
        self._dropped.clear()

    def _current(self, key: str) -> TillSession | None:
        """The session as the data directory has it now: another process may have signed the
        till in (read its file) or out (its file is gone)."""
        session = self._sessions.get(key)
        if self._data_dir is None:
            return session
        file = self._session_file(key)
        if not file.exists():
            if session is not None:
                self._drop(key)
            return None
        if session is None:
            session = self._read(file)
            if session is not None:
                session.work = TillWork(self._work_folder(key))
                self._sessions[key] = session
        return session

    def _drop(self, key: str) -> None:
        session = self._sessions.pop(key)
        if session.syncing is not None:
            session.syncing.cancel()
        if session.client is not None:
            self._dropped.append(session.client)  # closed with the station

    def _read(self, file: Path) -> TillSession | None:
        try:
            session = _session_of(json.loads(file.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable: that till signs in again; it never stops the station
        if session.expires < time.time():
            file.unlink(missing_ok=True)
            shutil.rmtree(file.with_suffix(".d"), ignore_errors=True)
            return None
        return session

    def _session_file(self, key: str) -> Path:
        assert self._data_dir is not None
        return self._data_dir / SESSIONS / f"{key}.json"

    def _work_folder(self, key: str) -> Path:
        """The session's reviews and receipts (removed with the session)."""
        assert self._data_dir is not None
        return self._data_dir / SESSIONS / f"{key}.d"

    # -- the older layout -------------------------------------------------------------------

    def _migrate(self, data_dir: Path) -> None:
        """Sessions of `till-sessions.json` become files of their own, and their tills'
        folders move under their shop and store (the shop read from the keys it cached)."""
        legacy = data_dir / LEGACY_SESSIONS
        try:
            stored = json.loads(legacy.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            stored = {}
        sessions = {}
        for key, value in stored.items() if isinstance(stored, dict) else ():
            with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                session = _session_of(value)
                session.tenant_id = _tenant_of(data_dir / _folder_name(session.till_id)) or ""
                if session.tenant_id and session.expires > time.time():
                    sessions[key] = session
        for key, session in sessions.items():
            self.adopt_legacy_folder(session.tenant_id, session.store_id, session.till_id)
            _write_private(self._session_file(key), _session_json(session))
        legacy.unlink(missing_ok=True)


def _tenant_of(folder: Path) -> str | None:
    """The shop a till folder belongs to: the issuer of the return keys it cached."""
    try:
        return str(json.loads((folder / "return-keys.json").read_text())["issuer"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def _close(session: TillSession) -> None:
    if session.syncing is not None:
        session.syncing.cancel()
    if session.client is not None:
        await session.client.aclose()
        session.client = None
