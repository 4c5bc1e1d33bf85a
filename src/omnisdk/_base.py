"""Request building, retry policy and response reading, shared by `Client` and `AsyncClient`.

Nothing here does I/O. A call is a generator (`BaseClient.flow`) that yields what to do next —
send this request, or sleep this long — and receives what happened; the sync and async shells
only drive it, so their behaviour cannot drift apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import threading
import uuid
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

from omnisdk import _lifecycle
from omnisdk._consent_cache import ConsentCache
from omnisdk._content_cache import ContentCache
from omnisdk._version import __version__
from omnisdk.core import strict_json
from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from omnisdk.errors import (
    APIConnectionError,
    APITimeoutError,
    ClientClosedError,
    ConfigurationError,
    InvalidRequestError,
    OutboxWriteError,
    error_for,
)
from omnisdk.outbox import Durability, FullPolicy, Outbox

log = logging.getLogger("omnisdk.outbox")

T = TypeVar("T")

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
DEFAULT_TIMEOUT = 10.0
DEFAULT_MAX_RETRIES = 3


def _channel(channel: Channel | str | None) -> Channel | None:
    if channel is None:
        return None
    try:
        return Channel(channel)
    except ValueError:
        names = ", ".join(c.value for c in Channel)
        raise ConfigurationError(f"channel must be one of {names}; got {channel!r}") from None


def default_data_dir(api_key: str) -> Path:
    """Where a client keeps its outbox and cached keys: $OMNISDK_DATA_DIR (else
    ~/.cache/omnisdk), one folder per API key, so the processes of one backend share it."""
    root = Path(os.environ.get("OMNISDK_DATA_DIR") or Path.home() / ".cache" / "omnisdk")
    parts = api_key.split("_")
    name = "-".join(parts[1:3]) if len(parts) >= 4 and parts[0] == "osk" else ""
    return root / (name or hashlib.sha256(api_key.encode()).hexdigest()[:16])


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API operation: what to send, and how to turn the answer's JSON into a `T`."""

    method: str
    path: str
    parse: Callable[[Any], T]
    json: Any = None
    params: Mapping[str, str] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotency_key: str | None = None
    binary: bool = False  # the answer is bytes (an image), not JSON
    body: bytes | None = None  # a JSON body already encoded (sent as it is, instead of `json`)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring the server's `Retry-After`."""

    max_retries: int = DEFAULT_MAX_RETRIES
    initial_delay: float = 0.25
    max_delay: float = 8.0
    jitter: Callable[[], float] = field(default=random.random, repr=False)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number `attempt + 1` (attempt counts from 0)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay * 4)
        ceiling = min(self.max_delay, self.initial_delay * (2**attempt))
        return float(ceiling * (0.5 + self.jitter() / 2))


@dataclass(frozen=True)
class PreparedRequest:
    """A request ready for the wire: both shells hand it to httpx unchanged."""

    method: str
    url: str
    headers: dict[str, str]
    content: bytes | None
    params: Mapping[str, str] | None


@dataclass(frozen=True)
class Answer:
    """What came back: the parts of an httpx response the core needs."""

    status_code: int
    headers: Mapping[str, str]
    content: bytes


@dataclass(frozen=True)
class Sleep:
    seconds: float


Outcome = Answer | Exception
Step = PreparedRequest | Sleep


