"""A small HTTP/1.1 keep-alive load generator on raw asyncio streams.

Cheap per request (no HTTP client library in the way), so on this machine one core of it
outruns one uvicorn worker: what it measures is the server, not itself.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

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
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if status >= 300:
                errors.append(status)
    finally:
        writer.close()


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


def run_load(
    url: str,
    make_request: Callable[[], bytes],
    *,
    concurrency: int = 32,
    seconds: float = 5.0,
    warmup: float = 1.0,
) -> LoadResult:
    """Hammer `url` with `concurrency` connections for `seconds` (after a warm-up)."""
    asyncio.run(_run(url, make_request, concurrency, warmup))
    return asyncio.run(_run(url, make_request, concurrency, seconds))
