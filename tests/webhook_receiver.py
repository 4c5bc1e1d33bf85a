"""A real HTTP receiver of the server's webhooks on 127.0.0.1, as a shop would run one.

It verifies every request with the `standardwebhooks` library (the shop's side of the
specification), keeps what it received, and can be told to fail the next answers (to test
retries and dead letters), or to trickle its answers a byte at a time (a receiver that never
stops answering, and never pauses long enough for a read timeout). Receivers drop a redelivered
message by its `webhook-id`: `unique` counts messages, `requests` counts deliveries.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


class WebhookReceiver:
    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.lock = threading.Lock()
        self.requests: list[dict[str, Any]] = []
        self.by_id: dict[str, dict[str, Any]] = {}
        self.refused = 0
        self.fail_next = 0  # answer this many requests with 503
        self.trickle_seconds = 0.0  # if set, the pause before each byte of every answer
        self.received = threading.Condition(self.lock)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                status = receiver.take(body, dict(self.headers.items()))
                if receiver.trickle_seconds:
                    self.trickle(status, receiver.trickle_seconds)
                    return
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def trickle(self, status: int, pause: float) -> None:
                answer = f"HTTP/1.1 {status} Trickled\r\ncontent-length: 0\r\n\r\n".encode()
                self.close_connection = True
                try:
                    for byte in answer:
                        time.sleep(pause)
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up

            def log_message(self, *_: Any) -> None:
                pass

        return Handler

    def take(self, body: bytes, headers: dict[str, str]) -> int:
        with self.lock:
            if self.fail_next > 0:
                self.fail_next -= 1
                return 503
            if self.secret is None:
                return 500
            try:
                payload = Webhook(self.secret).verify(body, headers)
            except WebhookVerificationError:
                self.refused += 1
                return 400
            lowered = {k.lower(): v for k, v in headers.items()}
            entry = {"id": lowered["webhook-id"], "payload": payload, "headers": lowered}
            self.requests.append(entry)
            self.by_id.setdefault(entry["id"], entry)
            self.received.notify_all()
            return 204

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until `count` distinct messages arrived (a condition, not a timed sleep)."""
        with self.received:
            return self.received.wait_for(lambda: len(self.by_id) >= count, timeout)

    @property
    def unique(self) -> list[dict[str, Any]]:
        with self.lock:
            return [entry["payload"] for entry in self.by_id.values()]

    def __enter__(self) -> WebhookReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
