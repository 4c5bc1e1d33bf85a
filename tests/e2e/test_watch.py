"""`changes.watch`: a context manager with a connected signal, a timeout, typed changes, and
refusals that retrying cannot cure raised at once, on both clients."""

from __future__ import annotations

import asyncio
import queue
import threading

import pytest

import omnisdk
from omnisdk.models import CartChange
from omnisdk.resources.changes import Change
from omnisdk.testing import ServerProcess


def test_a_change_made_once_the_watch_is_connected_is_seen(
    server_process: ServerProcess,
) -> None:
    shop = server_process.create_tenant()
    seen: queue.Queue[Change] = queue.Queue()
    with shop.client("web") as laptop, shop.client("app") as phone:
        amy = laptop.identity.identify(anonymous_id="laptop-w1").customer_id
        with phone.changes.watch(amy, timeout=30) as feed:
            reader = threading.Thread(target=lambda: [seen.put(c) for c in feed], daemon=True)
            reader.start()
            assert feed.connected.wait(10)
            laptop.carts.add(amy, "TR2", 2, unit_price=89.0, currency="EUR")
            change = seen.get(timeout=10)
            feed.close()
            reader.join(10)
    assert not reader.is_alive()
    assert isinstance(change.data, CartChange)
    assert [(line.sku, line.quantity) for line in change.data.lines] == [("TR2", 2)]
    assert feed.last_event_id == change.id


def test_a_watch_ends_when_its_timeout_passes(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("app") as phone:
        amy = phone.identity.identify(anonymous_id="phone-w2").customer_id
        assert list(phone.changes.watch(amy, timeout=0.5)) == []


def test_a_watch_raises_what_retrying_cannot_cure(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("app") as phone:
        with pytest.raises(omnisdk.NotFoundError):
            list(phone.changes.watch("cus_nobody", timeout=10))
    with omnisdk.Client(server_process.url, "osk_not_a_key_at_all_0000") as stranger:
        with pytest.raises(omnisdk.AuthenticationError):
            list(stranger.changes.watch("cus_nobody", timeout=10))


async def test_the_async_watch_is_the_same(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    async with shop.async_client("web") as laptop, shop.async_client("app") as phone:
        amy = (await laptop.identity.identify(anonymous_id="laptop-w4")).customer_id
        async with phone.changes.watch(amy, timeout=30) as feed:

            async def first() -> Change:
                async for change in feed:
                    return change
                raise AssertionError("the watch ended without a change")

            waiting = asyncio.create_task(first())
            await asyncio.wait_for(feed.connected.wait(), 10)
            await laptop.carts.add(amy, "SOCK", 1)
            change = await asyncio.wait_for(waiting, 10)
        assert isinstance(change.data, CartChange)
        assert change.data.lines[0].sku == "SOCK"
        with pytest.raises(omnisdk.NotFoundError):
            async for _ in phone.changes.watch("cus_nobody", timeout=10):
                pass
