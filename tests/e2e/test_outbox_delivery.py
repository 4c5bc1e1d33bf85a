"""Nothing a shop records is lost: crashes, outages, flaky servers, poison, several processes,
fork(). Real server processes, real producer processes, real SIGKILL."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import omnisdk
from omnisdk.testing import ATTRIBUTED_EVENTS, ReferenceServer, ServerProcess

FAST = omnisdk.RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.05)


def stored_event_ids(database: Path, prefix: str = "") -> list[str]:
    with sqlite3.connect(database) as db:
        rows = db.execute(
            "SELECT event_id FROM events WHERE event_id LIKE ? ORDER BY seq", (f"{prefix}%",)
        ).fetchall()
    return [row[0] for row in rows]


def kill_producer_mid_burst(
    url: str, key: str, data_dir: Path, durability: str, after: int
) -> list[str]:
    """Start a producer, let `after` tracks return, SIGKILL it; the ids whose track returned."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.e2e.producer",
            url,
            key,
            str(data_dir),
            durability,
            "100000",
            durability,
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert process.stdout is not None
    returned = [process.stdout.readline().strip() for _ in range(after)]
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    returned += [line.strip() for line in process.stdout.read().splitlines() if line.strip()]
    return returned


@pytest.mark.parametrize("durability", ["sync", "group"])
def test_kill_9_mid_burst_then_restart_delivers_what_returned(
    tmp_path: Path, durability: str
) -> None:
    database = tmp_path / "shop.sqlite3"
    with ServerProcess(f"sqlite:///{database}") as server:
        key = server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web")
        data_dir = tmp_path / "backend"
        returned = kill_producer_mid_burst(server.url, key, data_dir, durability, after=400)
        # The backend restarts: a new client on the same data_dir sends what is on disk.
        with omnisdk.Client(server.url, key, channel="web", data_dir=data_dir) as restarted:
            assert restarted.events.flush(60) == 0
        stored = stored_event_ids(database, durability)
    assert len(stored) == len(set(stored)), "an event was stored twice"
    lost = set(returned) - set(stored)
    if durability == "sync":
        assert lost == set()
        # At most the one track in flight at the kill was written but had not returned.
        assert len(set(stored) - set(returned)) <= 1
    else:
        assert len(lost) <= 2 * 100  # the documented bound: 2 x max_group


def test_server_down_for_the_whole_burst_then_everything_arrives_in_order(tmp_path: Path) -> None:
    database = tmp_path / "shop.sqlite3"
    server = ServerProcess(f"sqlite:///{database}").start()
    key = server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web")
    address, secret = server.url, server.secret_key
    server.stop()
    tracked: dict[str, list[str]] = {}
    with omnisdk.Client(
        address, key, channel="web", data_dir=tmp_path / "b", retry_policy=FAST
    ) as web:
        for n in range(600):
            visitor = f"visitor-{n % 5}"
            event_id = f"down-{n:04d}"
            web.events.track("product_viewed", anonymous_id=visitor, event_id=event_id)
            tracked.setdefault(visitor, []).append(event_id)
        assert web.events.flush(0.5) > 0
        assert web.delivery.status.breaker == "open"
        status = web.outbox.status()
        assert status.depth == 600 and status.last_error is None
        with ServerProcess(
            f"sqlite:///{database}", port=int(address.rsplit(":", 1)[1]), secret_key=secret
        ):
            assert web.events.flush(90) == 0
            with sqlite3.connect(database) as db:
                rows = db.execute(
                    "SELECT e.event_id, i.value FROM events e JOIN identifiers i "
                    "ON i.customer_id = e.customer_id AND i.type = 'anonymous' ORDER BY e.seq"
                ).fetchall()
    arrived: dict[str, list[str]] = {}
    for event_id, visitor in rows:
        arrived.setdefault(visitor, []).append(event_id)
    assert arrived == tracked


