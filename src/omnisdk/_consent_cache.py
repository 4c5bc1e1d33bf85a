"""The SDK's consent cache: `check()` answers from memory, the change feed keeps it true.

The same feed thread serves the content cache (rulesets, profiles) through `listeners`.

A background thread follows the tenant's consent feed (`GET /v1/consent/changes`, SSE) and drops
a customer's entry the moment a decision of theirs commits on any channel, so the next check
reads the new state. When the server says the feed's position is no longer kept (a `resync`
event, after a long disconnection), every entry is dropped and the listeners are told, so the
content cache reloads too. While the feed is connected an entry lives `max_age` seconds; while it is
not (the server restarting, a network cut) entries live only `offline_max_age` seconds, so a
withdrawal made elsewhere is seen within that bound even without the feed. When the server
cannot be asked, consent is not assumed: the check fails closed.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from omnisdk._lifecycle import start_daemon
from omnisdk._sse import RESYNC, SseParser
from omnisdk.models import ConsentState

Key = tuple[str, str | None]  # customer id, device id


# Told to listeners when the feed first connects: changes made before it listened were not
# seen, so whatever was loaded before is re-checked.
CONNECTED = "connected"


@dataclass(frozen=True)
class Entry:
    state: ConsentState
    granted: frozenset[str]
    fetched_at: float


class ConsentCache:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        *,
        max_age: float = 300.0,
        offline_max_age: float = 5.0,
        watch: bool = True,
    ) -> None:
        self.max_age = max_age
        self.offline_max_age = offline_max_age
        self._entries: dict[Key, Entry] = {}
        self._lock = threading.Lock()
        self._url = f"{base_url}/v1/changes?kinds=consent,content,cart"
        self._headers = {**headers, "Accept": "text/event-stream"}
        self._watch = watch
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._http: httpx.Client | None = None
        self.connected = threading.Event()
        # How long an entry is trusted now: max_age while the feed is connected, else
        # offline_max_age (kept beside `connected` so a check reads one attribute).
        self._lifetime = offline_max_age
        # Called with (kind, data) for every change the feed brings (the content cache listens).
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []
        self.erasures = 0  # how many erasures the feed has reported
        self.resyncs = 0  # how many times the feed said changes were missed (all dropped)

    # --- reading --------------------------------------------------------------------------

    def get(self, customer_id: str, device_id: str | None) -> Entry | None:
        entry = self._entries.get((customer_id, device_id))
        if entry is None:
            return None
        return entry if time.monotonic() - entry.fetched_at < self._lifetime else None

    def put(self, state: ConsentState, device_id: str | None, *aliases: str) -> Entry:
        entry = Entry(
            state,
            frozenset(p for p, s in state.purposes.items() if s.granted),
            time.monotonic(),
        )
        with self._lock:
            for customer_id in {state.customer_id, *aliases}:
                self._entries[(customer_id, device_id)] = entry
        self._start()
        return entry

    def invalidate(self, customer_ids: list[str]) -> None:
        wanted = set(customer_ids)
        with self._lock:
            for key in [key for key in self._entries if key[0] in wanted]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    # --- following the feed ----------------------------------------------------------------

    def _start(self) -> None:
        if not self._watch or self._thread is not None:
            return
        with self._lock:
            if self._thread is not None:
                return
            self._thread = start_daemon(self._follow, "omnisdk-consent-feed")

    def _follow(self) -> None:
        last: int | None = None
        self._http = httpx.Client(timeout=httpx.Timeout(10, read=60))
        while not self._stop.is_set():
            headers = dict(self._headers)
            if last is not None:
                headers["Last-Event-ID"] = str(last)
            try:
                with self._http.stream("GET", self._url, headers=headers) as response:
                    if response.status_code != 200:
                        raise httpx.HTTPStatusError(
                            "feed refused", request=response.request, response=response
                        )
                    parser = SseParser()
                    for line in response.iter_lines():
                        if line.startswith(": watching") and not self.connected.is_set():
                            # Whatever changed while we were away: start again from the server.
                            if last is None:
                                self.clear()
                            self.connected.set()
                            self._lifetime = self.max_age
                            if last is None:  # what changed before we listened: re-check it
                                for listener in list(self.listeners):
                                    listener(CONNECTED, {})
                        change = parser.feed(line)
                        # Known from the first (empty) block on: a reconnection resumes here.
                        last = parser.position if parser.position is not None else last
                        if change is not None:
                            self._apply(change.kind, change.raw)
                        if self._stop.is_set():
                            break
            except (httpx.HTTPError, ValueError):
                pass
            self.connected.clear()
            self._lifetime = self.offline_max_age
            self._stop.wait(1.0)
        with contextlib.suppress(Exception):
            self._http.close()

    def _apply(self, kind: str, data: dict[str, Any]) -> None:
        if kind == RESYNC:  # decisions were missed: nothing cached can be trusted
            with self._lock:
                self._entries.clear()
                self.resyncs += 1
        elif kind == "consent":
            customer = data.get("customer_id")
            if not customer:  # names no one (an erasure): forget everyone
                with self._lock:
                    self._entries.clear()
                    self.erasures += 1
            else:
                merged = data.get("merged_ids") or []
                self.invalidate([c for c in [customer, *merged] if isinstance(c, str)])
        for listener in list(self.listeners):
            listener(kind, data)

    def start(self) -> None:
        """Follow the feed now (it also starts on the first cached entry)."""
        self._start()

    def close(self) -> None:
        """Stop following the feed. The thread (a daemon) may sit in a read until the server's
        next keepalive; it then ends without touching anything."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(0.1)
