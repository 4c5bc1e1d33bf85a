"""Stock alerts end to end: real `omnisdk-server serve` processes (two on one PostgreSQL
database; one on a SQLite file), the SDK behind fault proxies that lose write answers after
the server applied them, and a real webhook receiver verifying every signature.

Every total is exact: each stock delta applied once, each message delivered as one message
(one `webhook-id`) however often the receiver refused it, a server restarted, or two server
processes raced for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import omnisdk
from omnisdk.testing import ServerProcess, TestTenant
from tests.conftest import DATABASES, PostgresDatabases, new_database_url
from tests.fault_proxy import FaultProxy, writes
from tests.webhook_receiver import WebhookReceiver

FAST_RETRIES = omnisdk.RetryPolicy(max_retries=12, initial_delay=0.005, max_delay=0.05)
LOSS_RATE = 0.3
ENV = {
    "OMNISDK_ALERTS_POLL_SECONDS": "0.1",
    "OMNISDK_ALERTS_BATCH": "10",
    "OMNISDK_ALERTS_RETRY_BASE_SECONDS": "0.2",
    # A lease of 3 x 1 + 5 s: what a process killed mid-delivery held is taken over soon.
    "OMNISDK_ALERTS_WEBHOOK_TIMEOUT_SECONDS": "1",
}
SIZE_38 = {"size": "38"}


@dataclass
class Cluster:
    url: str
    servers: list[ServerProcess]
    proxies: list[FaultProxy]
    directory: Any

    def client(self, shop: TestTenant, n: int, channel: str = "web") -> omnisdk.Client:
        proxy = self.proxies[n % len(self.proxies)]
        return omnisdk.Client(
            proxy.url, shop.key(channel), channel=channel, retry_policy=FAST_RETRIES
        )

    def admin(self, shop: TestTenant, n: int = 0) -> omnisdk.Client:
        server = self.servers[n % len(self.servers)]
        return omnisdk.Client(server.url, shop.key("admin"), channel="admin")

    @property
    def dropped(self) -> int:
        return sum(proxy.dropped for proxy in self.proxies)


@pytest.fixture(scope="module", params=DATABASES)
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("alerts")
    url = new_database_url(request.param, directory, postgres_databases)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ServerProcess(url, env=ENV, log_path=directory / "first.log"))
        servers = [first]
        if request.param == "postgres":  # SQLite is served by one process (docs/server.md)
            servers.append(
                stack.enter_context(
                    ServerProcess(
                        url,
                        env=ENV,
                        secret_key=first.secret_key,
                        log_path=directory / "second.log",
                    )
                )
            )
        proxies = [
            stack.enter_context(FaultProxy(servers[n % len(servers)].url, writes(LOSS_RATE, n)))
            for n in range(2)
        ]
        yield Cluster(url, servers, proxies, directory)


def shop_with_receiver(
    cluster: Cluster, receiver: WebhookReceiver, name: str, settings: dict[str, Any] | None = None
) -> TestTenant:
    shop = cluster.servers[0].create_tenant(name, settings)
    with cluster.admin(shop) as admin:
        receiver.secret = admin.alerts.add_webhook(receiver.url).secret
    return shop


def test_amy_gets_one_signed_back_in_stock_webhook_and_none_after_her_purchase(
    cluster: Cluster,
) -> None:
    with WebhookReceiver() as receiver:
        shop = shop_with_receiver(cluster, receiver, "amy's shop")
        with cluster.client(shop, 0, "app") as phone, cluster.client(shop, 1, "pos") as till:
            amy = phone.identity.identify(
                anonymous_id="amy-phone", traits={"first_name": "Amy"}
            ).customer_id
            phone.identity.declare_preferred_channel(amy, "sms")
            phone.consent.grant(
                amy, "analytics", "marketing:push", "marketing:sms", source="app_settings"
            )
            wanted = phone.alerts.subscribe(amy, "TR2", SIZE_38)
            price_watch = phone.alerts.subscribe(amy, "TR2", SIZE_38, kind="price_drop")
            assert wanted.consent_decision_id is not None
            till.inventory.set_price("TR2", 89.0, "EUR", options=SIZE_38)
            arrived = till.inventory.adjust("TR2", 6, options=SIZE_38, op_id="delivery-1")
            assert arrived.online == 6
            assert receiver.wait_for(1)
            [message] = receiver.unique
            assert message["type"] == "message.back_in_stock"
            assert message["data"]["channel"] == "sms"
            assert message["data"]["options"] == SIZE_38
            assert message["data"]["consent_decision_id"] == wanted.consent_decision_id
            # She buys the shoes in a store; then their price drops: no message for her.
            till.orders.record(
                "till-77",
                [{"sku": "TR2", "quantity": 1, "unit_price": 89.0}],
                currency="EUR",
                channel="pos",
                store_id="berlin-1",
                customer_id=amy,
            )
            till.inventory.set_price("TR2", 69.0, "EUR", options=SIZE_38)
            with cluster.admin(shop) as admin:
                for _ in range(600):  # until the loop decided it (a condition, not a timer)
                    mine = admin.alerts.messages(amy)
                    if all(m.status in ("sent", "skipped") for m in mine) and len(mine) == 2:
                        break
                    receiver.wait_for(2, timeout=0.05)
            outcomes = sorted((m.kind.value, m.status, m.reason) for m in mine)
            assert outcomes == [
                ("back_in_stock", "sent", None),
                ("price_drop", "skipped", "bought_since"),
            ]
            assert len(receiver.unique) == 1
            statuses = {s.id: s.status for s in phone.alerts.list(amy)}
            assert statuses[wanted.id] == "notified"
            assert statuses[price_watch.id] == "waiting"


def test_stock_deltas_from_many_tills_count_once_under_lost_answers(cluster: Cluster) -> None:
    shop = cluster.servers[0].create_tenant("many tills")
    dropped_before = cluster.dropped
    errors: list[BaseException] = []

    def till(n: int) -> None:
        try:
            with cluster.client(shop, n, "pos") as client:
                for k in range(15):
                    client.inventory.adjust(
                        "SOCK",
                        3 if k % 3 else -1,
                        location=f"store-{n % 2}",
                        kind="store",
                        op_id=f"till-{n}-{k}",
                    )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=till, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert cluster.dropped > dropped_before  # the faults really happened
    with cluster.admin(shop) as admin:
        sock = admin.inventory.get("SOCK")
    per_till = sum(3 if k % 3 else -1 for k in range(15))
    assert sock.stores == {"store-0": 2 * per_till, "store-1": 2 * per_till}
    assert sock.online == 0  # store stock is never counted as online stock


def test_no_duplicate_message_under_redelivery_restarts_and_racing_processes(
    cluster: Cluster,
) -> None:
    with WebhookReceiver() as receiver:
        shop = shop_with_receiver(
            cluster, receiver, "busy shop", {"notifications": {"pacing_factor": 100}}
        )
        customers = []
        with cluster.client(shop, 0, "app") as app:
            for n in range(24):
                person = app.identity.identify(anonymous_id=f"fan-{n}").customer_id
                app.consent.grant(person, "marketing:push")
                app.alerts.subscribe(person, "CAP")
                customers.append(person)
        receiver.fail_next = 15  # refuse the first deliveries: retried with the same webhook-id
        # The same restock reported by both tills at once, through both processes.
        restocks = [cluster.client(shop, n, "pos") for n in range(2)]
        racers = [
            threading.Thread(target=client.inventory.set_level, args=("CAP", 30))
            for client in restocks
        ]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(60)
        for client in restocks:
            client.close()
        # One process restarts while messages are in flight; its leases run out, others
        # (or it, once back) take the work over.
        restarted = cluster.servers[0]
        restarted.port = int(restarted.url.rsplit(":", 1)[1])  # its proxy still points there
        restarted.stop()
        restarted.start()
        pause = threading.Event()
        with cluster.admin(shop) as admin:
            for _ in range(600):
                done = admin.alerts.metrics().kinds.get("back_in_stock")
                if done is not None and done.sent + done.failed == len(customers):
                    break
                # A message delivered by the stopped process just before it stopped, but not
                # yet marked sent, waits for its lease to run out (a few seconds here).
                pause.wait(0.1)
            assert done is not None, "no back-in-stock message was triggered"
            assert (done.triggered, done.sent, done.failed) == (24, 24, 0)
        assert sorted(p["data"]["customer_id"] for p in receiver.unique) == sorted(customers)
        assert len(receiver.requests) >= len(customers)
        assert receiver.refused == 0