class BaseClient:
    """Configuration and the call flow; subclasses add the I/O.

    Options (every one keyword-only, all optional except `base_url` and `api_key`):

    - `base_url`: the server, such as "https://omnisdk.example.com".
    - `api_key`: an API key ("osk_..."), made with `omnisdk-server key create`.
    - `channel`: "web", "app", "pos" or "admin": sent with every request and written on
      events and cart operations (the key's own channel when None).
    - `http_client`: your own `httpx.Client` (for `Client`) or `httpx.AsyncClient` (for
      `AsyncClient`), for proxies or custom TLS; you close it yourself.
    - `timeout`: seconds to wait for each answer (10).
    - `max_retries`: retries of a failed request: connection errors, 429, 502, 503, 504 (3).
    - `retry_policy`: a `RetryPolicy` instead, to tune the backoff.
    - `close_timeout`: seconds `close()` spends delivering the outbox (10).
    - `data_dir`: where the outbox and cached keys live ($OMNISDK_DATA_DIR or
      ~/.cache/omnisdk, one folder per key).
    - `durability`: "group" (written to disk within `commit_window`, the default) or "sync"
      (on disk before `track` returns).
    - `commit_window`: seconds a group of outbox writes may wait to share one disk sync.
    - `max_group`: most outbox items written in one disk sync.
    - `outbox_max_items`: the outbox's capacity (1,000,000 items).
    - `full_policy`: when it is full: "block" (wait up to `block_timeout`), "raise"
      (`OutboxFull`) or "drop_oldest" (every drop counted and logged).
    - `block_timeout`: seconds "block" waits for room before raising `OutboxFull`.
    - `max_unsynced`: seconds an item may stay in memory before it is on disk (0.05).
    - `exit_timeout`: seconds the exit hook spends delivering when the process ends without
      `close()` (5).
    - `offline_cap`: the refunds a till may hold queued while offline (250.0).
    - `consent_max_age`: seconds a cached consent state is trusted without the feed (300).
    - `consent_offline_max_age`: ... while the change feed is disconnected (5).
    - `consent_watch`: keep cached consent true through the change feed (True).
    - `content_refresh_interval`: seconds between ruleset re-checks (30; the feed also tells
      of new rulesets at once).
    - `profile_max_age`: seconds a cached profile is used by `content.decide` (60).
    """

    is_async: ClassVar[bool] = False

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        channel: Channel | Literal["web", "app", "pos", "admin"] | None = None,
        http_client: Any = None,
        close_timeout: float = 10.0,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        retry_policy: RetryPolicy | None = None,
        data_dir: str | Path | None = None,
        durability: Durability = "group",
        commit_window: float = 0.005,
        max_group: int = 2_000,
        outbox_max_items: int = 1_000_000,
        full_policy: FullPolicy = "block",
        block_timeout: float = 30.0,
        max_unsynced: float = 0.05,
        exit_timeout: float = 5.0,
        offline_cap: float = 250.0,
        consent_max_age: float = 300.0,
        consent_offline_max_age: float = 5.0,
        consent_watch: bool = True,
        content_refresh_interval: float = 30.0,
        profile_max_age: float = 60.0,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise ConfigurationError(
                "api_key is required: create one with `omnisdk-server key create`"
            )
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigurationError(
                f"base_url must start with http:// or https://, got {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.channel = _channel(channel)
        self.close_timeout = close_timeout
        self.timeout = timeout
        self.retry_policy = retry_policy or RetryPolicy(max_retries=max_retries)
        self._api_key = api_key.strip()
        self._default_headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Accept": "application/json",
            "User-Agent": f"omnisdk-python/{__version__}",
        }
        if self.channel is not None:
            self._default_headers["X-Omnisdk-Channel"] = self.channel.value
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir(self._api_key)
        self.offline_cap = offline_cap
        self._outbox_options: dict[str, Any] = {
            "durability": durability,
            "commit_window": commit_window,
            "max_group": max_group,
            "max_items": outbox_max_items,
            "full_policy": full_policy,
            "block_timeout": block_timeout,
            "max_unsynced": max_unsynced,
        }
        self._outbox: Outbox | None = None
        self.exit_timeout = exit_timeout  # what an exit hook may spend delivering (_lifecycle)
        self._home_pid = os.getpid()  # the process that made the client (not a forked child)
        self._consent_options: dict[str, Any] = {
            "max_age": consent_max_age,
            "offline_max_age": consent_offline_max_age,
            "watch": consent_watch,
        }
        self._consent_cache: ConsentCache | None = None
        self._content_options: dict[str, Any] = {
            "refresh_interval": content_refresh_interval,
            "profile_max_age": profile_max_age,
        }
        self._content_cache: ContentCache | None = None
        # What is opened on first use (outbox, courier, caches) is opened once, whichever of
        # several threads asks first: two outboxes of one client lost what the second held.
        self._lazy = threading.RLock()
        self._closed = False
        self._outbox_options_checked()
        self._setup(http_client)

    def _setup(self, http_client: Any) -> None:
        """The I/O side: the shell's connection pool and its resources (a BaseClient alone,
        as the call-flow tests use it, has none)."""

    def _outbox_options_checked(self) -> None:
        """Refuse a bad outbox option now, not at the first deferred write."""
        try:
            Outbox.check_options(**self._outbox_options)
        except ValueError as error:
            raise ConfigurationError(str(error)) from None

    @property
    def consent_cache(self) -> ConsentCache:
        """What `consent.check` answers from (kept true by the consent change feed)."""
        if self._consent_cache is None:
            with self._lazy:
                if self._consent_cache is None:
                    self._consent_cache = ConsentCache(
                        self.base_url, self._default_headers, **self._consent_options
                    )
        return self._consent_cache

    @property
    def content_cache(self) -> ContentCache:
        """The ruleset, recommendations and profiles `content.decide` works from."""
        if self._content_cache is None:
            with self._lazy:
                if self._content_cache is None:
                    cache = ContentCache(
                        self.base_url,
                        self._default_headers,
                        self.data_dir,
                        **self._content_options,
                    )
                    feed = self.consent_cache
                    feed.listeners.append(cache.on_change)
                    feed.start()  # the feed tells of new rulesets and of customers' changes
                    self._content_cache = cache
        return self._content_cache

    def _close_caches(self) -> None:
        if self._content_cache is not None:
            self._content_cache.close()
        if self._consent_cache is not None:
            self._consent_cache.close()

    @property
    def outbox(self) -> Outbox:
        """The durable queue of deferred writes (opened on first use, in `data_dir`)."""
        if self._outbox is None:
            with self._lazy:
                if self._outbox is None:
                    self.raise_if_closed()  # opened again after close(), no one would send it
                    self._outbox = Outbox(self.data_dir / "outbox.sqlite3", **self._outbox_options)
                    # Held until close(): its exit hook must find it (see _lifecycle).
                    _lifecycle.hold(cast("_lifecycle.Ending", self))
        return self._outbox

    def raise_if_closed(self) -> None:
        """Refuse a call on a closed client (ClientClosedError)."""
        if self._closed:
            raise ClientClosedError(
                f"this {type(self).__name__} was closed: make a new one (on the same data_dir "
                "it delivers what this one left)"
            )

    def _after_fork(self) -> None:
        """In a forked child: what the parent's threads held stays with them. The caches'
        feed and refresher threads did not come across the fork, so they start afresh (the
        parent's would have been trusted with no feed behind them), and the lock is new (a
        parent's thread may have held it at the fork)."""
        self._lazy = threading.RLock()
        self._consent_cache = None
        self._content_cache = None

    def _outbox_to_disk(self, timeout: float) -> Outbox | None:
        """An exit hook's first step: what this process appended, on disk. Returns the outbox
        if there is something for this process to deliver: what it appended itself, and in
        the process that made the client, whatever its outbox file holds (what forked workers
        ended by SIGTERM left there, say)."""
        outbox = self._outbox
        home = os.getpid() == self._home_pid
        if outbox is None and home and (self.data_dir / "outbox.sqlite3").exists():
            outbox = self.outbox
        if outbox is None or not (outbox.appended_here or home):
            return None
        with contextlib.suppress(OutboxWriteError):
            outbox.sync(timeout)
        unwritten = outbox.unwritten()
        if unwritten:
            log.error(
                "exiting with %d items that could not be written to %s; they are lost: %s",
                unwritten,
                outbox.path,
                outbox.last_error,
            )
        return outbox

    def _report_left(self, left: int) -> None:
        if left and self._outbox is not None:
            log.warning(
                "exiting with %d items not yet delivered; they stay on disk in %s and go out "
                "with the next client on that data_dir",
                left,
                self._outbox.path,
            )

    def __repr__(self) -> str:
        # Never show the key: reprs end up in logs.
        return f"{type(self).__name__}(base_url={self.base_url!r}, channel={self.channel})"

    def prepare(self, call: Call[Any]) -> PreparedRequest:
        """The wire form of `call`; a mutating call always gets an idempotency key."""
        headers = dict(self._default_headers)
        headers.update(call.headers)
        content: bytes | None = call.body
        if content is None and call.json is not None:
            _check_strict(call.json)
            content = json.dumps(call.json, separators=(",", ":")).encode()
        if content is not None:
            headers.setdefault("Content-Type", "application/json")
        if call.method in MUTATING_METHODS:
            # Generated once per call, reused by every retry: a retry never applies twice.
            headers["Idempotency-Key"] = call.idempotency_key or str(uuid.uuid4())
        return PreparedRequest(
            call.method, self.base_url + call.path, headers, content, call.params
        )

    def flow(self, call: Call[T]) -> Generator[Step, Outcome | None, T]:
        """Send `call`, retrying what is safe to retry, and return its parsed result."""
        request = self.prepare(call)
        policy = self.retry_policy
        attempt = 0
        while True:
            outcome = yield request
            assert outcome is not None, "a shell must answer a request with its outcome"
            retry_after = _retry_after(outcome) if isinstance(outcome, Answer) else None
            if attempt < policy.max_retries and _retryable(outcome):
                yield Sleep(policy.delay(attempt, retry_after))
                attempt += 1
                continue
            return call.parse(read_answer(outcome, binary=call.binary))


