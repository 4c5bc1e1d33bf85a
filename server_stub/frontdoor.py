"""The front door: limits on what a connection may cost before the app sees a request.

uvicorn's httptools protocol (the fastest it has) bounds neither the size of a request's headers
nor the time a client may take to send them: one unterminated 128 MB header or a few hundred
slowloris connections stalled every other request. `GuardedHttpProtocol` is that protocol with
the limits an operator expects from a front server (nginx's `large_client_header_buffers`,
`client_header_timeout`, `client_body_timeout`): refusals are problem+json with a stable type,
then the connection closes. Counting happens on bytes already read, so a refusal costs at most
one read buffer, whatever the client sends. The per-key request budget lives in `budget.py`.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from server_stub.settings import Settings, settings_from_environment


@dataclass(frozen=True)
class FrontDoorLimits:
    """What one connection may cost; each is an `OMNISDK_` setting (docs/server.md)."""

    max_header_bytes: int
    max_header_count: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> FrontDoorLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            max_header_count=settings.max_header_count,
            header_timeout=settings.header_timeout_seconds,
            body_timeout=settings.body_timeout_seconds,
            max_connections=settings.max_connections,
        )


LINGER_SECONDS = 1.0


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the refusal is already written."""


def _raw_problem(type: ProblemType, detail: str, headers: dict[str, str] | None = None) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection (written before any ASGI app)."""
    body = json.dumps(
        {"type": type.value, "title": type.default_title, "status": type.status, "detail": detail}
    ).encode()
    lines = [
        f"HTTP/1.1 {type.status} {type.default_title}",
        f"content-type: {PROBLEM_CONTENT_TYPE}",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# What a connection is waiting for, and so which deadline applies.
_IDLE, _HEADERS, _BODY = 0, 1, 2
SWEEP_SECONDS = 0.5  # how often deadlines are looked at: each holds to within this much


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with header size and count limits, header and body read
    timeouts and a connection cap. `limits` None reads them from the environment (the
    `serve` command, whose worker processes import this class by name).

    Deadlines cost a request two clock reads: each connection notes when its current wait
    began, and one sweep per server every `SWEEP_SECONDS` closes the overdue (a timer armed
    and cancelled per request cost the no-op write several per cent)."""

    limits: ClassVar[FrontDoorLimits | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = type(self).limits or FrontDoorLimits.of(settings_from_environment())
        self._waiting = _HEADERS
        self._since = 0.0
        self._header_bytes = 0
        self._over_capacity = False
        self._lingering = False

    @classmethod
    def with_limits(cls, limits: FrontDoorLimits) -> type[GuardedHttpProtocol]:
        """The protocol for a server in this process (tests, `ReferenceServer`)."""
        return type("GuardedHttpProtocolWithLimits", (cls,), {"limits": limits})

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # Answered once its headers are read, so the client sees the refusal (closing at once
        # would reset the connection under its request).
        self._over_capacity = len(self.connections) > self._limits.max_connections
        self._since = self.loop.time()
        _Sweeper.ensure(self.loop, self.server_state)

    def data_received(self, data: bytes) -> None:
        if self.parser is None or self._lingering or self.transport.is_closing():
            return
        self._unset_keepalive_if_required()
        if self._waiting == _HEADERS:
            self._header_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()  # answered already: nothing more can be said
            else:  # problem+json like every other answer, not uvicorn's plain text
                self._refuse(
                    ProblemType.MALFORMED_REQUEST,
                    "the request is not valid HTTP/1.1 (a malformed header line, chunk size "
                    "or framing)",
                )
            return
        if self._waiting == _HEADERS and self._header_bytes > self._limits.max_header_bytes:
            self._refuse_headers()

    # Parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._waiting != _HEADERS:  # a new request on a kept-alive connection
            self._waiting = _HEADERS
            self._since = self.loop.time()

    def on_headers_complete(self) -> None:
        # The head's own size: the read that completed it may also hold (part of) the body.
        head = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        limits = self._limits
        if head > limits.max_header_bytes or len(self.headers) > limits.max_header_count:
            self._refuse_headers()
            raise _Refused
        if self._over_capacity:
            self._refuse(
                ProblemType.SERVICE_UNAVAILABLE,
                f"the server holds its limit of {limits.max_connections} connections; "
                "retry shortly",
                {"retry-after": "1"},
            )
            raise _Refused
        self._waiting = _BODY
        self._header_bytes = 0
        self._since = self.loop.time()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        self._since = self.loop.time()  # an idle limit: each chunk restarts it
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._waiting = _IDLE  # uvicorn's keep-alive timeout takes over once it answered
        super().on_message_complete()

    # Refusals and deadlines

    def overdue(self, now: float) -> None:
        """Close the connection if what it waits for is late (called by the sweep)."""
        if self._lingering or self.transport.is_closing():
            return
        limits = self._limits
        if self._waiting == _HEADERS and now - self._since > limits.header_timeout:
            if self._header_bytes == 0:
                self.transport.close()  # an idle connection: nothing to answer
            else:
                self._refuse(
                    ProblemType.REQUEST_TIMEOUT,
                    f"the request headers did not arrive within {limits.header_timeout} s",
                )
        elif self._waiting == _BODY and now - self._since > limits.body_timeout:
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()  # the app already answered: stop waiting for the body
            else:
                self._refuse(
                    ProblemType.REQUEST_TIMEOUT,
                    f"no part of the request body arrived for {limits.body_timeout} s",
                )

    def _refuse_headers(self) -> None:
        limits = self._limits
        self._refuse(
            ProblemType.REQUEST_HEADERS_TOO_LARGE,
            f"the request headers exceed {limits.max_header_bytes} bytes or "
            f"{limits.max_header_count} fields",
        )

    def _refuse(
        self, type: ProblemType, detail: str, headers: dict[str, str] | None = None
    ) -> None:
        if self.transport.is_closing() or self._lingering:
            return
        self.transport.write(_raw_problem(type, detail, headers))
        # A lingering close (nginx's `lingering_close`): closing with the client's bytes still
        # unread would reset the connection, and the client would lose the answer. So stop
        # writing, drop what still arrives for a moment, then close.
        self._lingering = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


class _Sweeper:
    """One per server (per `ServerState`): every `SWEEP_SECONDS`, each guarded connection
    looks at its deadline."""

    _running: ClassVar[dict[int, _Sweeper]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
        self.loop = loop
        self.state = state

    @classmethod
    def ensure(cls, loop: asyncio.AbstractEventLoop, state: ServerState) -> None:
        if id(state) not in cls._running:
            sweeper = cls._running[id(state)] = cls(loop, state)
            loop.call_later(SWEEP_SECONDS, sweeper.sweep)

    def sweep(self) -> None:
        if self.loop.is_closed() or not self.state.connections:
            self._running.pop(id(self.state), None)  # the next connection starts it again
            return
        now = self.loop.time()
        for connection in list(self.state.connections):
            if isinstance(connection, GuardedHttpProtocol):
                connection.overdue(now)
        self.loop.call_later(SWEEP_SECONDS, self.sweep)


# By name: `serve --workers N` hands uvicorn's settings to worker processes, which import it.
PROTOCOL_FROM_ENVIRONMENT = "server_stub.frontdoor:GuardedHttpProtocol"


def uvicorn_options(settings: Settings, *, in_process: bool = False) -> dict[str, Any]:
    """The uvicorn settings every way of serving uses (`serve`, `ReferenceServer`).

    `in_process` servers take their limits from `settings`; `serve` reads them from the
    environment in each worker, as the app does."""
    protocol: type[GuardedHttpProtocol] | str = PROTOCOL_FROM_ENVIRONMENT
    if in_process:
        protocol = GuardedHttpProtocol.with_limits(FrontDoorLimits.of(settings))
    return {
        "http": protocol,
        "timeout_keep_alive": settings.keep_alive_timeout_seconds,
        "access_log": False,
        "log_config": None,
        "server_header": False,
    }
