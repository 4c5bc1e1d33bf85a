"""The durable outbox: writes that may be deferred, kept in a local SQLite file until the
server has them.

- Appends are group-committed: a committer thread writes everything appended within
  `commit_window` seconds (up to `max_group` items) in one transaction. With durability
  "group" an append returns at once; a crash (kill -9, power loss) can lose only the appends of
  the last `max_unsynced` seconds: an append waits when the oldest item not yet on disk is
  older than that (and when `max_group` items already wait). With durability "sync" an append
  returns only once its group is on disk (fsync, `synchronous=FULL`).
- A failed write (disk full, read-only, removed) is never silent: the group stays in memory and
  is retried with backoff, and until a write succeeds every append and `sync` raises
  OutboxWriteError (in "sync" mode the callers of the failed group get it instead).
- Bounded: at `max_items` the policy decides: "block" (wait up to `block_timeout`, then
  OutboxFull), "raise" (OutboxFull at once), or "drop_oldest": the oldest *droppable* item goes
  (analytics events; never a refund, a consent decision or a cart operation), every drop
  counted in `status().dropped` and logged. Nothing is ever dropped silently.
- Several processes may share one file (the processes of one backend, or a parent and the
  children it forks): SQLite's locking keeps appends safe, and a lease row makes one process at
  a time the sender, so items go out in append order (and so in order per customer). When that
  process dies, its lease runs out and another takes over. In a forked child the outbox forgets
  the parent's threads, locks, queue and connection, and opens its own on first use.
- Items the server refuses for good move to a dead-letter table with the error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from omnisdk._lifecycle import start_daemon
from omnisdk.core.events import storable_text
from omnisdk.errors import OutboxFull, OutboxWriteError

log = logging.getLogger("omnisdk.outbox")

Durability = Literal["group", "sync"]
FullPolicy = Literal["block", "raise", "drop_oldest"]
LEASE_SECONDS = 15.0
# The kinds "drop_oldest" may drop: behavioural analytics. Refunds, consent decisions and cart
# operations carry money or a person's choice and are never dropped (DESIGN: offline).
DROPPABLE_KINDS = frozenset({"event"})
_RETRY_WRITE = (0.05, 0.1, 0.25, 0.5, 1.0)  # seconds between attempts at a failed write
# allow_nan=False: NaN and Infinity are not JSON; the SDK refuses them before they get here.
_encode = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode

__all__ = ["DROPPABLE_KINDS", "Outbox", "OutboxFull", "OutboxStatus", "OutboxWriteError"]


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
    write_failures: int = 0  # failed disk writes in this process (each retried)
    unwritten: int = 0  # items of this process only in memory, not yet on disk


@dataclass(slots=True)
class _Pending:
    kind: str
    key: str
    payload: str
    created_at: float  # wall clock, stored
    since: float  # monotonic, for the unsynced window
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


# Every outbox with an open connection in this process, for the fork hooks.
_OPEN: weakref.WeakSet[Outbox] = weakref.WeakSet()
_HELD: list[threading.Lock] = []
_FORK_LOCK = threading.Lock()  # one fork at a time runs the hooks; no outbox is added meanwhile


def _before_fork() -> None:
    # No SQLite connection may cross a fork (SQLite's own lock bookkeeping would be shared by
    # two processes), and no thread of ours may be inside SQLite at the fork (the child would
    # inherit SQLite's mutexes held by a thread it does not have). So each outbox waits for its
    # connection to be idle, closes it, and holds it closed until the fork is done; the parent
    # reopens on its next use.
    _FORK_LOCK.acquire()
    for outbox in sorted(list(_OPEN), key=id):
        outbox._db_lock.acquire()
        _HELD.append(outbox._db_lock)
        outbox._close_connection()


def _after_fork_in_parent() -> None:
    while _HELD:
        _HELD.pop().release()
    _FORK_LOCK.release()


def _after_fork_in_child() -> None:
    global _FORK_LOCK
    _HELD.clear()  # the child's outboxes get new locks
    _FORK_LOCK = threading.Lock()
    for outbox in list(_OPEN):
        outbox._forget_parent()


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)


class Outbox:
    @staticmethod
    def check_options(
        *,
        durability: str = "group",
        full_policy: str = "block",
        max_unsynced: float = 0.05,
        **_others: Any,
    ) -> None:
        """Raise ValueError for an option the outbox cannot work with."""
        if durability not in ("group", "sync"):
            raise ValueError("durability is 'group' or 'sync'")
        if full_policy not in ("block", "raise", "drop_oldest"):
            raise ValueError("full_policy is 'block', 'raise' or 'drop_oldest'")
        if max_unsynced <= 0:
            raise ValueError("max_unsynced is a number of seconds above 0")

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
        max_unsynced: float = 0.05,
        droppable: Collection[str] = DROPPABLE_KINDS,
    ) -> None:
        Outbox.check_options(
            durability=durability, full_policy=full_policy, max_unsynced=max_unsynced
        )
        self.path = Path(path)
        self.durability: Durability = durability
        self.commit_window = commit_window
        self.max_group = max_group
        self.max_items = max_items
        self.full_policy: FullPolicy = full_policy
        self.block_timeout = block_timeout
        self.max_unsynced = max_unsynced
        self.droppable = tuple(sorted(droppable))
        self.last_error: str | None = None
        self._fresh_state()
        with _FORK_LOCK:
            _OPEN.add(self)  # for the fork hooks, for good (they only touch open connections)
        with self._connection():
            pass  # opened at once in the creating process: a bad path fails here

    # --- process-local state (new in a forked child) -------------------------------------------

    def _fresh_state(self) -> None:
        # _lock guards the in-memory queue and counts (held for microseconds on the append
        # path); _db_lock guards the SQLite connection. Where both are taken, _lock comes first.
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._db_lock = threading.Lock()
        self._start_lock = threading.Lock()
        self._pending: deque[_Pending] = deque()
        self._closed = False
        self._in_flight = 0  # items taken from the queue and being written
        self._in_flight_on_disk = False  # ... and already committed (set under _db_lock)
        self._inflight_since: float | None = None
        self._failure: str | None = None  # the last write failed: appends raise until one works
        self._write_failures = 0
        self._count = 0  # items on disk and in memory, as far as this process knows (a hint)
        self._appended = False  # something was appended by this process
        self._lease: tuple[str, int] | None = None
        self._lease_renew_at = 0.0
        self._committer: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None

    def _forget_parent(self) -> None:
        """In a forked child: the parent's threads do not exist here, its locks may be held
        forever, and its queue is the parent's to write (its connection was closed before the
        fork). A closed outbox stays closed."""
        closed = self._closed
        self._fresh_state()
        self._closed = closed

    def _connection_locked(self) -> sqlite3.Connection:
        """The connection, opened if need be; called with _db_lock held."""
        db = self._db
        if db is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = self._connect()
                on_disk = db.execute("SELECT count(*) FROM items").fetchone()[0]
            except (sqlite3.Error, OSError) as exc:
                raise OutboxWriteError(f"cannot open the outbox at {self.path}: {exc}") from exc
            self._count = on_disk + len(self._pending) + self._in_flight
            self._db = db
        return db

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with self._db_lock:
            try:
                yield self._connection_locked()
            finally:
                if self._closed and self._committer_done():
                    self._close_connection()  # a read after close() leaves nothing open

    def _committer_done(self) -> bool:
        committer = self._committer
        return committer is None or not committer.is_alive()

    def _close_connection(self) -> None:
        """Called with _db_lock held; the next use opens it again."""
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _ensure_committer(self) -> None:
        if self._committer is None:
            with self._start_lock:
                if self._committer is None:
                    self._committer = start_daemon(self._commit_loop, "omnisdk-outbox")

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

    # --- appending --------------------------------------------------------------------------

    def append(self, kind: str, key: str, payload: dict[str, Any] | str) -> None:
        """Queue an item (a dict, or its JSON text); with durability "sync", return once it
        is on disk. Raises OutboxFull (by the full policy) or OutboxWriteError."""
        item = self._item(kind, key, payload)
        self._admit(item, wait=True)
        if item.done is not None:
            while not item.done.wait(0.25):
                committer = self._committer
                if committer is None or not committer.is_alive():
                    raise OutboxWriteError(f"the outbox at {self.path} closed before the write")
            if item.error is not None:
                raise item.error

    def try_append(self, kind: str, key: str, payload: dict[str, Any] | str) -> bool:
        """Queue an item if that needs no waiting at all (for an event loop's own thread);
        False if it would wait: then call `append` from a worker thread."""
        if self.durability == "sync" or self._committer is None:
            return False  # a wait for the disk, or a thread to start: not on an event loop
        return self._admit(self._item(kind, key, payload), wait=False)

    def _item(self, kind: str, key: str, payload: dict[str, Any] | str) -> _Pending:
        if not storable_text(key) or not storable_text(kind):
            raise ValueError("outbox kinds and keys are text without NUL or lone surrogates")
        text = payload if isinstance(payload, str) else _encode(payload)
        if not storable_text(text):
            raise ValueError("an outbox payload is text without NUL or lone surrogates")
        done = threading.Event() if self.durability == "sync" else None
        return _Pending(kind, key, text, time.time(), time.monotonic(), done)

    def _admit(self, item: _Pending, *, wait: bool) -> bool:
        if self._committer is None:
            self._ensure_committer()
        # An event loop's thread never waits even for the lock: the committer may hold it.
        if not self._lock.acquire(blocking=wait):
            return False
        try:
            if self._closed:
                raise OutboxWriteError(f"the outbox at {self.path} is closed")
            self._raise_if_failing()
            if not wait and self._would_wait(item.since):
                return False
            if not self._make_room(item.kind):
                return True  # the incoming event was the one to drop (counted and logged)
            self._await_disk(item.since)
            if self._closed:  # closed while this append waited: the committer is gone
                raise OutboxWriteError(f"the outbox at {self.path} is closed")
            self._pending.append(item)
            self._count += 1
            self._appended = True
            if len(self._pending) == 1:
                self._changed.notify_all()  # the committer sleeps only on an empty queue
        finally:
            self._lock.release()
        return True

    def _raise_if_failing(self) -> None:
        if self._failure is not None:
            raise OutboxWriteError(self._failure)

    def _would_wait(self, now: float) -> bool:
        return (
            self._count >= self.max_items
            or len(self._pending) >= self.max_group
            or self._unsynced_too_long(now)
        )

    def _unsynced_too_long(self, now: float) -> bool:
        since = self._inflight_since
        if since is None and self._pending:
            since = self._pending[0].since
        return since is not None and now - since > self.max_unsynced

    def _await_disk(self, now: float) -> None:
        """Called with the lock held. Back-pressure bounds what a crash can lose: at most
        `max_group` items wait, and none longer than `max_unsynced` seconds."""
        while len(self._pending) >= self.max_group or self._unsynced_too_long(now):
            self._changed.wait(self.max_unsynced)
            self._raise_if_failing()
            now = time.monotonic()

    @property
    def nearly_full(self) -> bool:
        """An append might have to wait for room (or drop)."""
        return bool(self._count >= self.max_items - 1)

    def _make_room(self, kind: str) -> bool:
        """Called with the lock held: apply the full policy. False: drop the incoming item."""
        if self._count < self.max_items:
            return True
        self._recount()  # other processes may have sent (or added) items meanwhile
        if self._count < self.max_items:
            return True
        if self.full_policy == "drop_oldest":
            if self._drop_oldest():
                return True
            if kind in self.droppable:
                self._count_drop({"kind": kind})
                return False
            # Nothing may be dropped for it: a refund or consent decision waits like "block".
        elif self.full_policy == "raise":
            raise OutboxFull(f"the outbox holds {self.max_items} items")
        deadline = time.monotonic() + self.block_timeout
        while self._count >= self.max_items:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise OutboxFull(
                    f"the outbox stayed full ({self.max_items} items) for {self.block_timeout} s"
                )
            self._changed.wait(min(remaining, 0.25))
            if self._closed:
                raise OutboxWriteError(f"the outbox at {self.path} is closed")
            self._recount()  # another process's sender may have made room
        return True

    def _recount(self) -> None:
        """Called with the lock held: the count from the file, plus what waits in memory."""
        try:
            with self._connection() as db:
                on_disk = db.execute("SELECT count(*) FROM items").fetchone()[0]
        except (sqlite3.Error, OutboxWriteError):
            return  # keep the hint; the disk's own failure surfaces on the next write
        self._count = on_disk + len(self._pending) + self._in_flight

    def _drop_oldest(self) -> bool:
        """Called with the lock held: drop the oldest droppable item, on disk or in memory."""
        marks = ",".join("?" * len(self.droppable))
        try:
            with self._connection() as db:
                row = db.execute(
                    f"SELECT seq, kind, key FROM items WHERE kind IN ({marks})"
                    " ORDER BY seq LIMIT 1",
                    self.droppable,
                ).fetchone()
                if row is not None:
                    db.execute("DELETE FROM items WHERE seq = ?", (row[0],))
        except sqlite3.Error as exc:
            raise OutboxWriteError(
                f"dropping from the outbox at {self.path} failed: {exc}"
            ) from exc
        if row is not None:
            self._count -= 1
            self._count_drop({"kind": row[1], "key": row[2]})
            return True
        for waiting in self._pending:
            # A "sync" caller waiting for its item's fsync was promised the disk: not dropped.
            if waiting.kind in self.droppable and waiting.done is None:
                self._pending.remove(waiting)
                if waiting.done is not None:
                    waiting.done.set()
                self._count -= 1
                self._count_drop({"kind": waiting.kind, "key": waiting.key})
                return True
        return False

    def _count_drop(self, dropped: dict[str, str]) -> None:
        try:
            with self._connection() as db:
                self._bump(db, "dropped")
        except sqlite3.Error as exc:
            raise OutboxWriteError(f"counting a drop in {self.path} failed: {exc}") from exc
        log.warning("outbox full: dropped the oldest analytics event", extra=dropped)

    # --- the committer ----------------------------------------------------------------------

    def _commit_loop(self) -> None:
        failures = 0
        while True:
            with self._changed:
                while not self._pending and not self._closed:
                    self._changed.wait()
                if not self._pending:
                    return  # closed, and everything is on disk
                closing = self._closed
            if self.commit_window and self.durability == "group" and not (failures or closing):
                time.sleep(self.commit_window)  # let more appends join this group
            with self._changed:
                group = [
                    self._pending.popleft() for _ in range(min(len(self._pending), self.max_group))
                ]
                if not group:
                    continue
                self._in_flight = len(group)
                self._inflight_since = group[0].since
            if self._write(group):
                failures = 0
                continue
            failures += 1
            self.reclaim()  # a WAL grown to fill the disk is given back before the retry
            with self._changed:
                if self._closed:
                    return  # close() reports what could not be written
                self._changed.wait(_RETRY_WRITE[min(failures, len(_RETRY_WRITE)) - 1])

    def _write(self, group: list[_Pending]) -> bool:
        try:
            with self._connection() as db:
                try:
                    db.execute("BEGIN IMMEDIATE")
                    cursor = db.executemany(
                        "INSERT OR IGNORE INTO items (kind, key, payload, created_at) "
                        "VALUES (?, ?, ?, ?)",
                        [(p.kind, p.key, p.payload, p.created_at) for p in group],
                    )
                    db.execute("COMMIT")
                    self._in_flight_on_disk = True  # status() must not count them twice
                except BaseException:
                    if db.in_transaction:
                        with contextlib.suppress(sqlite3.Error):
                            db.execute("ROLLBACK")
                    raise
            ignored = len(group) - cursor.rowcount  # already queued under the same key
        except Exception as exc:  # whatever it is, the group is kept or its callers told
            self._failed(group, exc)
            return False
        with self._changed:
            self._count -= max(ignored, 0)
            self._in_flight = 0
            self._in_flight_on_disk = False
            self._inflight_since = None
            if self._failure is not None:
                log.warning("the outbox writes again", extra={"path": str(self.path)})
                self._failure = None
            self._changed.notify_all()
        for pending in group:
            if pending.done is not None:
                pending.done.set()
        return True

    def _failed(self, group: list[_Pending], exc: BaseException) -> None:
        """A group could not be written: in "group" mode it goes back to the head of the
        queue to be retried; in "sync" mode its callers are told instead."""
        error = f"writing the outbox at {self.path} failed: {exc}"
        with self._changed:
            first = self._failure is None
            self._write_failures += 1
            self._in_flight = 0
            self._in_flight_on_disk = False
            self._inflight_since = None
            self.last_error = error
            if self.durability == "sync":
                self._count -= len(group)
            else:
                self._pending.extendleft(reversed(group))
                self._failure = error
            self._changed.notify_all()
        if self.durability == "sync":
            for pending in group:
                pending.error = OutboxWriteError(error)
                if pending.done is not None:
                    pending.done.set()
        if first:
            log.error(
                "outbox write failed; items are kept in memory and retried",
                extra={"items": len(group), "error": str(exc), "path": str(self.path)},
            )

    def sync(self, timeout: float | None = None) -> bool:
        """Wait until every item appended so far by this process is on disk; False if
        `timeout` passed first. Raises OutboxWriteError if the disk refuses writes (after
        waiting for one more attempt, or at the timeout)."""
        if self._committer is None:
            return True  # nothing was appended in this process
        deadline = None if timeout is None else time.monotonic() + timeout
        # A bounded acquire: an exit hook run by a signal may interrupt a thread holding it.
        if not self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            return False
        failures = self._write_failures
        try:
            while self._pending or self._in_flight:
                # While the disk refuses writes, wait for one more attempt, then tell.
                if self._failure is not None and self._write_failures > failures:
                    self._raise_if_failing()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._raise_if_failing()
                    return False
                self._changed.wait(0.05 if remaining is None else min(remaining, 0.05))
        finally:
            self._lock.release()
        return True

    def unwritten(self) -> int:
        """Items of this process only in memory: what a crash now would lose. Read without
        the lock: an exit hook run by a signal may interrupt the thread holding it."""
        return len(self._pending) + self._in_flight

    @property
    def appended_here(self) -> bool:
        """Whether this process appended anything (what an exit hook must see to disk)."""
        return self._appended

    # --- sending (one process at a time holds the lease) -------------------------------------

    def take_lease(self, holder: str) -> bool:
        """Become (or stay) the sender of this file; False if another live process is."""
        now = time.time()
        if self._lease == (holder, os.getpid()) and now < self._lease_renew_at:
            return True  # ours, and far from running out: no need to write
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT holder, until FROM sender_lease WHERE id = 1").fetchone()
                mine = row is None or row[0] == holder or row[1] < now or _dead_here(row[0])
                if mine:
                    db.execute(
                        "INSERT INTO sender_lease (id, holder, until) VALUES (1, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE "
                        "SET holder = excluded.holder, until = excluded.until",
                        (holder, now + LEASE_SECONDS),
                    )
                db.execute("COMMIT")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        if mine:
            self._lease = (holder, os.getpid())
            self._lease_renew_at = now + LEASE_SECONDS / 3
        return mine

    def release_lease(self, holder: str) -> None:
        self._lease = None
        with self._connection() as db:
            db.execute("DELETE FROM sender_lease WHERE id = 1 AND holder = ?", (holder,))

    def head(self, limit: int, kinds: tuple[str, ...] | None = None) -> list[Item]:
        """The oldest committed items (of `kinds`), in append order."""
        query = "SELECT seq, kind, key, payload, created_at FROM items"
        params: tuple[Any, ...] = ()
        if kinds:
            query += f" WHERE kind IN ({','.join('?' * len(kinds))})"
            params = kinds
        with self._connection() as db:
            rows = db.execute(query + " ORDER BY seq LIMIT ?", (*params, limit)).fetchall()
        return [Item(seq, kind, key, payload, at) for seq, kind, key, payload, at in rows]

    def items(self, kind: str) -> list[Item]:
        return self.head(1_000_000, (kind,))

    def ack(self, seqs: list[int]) -> None:
        """These items reached the server: forget them."""
        if not seqs:
            return
        with self._connection() as db:
            # One transaction: one WAL append and one fsync for the whole batch.
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.executemany("DELETE FROM items WHERE seq = ?", [(s,) for s in seqs])
                db.execute("COMMIT")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        self._forget(cursor.rowcount)

    def reclaim(self) -> None:
        """Give the WAL's space back to the file system (after a write failed for space)."""
        with contextlib.suppress(sqlite3.Error, OutboxWriteError), self._connection() as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def remove(self, key: str) -> None:
        with self._connection() as db:
            cursor = db.execute("DELETE FROM items WHERE key = ?", (key,))
        self._forget(cursor.rowcount)

    def _forget(self, removed: int) -> None:
        with self._changed:
            # Items other processes appended are not in this process's count: never below
            # what this process still holds in memory.
            self._count = max(self._count - removed, len(self._pending) + self._in_flight)
            self._changed.notify_all()

    def bury(self, key: str, error: str) -> None:
        """Move an item the server refused for good to the dead letters, with the error."""
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute(
                    "INSERT INTO dead_letters (kind, key, payload, error, created_at) "
                    "SELECT kind, key, payload, ?, ? FROM items WHERE key = ?",
                    (error, time.time(), key),
                )
                cursor = db.execute("DELETE FROM items WHERE key = ?", (key,))
                db.execute("COMMIT")
            except sqlite3.Error:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        self._forget(cursor.rowcount)

    def dead_letters(self, kind: str | None = None) -> list[DeadLetter]:
        query = "SELECT kind, key, payload, error, created_at FROM dead_letters"
        params: tuple[str, ...] = (kind,) if kind else ()
        with self._connection() as db:
            rows = db.execute(
                query + (" WHERE kind = ?" if kind else "") + " ORDER BY seq", params
            ).fetchall()
        return [DeadLetter(k, key, json.loads(p), error, at) for k, key, p, error, at in rows]

    # --- status ---------------------------------------------------------------------------

    @staticmethod
    def _bump(db: sqlite3.Connection, name: str) -> None:
        db.execute(
            "INSERT INTO counters (name, value) VALUES (?, 1) "
            "ON CONFLICT (name) DO UPDATE SET value = value + 1",
            (name,),
        )

    def status(self) -> OutboxStatus:
        # One consistent view: with _lock held the queue cannot move, and the group being
        # written is counted once, on disk or in memory (_lock before _db_lock, as everywhere).
        with self._lock:
            with self._connection() as db:
                depth, oldest = db.execute("SELECT count(*), min(created_at) FROM items").fetchone()
                dead = db.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
                dropped = db.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
                in_memory = 0 if self._in_flight_on_disk else self._in_flight
            waiting = len(self._pending)
            if waiting:
                oldest = min(oldest or time.time(), self._pending[0].created_at)
            unwritten = waiting + in_memory
        return OutboxStatus(
            depth=depth + unwritten,
            oldest_age_seconds=None if oldest is None else max(time.time() - oldest, 0.0),
            dead_letters=dead,
            dropped=dropped[0] if dropped else 0,
            last_error=self.last_error,
            path=str(self.path),
            write_failures=self._write_failures,
            unwritten=unwritten,
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
            "# HELP omnisdk_outbox_write_failures_total Failed disk writes (each retried).",
            "# TYPE omnisdk_outbox_write_failures_total counter",
            f"omnisdk_outbox_write_failures_total {status.write_failures}",
            "# HELP omnisdk_outbox_unwritten Items held in memory, not yet on disk.",
            "# TYPE omnisdk_outbox_unwritten gauge",
            f"omnisdk_outbox_unwritten {status.unwritten}",
        ]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        """Commit what is pending and close the file (items not yet sent stay on disk).
        Raises OutboxWriteError if some could not be written: they are lost, and logged.
        Appends after `close()` raise OutboxWriteError; reads (status, dead letters) still work."""
        with self._changed:
            if self._closed:
                return
            self._closed = True  # from here on appends raise: nothing is accepted unwritten
            self._changed.notify_all()
        committer = self._committer
        if committer is not None and committer is not threading.current_thread():
            committer.join(timeout=30)
        lost = self.unwritten()
        with self._db_lock:
            self._close_connection()
        if lost:
            log.error(
                "closing the outbox with items that could not be written: they are lost",
                extra={"items": lost, "path": str(self.path), "error": self.last_error},
            )
            raise OutboxWriteError(
                f"{lost} items could not be written to {self.path}: "
                f"{self.last_error or 'the writer stopped first'}"
            )
