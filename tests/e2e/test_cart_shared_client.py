"""One client shared by a web backend's threads (or an async backend's tasks), against a real
server: an add still on its way when another thread removes the line survives the remove,
which never saw it (add wins, docs/carts.md)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

from omnisdk.models import CartView
from omnisdk.testing import ServerProcess

WAIT = 30.0  # seconds a test waits for the held request before failing


def _is_add_of_one(request: httpx.Request) -> bool:
    if not request.url.path.endswith("/ops"):
        return False
    ops = json.loads(request.content)["ops"]
    return len(ops) == 1 and ops[0]["type"] == "add" and ops[0]["delta"] == 1


class HeldAdd(httpx.HTTPTransport):
    """Holds the first add of one unit back until `release` is set: slow on the network."""

    def __init__(self) -> None:
        super().__init__()
        self.held, self.release = threading.Event(), threading.Event()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if not self.held.is_set() and _is_add_of_one(request):
            self.held.set()
            assert self.release.wait(WAIT)
        return super().handle_request(request)


class AsyncHeldAdd(httpx.AsyncHTTPTransport):
    """`HeldAdd` for `AsyncClient`."""

    def __init__(self) -> None:
        super().__init__()
        self.held, self.release = asyncio.Event(), asyncio.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not self.held.is_set() and _is_add_of_one(request):
            self.held.set()
            await asyncio.wait_for(self.release.wait(), WAIT)
        return await super().handle_async_request(request)


def units(cart: CartView) -> int:
    return sum(line.quantity for line in cart.lines)


def test_an_add_in_flight_on_one_thread_survives_a_remove_on_another(
    server_process: ServerProcess,
) -> None:
    shop = server_process.create_tenant()
    transport = HeldAdd()
    with shop.client("web", http_client=httpx.Client(transport=transport)) as web:
        amy = web.identity.identify(anonymous_id="shared-by-threads").customer_id
        with ThreadPoolExecutor(1) as other_thread:
            slow = other_thread.submit(web.carts.add, amy, "TR2", 1)
            assert transport.held.wait(WAIT)
            seen = web.carts.add(amy, "TR2", 2)  # answered while the other add is on its way
            web.carts.remove(amy, seen, "TR2")  # removes the 2 units this customer saw
            transport.release.set()
            answered = slow.result(WAIT)
        assert units(answered) == 1
        assert units(web.carts.get(amy)) == 1


async def test_an_add_in_flight_on_one_task_survives_a_remove_on_another(
    server_process: ServerProcess,
) -> None:
    shop = server_process.create_tenant()
    transport = AsyncHeldAdd()
    async with shop.async_client("web", http_client=httpx.AsyncClient(transport=transport)) as web:
        amy = (await web.identity.identify(anonymous_id="shared-by-tasks")).customer_id
        slow = asyncio.create_task(web.carts.add(amy, "TR2", 1))
        await asyncio.wait_for(transport.held.wait(), WAIT)
        seen = await web.carts.add(amy, "TR2", 2)
        await web.carts.remove(amy, seen, "TR2")
        transport.release.set()
        answered = await slow
        assert units(answered) == 1
        assert units(await web.carts.get(amy)) == 1


def test_one_thread_after_another_numbers_under_one_replica(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as web:
        amy = web.identity.identify(anonymous_id="one-replica").customer_id
        applied = [web.carts.add(amy, "TR2", 1).applied[0] for _ in range(3)]
        with ThreadPoolExecutor(1) as other_thread:
            applied.append(other_thread.submit(web.carts.add, amy, "CAP", 1).result().applied[0])
    assert len({op_id.rpartition(":")[0] for op_id in applied}) == 1
    assert [op_id.rpartition(":")[2] for op_id in applied] == ["1", "2", "3", "4"]
