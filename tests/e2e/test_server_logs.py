"""The server's logs never stop it: a stderr pipe nobody reads does not block requests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from omnisdk.testing import free_port

REQUESTS = 2_000  # about 400 KB of access log: six times what a pipe holds unread


def test_a_stderr_pipe_nobody_reads_does_not_stop_the_server(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OMNISDK_DATABASE_URL": f"sqlite:///{tmp_path / 'logs.sqlite3'}"}
    command = [sys.executable, "-m", "server_stub.cli", "serve", "--port", str(port)]
    # stderr is a pipe this test never reads until the end, as a stalled log shipper would be.
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the server did not start"
                    time.sleep(0.05)
            # Each request would have waited for the pipe, and the loop with it, once full.
            answered = sum(http.get("/healthz").status_code == 200 for _ in range(REQUESTS))
        assert answered == REQUESTS
    finally:
        server.terminate()
        _, logged = server.communicate(timeout=30)
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith(b"{")]
    # Lines waiting beyond the bound are dropped and counted, never lost silently.
    served = sum(1 for line in lines if line.get("route") == "/healthz")
    dropped = sum(line.get("dropped_lines", 0) for line in lines)
    assert served + dropped >= REQUESTS
