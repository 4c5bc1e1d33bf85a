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
from omnisdk.errors import OutboxWriteError
from omnisdk.resources.carts import AsyncCarts
from omnisdk.resources.changes import AsyncChanges
from omnisdk.resources.consent import AsyncConsent
from omnisdk.resources.content import AsyncContent
from omnisdk.resources.events import AsyncEvents
from omnisdk.resources.identity import AsyncIdentity
from omnisdk.resources.keys import AsyncKeys
from omnisdk.resources.privacy import AsyncPrivacy
from omnisdk.resources.returns import AsyncReturns, TillState
from omnisdk.resources.sessions import AsyncSessions
from omnisdk.resources.system import AsyncSystem
from omnisdk.resources.tenant import AsyncTenant

T = TypeVar("T")


class AsyncClient(BaseClient):
    """The omnisdk client for asyncio code (FastAPI, aiohttp, Starlette backends).

    >>> async with omnisdk.AsyncClient(url, api_key="osk_...", channel="app") as client:
    ...     principal = await client.system.whoami()
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http_client: httpx.AsyncClient | None = None,
        close_timeout: float = 10.0,
        **options: Any,
    ) -> None:
        super().__init__(base_url, api_key, **options)
        self._owns_http = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout)
        self._http_stale = False  # set in a forked child: the pool's sockets are the parent's
        self.close_timeout = close_timeout
        self._delivery: AsyncDelivery | None = None
        self.system = AsyncSystem(self)
        self.keys = AsyncKeys(self)
        self.identity = AsyncIdentity(self)
        self.returns = AsyncReturns(
            self, TillState(self.data_dir, self.offline_cap, lambda: self.outbox)
        )
        self.carts = AsyncCarts(self)
        self.changes = AsyncChanges(self)
        self.sessions = AsyncSessions(self)
        self.tenant = AsyncTenant(self)
        self.events = AsyncEvents(self)
        self.consent = AsyncConsent(self)
        self.privacy = AsyncPrivacy(self)
        self.content = AsyncContent(self)
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

    async def _send(self, request: PreparedRequest) -> Outcome:
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
        if self._delivery is None:
            self._delivery = AsyncDelivery(self, self.outbox)
        return self._delivery

    async def aclose(self) -> None:
        """Deliver what the outbox holds (up to `close_timeout`; the rest stays on disk), then
        release the connection pool. Raises OutboxWriteError if tracked items could not be
        written to disk (after everything else is closed)."""
        _lifecycle.unregister(self)
        try:
            if self._delivery is not None:
                await self._delivery.close(self.close_timeout)
        finally:
            await asyncio.to_thread(self._close_caches)
            if self._owns_http:
                await self._http.aclose()
            if self._outbox is not None:  # last: its error, if any, after everything else closed
                await asyncio.to_thread(self._outbox.close)

    def _at_exit(self, deliver: bool) -> None:
        """The process ends without `aclose()`: its event loop is gone, so a blocking twin of
        this client (same server, key and outbox) delivers within `exit_timeout`."""
        deadline = time.monotonic() + self.exit_timeout
        outbox = self._outbox_to_disk(self.exit_timeout)
        if outbox is None or not deliver:
            return
        if self._delivery is not None:
            self._delivery.release()  # the task that held the lease ended with its loop
        twin = Client.twin_of(self, self.timeout, self.retry_policy)
        try:
            with contextlib.suppress(OutboxWriteError):
                self._report_left(twin.delivery.flush(max(deadline - time.monotonic(), 0.0)))
        finally:
            twin.delivery.close(0)
            twin.discard()

    def _after_fork(self) -> None:
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
        await self.aclose()