def _check_strict(body: Any) -> None:
    """Refuse before sending what the server's strict JSON policy refuses (422)."""
    found = strict_json.violations(body)
    if found:
        detail = "; ".join(f"{'.'.join(map(str, v.loc)) or 'body'}: {v.msg}" for v in found)
        raise InvalidRequestError(ProblemType.VALIDATION_ERROR, detail)


def _retryable(outcome: Outcome) -> bool:
    if isinstance(outcome, Answer):
        return outcome.status_code in RETRYABLE_STATUS
    return isinstance(outcome, APIConnectionError)


def _retry_after(answer: Answer) -> float | None:
    value = answer.headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    try:
        from datetime import UTC, datetime

        return (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None


def read_answer(outcome: Outcome, binary: bool = False) -> Any:
    """The JSON body of a successful answer; raise the typed error for anything else."""
    if isinstance(outcome, Exception):
        raise outcome
    request_id = outcome.headers.get("x-request-id")
    if binary and 200 <= outcome.status_code < 300:
        return outcome.content
    if 200 <= outcome.status_code < 300:
        if not outcome.content:
            return None
        try:
            return json.loads(outcome.content)
        except ValueError as exc:
            raise APIConnectionError(
                f"the server answered {outcome.status_code} with a body that is not JSON"
            ) from exc
    problem = _problem(outcome)
    raise error_for(outcome.status_code, problem, request_id, _retry_after(outcome))


def _problem(answer: Answer) -> dict[str, Any]:
    try:
        body = json.loads(answer.content) if answer.content else {}
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    body.setdefault("status", answer.status_code)
    return body


def connection_error(exc: Exception, timeout: bool) -> APIConnectionError:
    """Our exception for a transport failure of httpx (kept as the cause)."""
    cls = APITimeoutError if timeout else APIConnectionError
    err = cls(f"could not reach the omnisdk server: {exc}")
    err.__cause__ = exc
    return err
