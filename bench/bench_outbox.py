"""The durable outbox: enqueue rate (group commit and durability="sync"), memory per queued
event next to the peers' in-memory queues, catch-up delivery after an outage, and how long
`AsyncClient.events.track` holds the event loop.

Peers queue in memory; for the memory figure they get a queue large enough to hold every
event (their default of 10,000 drops the rest), with their server unreachable, as ours.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import omnisdk
from bench import bench_track
from bench.report import Figure
from omnisdk.testing import ServerProcess, free_port

EVENTS = 20_000
LAG_EVENTS = 50_000
KILLS = 5
# A producer that tracks as fast as it can with the default settings, printing each id once
# `track` returned; the server is away, so everything stays in the outbox to be counted.
_PRODUCER = """
import sys, time, omnisdk
client = omnisdk.Client("http://127.0.0.1:9", "osk_web_0123456789abcdef_" + "x" * 43,
                        channel="web", data_dir=sys.argv[1])
n = 0
while True:
    client.events.track("product_viewed", anonymous_id="v", event_id=f"k{n}")
    sys.stdout.write(f"k{n} {time.monotonic()}\\n")
    n += 1
"""
SYNC_EVENTS = 500
PROPERTIES = {"sku": "trail-runner-2", "category": "running", "price": 129.0}
DOWN = "http://127.0.0.1:{port}"


def _rate(track: Callable[[int], object], count: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        track(n)
    return count / (time.perf_counter() - started)


def _memory_per_event(make: Callable[[], Callable[[int], object]]) -> float:
    tracemalloc.start()
    track = make()
    before = tracemalloc.take_snapshot()
    for n in range(EVENTS):
        track(n)
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return grown / EVENTS


def _ours_memory(directory: Path) -> float:
    url = DOWN.format(port=free_port())
    key = "osk_web_0123456789abcdef_" + "x" * 43
    clients: list[omnisdk.Client] = []

    def make() -> Callable[[int], object]:
        client = omnisdk.Client(url, key, data_dir=directory / "mem", close_timeout=0)
        clients.append(client)
        return lambda n: client.events.track(
            "product_viewed", anonymous_id=f"v{n % 50}", properties=PROPERTIES
        )

    per_event = _memory_per_event(make)
    clients[0].outbox.sync(30)
    clients[0].close()
    return per_event


def _segment_memory() -> float:
    from segment.analytics import Client

    def make() -> Callable[[int], object]:
        client = Client("k", host=DOWN.format(port=free_port()), max_queue_size=EVENTS + 1)
        return lambda n: client.track(
            user_id=f"v{n % 50}", event="product_viewed", properties=PROPERTIES
        )

    return _memory_per_event(make)


def _posthog_memory() -> float:
    import logging

    from posthog import Posthog

    logging.getLogger("posthog").setLevel(logging.CRITICAL)

    def make() -> Callable[[int], object]:
        client = Posthog("k", host=DOWN.format(port=free_port()), max_queue_size=EVENTS + 1)
        return lambda n: client.capture(
            "product_viewed", distinct_id=f"v{n % 50}", properties=PROPERTIES
        )

    return _memory_per_event(make)


def _killed_loss(directory: Path, after: int) -> tuple[int, float]:
    """Kill -9 a group-mode producer after `after` tracks returned: (events whose track
    returned but that are not in the outbox file, the span of time they were tracked in)."""
    data_dir = directory / f"killed-{after}"
    process = subprocess.Popen(
        [sys.executable, "-c", _PRODUCER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    for _ in range(after):
        process.stdout.readline()
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    returned = dict(line.split() for line in process.stdout.read().splitlines() if " " in line)
    with sqlite3.connect(data_dir / "outbox.sqlite3") as db:
        on_disk = {key for (key,) in db.execute("SELECT key FROM items")}
    lost = [float(at) for key, at in returned.items() if key not in on_disk]
    return len(lost), (max(lost) - min(lost)) * 1000 if lost else 0.0


async def _loop_lag(url: str, key: str, directory: Path) -> tuple[float, float]:
    """p99 and max delay of a 1 ms ticker while the async client tracks 50,000 events."""
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        loop = asyncio.get_running_loop()
        while not stop.is_set():
            started = loop.time()
            await asyncio.sleep(0.001)
            lags.append(loop.time() - started - 0.001)

    async with omnisdk.AsyncClient(url, key, channel="web", data_dir=directory / "async") as client:
        ticking = asyncio.create_task(ticker())
        for n in range(LAG_EVENTS):
            await client.events.track(
                "product_viewed", anonymous_id=f"v{n % 50}", properties=PROPERTIES
            )
            # A web app awaits other I/O between the events of its requests: yield after each
            # track, so that the lag measured is the SDK's, not the benchmark's own tight loop.
            await asyncio.sleep(0)
        await client.events.flush(120)
        stop.set()
        await ticking
    ordered = sorted(lags)
    return ordered[int(0.99 * len(ordered))] * 1000, ordered[-1] * 1000


def run() -> list[Figure]:
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        database = f"sqlite+aiosqlite:///{directory / 'bench.sqlite3'}"
        server = ServerProcess(database).start()
        key = server.create_tenant("bench").key("web")
        address, secret = server.url, server.secret_key
        with omnisdk.Client(address, key, channel="web", data_dir=directory / "group") as client:
            client.events.track("warm_up", anonymous_id="warm-up")  # opens the file, starts
            client.events.flush(10)  # the sender: as the peer, whose client is also warm
            group = _rate(
                lambda n: client.events.track(
                    "product_viewed", anonymous_id=f"v{n % 50}", properties=PROPERTIES
                ),
                EVENTS,
            )
            client.events.flush(120)
        with omnisdk.Client(
            address, key, channel="web", data_dir=directory / "sync", durability="sync"
        ) as client:
            sync = _rate(
                lambda n: client.events.track(
                    "product_viewed", anonymous_id=f"v{n % 50}", properties=PROPERTIES
                ),
                SYNC_EVENTS,
            )
            client.events.flush(120)
        p99_lag, max_lag = asyncio.run(_loop_lag(address, key, directory))
        kills = [_killed_loss(directory, 20_000 + 1_000 * n) for n in range(KILLS)]
        lost_events, lost_ms = max(k[0] for k in kills), max(k[1] for k in kills)
        server.stop()
        # Catch-up: 20,000 events queued during an outage, then the server comes back.
        retry = omnisdk.RetryPolicy(max_retries=0)
        with omnisdk.Client(
            address, key, channel="web", data_dir=directory / "outage", retry_policy=retry
        ) as client:
            for n in range(EVENTS):
                client.events.track(
                    "product_viewed", anonymous_id=f"v{n % 50}", properties=PROPERTIES
                )
            client.outbox.sync(60)
            port = int(address.rsplit(":", 1)[1])
            with ServerProcess(database, port=port, secret_key=secret):
                started = time.perf_counter()
                left = client.events.flush(300)
                drained = (EVENTS - left) / (time.perf_counter() - started)
            outbox_bytes = (directory / "outage" / "outbox.sqlite3").stat().st_size
        ours_memory = _ours_memory(directory)
    segment = bench_track.segment_run().calls_per_second  # its sender delivering
    segment_memory, posthog_memory = _segment_memory(), _posthog_memory()
    return [
        Figure(
            "enqueue with group commit (track, durable outbox, sender running)",
            group,
            segment,
            "segment-analytics-python track, in memory, sender running",
            "events/s",
            group / segment,
            "≥ 20,000/s and ≥ 1.0",
            group >= 20_000 and group >= segment,
            "both senders deliver to a local server while the caller tracks",
        ),
        Figure(
            'enqueue with durability="sync" (each track waits for fsync)',
            sync,
            group,
            "group commit",
            "events/s",
            sync / group,
            "—",
            None,
            f"{SYNC_EVENTS} events, one producer thread: one fsync per event",
        ),
        Figure(
            "memory per queued event (tracemalloc, server unreachable)",
            ours_memory,
            segment_memory,
            "segment-analytics-python",
            "bytes",
            ours_memory / segment_memory,
            "—",
            None,
            f"posthog: {posthog_memory:,.0f} bytes/event; ours are on disk "
            f"({outbox_bytes / EVENTS:,.0f} bytes/event in the outbox file)",
        ),
        Figure(
            "catch-up delivery after an outage (20,000 queued, SQLite server)",
            drained,
            EVENTS,
            "events queued",
            "events/s",
            drained / EVENTS,
            "—",
            None,
            "time from the server's return to an empty outbox",
        ),
        Figure(
            "event-loop lag while AsyncClient tracks 50,000 events (p99)",
            p99_lag,
            5.0,
            "ceiling",
            "ms",
            p99_lag / 5.0,
            "≤ 1.0 (p99 < 5 ms)",
            p99_lag < 5.0,
            "a 1 ms ticker on the same loop, server up; waits happen in worker threads",
        ),
        Figure(
            "event-loop lag while AsyncClient tracks 50,000 events (max)",
            max_lag,
            20.0,
            "ceiling",
            "ms",
            max_lag / 20.0,
            "≤ 1.0 (max < 20 ms)",
            max_lag < 20.0,
            "the same run",
        ),
        Figure(
            f"kill -9 in group mode: the worst of {KILLS} kills (time span of the lost events)",
            lost_ms,
            50.0,
            "max_unsynced window",
            "ms",
            lost_ms / 50.0,
            "≤ 1.0",
            lost_ms <= 50.0,
            f"default settings; SIGKILL mid-burst; at most {lost_events} events whose track "
            "returned were not in the outbox file",
        ),
    ]
