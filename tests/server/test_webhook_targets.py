"""Where the server posts webhooks: only to public addresses unless the operator allows private
networks (server-side request forgery), and within one deadline per endpoint, all endpoints of
a message at once (a slow receiver must not outlast the message's lease)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from ipaddress import ip_address
from typing import Any

import httpx
import pytest

from omnisdk.notification_models import WebhookEndpointIn
from server_stub.alert_delivery import AlertWorker
from server_stub.services import webhooks
from server_stub.settings import settings_from_environment
from tests.server import test_alerts
from tests.server.conftest import TEST_SEALER, Harness, ShopForTest
from tests.server.test_alerts import customer, grant, level, messages_of, stock, subscribe
from tests.webhook_receiver import WebhookReceiver

PUBLIC = "93.184.216.34"  # what a DNS answer first says in the rebinding test; never reached


@pytest.fixture
def webhooks_may_reach_this_machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Overrides the harness's: this server refuses private networks, as by default."""
    monkeypatch.setenv("OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS", "false")
    settings_from_environment.cache_clear()
    yield
    settings_from_environment.cache_clear()


# The alerts tests' harness (no delivery loop of its own) and webhook receiver.
server = test_alerts.server
receiver = test_alerts.receiver


class OnlyThisMachine(httpx.AsyncBaseTransport):
    """Sends what is addressed to this machine; records and refuses what is addressed to any
    other address, or to a name that resolves to one, so that no test reaches beyond it."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        answers = await asyncio.get_running_loop().getaddrinfo(host, request.url.port or 80)
        if not all(ip_address(str(answer[4][0])).is_loopback for answer in answers):
            self.refused.append(request)
            raise httpx.ConnectError("a test connects to nothing beyond the machine")
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def worker_of(server: Harness, **options: Any) -> AlertWorker:
    runtime = server.app.state.runtime
    options.setdefault("timeout", 5.0)
    # The failed sends here are due again in an hour, not in the next test's pass: tests
    # share the database, and a worker claims every tenant's due messages.
    options.setdefault("retry_base_seconds", 3600.0)
    return AlertWorker(
        runtime.database,
        runtime.tenants,
        runtime.sealer,
        poll_seconds=1.0,
        batch=50,
        abandoned_scan_seconds=3600.0,
        **options,
    )


async def one_guarded_pass(server: Harness, transport: OnlyThisMachine) -> None:
    """One delivery pass of a worker that refuses private networks, sending through
    `transport`."""
    worker = worker_of(server, allow_private_networks=False, transport=transport)
    try:
        await worker.tick()
    finally:
        await worker.close()


async def endpoint_added_when_allowed(server: Harness, shop: ShopForTest, url: str) -> str:
    """An endpoint made while private networks were allowed (or whose name resolved to a
    public address then): its secret."""
    async with server.database.transaction(write=True) as conn:
        made = await webhooks.create(
            conn,
            TEST_SEALER,
            shop.id,
            WebhookEndpointIn(url=url),
            datetime.now(UTC),
            allow_private_networks=True,
        )
    assert made.secret is not None
    return made.secret


async def amy_is_due_a_message(shop: ShopForTest) -> str:
    amy = await customer(shop, "phone")
    await grant(shop, amy, "marketing:push")
    await subscribe(shop, amy)
    await stock(shop, levels=[level(1)])
    return amy


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fd12:3456::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "64:ff9b::a9fe:a9fe",
    ],
)
def test_an_address_of_this_machine_or_a_private_network_is_not_public(address: str) -> None:
    assert not webhooks.is_public(ip_address(address))


@pytest.mark.parametrize(
    "address", ["93.184.216.34", "8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "2a00:1450::1"]
)
def test_an_address_on_the_internet_is_public(address: str) -> None:
    assert webhooks.is_public(ip_address(address))


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:5432/",
        "http://10.0.0.5/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:8080/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://2130706433/hooks",
        "http://127.1/hooks",
        "http://localhost:8000/hooks",
        "http://api.localhost/hooks",
        "http://printer.local/hooks",
        "http://postgres:5432/",
    ],
)
async def test_an_endpoint_on_a_private_address_is_refused_when_added(
    shop: ShopForTest, url: str
) -> None:
    answer = await shop.request("POST", "/v1/alerts/webhooks", json={"url": url})
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    problem = answer.json()
    assert problem["type"] == "https://omnisdk.dev/problems/validation-error"
    assert [error["type"] for error in problem["errors"]] == [webhooks.NOT_PUBLIC_ERROR]
    assert (await shop.request("GET", "/v1/alerts/webhooks")).json()["items"] == []


async def test_an_endpoint_named_by_a_public_name_is_added(shop: ShopForTest) -> None:
    url = "https://hooks.example.com/omnisdk"
    answer = await shop.request("POST", "/v1/alerts/webhooks", json={"url": url})
    assert answer.status_code == 201, answer.text


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:{port}/hooks",
        "http://localhost:{port}/hooks",  # the system's resolver says 127.0.0.1 (or ::1)
        "http://[::1]:{port}/hooks",
        "http://10.0.0.7:{port}/hooks",
        "http://169.254.169.254/latest/meta-data",
    ],
)
async def test_a_send_to_a_private_address_is_refused_and_nothing_is_posted(
    server: Harness, receiver: WebhookReceiver, url: str
) -> None:
    shop = await server.shop()
    port = receiver.url.split(":")[2].split("/")[0]
    receiver.secret = await endpoint_added_when_allowed(server, shop, url.format(port=port))
    amy = await amy_is_due_a_message(shop)
    transport = OnlyThisMachine()
    await one_guarded_pass(server, transport)
    assert receiver.requests == [] and transport.refused == []
    [message] = await messages_of(shop, amy)
    assert message["status"] == "retry"
    assert message["reason"].endswith(": " + webhooks.NOT_PUBLIC)


async def test_a_dns_answer_that_changes_after_the_check_is_never_connected_to(
    server: Harness, receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name first resolves to a public address, then to this machine. The
    post goes to the address checked, under the endpoint's name; the name is asked once."""
    name, system = "rebind.shop.example", socket.getaddrinfo
    asked: list[str] = []

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return system(host, port, *args, **kwargs)
        address = PUBLIC if not asked else "127.0.0.1"
        asked.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    shop = await server.shop()
    port = receiver.url.split(":")[2].split("/")[0]
    url = f"http://{name}:{port}/hooks"
    receiver.secret = await endpoint_added_when_allowed(server, shop, url)
    amy = await amy_is_due_a_message(shop)
    transport = OnlyThisMachine()
    await one_guarded_pass(server, transport)
    assert receiver.requests == [] and asked == [PUBLIC]
    [sent] = transport.refused  # the transport stands in for the internet here
    assert (sent.url.host, sent.headers["host"]) == (PUBLIC, f"{name}:{port}")
    assert sent.extensions["sni_hostname"] == name
    [message] = await messages_of(shop, amy)
    assert message["reason"].endswith(": ConnectError")


