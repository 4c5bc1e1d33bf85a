"""A customer's change feed (Server-Sent Events): another channel's cart changes, live.

`watch` yields each change as it happens and resumes after the last one it yielded when the
connection drops (SSE `Last-Event-ID`), so a backend watching for a customer misses nothing.
Changes arrive in commit order; `id` is the change's position in the shop's feed.

If the watcher fell so far behind that the server no longer keeps the changes it missed
(`OMNISDK_CHANGE_RETENTION_SECONDS`), `watch` yields a change of kind `resync` instead: reload
what you hold of the customer (her cart, her session); the feed goes on from there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from omnisdk._async import AsyncClient
    from omnisdk._sync import Client

RECONNECT_DELAY = 1.0
RESYNC = "resync"  # the kind of the change that says: changes were missed, reload


@dataclass(frozen=True)
class Change:
    id: int
    kind: str  # "cart", "session", "consent", "content", or RESYNC
    data: dict[str, Any]


class SseParser:
    """Server-Sent Events, line by line (the WHATWG event-stream format, what we send)."""

    def __init__(self) -> None:
        self._id: str | None = None
        self._event = "message"
        self._data: list[str] = []
        # Where the stream stands: the last id received, even on a block without data (the
        # server states the starting position so), as EventSource's last event ID does.
        self.position: int | None = None

    def feed(self, line: str) -> Change | None:
        if not line:
            change = None
            if self._id is not None and self._id.isascii() and self._id.isdigit():
                self.position = int(self._id)
            if self._data and self.position is not None:
                change = Change(self.position, self._event, json.loads("\n".join(self._data)))
            self._event, self._data = "message", []
            return change
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self._id = value
        elif name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        return None


def _request(
    client: Client | AsyncClient, customer_id: str, last_id: int | None
) -> tuple[str, dict[str, str]]:
    headers = dict(client._default_headers)
    headers["Accept"] = "text/event-stream"
    if last_id is not None:
        headers["Last-Event-ID"] = str(last_id)
    return f"{client.base_url}/v1/customers/{customer_id}/changes", headers


class Changes:
    def __init__(self, client: Client) -> None:
        self._client = client

    def watch(self, customer_id: str, last_event_id: int | None = None) -> Iterator[Change]:
        """Changes of the customer's shared state from now (or after `last_event_id`), live."""
        last = last_event_id
        while True:
            url, headers = _request(self._client, customer_id, last)
            try:
                with self._client._http.stream(
                    "GET", url, headers=headers, timeout=httpx.Timeout(10, read=60)
                ) as response:
                    response.raise_for_status()
                    parser = SseParser()
                    for line in response.iter_lines():
                        change = parser.feed(line)
                        last = parser.position if parser.position is not None else last
                        if change is not None:
                            yield change
            except (httpx.TransportError, httpx.HTTPStatusError):
                time.sleep(RECONNECT_DELAY)


class AsyncChanges:
    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def watch(
        self, customer_id: str, last_event_id: int | None = None
    ) -> AsyncIterator[Change]:
        """Changes of the customer's shared state from now (or after `last_event_id`), live."""
        last = last_event_id
        while True:
            url, headers = _request(self._client, customer_id, last)
            try:
                async with self._client._http.stream(
                    "GET", url, headers=headers, timeout=httpx.Timeout(10, read=60)
                ) as response:
                    response.raise_for_status()
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        change = parser.feed(line)
                        last = parser.position if parser.position is not None else last
                        if change is not None:
                            yield change
            except (httpx.TransportError, httpx.HTTPStatusError):
                await asyncio.sleep(RECONNECT_DELAY)
