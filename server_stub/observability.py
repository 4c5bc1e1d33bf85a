"""Request ids, structured JSON logs and Prometheus metrics, as one pure ASGI middleware.

Logs carry the request id, route template, status and timing, the tenant and the key's public
id — never headers, bodies, query strings, raw paths (they may hold identifiers) or secrets.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
from collections import deque
from contextvars import ContextVar
from random import getrandbits
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_request_id: ContextVar[str | None] = ContextVar("omnisdk_request_id", default=None)
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{8,64}$")
REQUEST_ID_HEADER = b"x-request-id"


def current_request_id() -> str | None:
    return _request_id.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with the current request id."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            entry["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in self._STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            entry["error_type"] = record.exc_info[0].__name__
        return json.dumps(entry, default=str)


def configure_logging(level: str) -> None:
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("omnisdk", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.setLevel(level.upper())
        logger.propagate = False


class Metrics:
    """The server's Prometheus metrics, in a registry of the app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # One histogram: its `_count` series are the request counts by route and status.
        self.duration = Histogram(
            "omnisdk_http_request_duration_seconds",
            "Time to answer a request, by route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.idempotent_replays = Counter(
            "omnisdk_idempotent_replays",
            "Requests answered from a stored idempotent outcome.",
            registry=self.registry,
        )
        self.alert_messages = Counter(
            "omnisdk_alert_messages",
            "Stock alert messages this process decided, by kind and outcome: sent, "
            "delivery_failed, skipped:<reason>, delayed:<reason>.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        # Labelled children, looked up once per label set rather than on every request.
        self._timed: dict[tuple[str, str, int], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        timed = self._timed.get((method, route, status))
        if timed is None:
            timed = self._timed[method, route, status] = self.duration.labels(
                method, route, str(status)
            )
        timed.observe(seconds)


class LineWriter:
    """Lines for stderr, written by a thread of its own.

    A write to stderr blocks while the pipe behind it is full — a log shipper or terminal
    reading slowly — and on the event loop's thread that would stop every request. Lines wait
    here instead (appending is all the loop does) and the thread writes them in batches. At
    most `MAX_PENDING` lines wait; beyond that, lines are dropped and the next batch says how
    many were.
    """

    MAX_PENDING = 10_000
    # After a wake-up the thread waits this long for more lines, then writes them in one
    # batch: one wake-up and one write per batch rather than per request.
    GATHER_SECONDS = 0.01

    def __init__(self) -> None:
        self._lines: deque[str] = deque()
        self._wake = threading.Event()
        self._flushing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._dropped = 0
        os.register_at_fork(after_in_child=self._forget_parent)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's thread is not here and its lines are its own."""
        self._thread = None
        self._lines.clear()
        self._wake.clear()

    def write(self, line: str) -> None:
        if len(self._lines) >= self.MAX_PENDING:
            self._dropped += 1
            return
        lines = self._lines
        lines.append(line)
        if len(lines) > 1 and self._thread is not None:
            return  # the thread was woken by the first waiting line and will take this one too
        if self._thread is None or not self._thread.is_alive():  # first line, or after fork
            self._thread = threading.Thread(target=self._run, name="omnisdk-log", daemon=True)
            self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.GATHER_SECONDS)
            # Cleared before the lines are taken: a line appended from here on either is taken
            # by this flush or finds the deque empty again and sets the event.
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write every waiting line now (at shutdown, and for tests that read the log)."""
        with self._flushing:
            batch: list[str] = []
            while self._lines:
                batch.append(self._lines.popleft())
            if self._dropped:
                dropped, self._dropped = self._dropped, 0
                note = {"level": "warning", "logger": "omnisdk.server", "dropped_lines": dropped}
                batch.append(json.dumps({**note, "message": "log lines dropped: stderr too slow"}))
            if batch:
                stream = sys.stderr
                try:
                    stream.write("\n".join(batch) + "\n")
                    stream.flush()
                except (OSError, ValueError):  # stderr closed or gone: nowhere left to write
                    self._dropped += len(batch)


LINES = LineWriter()
atexit.register(LINES.flush)


def flush_logs() -> None:
    LINES.flush()


class _StderrHandler(logging.Handler):
    """Hands each formatted line to `LINES`, which writes it to whatever `sys.stderr` is at
    the time (test runners swap it), never on the caller's thread."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            LINES.write(self.format(record))
        except Exception:
            self.handleError(record)


class AccessLog:
    """One JSON line per request, in the same shape as `JsonFormatter`'s, written directly:
    the logging module's record machinery would cost more than the rest of a request. The
    line goes out through `LINES`, never written on the event loop's thread."""

    def __init__(self) -> None:
        self.logger = logging.getLogger("omnisdk.server.access")
        self._second = -1
        self._stamp = ""

    def write(self, entry: dict[str, Any]) -> None:
        if not self.logger.isEnabledFor(logging.INFO):
            return
        now = int(time.time())
        if now != self._second:
            self._second, self._stamp = (
                now,
                time.strftime("%Y-%m-%dT%H:%M:%S+0000", time.gmtime(now)),
            )
        line = {"time": self._stamp, "level": "info", "logger": self.logger.name, **entry}
        LINES.write(orjson.dumps(line).decode())


class RequestContext:
    """Assigns the request id, times the request, logs it and counts it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = AccessLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_request_id(scope) or f"{getrandbits(128):032x}"
        token = _request_id.set(request_id)
        started = time.perf_counter()
        status = 500
        header = (REQUEST_ID_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope)
            method = scope["method"]
            self.metrics.observe(method, route, status, elapsed)
            principal = (scope.get("state") or {}).get("principal")
            self.access_log.write(
                {
                    "message": "request",
                    "request_id": request_id,
                    "method": method,
                    "route": route,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "tenant_id": getattr(principal, "tenant_id", None),
                    "key_id": getattr(principal, "key_id", None),
                }
            )
            _request_id.reset(token)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            candidate = value.decode("latin-1")
            return candidate if _VALID_REQUEST_ID.match(candidate) else None
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths are not logged as sent: they may contain anything.
    return path if isinstance(path, str) else "<unmatched>"
