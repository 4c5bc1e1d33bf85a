"""One SDK `Client` call vs a bare `httpx.Client` call to the same endpoint.

The server runs in its own process. Both clients send the same headers (the bare one gets
the same Authorization, and a fresh Idempotency-Key on writes, as the SDK sends), so the
server does the same work; the difference is what the SDK adds on the client side. Calls
alternate in rounds so that drift of the machine hits both alike; the median round counts.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

import omnisdk
from bench.report import Figure
from omnisdk.testing import ServerProcess

ROUNDS = 15
CALLS_PER_ROUND = 200


def _per_call(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    for _ in range(CALLS_PER_ROUND):
        work()
    return (time.perf_counter() - started) / CALLS_PER_ROUND


def _compare(
    sdk_call: Callable[[], object], bare_call: Callable[[], object]
) -> tuple[float, float]:
    for _ in range(100):
        sdk_call()
        bare_call()
    sdk, bare = [], []
    for _ in range(ROUNDS):
        sdk.append(_per_call(sdk_call))
        bare.append(_per_call(bare_call))
    return statistics.median(sdk), statistics.median(bare)


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as directory:
        database = f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}"
        with ServerProcess(database) as server:
            key = server.create_tenant("bench").key("web")
            headers = {
                "Authorization": f"Bearer {key}",
                "Accept": "application/json",
                "X-Omnisdk-Channel": "web",
            }
            with (
                omnisdk.Client(server.url, key, channel="web") as sdk,
                httpx.Client(base_url=server.url, headers=headers) as bare,
            ):

                def bare_read() -> object:
                    response = bare.get("/v1/system/whoami")
                    response.raise_for_status()
                    return response.json()

                def bare_write() -> object:
                    response = bare.post(
                        "/v1/system/ping",
                        json={"message": "ping", "sequence": 1},
                        headers={"Idempotency-Key": str(uuid.uuid4())},
                    )
                    response.raise_for_status()
                    return response.json()

                read = _compare(sdk.system.whoami, bare_read)
                write = _compare(lambda: sdk.system.ping("ping", 1), bare_write)
    figures = []
    for name, (ours, peer) in (
        ("SDK call, read (client.system.whoami)", read),
        ("SDK call, write (client.system.ping, idempotent)", write),
    ):
        overhead = ours / peer - 1
        figures.append(
            Figure(
                name=name,
                ours=ours * 1e6,
                peer=peer * 1e6,
                peer_name="bare httpx.Client, same request",
                unit="µs/call",
                ratio=ours / peer,
                goal="≤ 1.15 (overhead ≤ 15%)",
                met=overhead <= 0.15,
                note=f"SDK overhead {overhead * 100:+.1f}% per call, including the server's "
                f"time; median of {ROUNDS} alternating rounds of {CALLS_PER_ROUND} calls",
            )
        )
    return figures
