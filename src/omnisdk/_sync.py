"""`Client`: the blocking shell over httpx.Client that drives the shared call flow."""

from __future__ import annotations

import contextlib
import time
from types import TracebackType
from typing import Any, TypeVar

import httpx

from omnisdk import _lifecycle
from omnisdk._base import (
    Answer,
    BaseClient,
    Call,
    Outcome,
    PreparedRequest,
    RetryPolicy,
    Sleep,
    connection_error,
)
from omnisdk._delivery import Delivery
from omnisdk.errors import ConfigurationError, OutboxWriteError
from omnisdk.resources.alerts import Alerts
from omnisdk.resources.carts import Carts
from omnisdk.resources.changes import Changes
from omnisdk.resources.consent import Consent
from omnisdk.resources.content import Content
from omnisdk.resources.events import Events
from omnisdk.resources.identity import Identity
from omnisdk.resources.inventory import Inventory
from omnisdk.resources.keys import Keys
from omnisdk.resources.orders import Orders
from omnisdk.resources.privacy import Privacy
from omnisdk.resources.returns import Returns, TillState
from omnisdk.resources.segments import Segments
from omnisdk.resources.sessions import Sessions
from omnisdk.resources.system import System
from omnisdk.resources.tenant import Tenant

T = TypeVar("T")


class Client(BaseClient):
    """The omnisdk client for synchronous code (Django, Flask, a POS backend, scripts).

    >>> client = omnisdk.Client("http://127.0.0.1:8000", api_key="osk_...", channel="web")
    >>> client.system.whoami().tenant_id

    Its options are those of `BaseClient`; `http_client` is an `httpx.Client`. Use it as a
    context manager, or call `close()` when done (it delivers what the outbox holds).
    """

    system: System[Client]
    keys: Keys[Client]
    identity: Identity[Client]
    returns: Returns[Client]
    carts: Carts[Client]
    changes: Changes
    sessions: Sessions[Client]
    tenant: Tenant[Client]
    events: Events[Client]
    consent: Consent[Client]
    privacy: Privacy[Client]
    segments: Segments[Client]
    content: Content[Client]
    orders: Orders[Client]
    inventory: Inventory[Client]
    alerts: Alerts[Client]

    def _setup(self, http_client: Any) -> None:
        if http_client is not None and not isinstance(http_client, httpx.Client):
            raise ConfigurationError("http_client of a Client is an httpx.Client")
        self._owns_http = http_client is None
        self._http: httpx.Client = http_client or httpx.Client(timeout=self.timeout)
        self._http_stale = False  # set in a forked child: the pool's sockets are the parent's
        self._delivery: Delivery | None = None
        self.system = System(self)
        self.keys = Keys(self)
        self.identity = Identity(self)
        self.returns = Returns(
            self, TillState(self.data_dir, self.offline_cap, lambda: self.outbox)
        )
        self.carts = Carts(self)
        self.changes = Changes(self)
        self.sessions = Sessions(self)
        self.tenant = Tenant(self)
        self.events = Events(self)
        self.consent = Consent(self)
        self.privacy = Privacy(self)
        self.segments = Segments(self)
        self.content = Content(self)
        self.orders = Orders(self)
        self.inventory = Inventory(self)
        self.alerts = Alerts(self)
        _lifecycle.register(self)

    def execute(self, call: Call[T]) -> T:
        """Run one call with retries; raise the typed error if it finally fails."""
        flow = self.flow(call)
        step = next(flow)
        try:
            while True:
                if isinstance(step, Sleep):
                    time.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(self._send(step))
        except StopIteration as done:
            result: T = done.value
            return result

    def _send(self, request: PreparedRequest) -> Outcome:
        if self._http_stale:
            self._http = httpx.Client(timeout=self.timeout)
            self._http_stale = False
        try:
            response = self._http.request(
                request.method,
                request.url,
                headers=request.headers,
                content=request.content,
                params=request.params,
                timeout=self.timeout,
            )
        except httpx.TimeoutException as exc:
            return connection_error(exc, timeout=True)
        except httpx.TransportError as exc:
            return connection_error(exc, timeout=False)
        return Answer(response.status_code, response.headers, response.content)

    @property
    def delivery(self) -> Delivery:
        """The background courier of the outbox (started on the first deferred write)."""
        if self._delivery is None:
            with self._lazy:
                if self._delivery is None:
                    self._delivery = Delivery(self, self.outbox)
        return self._delivery

    def close(self) -> None:
        """Deliver what the outbox holds (up to `close_timeout`; the rest stays on disk), then
        release the connection pool. Raises OutboxWriteError if tracked items could not be
        written to disk (after everything else is closed). Cut short (interrupted, or the async
        close cancelled by a deadline), it still stops its courier and closes: what is left
        stays on disk for the next client on that data_dir."""
        self._closed = True
        _lifecycle.unregister(self)
        try:
            if self._delivery is not None:
                self._delivery.close(self.close_timeout)
        finally:
            self._close_caches()
            # Not a stale pool (a forked child's copy of its parent's): its lock may have been
            # held by a parent's thread at the fork, and its sockets are the parent's.
            if self._owns_http and not self._http_stale:
                self._http.close()
            if self._outbox is not None:
                self._outbox.close()  # last: its error, if any, after everything else closed

    @classmethod
    def _twin_of(cls, other: BaseClient, timeout: float, retry_policy: RetryPolicy) -> Client:
        """A blocking client for the same server, key and data_dir as `other`, that no exit
        hook looks after (its original does): for delivering where `other` cannot."""
        twin = cls(
            other.base_url,
            other._api_key,
            channel=other.channel,
            timeout=timeout,
            retry_policy=retry_policy,
            data_dir=other.data_dir,
        )
        _lifecycle.unregister(twin)
        twin._outbox = other._outbox
        return twin

    def _hasty_twin(self, seconds: float) -> Client:
        """A twin that tries each request once and waits at most `seconds` for it."""
        return Client._twin_of(self, seconds, RetryPolicy(max_retries=0))

    def _discard(self) -> None:
        """Release the connection pool only (a twin's: the outbox is its original's)."""
        if self._owns_http:
            self._http.close()

    def _at_exit(self, deliver: bool) -> None:
        """The process ends without `close()` (see `_lifecycle`)."""
        deadline = time.monotonic() + self.exit_timeout
        outbox = self._outbox_to_disk(self.exit_timeout)
        if outbox is None or not deliver:
            return
        with contextlib.suppress(OutboxWriteError):
            self._report_left(self.delivery.flush(max(deadline - time.monotonic(), 0.0)))

    def _after_fork(self) -> None:
        super()._after_fork()
        self._http_stale = self._owns_http

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
