"""A customer's change feed (Server-Sent Events): another channel's cart changes, live.

    with client.changes.watch(amy, timeout=30) as feed:
        feed.connected.wait(5)          # from here on, nothing that changes is missed
        for change in feed:             # ends when `timeout` passes or `feed.close()` is called
            if isinstance(change.data, CartChange):
                print(change.data.version, [line.sku for line in change.data.lines])

`watch` yields each change as it happens and resumes after the last one it yielded when the
connection drops (SSE `Last-Event-ID`), so a backend watching for a customer misses nothing.
Changes arrive in commit order; `id` is the change's position in the shop's feed. A refusal
that retrying cannot cure (401 a bad key, 403 a key without the scope, 404 a customer the shop
does not have) is raised as its typed error instead of being retried.

If the watcher fell so far behind that the server no longer keeps the changes it missed
(`OMNISDK_CHANGE_RETENTION_SECONDS`), `watch` yields a change of kind `resync`
(`ResyncChange`) instead: reload what you hold of the customer (her cart, her session); the
feed goes on from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

import httpx

from omnisdk._base import Answer, read_answer
from omnisdk._sse import RESYNC, Change, ChangeData, OtherChange, SseParser
from omnisdk.errors import APIError, RateLimitedError, ServerError
from omnisdk.resources._resource import checked_customer_id

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client

RECONNECT_DELAY = 1.0
READ_TIMEOUT = 60.0  # the server sends a keep-alive every 15 s: a silent minute is a dead link


CONNECTED_LINE = ": watching"  # the server's first line, once it listens for the customer


class _FeedState:
    """What both watchers share, with no I/O: where the feed stands, when it ends, the
    request to (re)connect with, and what to make of a refusal."""

    def __init__(
        self,
        client: Client | AsyncClient,
        customer_id: str,
        last_event_id: int | None,
        timeout: float | None,
    ) -> None:
        customer = checked_customer_id(customer_id)
        self.url = f"{client.base_url}/v1/customers/{customer}/changes"
        self.headers = dict(client._default_headers)
        self.headers["Accept"] = "text/event-stream"
        self.last_event_id = last_event_id
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.closed = False

    def request_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        return headers

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def over(self) -> bool:
        left = self.remaining()
        return self.closed or (left is not None and left <= 0)

    def http_timeout(self) -> httpx.Timeout:
        left = self.remaining()
        read = READ_TIMEOUT if left is None else max(min(READ_TIMEOUT, left), 0.01)
        return httpx.Timeout(10, read=read)

    def pause(self) -> float:
        """How long to wait before reconnecting (never past the deadline)."""
        left = self.remaining()
        return RECONNECT_DELAY if left is None else max(min(RECONNECT_DELAY, left), 0.0)

    def refusal(self, status: int, headers: httpx.Headers, body: bytes) -> APIError | None:
        """The error to raise for a refusal that retrying cannot cure; None to reconnect."""
        try:
            read_answer(Answer(status, headers, body))
        except (ServerError, RateLimitedError):
            return None  # the server is busy or failing: reconnect after a pause
        except APIError as error:
            return error
        return None

    def take(self, parser: SseParser, line: str) -> Change | None:
        change = parser.feed(line)
        if parser.position is not None:
            self.last_event_id = parser.position
        return change


class Watch:
    """A live watch of one customer's changes (from `Client.changes.watch`): iterate it for
    changes; use it as a context manager, or call `close()` (from any thread) to stop it.
    `connected` is set once the server listens: changes made from then on are not missed."""

    def __init__(
        self, client: Client, customer_id: str, last_event_id: int | None, timeout: float | None
    ) -> None:
        self._client = client
        self._state = _FeedState(client, customer_id, last_event_id, timeout)
        self.connected = threading.Event()
        self._response: httpx.Response | None = None
        self._changes: Iterator[Change] | None = None

    @property
    def last_event_id(self) -> int | None:
        """The position the watch stands at (resume a later watch from it)."""
        return self._state.last_event_id

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> Change:
        if self._changes is None:
            self._changes = self._follow_all()
        return next(self._changes)

    def _follow_all(self) -> Iterator[Change]:
        state = self._state
        while not state.over():
            try:
                with self._client._http.stream(
                    "GET", state.url, headers=state.request_headers(), timeout=state.http_timeout()
                ) as response:
                    if response.status_code != 200:
                        refusal = state.refusal(
                            response.status_code, response.headers, response.read()
                        )
                        if refusal is not None:
                            raise refusal
                    else:
                        self._response = response
                        yield from self._follow(response)
            except httpx.HTTPError:
                if state.closed:
                    break
            finally:
                self._response = None
                self.connected.clear()
            if not state.over():
                time.sleep(state.pause())

    def _follow(self, response: httpx.Response) -> Iterator[Change]:
        parser = SseParser()
        for line in response.iter_lines():
            if line.startswith(CONNECTED_LINE):
                self.connected.set()
            change = self._state.take(parser, line)
            if change is not None:
                yield change
            if self._state.over():
                return

    def close(self) -> None:
        """Stop the watch: an iteration in progress ends (from any thread)."""
        self._state.closed = True
        response = self._response
        if response is not None:
            _wake_reader(response)
            response.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _wake_reader(response: httpx.Response) -> None:
    """Shut the connection's socket down, so a thread blocked reading it wakes now (closing
    the response alone does not interrupt a read in progress)."""
    stream = response.extensions.get("network_stream")
    sock = stream.get_extra_info("socket") if stream is not None else None
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


class AsyncWatch:
    """A live watch of one customer's changes (from `AsyncClient.changes.watch`): iterate it
    with `async for`; use it with `async with`, or call `close()`. `connected` (an
    `asyncio.Event`) is set once the server listens."""

    def __init__(
        self,
        client: AsyncClient,
        customer_id: str,
        last_event_id: int | None,
        timeout: float | None,
    ) -> None:
        self._client = client
        self._state = _FeedState(client, customer_id, last_event_id, timeout)
        self.connected = asyncio.Event()
        self._response: httpx.Response | None = None
        self._changes: AsyncIterator[Change] | None = None

    @property
    def last_event_id(self) -> int | None:
        """The position the watch stands at (resume a later watch from it)."""
        return self._state.last_event_id

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> Change:
        if self._changes is None:
            self._changes = self._follow_all()
        return await anext(self._changes)

    async def _follow_all(self) -> AsyncIterator[Change]:
        state = self._state
        while not state.over():
            try:
                async with self._client._http.stream(
                    "GET", state.url, headers=state.request_headers(), timeout=state.http_timeout()
                ) as response:
                    if response.status_code != 200:
                        refusal = state.refusal(
                            response.status_code, response.headers, await response.aread()
                        )
                        if refusal is not None:
                            raise refusal
                    else:
                        self._response = response
                        async for change in self._follow(response):
                            yield change
            except httpx.HTTPError:
                if state.closed:
                    break
            finally:
                self._response = None
                self.connected.clear()
            if not state.over():
                await asyncio.sleep(state.pause())

    async def _follow(self, response: httpx.Response) -> AsyncIterator[Change]:
        parser = SseParser()
        async for line in response.aiter_lines():
            if line.startswith(CONNECTED_LINE):
                self.connected.set()
            change = self._state.take(parser, line)
            if change is not None:
                yield change
            if self._state.over():
                return

    async def close(self) -> None:
        """Stop the watch: an iteration in progress ends."""
        self._state.closed = True
        response = self._response
        if response is not None:
            await response.aclose()
        changes = self._changes
        if changes is not None and hasattr(changes, "aclose"):
            # Finish the stream's generator here, not later in the garbage collector; one
            # another task is iterating right now ends by itself (its response is closed).
            with contextlib.suppress(RuntimeError):
                await changes.aclose()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


class Changes:
    """The change feed of `Client` (a stream, so not an `@operation`: `Watch` and `AsyncWatch`
    share their logic in `_FeedState`)."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def watch(
        self, customer_id: str, last_event_id: int | None = None, *, timeout: float | None = None
    ) -> Watch:
        """Watch the customer's shared state (cart, session, consent) from now, or from after
        `last_event_id`; the watch ends after `timeout` seconds (None: when closed)."""
        return Watch(self._client, customer_id, last_event_id, timeout)


class AsyncChanges:
    """The change feed of `AsyncClient` (see `Changes`)."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    def watch(
        self, customer_id: str, last_event_id: int | None = None, *, timeout: float | None = None
    ) -> AsyncWatch:
        """Watch the customer's shared state (cart, session, consent) from now, or from after
        `last_event_id`; the watch ends after `timeout` seconds (None: when closed)."""
        return AsyncWatch(self._client, customer_id, last_event_id, timeout)


__all__ = [
    "RESYNC",
    "AsyncChanges",
    "AsyncWatch",
    "Change",
    "ChangeData",
    "Changes",
    "OtherChange",
    "SseParser",
    "Watch",
]
