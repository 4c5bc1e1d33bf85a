"""What `content.decide` evaluates from: the ruleset, the recommendation model, and profiles.

- The ruleset and the recommendation model are fetched with their ETags and re-checked in the
  background (`If-None-Match`: an unchanged one costs a 304) every `refresh_interval` seconds and
  at once when the change feed announces a new version. The last good ruleset is also kept on
  disk (`data_dir/content-ruleset.json`), so a backend that restarts while the server is down
  still decides. A ruleset that fails to compile is never swapped in.
- Profiles (the context of a personalised decision) are cached per customer for
  `profile_max_age` seconds and dropped when the feed reports a change of her consent or cart.
- When the feed reports that changes were missed (`resync`), every profile is dropped and the
  ruleset and model are re-checked at once.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from omnisdk._consent_cache import CONNECTED
from omnisdk._lifecycle import start_daemon
from omnisdk._sse import RESYNC
from omnisdk.core.content import CompiledRuleset, InvalidRuleset, compile_ruleset
from omnisdk.errors import APIConnectionError, error_for

MAX_EXPOSURES = 100_000
MAX_PROFILES = 50_000


@dataclass(frozen=True)
class ProfileFacts:
    """What a decision may use of a profile, already shaped as condition attributes."""

    attributes: dict[str, Any]
    cart: tuple[str, ...]
    purchased: tuple[str, ...]
    fetched_at: float


class ContentCache:
    def __init__(
        self,
        base_url: str,
        headers: dict[str, str],
        data_dir: Path,
        *,
        refresh_interval: float = 30.0,
        profile_max_age: float = 60.0,
    ) -> None:
        self._base_url = base_url
        self._headers = dict(headers)
        self._file = data_dir / "content-ruleset.json"
        self.refresh_interval = refresh_interval
        self.profile_max_age = profile_max_age
        self.ruleset: CompiledRuleset | None = None
        self.ruleset_version: int | None = None
        self._ruleset_etag: str | None = None
        self.recommendations: dict[str, Any] = {"together": {}, "popular": []}
        self._recs_etag: str | None = None
        self.profiles: dict[str, ProfileFacts] = {}
        # Exposures already tracked by this process; the server dedupes by event id anyway, so
        # when the set grows past MAX_EXPOSURES it is simply started afresh.
        self.exposed: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: httpx.Client | None = None

    # --- the ruleset ------------------------------------------------------------------------

    def ready(self) -> CompiledRuleset:
        """The compiled ruleset, loading it on first use (from the server, else from disk)."""
        ruleset = self.ruleset
        if ruleset is not None:
            return ruleset
        with self._lock:
            if self.ruleset is None:
                try:
                    self.refresh()
                except APIConnectionError:
                    if not self._load_from_disk():
                        raise
            self._start()
        assert self.ruleset is not None
        return self.ruleset

    def refresh(self) -> None:
        """Re-check the ruleset and the recommendation model by ETag (blocking)."""
        http = self._client()
        ruleset = self._get(http, "/v1/content/ruleset", self._ruleset_etag)
        if ruleset is not None:
            self._install(ruleset, save=True)
        recs = self._get(http, "/v1/content/recommendations", self._recs_etag)
        if recs is not None:
            self.recommendations = {"together": recs["together"], "popular": recs["popular"]}
            self._recs_etag = recs["etag"]

    def _install(self, document: dict[str, Any], save: bool) -> None:
        try:
            compiled = compile_ruleset({"slots": document["slots"]})
        except (InvalidRuleset, KeyError):
            return  # keep the last good one
        self.ruleset = compiled
        self.ruleset_version = document.get("version")
        self._ruleset_etag = document.get("etag")
        if save:
            with contextlib.suppress(OSError):
                self._file.parent.mkdir(parents=True, exist_ok=True)
                partial = self._file.with_suffix(".tmp")
                partial.write_text(json.dumps(document))
                partial.replace(self._file)

    def _load_from_disk(self) -> bool:
        try:
            self._install(json.loads(self._file.read_text()), save=False)
        except (OSError, ValueError):
            return False
        return self.ruleset is not None

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(timeout=10.0)
        return self._http

    def _get(self, http: httpx.Client, path: str, etag: str | None) -> dict[str, Any] | None:
        headers = dict(self._headers)
        if etag is not None:
            headers["If-None-Match"] = etag
        try:
            response = http.get(self._base_url + path, headers=headers)
        except httpx.HTTPError as exc:
            raise APIConnectionError(f"cannot reach the server for {path}: {exc}") from exc
        if response.status_code == 304:
            return None
        if response.status_code != 200:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            raise error_for(response.status_code, problem, response.headers.get("X-Request-ID"))
        body: dict[str, Any] = response.json()
        return body

    # --- background refresh -----------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is None:
            self._thread = start_daemon(self._refresh_loop, "omnisdk-content")

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.refresh_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            with contextlib.suppress(Exception):  # server away: keep the last good ruleset
                self.refresh()

    def on_change(self, kind: str, data: dict[str, Any]) -> None:
        """A change from the feed: a new ruleset or model, or a customer's consent or cart."""
        if kind in (RESYNC, CONNECTED):  # changes may have been missed: reload, forget profiles
            self.profiles.clear()
            self._wake.set()
        elif kind == "content":
            self._wake.set()
        elif kind == "consent" and not data.get("customer_id"):
            self.profiles.clear()  # an erasure names no one: forget every profile
        elif kind in ("consent", "cart"):
            for customer in [data.get("customer_id"), *(data.get("merged_ids") or [])]:
                if isinstance(customer, str):
                    self.profiles.pop(customer, None)

    # --- profiles ---------------------------------------------------------------------------

    def profile(self, customer_id: str) -> ProfileFacts | None:
        facts = self.profiles.get(customer_id)
        if facts is None or time.monotonic() - facts.fetched_at > self.profile_max_age:
            return None
        return facts

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._http is not None:
            self._http.close()
