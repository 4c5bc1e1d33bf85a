"""Sign-ins under load on PostgreSQL: identifier locks against the old tenant-wide lock.

32 connections sign customers in as fast as the servers answer: each request links a new
device (`anonymous_id`) to a customer's e-mail address, over 5,000 distinct customers (the
first request for an address creates its customer, the later ones find it). The servers are
`omnisdk-server serve` with 1 and 2 worker processes on one PostgreSQL database.

The peer is this very benchmark run on the code before issue 21 (commit BASELINE_COMMIT,
taken with `git archive`), whose `identify` took a tenant-wide exclusive lock, so every
sign-in of a shop waited for the one before. The same load generator, database server and
settings drive both, alternating, ROUNDS times each; the figures are the median runs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.engine import make_url

from bench.bench_cart_history import _drop
from bench.bench_carts import _postgres_database
from bench.loadgen import LoadResult, http_request, run_load
from bench.netdelay import DelayedLink
from bench.report import Figure
from omnisdk.testing import free_port

BASELINE_COMMIT = "0d68a7a"  # main before issue 21: identify under a tenant-wide lock
CONNECTIONS = 32
CUSTOMERS = 5_000
SECONDS = 5.0
# Each side runs this many times, alternating (see _rounds): one 5-second run on a shared
# 2-core machine varies by up to a third from the next.
ROUNDS = 5
# A database on another machine of the same data centre: half a millisecond each way asked
# (bench/netdelay.py; the event loop's timer rounds it up to about a millisecond).
NETWORK_ONE_WAY = 0.0005
ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = base64.b64encode(b"bench-secret-key-of-32-bytes-ok!").decode()


def _baseline_tree(directory: Path) -> Path | None:
    """The server and SDK sources of the baseline commit, unpacked (None without git)."""
    try:
        archive = subprocess.run(
            ["git", "archive", "--format=tar", BASELINE_COMMIT, "server_stub", "src"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(directory, filter="data")
    return directory


def _environment(code: Path | None, database_url: str) -> dict[str, str]:
    env = {
        **os.environ,
        "OMNISDK_DATABASE_URL": database_url,
        "OMNISDK_SECRET_KEY": SECRET_KEY,
        "OMNISDK_RATE_LIMIT_PER_SECOND": "0",
        "OMNISDK_LOG_LEVEL": "WARNING",
    }
    if code is not None:  # the baseline's packages come before the installed ones
        env["PYTHONPATH"] = f"{code}{os.pathsep}{code / 'src'}"
    return env


def _cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server_stub.cli", *args],
        env=env,
        cwd=env.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.split()[0]


def _serve(env: dict[str, str], workers: int) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    command = [sys.executable, "-m", "server_stub.cli", "serve", "--port", str(port)]
    command += ["--workers", str(workers)]
    # `python -m` puts the working directory first on the path: run in the code's own.
    cwd = env.get("PYTHONPATH", str(ROOT)).split(os.pathsep)[0]
    log = tempfile.TemporaryFile()  # noqa: SIM115
    process = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    log.seek(0)
    raise RuntimeError(f"omnisdk-server did not start: {log.read()[-2000:]!r}")


def _sign_ins(key: str) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    counter = itertools.count()
    lock = threading.Lock()

    def make() -> bytes:
        with lock:
            n = next(counter)
        body = {"anonymous_id": f"device-{n}", "email": f"c{n % CUSTOMERS}@example.com"}
        return http_request("POST", "/v1/identity/identify", headers, json.dumps(body).encode())

    return make


def _measure(code: Path | None, workers: int, one_way: float = 0.0) -> LoadResult:
    """Sign-ins per second of `code`'s server (None: this checkout's) with `workers` worker
    processes, its database reached directly or, with `one_way` > 0, across a DelayedLink."""
    database_url = _postgres_database()
    if database_url is None:
        raise RuntimeError("PostgreSQL is unreachable")
    try:
        with contextlib.ExitStack() as stack:
            served = database_url
            if one_way > 0:
                direct = make_url(database_url)
                link = stack.enter_context(DelayedLink(direct.port or 5432, one_way))
                served = direct.set(host="127.0.0.1", port=link.port).render_as_string(
                    hide_password=False
                )
            env = _environment(code, served)
            process, url = _serve(env, workers)  # migrates the database first
            try:
                tenant = _cli(env, "tenant", "create", "sign-in storm")
                key = _cli(env, "key", "create", "--tenant", tenant, "--channel", "web")
                return run_load(url, _sign_ins(key), concurrency=CONNECTIONS, seconds=SECONDS)
            finally:
                process.terminate()
                process.wait()
    finally:
        _drop(database_url)


def _round_trip_ms(one_way: float) -> float:
    """The median time of `SELECT 1` across a DelayedLink of `one_way` (what the event loop's
    millisecond timer makes of it)."""
    import asyncpg

    database_url = _postgres_database()
    if database_url is None:
        raise RuntimeError("PostgreSQL is unreachable")
    direct = make_url(database_url)

    async def ping(port: int) -> float:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user=direct.username, database=direct.database
        )
        try:
            taken = []
            for _ in range(50):
                started = time.perf_counter()
                await conn.fetchval("SELECT 1")
                taken.append(time.perf_counter() - started)
        finally:
            await conn.close()
        return statistics.median(taken) * 1000

    try:
        with DelayedLink(direct.port or 5432, one_way) as link:
            return asyncio.run(ping(link.port))
    finally:
        _drop(database_url)


def _rounds(baseline: Path, workers: int, one_way: float) -> tuple[LoadResult, LoadResult, str]:
    """ROUNDS runs of each, alternating which goes first (ABBA…), so a drift of the shared
    machine (another process, autovacuum, CPU steal) falls on both alike; the median run of
    each, and every round's ratio."""
    old: list[LoadResult] = []
    new: list[LoadResult] = []
    for n in range(ROUNDS):
        order = [(old, baseline), (new, None)]
        for results, code in order if n % 2 == 0 else reversed(order):
            results.append(_measure(code, workers, one_way))
    if any(result.errors for result in old + new):
        raise RuntimeError(f"{sum(result.errors for result in old + new)} sign-ins failed")
    rounds = ", ".join(f"{a.per_second / b.per_second:.2f}" for a, b in zip(new, old, strict=True))

    def median(results: list[LoadResult]) -> LoadResult:
        return sorted(results, key=lambda result: result.per_second)[len(results) // 2]

    return median(new), median(old), rounds


def run() -> list[Figure]:
    if _postgres_database_reachable() is False:
        return []
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory() as directory:
        baseline = _baseline_tree(Path(directory))
        if baseline is None:
            return []
        links = [(workers, 0.0) for workers in (1, 2)] + [(2, NETWORK_ONE_WAY)]
        for workers, one_way in links:
            new, old, rounds = _rounds(baseline, workers, one_way)
            ratio = new.per_second / old.per_second
            where = (
                f", the database across a link of {_round_trip_ms(one_way):.1f} ms round trip"
                if one_way
                else ""
            )
            figures.append(
                Figure(
                    f"sign-ins of distinct customers, PostgreSQL, {workers} worker(s), "
                    f"{CONNECTIONS} connections{where} (median of {ROUNDS} alternating runs)",
                    new.per_second,
                    old.per_second,
                    f"the same before issue 21 (tenant-wide lock, {BASELINE_COMMIT})",
                    "req/s",
                    ratio,
                    "≥ 3" if workers == 2 else "—",
                    ratio >= 3 if workers == 2 else None,
                    f"p99 {new.percentile(99) * 1000:.0f} ms (before: "
                    f"{old.percentile(99) * 1000:.0f} ms); each round's ratio: {rounds}",
                )
            )
    return figures


def _postgres_database_reachable() -> bool:
    probe = _postgres_database()
    if probe is None:
        return False
    _drop(probe)
    return True


if __name__ == "__main__":
    for figure in run():
        print(figure.row())