class Flaky:
    """Half the requests fail: a fifth with 503 before the server sees them, some with 503
    after it applied them, some applied and then held past the client's timeout."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.random = random.Random(7)
        self.faults: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/events"):
            await self.app(scope, receive, send)
            return
        roll = self.random.random()
        if roll < 0.2:
            self.faults["503 before"] += 1
            await _unavailable(send)
            return
        if roll < 0.35:
            self.faults["503 after applying"] += 1
            await self.app(scope, receive, _swallow)
            await _unavailable(send)
            return
        if roll < 0.5:
            self.faults["timeout after applying"] += 1
            await self.app(scope, receive, _swallow)
            await _sleep(0.6)
            await _unavailable(send)
            return
        await self.app(scope, receive, send)


async def _swallow(message: Any) -> None:
    pass


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def _unavailable(send: Any) -> None:
    await send({"type": "http.response.start", "status": 503, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_a_flaky_server_loses_nothing_and_doubles_nothing(tmp_path: Path) -> None:
    holder: dict[str, Flaky] = {}

    def wrap(app: Any) -> Any:
        holder["flaky"] = Flaky(app)
        return holder["flaky"]

    with ReferenceServer(wrap=wrap, log_level="WARNING") as server:
        shop = server.create_tenant(settings=ATTRIBUTED_EVENTS)
        with shop.client("web", retry_policy=FAST, timeout=0.3, data_dir=tmp_path / "b") as web:
            ids = [
                web.events.track("product_viewed", anonymous_id=f"v{n % 9}", event_id=f"fl-{n:04d}")
                for n in range(400)
            ]
            assert web.events.flush(120) == 0
            customers = {web.identity.resolve("anonymous", f"v{n}") for n in range(9)}
            stored = [
                event.event_id
                for customer in customers
                for event in web.identity.timeline(customer or "", limit=200).items
            ]
    assert sorted(stored) == sorted(ids)
    assert min(holder["flaky"].faults.values()) > 0


def test_a_poison_event_becomes_a_dead_letter_and_the_rest_arrive(tmp_path: Path) -> None:
    with ReferenceServer(log_level="WARNING") as server:
        shop = server.create_tenant(settings=ATTRIBUTED_EVENTS)
        with shop.client("web", data_dir=tmp_path / "b") as web:
            web.events.track("product_viewed", anonymous_id="amy", event_id="good-1")
            web.events.track("product_viewed", customer_id="cus_deleted", event_id="poison")
            web.events.track("product_viewed", anonymous_id="amy", event_id="good-2")
            assert web.events.flush(30) == 0
            (dead,) = web.outbox.dead_letters()
            assert dead.key == "poison" and "no customer" in dead.error
            customer = web.identity.resolve("anonymous", "amy")
            page = web.identity.timeline(customer or "")
            assert sorted(e.event_id for e in page.items) == ["good-1", "good-2"]
            assert web.outbox.status().dead_letters == 1


def test_two_processes_share_one_outbox(tmp_path: Path) -> None:
    database = tmp_path / "shop.sqlite3"
    with ServerProcess(f"sqlite:///{database}") as server:
        key = server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web")
        data_dir = tmp_path / "shared"
        root = Path(__file__).resolve().parents[2]
        workers = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.e2e.producer",
                    server.url,
                    key,
                    str(data_dir),
                    "group",
                    "300",
                    f"proc{n}",
                ],
                stdout=subprocess.DEVNULL,
                cwd=root,
            )
            for n in range(2)
        ]
        assert [worker.wait(120) for worker in workers] == [0, 0]
        stored = stored_event_ids(database, "proc")
    assert len(stored) == 600 == len(set(stored))


@contextlib.contextmanager
def _client_that_has_sent(tmp_path: Path) -> Iterator[tuple[Path, omnisdk.Client]]:
    """A server on SQLite, and a client of it that has sent one event (`parent-0`): gunicorn
    --preload style, the client exists (and has sent) before the fork."""
    database = tmp_path / "shop.sqlite3"
    with ServerProcess(f"sqlite:///{database}") as server:
        key = server.create_tenant(settings=ATTRIBUTED_EVENTS).key("web")
        client = omnisdk.Client(server.url, key, channel="web", data_dir=tmp_path / "pre")
        client.events.track("product_viewed", anonymous_id="parent", event_id="parent-0")
        assert client.events.flush(30) == 0
        yield database, client


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_events_tracked_in_a_forked_child_are_delivered(tmp_path: Path) -> None:
    with _client_that_has_sent(tmp_path) as (database, client):
        pid = os.fork()
        if pid == 0:  # the child: its own connection, committer and delivery thread
            code = 1
            try:
                for n in range(50):
                    client.events.track(
                        "product_viewed", anonymous_id="child", event_id=f"child-{n}"
                    )
                code = 0 if client.events.flush(60) == 0 else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        client.close()
        stored = stored_event_ids(database)
    assert sorted(stored) == sorted(["parent-0", *(f"child-{n}" for n in range(50))])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_that_tracked_nothing_closes_while_the_parents_sender_was_waking(
    tmp_path: Path,
) -> None:
    # The parent's sender thread takes its events' locks whenever it waits or is woken; a
    # fork in that moment leaves them locked in the child, where no thread will release them.
    # A child that never tracked has taken nothing of its own: its close() must not wait on
    # the parent's events.
    with _client_that_has_sent(tmp_path) as (_, client):
        delivery = client.delivery
        # And httpx's connection pool, which the sender holds while it sends or reads an answer.
        pool = client._http._transport._pool._optional_thread_lock._lock
        held = [delivery._wake._cond, delivery._probe._cond, delivery._stop._cond, pool]
        for lock in held:  # as the sender holds one for a moment
            lock.acquire()
        try:
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    client.close()
                    code = 0
                finally:
                    os._exit(code)
        finally:
            for lock in held:
                lock.release()
        ended = None
        for _ in range(600):  # up to a minute; a deadlocked child never ends
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                ended = os.waitstatus_to_exitcode(status)
                break
            time.sleep(0.1)
        if ended is None:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        client.close()
    assert ended == 0, "the forked child hung in close() on its parent's locked events"


def test_status_is_visible_to_operators(tmp_path: Path) -> None:
    with omnisdk.Client(
        "http://127.0.0.1:9",
        "osk_web_0123456789abcdef_" + "x" * 43,
        data_dir=tmp_path / "b",
        retry_policy=FAST,
        close_timeout=0.2,
    ) as web:
        web.events.track("product_viewed", anonymous_id="a")
        web.events.flush(0.3)
        status = web.outbox.status()
        assert status.depth == 1 and status.oldest_age_seconds is not None
        assert web.delivery.status.last_error is not None
        assert "omnisdk_outbox_depth 1" in web.outbox.metrics()
    # Closed with the server away: the event is still on disk for the next start.
    reopened = omnisdk.Client(
        "http://127.0.0.1:9", "osk_web_0123456789abcdef_" + "x" * 43, data_dir=tmp_path / "b"
    )
    assert reopened.outbox.status().depth == 1
    reopened.outbox.close()
