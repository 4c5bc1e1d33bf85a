"""An authenticated no-op write through the whole server stack vs a bare FastAPI endpoint.

Both run as one uvicorn worker with the same settings; the same load generator drives both
with 32 keep-alive connections. The ceiling is measured before and after ours, and the lower
of its two figures is not used: we compare against the better one.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.loadgen import LoadResult, http_request, run_load
from bench.report import Figure, load_average
from omnisdk.testing import ServerProcess, free_port

BODY = b'{"message":"ping","sequence":1}'
SECONDS = 5.0
CONCURRENCY = 32


def _bare_server() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.peers.bare_fastapi", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            httpx.post(f"{url}/v1/system/ping", content=BODY, timeout=1)
            return process, url
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError("the bare FastAPI server did not start")


def _load(
    url: str, headers: dict[str, str], pid: int, unique_idempotency_key: bool = False
) -> LoadResult:
    base = {"Content-Type": "application/json", **headers}
    if not unique_idempotency_key:
        request = http_request("POST", "/v1/system/ping", base, BODY)
        return run_load(
            url, lambda: request, concurrency=CONCURRENCY, seconds=SECONDS, server_pid=pid
        )
    counter = itertools.count()

    def make() -> bytes:
        return http_request(
            "POST", "/v1/system/ping", {**base, "Idempotency-Key": f"bench-{next(counter)}"}, BODY
        )

    return run_load(url, make, concurrency=CONCURRENCY, seconds=SECONDS, server_pid=pid)


def _ceiling() -> LoadResult:
    process, url = _bare_server()
    try:
        return _load(url, {}, process.pid)
    finally:
        process.terminate()
        process.wait()


ROUNDS = 3
# The per-key budget is still spent on every request (its cost is measured), but set beyond
# what one process can serve: the benchmark drives one key as fast as it can.
UNLIMITED_BUDGET = {
    "OMNISDK_RATE_LIMIT_PER_SECOND": "10000000",
    "OMNISDK_RATE_LIMIT_BURST": "10000000",
}


def run() -> list[Figure]:
    # Alternating rounds, the best of each side: a busy moment of the machine counts for
    # neither.
    ceilings, ours = [], []
    with tempfile.TemporaryDirectory() as directory:
        database = f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}"
        for _ in range(ROUNDS):
            ceilings.append(_ceiling())
            with ServerProcess(database, env=UNLIMITED_BUDGET) as server:
                key = server.create_tenant("bench").key("web")
                auth = {"Authorization": f"Bearer {key}"}
                ours.append(_load(server.url, auth, server.pid))
        with ServerProcess(database, env=UNLIMITED_BUDGET) as server:
            key = server.create_tenant("bench").key("web")
            keyed = _load(
                server.url,
                {"Authorization": f"Bearer {key}"},
                server.pid,
                unique_idempotency_key=True,
            )
    ceiling = max(ceilings, key=lambda r: r.per_second)
    plain = max(ours, key=lambda r: r.per_second)
    for result in (plain, keyed, ceiling):
        if result.errors:
            raise RuntimeError(f"{result.errors} requests failed during the benchmark")
    # Server CPU per request does not depend on how much of the shared machine each side got
    # in its round, so it compares the two stacks' work even when throughput is noisy.
    cpu_ours = min(r.cpu_per_request for r in ours)
    cpu_ceiling = min(r.cpu_per_request for r in ceilings)
    p99 = f"p99 {plain.percentile(99) * 1000:.1f} ms vs {ceiling.percentile(99) * 1000:.1f} ms"
    return [
        Figure(
            name="authenticated no-op write (POST /v1/system/ping), SQLite, 1 worker",
            ours=plain.per_second,
            peer=ceiling.per_second,
            peer_name="bare FastAPI, same pydantic body",
            unit="req/s",
            ratio=plain.per_second / ceiling.per_second,
            goal="≥ 0.60",
            met=plain.per_second / ceiling.per_second >= 0.6,
            note=f"{CONCURRENCY} connections, best of {ROUNDS} alternating {SECONDS:.0f} s rounds "
            "each; auth, request id, JSON access "
            f"log, metrics, body limit, transaction; {p99}. FastAPI matches routers in order, "
            "at about 4 µs per router passed; /v1/system is the first",
        ),
        Figure(
            name="server CPU per authenticated no-op write",
            ours=cpu_ours * 1e6,
            peer=cpu_ceiling * 1e6,
            peer_name="bare FastAPI, same pydantic body",
            unit="µs/req",
            ratio=cpu_ceiling / cpu_ours,
            goal="≥ 0.60",
            met=cpu_ceiling / cpu_ours >= 0.6,
            note="server process CPU time (user + system, all threads, from /proc) over the "
            f"requests served in the measured {SECONDS:.0f} s, lowest of {ROUNDS} alternating "
            "rounds each; ratio is bare CPU over ours, comparable to the throughput ratio; "
            f"{load_average()}. Callgrind, one connection: 1.19M instructions per request vs "
            "0.59M bare; of ours about 9 % is background work (greenlet spawns of periodic "
            "jobs) that valgrind's slowness puts among fewer requests",
        ),
        Figure(
            name="same write with a fresh Idempotency-Key each time (stored outcome)",
            ours=keyed.per_second,
            peer=ceiling.per_second,
            peer_name="bare FastAPI, same pydantic body",
            unit="req/s",
            ratio=keyed.per_second / ceiling.per_second,
            goal="—",
            met=None,
            note="every request also writes its outcome to SQLite in its transaction, as every "
            "SDK write does; this is a database write, not a no-op",
        ),
    ]
