"""The front door of `omnisdk-server serve` holds against a client that sends too much, too
slowly or too often: it is refused with problem+json, and everyone else is served meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from omnisdk.core.problems import ProblemType
from omnisdk.testing import ServerProcess

HUGE_HEADER_BYTES = 128 * 1024 * 1024
SLOW_CONNECTIONS = 300
OPEN_FEEDS = 200
HEALTH_PROBES = 300
P99_CEILING_SECONDS = 0.100
MEMORY_CEILING_BYTES = 100 * 1024 * 1024


def _address(server: ServerProcess) -> tuple[str, int]:
    parts = urlsplit(server.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def _exchange(server: ServerProcess, *parts: bytes, pause: float = 0.0) -> bytes:
    """Send `parts` (waiting `pause` between them), then read until the server closes."""
    reader, writer = await asyncio.open_connection(*_address(server))
    try:
        for part in parts:
            writer.write(part)
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            if pause:
                await asyncio.sleep(pause)
        return await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()


def _problem(answer: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in header_lines)
    return int(status_line.split()[1]), {k.lower(): v for k, v in headers.items()}, json.loads(body)


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    directory = tmp_path_factory.mktemp("front-door")
    env = {"OMNISDK_HEADER_TIMEOUT_SECONDS": "1", "OMNISDK_BODY_TIMEOUT_SECONDS": "1"}
    with ServerProcess(
        f"sqlite+aiosqlite:///{directory / 'db.sqlite3'}", env=env, log_path=directory / "log"
    ) as server:
        yield server


async def test_an_oversized_header_is_refused_with_431(guarded_server: ServerProcess) -> None:
    answer = await _exchange(
        guarded_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", b"a" * (1024 * 1024)
    )
    status, headers, problem = _problem(answer)
    assert status == 431
    assert problem["type"] == ProblemType.REQUEST_HEADERS_TOO_LARGE
    assert headers["connection"] == "close"


async def test_too_many_header_fields_are_refused_with_431(guarded_server: ServerProcess) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % n for n in range(150))
    answer = await _exchange(
        guarded_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n"
    )
    status, _, problem = _problem(answer)
    assert status == 431
    assert problem["type"] == ProblemType.REQUEST_HEADERS_TOO_LARGE


async def test_headers_sent_too_slowly_are_refused_with_408(guarded_server: ServerProcess) -> None:
    # One header line, then nothing: the server stops waiting (slowloris).
    answer = await _exchange(guarded_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    status, _, problem = _problem(answer)
    assert status == 408
    assert problem["type"] == ProblemType.REQUEST_TIMEOUT


async def test_a_body_sent_too_slowly_is_refused_with_408(guarded_server: ServerProcess) -> None:
    head = (
        b"POST /v1/system/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer osk_x\r\n"
        b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    answer = await _exchange(guarded_server, head + b'{"message": ')
    status, _, problem = _problem(answer)
    # The app may answer first (the key is unknown) when it reads headers before the body;
    # either way the connection does not wait for the rest of the body.
    assert status in {408, 401}
    assert problem["type"] in {ProblemType.REQUEST_TIMEOUT, ProblemType.INVALID_API_KEY}


async def test_an_idle_connection_is_closed(guarded_server: ServerProcess) -> None:
    assert await _exchange(guarded_server) == b""


def test_connections_beyond_the_cap_are_refused_with_503(tmp_path: Path) -> None:
    env = {"OMNISDK_MAX_CONNECTIONS": "3", "OMNISDK_HEADER_TIMEOUT_SECONDS": "30"}
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    with ServerProcess(url, env=env, log_path=tmp_path / "log") as server:

        async def scenario() -> bytes:
            held = [await asyncio.open_connection(*_address(server)) for _ in range(3)]
            try:
                # A round trip on each, so the server has accepted all three.
                for reader, writer in held:
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    await writer.drain()
                    assert (await reader.readuntil(b'"ok"}')).startswith(b"HTTP/1.1 200")
                return await _exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            finally:
                for _, writer in held:
                    writer.close()

        status, headers, problem = _problem(asyncio.run(scenario()))
        assert status == 503
        assert problem["type"] == ProblemType.SERVICE_UNAVAILABLE
        assert headers["retry-after"] == "1"
        # Once the others are gone, the server serves again.
        assert httpx.get(f"{server.url}/healthz").status_code == 200


# Under attack: one huge header, 300 slowloris connections and 200 open change feeds at once.


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _huge_headers(server: ServerProcess, stop: asyncio.Event) -> int:
    """Send 128 MB headers that never end, again and again; count the refusals."""
    refusals = 0
    chunk = b"a" * (1024 * 1024)
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(*_address(server))
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(HUGE_HEADER_BYTES // len(chunk)):
                writer.write(chunk)
                await writer.drain()
                if stop.is_set():
                    break
        answer = await reader.read()
        refusals += answer.startswith(b"HTTP/1.1 431")
        writer.close()
    return refusals


async def _slowloris(server: ServerProcess, stop: asyncio.Event) -> None:
    """A connection that sends one header line a second and never finishes; it reconnects
    whenever the server closes it."""
    while not stop.is_set():
        reader, writer = await asyncio.open_connection(*_address(server))
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            while not stop.is_set() and not reader.at_eof():
                writer.write(b"X-Slow: 1\r\n")
                await writer.drain()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(reader.read(1024), timeout=1.0)
        except ConnectionError:
            pass
        finally:
            writer.close()


async def _open_feeds(
    http: httpx.AsyncClient, key: str, opened: asyncio.Semaphore, stop: asyncio.Event
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("GET", "/v1/changes", headers=headers) as response:
        assert response.status_code == 200
        async for _ in response.aiter_text():
            opened.release()
            break
        await stop.wait()


def _probe_health(url: str, samples: list[float], peak: list[int], pid: int) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        for _ in range(HEALTH_PROBES):
            started = time.perf_counter()
            assert http.get("/healthz").status_code == 200
            samples.append(time.perf_counter() - started)
            peak[0] = max(peak[0], _resident_bytes(pid))
            time.sleep(0.01)


@contextlib.asynccontextmanager
async def _attack(server: ServerProcess, key: str) -> AsyncIterator[list[asyncio.Task[object]]]:
    stop = asyncio.Event()
    opened = asyncio.Semaphore(0)
    limits = httpx.Limits(max_connections=OPEN_FEEDS + 10)
    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=60) as http:
        tasks: list[asyncio.Task[object]] = [
            asyncio.create_task(_open_feeds(http, key, opened, stop)) for _ in range(OPEN_FEEDS)
        ]
        for _ in range(OPEN_FEEDS):
            await asyncio.wait_for(opened.acquire(), timeout=60)
        tasks.append(asyncio.create_task(_huge_headers(server, stop)))
        tasks += [asyncio.create_task(_slowloris(server, stop)) for _ in range(SLOW_CONNECTIONS)]
        try:
            yield tasks
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout=60)


def test_health_stays_fast_and_memory_bounded_under_attack(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite3'}"
    with ServerProcess(url, log_path=tmp_path / "log") as server:
        key = server.create_tenant("attacked").key("admin")
        for _ in range(50):  # warm up: imports, caches, the first connections
            httpx.get(f"{server.url}/healthz")
        baseline = _resident_bytes(server.pid)
        samples: list[float] = []
        peak = [baseline]

        async def scenario() -> int:
            async with _attack(server, key) as tasks:
                await asyncio.to_thread(_probe_health, server.url, samples, peak, server.pid)
                huge = tasks[OPEN_FEEDS]
            result = huge.result()
            assert isinstance(result, int)
            return result

        refusals = asyncio.run(scenario())

    samples.sort()
    p99 = samples[int(len(samples) * 0.99) - 1]
    assert refusals >= 1
    assert p99 < P99_CEILING_SECONDS, f"/healthz p99 {p99 * 1000:.1f} ms under attack"
    growth = peak[0] - baseline
    print(
        f"under attack: /healthz p99 {p99 * 1000:.1f} ms, max {samples[-1] * 1000:.1f} ms, "
        f"memory +{growth / 2**20:.1f} MB, {refusals} huge headers cut"
    )
    assert growth < MEMORY_CEILING_BYTES, f"the server grew by {growth / 2**20:.0f} MB"


async def test_a_large_body_sent_with_its_headers_at_once_is_not_taken_for_headers(
    guarded_server: ServerProcess,
) -> None:
    # Headers and a 200 kB body in one write: one read of the server holds both.
    key = guarded_server.create_tenant("big body").key("web").encode()
    body = b'{"message": "' + b"x" * 200_000 + b'"}'
    request = (
        b"POST /v1/system/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key + b"\r\n"
        b"Connection: close\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    status, _, problem = _problem(await _exchange(guarded_server, request))
    # The app read it all and judged the body: the message is over its 256 characters.
    assert status == 422
    assert problem["type"] == ProblemType.VALIDATION_ERROR


MALFORMED = {
    "a line break inside a header value": (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nIdempotency-Key: a\rb\r\n\r\n"
    ),
    "a folded header line": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "both Content-Length and Transfer-Encoding": (
        b"POST /v1/system/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
}


@pytest.mark.parametrize("request_bytes", MALFORMED.values(), ids=list(MALFORMED))
async def test_malformed_http_is_refused_with_a_problem(
    guarded_server: ServerProcess, request_bytes: bytes
) -> None:
    """uvicorn answered these in plain text ("Invalid HTTP request received.")."""
    status, headers, problem = _problem(await _exchange(guarded_server, request_bytes))
    assert (status, problem["type"]) == (400, ProblemType.MALFORMED_REQUEST)
    assert headers["content-type"] == "application/problem+json"


async def test_a_body_cut_short_by_a_bad_chunk_is_no_server_error(tmp_path: Path) -> None:
    """The app was reading the body when the parser failed on a bad chunk size: the client
    is gone, which the server logged as an unhandled error and counted as a 500."""
    log = tmp_path / "log"
    with ServerProcess(f"sqlite:///{tmp_path / 'db.sqlite3'}", log_path=log) as server:
        key = server.create_tenant().key("web")
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        ).encode()
        status, _, problem = _problem(await _exchange(server, head + b'5\r\n{"a":\r\nzz\r\n'))
        assert (status, problem["type"]) == (400, ProblemType.MALFORMED_REQUEST)
        async with httpx.AsyncClient() as http:
            for _ in range(100):  # until the app has seen its client go
                metrics = (await http.get(f"{server.url}/metrics")).text
                if 'route="/v1/events"' in metrics:
                    break
                await asyncio.sleep(0.1)
    events = [line for line in metrics.splitlines() if 'route="/v1/events"' in line]
    assert events and not any('status="5' in line for line in events), events
    assert "unhandled error" not in log.read_text()
