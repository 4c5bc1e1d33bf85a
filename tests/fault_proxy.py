"""A small HTTP proxy on 127.0.0.1 that loses answers after the server applied the request.

It forwards each request to the server unchanged and reads the whole answer; then, for the
requests its `drop` rule picks, it closes the client's connection instead of answering. The
server has done the work, the client saw nothing: the SDK must retry with the same idempotency
key (or operation ids) and the retry must not apply the work twice. Which answers are lost is
decided by a seeded random generator, so a failing run can be repeated.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit

HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
)

DropRule = Callable[[str, str], bool]  # (method, path) → lose this answer?


def writes(rate: float, seed: int = 0) -> DropRule:
    """Lose the answers of about `rate` of the writes (POST, PUT, PATCH, DELETE), seeded."""
    rng = random.Random(seed)
    lock = threading.Lock()

    def rule(method: str, _path: str) -> bool:
        with lock:
            return method != "GET" and rng.random() < rate

    return rule


def nothing(_method: str, _path: str) -> bool:
    """Lose no answer (for a proxy used only for its blackhole)."""
    return False


class FaultProxy:
    """`with FaultProxy(server_url, writes(0.3)) as proxy:` then send requests to `proxy.url`."""

    def __init__(self, upstream: str, drop: DropRule = nothing) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.drop = drop
        # Set: the network silently drops packets. Requests are taken and never answered
        # (no refusal, no reset), until the proxy closes: what a dead Wi-Fi looks like.
        self.blackhole = threading.Event()
        self._closing = threading.Event()
        self.forwarded = 0
        self.dropped = 0
        self._counts = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _count(self, dropped: bool) -> None:
        with self._counts:
            self.forwarded += 1
            self.dropped += dropped

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Forward(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if proxy.blackhole.is_set():
                    proxy._closing.wait(120)
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                upstream = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    upstream.request(self.command, self.path, body=body, headers=headers)
                    answer = upstream.getresponse()
                    content = answer.read()
                finally:
                    upstream.close()
                lose = proxy.drop(self.command, self.path)
                proxy._count(lose)
                if lose:  # the server applied it; the client never hears
                    self.close_connection = True
                    return
                self.send_response_only(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in HOP_BY_HOP and name.lower() != "content-length":
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _forward

        return Forward

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
