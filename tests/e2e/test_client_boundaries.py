"""One client across the boundaries of the process that holds it: threads making their first
call at once, a forked child, a second event loop, a call after close(), a close() cut short.
Against a real server; what arrives is counted one by one on its database."""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import omnisdk
from omnisdk import _delivery as delivery_module
from omnisdk import _lifecycle
from omnisdk import outbox as outbox_module
from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess
from tests.e2e.test_outbox_delivery import stored_event_ids

THREADS = 8


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, Path]]:
    """The server's URL, a web key, an app key, and its database file."""
    database = tmp_path_factory.mktemp("boundaries") / "shop.sqlite3"
    with ServerProcess(f"sqlite:///{database}") as server:
        tenant = server.create_tenant(settings=ATTRIBUTED_EVENTS)
        yield server.url, tenant.key("web"), tenant.key("app"), database


def test_threads_making_their_first_call_at_once_share_one_outbox(shop, tmp_path: Path) -> None:
    """Each thread opened its own outbox for the client, and what the losers held was never
    delivered: 7 of 8 events lost in 2 runs of 5."""
    url, web, _, database = shop
    for round_ in range(5):
        client = omnisdk.Client(url, web, channel="web", data_dir=tmp_path / str(round_))
        prefix = f"first-{round_}-"
        at_once = threading.Barrier(THREADS)

        def track(
            n: int,
            client: omnisdk.Client = client,
            prefix: str = prefix,
            at_once: threading.Barrier = at_once,
        ) -> None:
            at_once.wait()
            client.events.track("product_viewed", anonymous_id=f"v{n}", event_id=f"{prefix}{n}")

        threads = [threading.Thread(target=track, args=(n,)) for n in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        opened = [o for o in list(outbox_module._OPEN) if o.path.parent == client.data_dir]
        assert len(opened) == 1
        client.close()
        assert sorted(stored_event_ids(database, prefix)) == sorted(
            f"{prefix}{n}" for n in range(THREADS)
        )


def test_threads_making_their_first_call_at_once_start_one_sender(
    shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A thread that found no sender while another was starting one started its own, with a
    lease holder of its own: waiting for the lease the first had taken, it held the send lock,
    and the first waited for that lock until the lease ran out. close() gave up after 10 s
    with all 8 events on disk (2 runs in 300). Here the second thread's track comes while the
    first one's sender is being started."""
    url, web, _, database = shop
    starting, second_starting, second_tracked = (threading.Event() for _ in range(3))
    started: list[str] = []
    start = delivery_module.Delivery._start

    def start_slowly(target: Callable[[], None], name: str) -> threading.Thread:
        started.append(name)
        if len(started) == 1:
            starting.set()
            assert second_starting.wait(10)
            second_tracked.wait(0.5)  # until the second track returns, or it waits for this
        return _lifecycle.start_daemon(target, name)

    def noted_start(delivery: delivery_module.Delivery) -> None:
        if threading.current_thread() is not threading.main_thread():
            second_starting.set()  # the second thread found no sender running
        start(delivery)

    monkeypatch.setattr(delivery_module, "start_daemon", start_slowly)
    monkeypatch.setattr(delivery_module.Delivery, "_start", noted_start)
    client = omnisdk.Client(url, web, channel="web", data_dir=tmp_path)

    def second() -> None:
        assert starting.wait(10)
        client.events.track("product_viewed", anonymous_id="v", event_id="one-sender-2")
        second_tracked.set()

    thread = threading.Thread(target=second)
    thread.start()
    client.events.track("product_viewed", anonymous_id="v", event_id="one-sender-1")
    thread.join(10)
    assert not thread.is_alive()
    assert started == ["omnisdk-delivery"]
    assert client.events.flush(timeout=10) == 0
    client.close()
    assert sorted(stored_event_ids(database, "one-sender-")) == ["one-sender-1", "one-sender-2"]


def test_a_forked_child_asks_afresh_what_its_parent_had_cached(shop, tmp_path: Path) -> None:
    """The child kept the parent's cached consent, trusted for 5 minutes as if the change feed
    were still behind it (its thread stayed in the parent): a withdrawal was not seen."""
    url, web, app, _ = shop
    with (
        omnisdk.Client(url, web, channel="web", data_dir=tmp_path / "web") as client,
        omnisdk.Client(url, app, channel="app", data_dir=tmp_path / "app") as other,
    ):
        customer = client.identity.identify(anonymous_id=f"fork-{uuid.uuid4().hex[:8]}")
        client.consent.grant(customer.customer_id, "personalisation")
        assert client.consent.check(customer.customer_id, "personalisation") is True
        assert client.consent_cache.connected.wait(10)
        withdrawn_r, withdrawn_w = os.pipe()
        answer_r, answer_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: waits for the withdrawal, then asks
            code = 1
            try:
                os.read(withdrawn_r, 1)
                seen = client.consent.check(customer.customer_id, "personalisation")
                os.write(answer_w, b"1" if seen else b"0")
                code = 0
            finally:
                os._exit(code)
        other.consent.withdraw(customer.customer_id, "personalisation")
        os.write(withdrawn_w, b"x")
        assert os.read(answer_r, 1) == b"0"
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0


def test_a_closed_client_refuses_every_call_with_a_typed_error(shop, tmp_path: Path) -> None:
    """After close(), calls raised httpx's RuntimeError, and a track on a client whose outbox
    was never opened was accepted, then never sent."""
    url, web, _, _ = shop
    for opened in (False, True):
        client = omnisdk.Client(url, web, channel="web", data_dir=tmp_path / f"sync-{opened}")
        if opened:
            client.events.track("product_viewed", anonymous_id="v")
        client.close()
        with pytest.raises(omnisdk.ClientClosedError):
            client.events.track("product_viewed", anonymous_id="v")
        with pytest.raises(omnisdk.ClientClosedError):
            client.system.whoami()

    async def closed_async(opened: bool) -> None:
        client = omnisdk.AsyncClient(url, web, channel="web", data_dir=tmp_path / f"a-{opened}")
        if opened:
            await client.events.track("product_viewed", anonymous_id="v")
        await client.close()
        with pytest.raises(omnisdk.ClientClosedError):
            await client.events.track("product_viewed", anonymous_id="v")
        with pytest.raises(omnisdk.ClientClosedError):
            await client.system.whoami()

    for opened in (False, True):
        asyncio.run(closed_async(opened))


def test_an_async_close_cut_short_stops_its_courier_and_loses_nothing(shop, tmp_path) -> None:
    """`asyncio.wait_for(client.close(), …)` timing out left the courier task running against
    a closed outbox, in an error loop; what it had not sent stays on disk for the next client."""
    url, web, _, database = shop
    count = 5_000

    async def cut_short() -> None:
        client = omnisdk.AsyncClient(url, web, channel="web", data_dir=tmp_path)
        for n in range(count):
            await client.events.track("product_viewed", anonymous_id="v", event_id=f"cut-{n}")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.close(), 0.01)
        courier = client._delivery
        assert courier is not None and courier._task is not None
        await asyncio.wait([courier._task], timeout=10)
        assert courier._task.done()

    asyncio.run(cut_short())
    with omnisdk.Client(url, web, channel="web", data_dir=tmp_path) as later:
        assert later.events.flush(timeout=60) == 0
    stored = stored_event_ids(database, "cut-")
    assert len(stored) == len(set(stored)) == count


def test_an_async_client_moves_to_the_next_loop_and_refuses_a_second_running_one(
    shop, tmp_path: Path
) -> None:
    """Used again after its first loop ended, it raised 'Event loop is closed'; used from two
    loops running at once in two threads, it hung."""
    url, web, _, database = shop
    client = omnisdk.AsyncClient(url, web, channel="web", data_dir=tmp_path)

    async def first() -> None:
        await client.system.whoami()
        await client.events.track("product_viewed", anonymous_id="v", event_id="loops-1")

    async def second() -> int:
        await client.system.whoami()
        await client.events.track("product_viewed", anonymous_id="v", event_id="loops-2")
        left: int = await client.events.flush(timeout=30)
        return left

    asyncio.run(first())  # its loop ends with the first event perhaps not yet sent
    assert asyncio.run(second()) == 0
    assert sorted(stored_event_ids(database, "loops-")) == ["loops-1", "loops-2"]

    running, release = threading.Event(), threading.Event()

    async def hold_a_loop() -> None:
        await client.system.whoami()
        running.set()
        await asyncio.to_thread(release.wait)

    holder = threading.Thread(target=asyncio.run, args=(hold_a_loop(),))
    holder.start()
    try:
        assert running.wait(30)
        with pytest.raises(omnisdk.ClientClosedError, match="one AsyncClient per event loop"):
            asyncio.run(client.system.whoami())
    finally:
        release.set()
        holder.join(30)
    asyncio.run(client.close())


def test_an_async_flush_opens_the_outbox_off_the_event_loop(
    shop, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`await events.flush()` on a client whose outbox was not open yet opened its file (and
    read what an earlier process left in it: 241 ms for a million items) on the loop."""
    url, web, _, _ = shop
    opened_on: list[int] = []
    opening = outbox_module.Outbox.__init__

    def noted(self: outbox_module.Outbox, *args: object, **kwargs: object) -> None:
        opened_on.append(threading.get_ident())
        opening(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(outbox_module.Outbox, "__init__", noted)

    async def flush() -> int:
        async with omnisdk.AsyncClient(url, web, channel="web", data_dir=tmp_path) as client:
            left: int = await client.events.flush(timeout=10)
            return left

    assert asyncio.run(flush()) == 0
    assert opened_on and threading.get_ident() not in opened_on
