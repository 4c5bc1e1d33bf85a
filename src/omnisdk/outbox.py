"""The durable outbox: writes that may be deferred, kept in a local SQLite file until the
server has them.

- Appends are group-committed: a committer thread writes everything appended within
  `commit_window` seconds (up to `max_group` items) in one transaction. With durability
  "group" an append returns at once, and a crash (kill -9, power loss) can lose at most the
  appends not yet committed: never more than 2 x `max_group` (one group waiting, one being
  written; appends wait when a group is full). With durability "sync" an append returns only
  once its group is on disk (fsync, `synchronous=FULL`), so nothing that returned is lost.
- Bounded: at `max_items` the policy decides — "block" (wait up to `block_timeout`, then
  OutboxFull), "raise" (OutboxFull at once), or "drop_oldest" (the oldest item goes; every drop
  is counted in `status().dropped` and logged). Nothing is ever dropped silently.
- Several processes may share one file (the processes of one backend, or a parent and the
  children it forks): SQLite's locking keeps appends safe, and a lease row makes one process at
  a time the sender, so items go out in append order (and so in order per customer). When that
  process dies, its lease runs out and another takes over. After `fork()` the child opens its
  own connection and committer (a SQLite connection must not cross a fork).
- Items the server refuses for good move to a dead-letter table with the error.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("omnisdk.outbox")

Durability = Literal["group", "sync"]
FullPolicy = Literal["block", "raise", "drop_oldest"]
LEASE_SECONDS = 15.0
_encode = json.JSONEncoder(separators=(",", ":")).encode


class OutboxFull(Exception):  # the outbox is full; reads as such where raised
    """The outbox holds `max_items` and its policy is "raise" (or "block" timed out)."""


@dataclass(frozen=True)
class Item:
    seq: int
    kind: str
    key: str
    raw: str  # the payload as stored: JSON text, sent on as it is where it can be
    created_at: float

    @cached_property
    def payload(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.raw)
        return value


@dataclass(frozen=True)
class DeadLetter:
    kind: str
    key: str
    payload: dict[str, Any]
    error: str
    created_at: float


@dataclass(frozen=True)
class OutboxStatus:
    """What an operator wants to know about the queue."""

    depth: int
    oldest_age_seconds: float | None
    dead_letters: int
    dropped: int
    last_error: str | None
    path: str


@dataclass
class _Pending:
    kind: str
    key: str
    payload: str
    created_at: float
    done: threading.Event | None = None  # only when the caller waits for the disk
    error: BaseException | None = None


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL,"
    " key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS dead_letters (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL,"
    " key TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL, created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sender_lease (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " holder TEXT NOT NULL, until REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
)


def _dead_here(holder: str) -> bool:
    """True if `holder` ("host:pid:…") is a process of this machine that no longer runs."""
    host, _, rest = holder.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Outbox:
    def __init__(
        self,
        path: str | Path,
        *,
        durability: Durability = "group",
        commit_window: float = 0.005,
        max_group: int = 2_000,
        max_items: int = 1_000_000,
        full_policy: FullPolicy = "block",
        block_timeout: float = 30.0,
    ) -> None:
        if durability not in ("group", "sync"):
            raise ValueError("durability is 'group' or 'sync'")
        if full_policy not in ("block", "raise", "drop_oldest"):
            raise ValueError("full_policy is 'block', 'raise' or 'drop_oldest'")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.durability: Durability = durability
        self.commit_window = commit_window
        self.max_group = max_group
        self.max_items = max_items
        self.full_policy: FullPolicy = full_policy
        self.block_timeout = block_timeout
        self.last_error: str | None = None
        self._open()

    # --- process-local state (re-made after fork) ---------------------------------------

    def _open(self) -> None:
        self._pid = os.getpid()
        # _lock guards the in-memory queue and counts (held for microseconds: appends never
        # wait for the disk); _db guards the SQLite connection (held while writing).
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._db_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._closed = False
        self._in_flight = 0  # items taken from the queue and being written
        self._lease: tuple[str, int] | None = None
        self._lease_renew_at = 0.0
        self._db = self._connect()
        self._count = self._db.execute("SELECT count(*) FROM items").fetchone()[0]
        self._committer = threading.Thread(
            target=self._commit_loop, name="omnisdk-outbox", daemon=True
        )
        self._committer.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        # Switching a new file to WAL takes an exclusive lock that SQLite's busy handler does
        # not wait for: processes opening the same new outbox at once take turns here.
        for attempt in range(200):
            try:
                db.execute("PRAGMA journal_mode=WAL")
                for statement in _SCHEMA:
                    db.execute(statement)
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 199:
                    raise
                time.sleep(0.05)
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _check_fork(self) -> None:
        if self._pid != os.getpid():
            # The parent's threads and connection do not exist in this process.
            self._open()

    # --- appending --------------------------------------------------------------------------

    def append(self, kind: str, key: str, payload: dict[str, Any] | str) -> None:
        """Queue an item (a dict, or its JSON text); with durability "sync", return once it
        is on disk."""
        self._check_fork()
        text = payload if isinstance(payload, str) else _encode(payload)
        waits = self.durability == "sync"
        pending = _Pending(kind, key, text, time.time(), threading.Event() if waits else None)
        with self._changed:
            self._make_room()
            # Back-pressure: at most one group waits while another is written, which bounds
            # what a crash can lose to 2 x max_group appends.
            while len(self._pending) >= self.max_group:
                self._changed.wait()
            self._pending.append(pending)
            self._count += 1
            if len(self._pending) == 1:
                self._changed.notify_all()  # the committer sleeps only on an empty queue
        if pending.done is not None:
            pending.done.wait()
            if pending.error is not None:
                raise pending.error

    @property
    def nearly_full(self) -> bool:
        """An append might have to wait for room (or drop); callers on an event loop should
        then append from a thread."""
        return bool(self._count >= self.max_items - 1)

    def _make_room(self) -> None:
        """Called with the lock held: apply the full policy."""
        if self._count < self.max_items:
            return
        if self.full_policy == "raise":
            raise OutboxFull(f"the outbox holds {self.max_items} items")
        if self.full_policy == "drop_oldest":
            self._drop_oldest()
            return
        deadline = time.monotonic() + self.block_timeout
        while self._count >= self.max_items:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OutboxFull(
                    f"the outbox stayed full ({self.max_items} items) for {self.block_timeout} s"
                )
            self._changed.wait(remaining)

    def _drop_oldest(self) -> None:
        with self._db_lock:
            row = self._db.execute(
                "SELECT seq, kind, key FROM items ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM items WHERE seq = ?", (row[0],))
                self._bump("dropped")
        if row is not None:
            dropped = {"kind": row[1], "key": row[2]}
        elif self._pending:
            oldest = self._pending.popleft()
            if oldest.done is not None:
                oldest.done.set()
            dropped = {"kind": oldest.kind, "key": oldest.key}
            with self._db_lock:
                self._bump("dropped")
        else:
            return
        self._count -= 1
        log.warning("outbox full: dropped the oldest item", extra=dropped)

    def _commit_loop(self) -> None:
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if self._closed and not self._pending:
                    return
            if self.commit_window and self.durability == "group":
                time.sleep(self.commit_window)  # let more appends join this group
            with self._changed:
                group = [
                    self._pending.popleft() for _ in range(min(len(self._pending), self.max_group))
                ]
                self._in_flight = len(group)
            self._write(group)

    def _write(self, group: list[_Pending]) -> None:
        error: BaseException | None = None
        lost = 0
        try:
            with self._db_lock:
                self._db.execute("BEGIN IMMEDIATE")
                cursor = self._db.executemany(
                    "INSERT OR IGNORE INTO items (kind, key, payload, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    [(p.kind, p.key, p.payload, p.created_at) for p in group],
                )
                self._db.execute("COMMIT")
            lost = len(group) - cursor.rowcount  # already queued under the same key
        except sqlite3.Error as exc:
            error = exc
            lost = len(group)
            self.last_error = f"writing the outbox failed: {exc}"
            log.error("outbox write failed", extra={"items": len(group), "error": str(exc)})
            with self._db_lock:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
        with self._changed:
            self._count -= max(lost, 0)
            self._in_flight = 0
            self._changed.notify_all()
        for pending in group:
            if pending.done is not None:
                pending.error = error
                pending.done.set()

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every item appended so far is on disk."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while self._pending or self._in_flight:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._changed.wait(remaining if remaining is not None else 0.05)
        return True

    # --- sending (one process at a time holds the lease) -------------------------------------

    def take_lease(self, holder: str) -> bool:
        """Become (or stay) the sender of this file; False if another live process is."""
        self._check_fork()
        now = time.time()
        if self._lease == (holder, self._pid) and now < self._lease_renew_at:
            return True  # ours, and far from running out: no need to write
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT holder, until FROM sender_lease WHERE id = 1").fetchone()
            mine = row is None or row[0] == holder or row[1] < now or _dead_here(row[0])
            if mine:
                self._db.execute(
                    "INSERT INTO sender_lease (id, holder, until) VALUES (1, ?, ?) "
                    "ON CONFLICT (id) DO UPDATE "
                    "SET holder = excluded.holder, until = excluded.until",
                    (holder, now + LEASE_SECONDS),
                )
            self._db.execute("COMMIT")
        if mine:
            self._lease = (holder, self._pid)
            self._lease_renew_at = now + LEASE_SECONDS / 3
        return mine

    def release_lease(self, holder: str) -> None:
        self._lease = None
        with self._db_lock:
            self._db.execute("DELETE FROM sender_lease WHERE id = 1 AND holder = ?", (holder,))

    def head(self, limit: int, kinds: tuple[str, ...] | None = None) -> list[Item]:
        """The oldest committed items (of `kinds`), in append order."""
        self._check_fork()
        query = "SELECT seq, kind, key, payload, created_at FROM items"
        params: tuple[Any, ...] = ()
        if kinds:
            query += f" WHERE kind IN ({','.join('?' * len(kinds))})"
            params = kinds
        with self._db_lock:
            rows = self._db.execute(query + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        return [Item(seq, kind, key, payload, at) for seq, kind, key, payload, at in rows]

    def items(self, kind: str) -> list[Item]:
        return self.head(1_000_000, (kind,))

    def ack(self, seqs: list[int]) -> None:
        """These items reached the server: forget them."""
        if not seqs:
            return
        with self._db_lock:
            cursor = self._db.executemany("DELETE FROM items WHERE seq = ?", [(s,) for s in seqs])
        self._forget(cursor.rowcount)

    def remove(self, key: str) -> None:
        with self._db_lock:
            cursor = self._db.execute("DELETE FROM items WHERE key = ?", (key,))
        self._forget(cursor.rowcount)

    def _forget(self, removed: int) -> None:
        with self._changed:
            self._count -= removed
            self._changed.notify_all()

    def bury(self, key: str, error: str) -> None:
        """Move an item the server refused for good to the dead letters, with the error."""
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO dead_letters (kind, key, payload, error, created_at) "
                "SELECT kind, key, payload, ?, ? FROM items WHERE key = ?",
                (error, time.time(), key),
            )
            cursor = self._db.execute("DELETE FROM items WHERE key = ?", (key,))
            self._db.execute("COMMIT")
        self._forget(cursor.rowcount)
        log.warning("outbox item refused by the server, kept as a dead letter", extra={"key": key})

    def dead_letters(self, kind: str | None = None) -> list[DeadLetter]:
        query = "SELECT kind, key, payload, error, created_at FROM dead_letters"
        params: tuple[str, ...] = (kind,) if kind else ()
        with self._db_lock:
            rows = self._db.execute(
                query + (" WHERE kind = ?" if kind else "") + " ORDER BY seq", params
            ).fetchall()
        return [DeadLetter(k, key, json.loads(p), error, at) for k, key, p, error, at in rows]

    # --- status ---------------------------------------------------------------------------

    def _bump(self, name: str) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    def status(self) -> OutboxStatus:
        self._check_fork()
        with self._db_lock:
            depth, oldest = self._db.execute(
                "SELECT count(*), min(created_at) FROM items"
            ).fetchone()
            dead = self._db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            dropped = self._db.execute(
                "SELECT value FROM counters WHERE name = 'dropped'"
            ).fetchone()
        with self._lock:
            waiting = len(self._pending)
            if waiting:
                oldest = min(oldest or time.time(), self._pending[0].created_at)
        return OutboxStatus(
            depth=depth + waiting,
            oldest_age_seconds=None if oldest is None else max(time.time() - oldest, 0.0),
            dead_letters=dead,
            dropped=dropped[0] if dropped else 0,
            last_error=self.last_error,
            path=str(self.path),
        )

    def metrics(self) -> str:
        """The status in the Prometheus text format, for a backend's own /metrics."""
        status = self.status()
        lines = [
            "# HELP omnisdk_outbox_depth Items waiting in the outbox.",
            "# TYPE omnisdk_outbox_depth gauge",
            f"omnisdk_outbox_depth {status.depth}",
            "# HELP omnisdk_outbox_oldest_age_seconds Age of the oldest waiting item.",
            "# TYPE omnisdk_outbox_oldest_age_seconds gauge",
            f"omnisdk_outbox_oldest_age_seconds {status.oldest_age_seconds or 0.0}",
            "# HELP omnisdk_outbox_dead_letters Items the server refused for good.",
            "# TYPE omnisdk_outbox_dead_letters gauge",
            f"omnisdk_outbox_dead_letters {status.dead_letters}",
            "# HELP omnisdk_outbox_dropped_total Items dropped by the drop_oldest policy.",
            "# TYPE omnisdk_outbox_dropped_total counter",
            f"omnisdk_outbox_dropped_total {status.dropped}",
        ]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Commit what is pending and close the file (items not yet sent stay on disk)."""
        if self._pid != os.getpid():
            return
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        self._committer.join(timeout=30)
        with self._db_lock:
            self._db.close()
