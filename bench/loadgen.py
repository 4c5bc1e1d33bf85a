"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

Cheap per request (no HTTP client library in the way), so on this machine one core of it
outruns one uvicorn worker: what it measures is the server, not itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

# A request that has no answer after this long is a hung server, not a slow one.
EXCHANGE_TIMEOUT = 120.0


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    # CPU seconds the server process (all its threads) spent while these requests ran.
    server_cpu: float | None = None

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request(self) -> float:
        """Server CPU seconds per request served: unlike throughput, it does not depend on
        how much of the shared machine the server got during the run."""
        if self.server_cpu is None:
            raise ValueError("the server's CPU time was not measured (pass server_pid)")
        return self.server_cpu / self.requests

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    @property
    def median(self) -> float:
        return statistics.median(self.latencies)


def http_request(
    method: str, path: str, headers: dict[str, str], body: bytes = b"", host: str = "127.0.0.1"
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _worker(
    host: str,
    port: int,
    make_request: Callable[[], bytes],
    deadline: float,
    latencies: list[float],
    errors: list[int],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < deadline:
            request = make_request()
            started = time.perf_counter()
            status = await _exchange(reader, writer, request)
            latencies.append(time.perf_counter() - started)
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    """Send one request on a keep-alive connection and read its whole answer: its status.
    Only answers with a Content-Length are read (what the server sends to every request here):
    any other would leave its body in the stream, so it raises."""
    async with asyncio.timeout(EXCHANGE_TIMEOUT):
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length is None and status not in (204, 304):
            raise RuntimeError(f"an answer without Content-Length ({status}): cannot be read")
        if length:
            await reader.readexactly(length)
    return status


async def send_all(urls: list[str], requests: Iterable[bytes], concurrency: int) -> float:
    """Seconds for `concurrency` connections, spread over `urls`, to send every one of
    `requests` (each whole, from `http_request`) and read its answer; any status of 300 or
    more raises."""
    remaining = iter(requests)

    async def client(url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            for request in remaining:
                status = await _exchange(reader, writer, request)
                if status >= 300:
                    raise RuntimeError(f"{request.split(b' ', 2)[1].decode()}: {status}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(client(urls[n % len(urls)]) for n in range(concurrency)))
    return time.perf_counter() - started


async def _run(
    url: str, make_request: Callable[[], bytes], concurrency: int, seconds: float
) -> LoadResult:
    host, port = url.removeprefix("http://").split(":")
    latencies: list[float] = []
    errors: list[int] = []
    started = time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(
        *(
            _worker(host, int(port), make_request, deadline, latencies, errors)
            for _ in range(concurrency)
        )
    )
    elapsed = time.perf_counter() - started
    return LoadResult(len(latencies), len(errors), elapsed, latencies)


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` and all its threads (Linux /proc)."""
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(
    url: str,
    make_request: Callable[[], bytes],
    *,
    concurrency: int = 32,
    seconds: float = 5.0,
    warmup: float = 1.0,
    server_pid: int | None = None,
) -> LoadResult:
    """Hammer `url` with `concurrency` connections for `seconds` (after a warm-up); with
    `server_pid`, also the server process's CPU time over the measured part."""
    asyncio.run(_run(url, make_request, concurrency, warmup))
    if server_pid is None:
        return asyncio.run(_run(url, make_request, concurrency, seconds))
    cpu_before = process_cpu_seconds(server_pid)
    result = asyncio.run(_run(url, make_request, concurrency, seconds))
    server_cpu = process_cpu_seconds(server_pid) - cpu_before
    return dataclasses.replace(result, server_cpu=server_cpu)
