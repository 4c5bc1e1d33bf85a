"""A durable local queue (SQLite, WAL) for writes made while the server cannot be reached.

Each item has a kind, a unique key (its idempotency key: the server applies it once however
often it is sent) and a JSON payload. An append returns only once the item is on disk. Items
the server refuses for good are moved to a dead-letter table with the error, never dropped.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Item:
    kind: str
    key: str
    payload: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class DeadLetter:
    kind: str
    key: str
    payload: dict[str, Any]
    error: str
    created_at: float


class Outbox:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS items (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
            "key TEXT NOT NULL UNIQUE, payload TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS dead_letters (seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, "
            "key TEXT NOT NULL, payload TEXT NOT NULL, error TEXT NOT NULL, "
            "created_at REAL NOT NULL)"
        )

    def append(self, kind: str, key: str, payload: dict[str, Any]) -> bool:
        """Store an item durably; False if an item with this key is already queued."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT OR IGNORE INTO items (kind, key, payload, created_at) VALUES (?, ?, ?, ?)",
                (kind, key, json.dumps(payload), time.time()),
            )
            return cursor.rowcount == 1

    def items(self, kind: str) -> list[Item]:
        """Queued items of `kind`, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, key, payload, created_at FROM items WHERE kind = ? ORDER BY seq",
                (kind,),
            ).fetchall()
        return [Item(k, key, json.loads(payload), at) for k, key, payload, at in rows]

    def remove(self, key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM items WHERE key = ?", (key,))

    def bury(self, key: str, error: str) -> None:
        """Move an item the server refused for good to the dead letters, with the error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO dead_letters (kind, key, payload, error, created_at) "
                "SELECT kind, key, payload, ?, ? FROM items WHERE key = ?",
                (error, time.time(), key),
            )
            self._db.execute("DELETE FROM items WHERE key = ?", (key,))
            self._db.execute("COMMIT")

    def dead_letters(self, kind: str) -> list[DeadLetter]:
        with self._lock:
            rows = self._db.execute(
                "SELECT kind, key, payload, error, created_at FROM dead_letters "
                "WHERE kind = ? ORDER BY seq",
                (kind,),
            ).fetchall()
        return [DeadLetter(k, key, json.loads(p), error, at) for k, key, p, error, at in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