async def test_an_answer_with_any_private_address_is_refused(
    server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    name, system = "mixed.shop.example", socket.getaddrinfo

    def mixed(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != name:
            return system(host, port, *args, **kwargs)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))
            for address in (PUBLIC, "10.0.0.7")
        ]

    monkeypatch.setattr(socket, "getaddrinfo", mixed)
    shop = await server.shop()
    await endpoint_added_when_allowed(server, shop, f"https://{name}/hooks")
    amy = await amy_is_due_a_message(shop)
    transport = OnlyThisMachine()
    await one_guarded_pass(server, transport)
    assert transport.refused == []
    [message] = await messages_of(shop, amy)
    assert message["reason"].endswith(": " + webhooks.NOT_PUBLIC)


TIMEOUT = 1.0


async def test_receivers_trickling_their_answers_fail_by_the_deadline_well_within_the_lease(
    server: Harness,
) -> None:
    """Two endpoints answering a byte every 0.1 s (never a pause long enough for a read
    timeout; 4.4 s each, 8.8 s one after the other: more than the lease of 3 x 1 + 5 s)."""
    shop = await server.shop()
    with WebhookReceiver() as slow, WebhookReceiver() as slower:
        for receiver in (slow, slower):
            receiver.trickle_seconds = 0.1
            receiver.secret = await endpoint_added_when_allowed(server, shop, receiver.url)
        amy = await amy_is_due_a_message(shop)
        worker = worker_of(server, timeout=TIMEOUT, allow_private_networks=True)
        started = time.monotonic()
        try:
            await worker.tick()
        finally:
            await worker.close()
        took = time.monotonic() - started
        assert len(slow.requests) == len(slower.requests) == 1  # both were posted
    [message] = await messages_of(shop, amy)
    assert message["status"] == "retry"
    assert message["reason"].endswith(f": no answer within {TIMEOUT:g} s")
    assert took < TIMEOUT + 1.5  # both at once, each cut at the deadline
    assert took < worker.lease.total_seconds() / 3


async def test_a_name_the_resolver_cannot_encode_is_a_refused_send_not_a_wedged_batch(
    server: Harness, receiver: WebhookReceiver
) -> None:
    """A label over 63 characters passes the URL checks, then IDNA refuses it in the lookup
    with a UnicodeError, which escaped the post: the batch stopped with the message leased,
    posted again every lease and never recorded."""
    shop = await server.shop()
    long_name = "https://" + "a" * 64 + ".example.com/hook"
    receiver.secret = await endpoint_added_when_allowed(server, shop, long_name)
    amy = await amy_is_due_a_message(shop)
    await one_guarded_pass(server, OnlyThisMachine())
    [message] = await messages_of(shop, amy)
    assert message["status"] == "retry"
    assert message["reason"].endswith(": " + webhooks.NOT_PUBLIC)
