"""Retries are safe: a write whose answer was lost is retried and still applied once.

A real server over real HTTP, with a fault in front of it: the write reaches the server and
is applied, then the answer is replaced by a 503 (or held past the client's timeout).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

import omnisdk
from omnisdk import RetryPolicy
from omnisdk.testing import ReferenceServer, free_port

FAST = RetryPolicy(max_retries=3, initial_delay=0.01, max_delay=0.05)


class LoseAnswers:
    """ASGI middleware: for the first `failures` requests with a given Idempotency-Key, let
    the real app apply the request, then lose its answer (`mode`: "503" or "timeout")."""

    def __init__(self, app: Any, failures: int, mode: str) -> None:
        self.app = app
        self.failures = failures
        self.mode = mode
        self.seen: Counter[str] = Counter()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        key = dict(scope.get("headers", [])).get(b"idempotency-key", b"").decode()
        if scope["type"] != "http" or not key:
            await self.app(scope, receive, send)
            return
        self.seen[key] += 1
        if self.seen[key] > self.failures:
            await self.app(scope, receive, send)
            return

        async def swallow(message: Any) -> None:
            pass

        await self.app(scope, receive, swallow)
        if self.mode == "timeout":
            await asyncio.sleep(3)
        body = b'{"type":"about:blank","title":"Service Unavailable","status":503}'
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/problem+json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(params=["503", "timeout"])
def faulty_server(request: pytest.FixtureRequest) -> Iterator[tuple[ReferenceServer, LoseAnswers]]:
    holder: dict[str, LoseAnswers] = {}

    def wrap(app: Any) -> Any:
        holder["fault"] = LoseAnswers(app, failures=2, mode=request.param)
        return holder["fault"]

    with ReferenceServer(wrap=wrap) as server:
        yield server, holder["fault"]


def test_write_failing_twice_then_succeeding_is_applied_once(
    faulty_server: tuple[ReferenceServer, LoseAnswers],
) -> None:
    server, fault = faulty_server
    shop = server.create_tenant()
    with shop.client("admin", retry_policy=FAST, timeout=0.5) as admin:
        before = len(admin.keys.list())
        created = admin.keys.create("pos", name="till 3")
        keys = admin.keys.list()
    assert list(fault.seen.values()) == [3]
    assert len(keys) == before + 1
    assert created.key_id in {k.key_id for k in keys}


async def test_async_client_retries_alike(
    faulty_server: tuple[ReferenceServer, LoseAnswers],
) -> None:
    server, fault = faulty_server
    shop = server.create_tenant()
    async with shop.async_client("admin", retry_policy=FAST, timeout=0.5) as admin:
        before = len(await admin.keys.list())
        await admin.keys.create("app")
        assert len(await admin.keys.list()) == before + 1
    assert list(fault.seen.values()) == [3]


def test_retries_give_up_with_a_typed_error() -> None:
    def wrap(app: Any) -> Any:
        return LoseAnswers(app, failures=100, mode="503")

    with ReferenceServer(wrap=wrap) as server:
        shop = server.create_tenant()
        with shop.client("admin", retry_policy=RetryPolicy(max_retries=2, initial_delay=0.01)) as c:
            with pytest.raises(omnisdk.ServerError) as failed:
                c.keys.create("pos")
    assert failed.value.status_code == 503


def test_unreachable_server_raises_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with omnisdk.Client(url, "osk_web_0123456789abcdef_" + "x" * 43, retry_policy=FAST) as client:
        with pytest.raises(omnisdk.APIConnectionError):
            client.system.whoami()
