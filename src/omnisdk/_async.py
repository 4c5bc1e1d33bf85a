"""`AsyncClient`: the asyncio shell over httpx.AsyncClient that drives the shared call flow."""

from __future__ import annotations

import asyncio
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
    Sleep,
    connection_error,
)
from omnisdk._delivery import AsyncDelivery
from omnisdk._sync import Client
from omnisdk.errors import ClientClosedError, ConfigurationError, OutboxWriteError
from omnisdk.resources.alerts import Alerts
from omnisdk.resources.carts import Carts
from omnisdk.resources.changes import AsyncChanges
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


class AsyncClient(BaseClient):
    """The omnisdk client for asyncio code (FastAPI, aiohttp, Starlette backends).

    >>> async with omnisdk.AsyncClient(url, api_key="osk_...", channel="app") as client:
    ...     principal = await client.system.whoami()

    It has every operation of `Client`, with the same names, parameters and results, as
    coroutines. Its options are those of `BaseClient`; `http_client` is an
    `httpx.AsyncClient`. Use it as an async context manager, or `await client.close()`.
    """

    is_async = True
    system: System[AsyncClient]
    keys: Keys[AsyncClient]
    identity: Identity[AsyncClient]
    returns: Returns[AsyncClient]
    carts: Carts[AsyncClient]
    changes: AsyncChanges
    sessions: Sessions[AsyncClient]
    tenant: Tenant[AsyncClient]
    events: Events[AsyncClient]
    consent: Consent[AsyncClient]
    privacy: Privacy[AsyncClient]
    segments: Segments[AsyncClient]
    content: Content[AsyncClient]
    orders: Orders[AsyncClient]
    inventory: Inventory[AsyncClient]
    alerts: Alerts[AsyncClient]

    def _setup(self, http_client: Any) -> None:
        if http_client is not None and not isinstance(http_client, httpx.AsyncClient):
            raise ConfigurationError("http_client of an AsyncClient is an httpx.AsyncClient")
        self._owns_http = http_client is None
        self._http: httpx.AsyncClient = http_client or httpx.AsyncClient(timeout=self.timeout)
        self._http_stale = False  # set in a forked child: the pool's sockets are the parent's
        self._delivery: AsyncDelivery | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop its connections are of
        self.system = System(self)
        self.keys = Keys(self)
        self.identity = Identity(self)
        self.returns = Returns(
            self, TillState(self.data_dir, self.offline_cap, lambda: self.outbox)
        )
        self.carts = Carts(self)
        self.changes = AsyncChanges(self)
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

    async def execute(self, call: Call[T]) -> T:
        """Run one call with retries; raise the typed error if it finally fails."""
        flow = self.flow(call)
        step = next(flow)
        try:
            while True:
                if isinstance(step, Sleep):
                    await asyncio.sleep(step.seconds)
                    step = flow.send(None)
                else:
                    step = flow.send(await self._send(step))
        except StopIteration as done:
            result: T = done.value
            return result

    def _on_this_loop(self) -> None:
        """The client's connections and courier task belong to the event loop that first
        used them. Once that loop has ended (or stopped running) they move to the running one;
        while it still runs, in another thread, this loop must have a client of its own."""
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        first = self._loop
        if first is not None and first.is_running() and not first.is_closed():
            raise ClientClosedError(
                "this AsyncClient serves an event loop still running in another thread: make "
                "one AsyncClient per event loop"
            )
        if first is not None:
            self._http_stale = self._owns_http  # its sockets belong to the loop that ended
            if self._delivery is not None:
                self._delivery.release()  # its task ended with its loop; a new one starts here
                self._delivery = None
        self._loop = loop

    async def _send(self, request: PreparedRequest) -> Outcome:
        self._on_this_loop()
        if self._http_stale:
            self._http = httpx.AsyncClient(timeout=self.timeout)
            self._http_stale = False
        try:
            response = await self._http.request(
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
    def delivery(self) -> AsyncDelivery:
        """The background courier of the outbox (started on the first deferred write)."""
        with contextlib.suppress(RuntimeError):  # no running loop: the exit hook's twin asks
            self._on_this_loop()
        if self._delivery is None:
            with self._lazy:
                if self._delivery is None:
                    self._delivery = AsyncDelivery(self, self.outbox)
        return self._delivery

    async def close(self) -> None:
        """Deliver what the outbox holds (up to `close_timeout`; the rest stays on disk), then
        release the connection pool. Raises OutboxWriteError if tracked items could not be
        written to disk (after everything else is closed). Cut short (interrupted, or the async
        close cancelled by a deadline), it still stops its courier and closes: what is left
        stays on disk for the next client on that data_dir."""
        self._on_this_loop()
        self._closed = True
        _lifecycle.unregister(self)
        try:
            if self._delivery is not None:
                await self._delivery.close(self.close_timeout)
        finally:
            if self._delivery is not None:
                self._delivery.stop()  # cut short mid-flush, the task would run on, closed
            await asyncio.to_thread(self._close_caches)
            if self._owns_http and not self._http_stale:  # a stale one's loop took its sockets
                await self._http.aclose()
            if self._outbox is not None:  # last: its error, if any, after everything else closed
                await asyncio.to_thread(self._outbox.close)

    async def aclose(self) -> None:
        """The same as `close()`, under the name httpx and asyncio code use."""
        await self.close()

    def _at_exit(self, deliver: bool) -> None:
        """The process ends without `close()`: its event loop is gone, so a blocking twin of
        this client (same server, key and outbox) delivers within `exit_timeout`."""
        deadline = time.monotonic() + self.exit_timeout
        outbox = self._outbox_to_disk(self.exit_timeout)
        if outbox is None or not deliver:
            return
        if self._delivery is not None:
            self._delivery.release()  # the task that held the lease ended with its loop
        twin = Client._twin_of(self, self.timeout, self.retry_policy)
        try:
            with contextlib.suppress(OutboxWriteError):
                self._report_left(twin.delivery.flush(max(deadline - time.monotonic(), 0.0)))
        finally:
            twin.delivery.close(0)
            twin._discard()

    def _after_fork(self) -> None:
        super()._after_fork()
        self._http_stale = self._owns_http
        self._delivery = None  # the parent's task, lease holder id and events stay behind

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
