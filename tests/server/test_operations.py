"""Health, readiness, metrics and logs, as an operator sees them."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from pathlib import Path

import pytest

from omnisdk.core.problems import ProblemType
from server_stub.observability import LineWriter, flush_logs
from server_stub.services import keys
from tests.server.conftest import Harness, ShopForTest, start_harness


async def test_healthz_and_readyz_report_ok(server: Harness) -> None:
    assert (await server.http.get("/healthz")).json() == {"status": "ok"}
    ready = await server.http.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["database"] == "ok"


async def test_metrics_count_requests_by_route_template(server: Harness, shop: ShopForTest) -> None:
    await shop.request("GET", "/v1/keys/key_0123456789abcdef")
    text = (await server.http.get("/metrics")).text
    series = "omnisdk_http_request_duration_seconds_count"
    assert f'{series}{{method="GET",route="/v1/keys/{{key_id}}",status="404"}}' in text
    assert "key_0123456789abcdef" not in text


async def test_metrics_token_is_enforced_when_set(migrated_database_url: str) -> None:
    async for server in start_harness(migrated_database_url, metrics_token="scrape-me"):
        refused = await server.http.get("/metrics")
        assert refused.status_code == 401
        assert refused.json()["type"] == ProblemType.AUTHENTICATION_REQUIRED
        allowed = await server.http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert allowed.status_code == 200


async def test_logs_are_json_with_request_id_and_no_secrets(
    server: Harness, shop: ShopForTest, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    response = await shop.request(
        "POST",
        "/v1/system/ping",
        json={"message": "amy@example.com"},
        headers={"Idempotency-Key": "idem-secret-0001"},
    )
    assert response.status_code == 200
    flush_logs()  # log lines are written by a thread of their own
    logged = capsys.readouterr().err
    lines = [json.loads(line) for line in logged.splitlines() if line.startswith("{")]
    access = [entry for entry in lines if entry.get("route") == "/v1/system/ping"]
    assert access, logged
    assert access[-1]["request_id"] == response.headers["x-request-id"]
    assert access[-1]["tenant_id"] == shop.id
    parsed = keys.parse(shop.keys["admin"])
    assert parsed is not None
    # The secret half may itself contain "_" (base64url), so take it from the parser.
    for secret in (shop.keys["admin"], parsed.secret, "amy@example.com"):
        assert secret not in logged


async def test_openapi_and_docs_are_served(server: Harness) -> None:
    spec = (await server.http.get("/openapi.json")).json()
    assert "/v1/system/ping" in spec["paths"]
    docs = await server.http.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


def test_log_lines_reach_stderr_without_a_flush_and_none_is_lost(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The writer thread is woken once per batch, not per line: every line still gets out."""
    written = io.StringIO()
    monkeypatch.setattr(sys, "stderr", written)
    writer = LineWriter()
    for n in range(2_000):
        writer.write(f"line {n}")
    deadline = time.monotonic() + 10
    while written.getvalue().count("\n") < 2_000 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert written.getvalue().splitlines() == [f"line {n}" for n in range(2_000)]


def test_a_forked_child_writes_its_own_lines_and_not_its_parents(tmp_path: Path) -> None:
    writer = LineWriter()
    stderr = sys.stderr
    parent_out = io.StringIO()
    sys.stderr = parent_out
    try:
        writer.write("parent line")
        child_file = tmp_path / "child.log"
        pid = os.fork()
        if pid == 0:  # the child: its lines go to its own file, through a new thread
            with open(child_file, "w") as out:
                sys.stderr = out
                writer.write("child line")
                deadline = time.monotonic() + 10
                while writer._lines and time.monotonic() < deadline:
                    time.sleep(0.01)
                writer.flush()
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
        writer.flush()
    finally:
        sys.stderr = stderr
    assert child_file.read_text().splitlines() == ["child line"]
    assert parent_out.getvalue().splitlines() == ["parent line"]
