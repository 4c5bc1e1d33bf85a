"""Orders stay exact when server processes, lost answers, retries and offline tills meet.

Real `omnisdk-server serve` processes (two on one PostgreSQL database; one on a SQLite file)
behind fault proxies that lose about a quarter of the write answers after the server applied
the write, so the SDK retries with the same Idempotency-Key. Every test states exact totals.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

import omnisdk
from omnisdk.testing import ServerProcess, TestTenant
from tests.conftest import DATABASES, PostgresDatabases, new_database_url
from tests.fault_proxy import FaultProxy, writes

FAST_RETRIES = omnisdk.RetryPolicy(max_retries=12, initial_delay=0.005, max_delay=0.05)
LOSS_RATE = 0.25
PRICES = (Decimal("19.99"), Decimal("0.10"), Decimal("120.00"), Decimal("7.35"))


@dataclass
class Cluster:
    servers: list[ServerProcess]
    proxies: list[FaultProxy]
    shop: TestTenant

    def client(self, n: int, channel: str = "web", **options: object) -> omnisdk.Client:
        proxy = self.proxies[n % len(self.proxies)]
        return omnisdk.Client(
            proxy.url,
            self.shop.key(channel),
            channel=channel,
            retry_policy=FAST_RETRIES,
            **options,  # type: ignore[arg-type]
        )

    def direct(self, n: int = 0) -> omnisdk.Client:
        server = self.servers[n % len(self.servers)]
        return omnisdk.Client(server.url, self.shop.key("admin"), channel="admin")

    @property
    def dropped(self) -> int:
        return sum(proxy.dropped for proxy in self.proxies)


@pytest.fixture(scope="module", params=DATABASES)
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("orders")
    url = new_database_url(request.param, directory, postgres_databases)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ServerProcess(url, log_path=directory / "first.log"))
        servers = [first]
        if request.param == "postgres":  # SQLite is served by one process (docs/server.md)
            servers.append(
                stack.enter_context(
                    ServerProcess(
                        url, secret_key=first.secret_key, log_path=directory / "second.log"
                    )
                )
            )
        proxies = [
            stack.enter_context(FaultProxy(servers[n % len(servers)].url, writes(LOSS_RATE, n)))
            for n in range(2)
        ]
        yield Cluster(servers, proxies, first.create_tenant("order shop"))


def line(n: int) -> dict[str, object]:
    return {"sku": f"SKU-{n % 7}", "quantity": 1 + n % 3, "unit_price": float(PRICES[n % 4])}


def value(n: int) -> Decimal:
    return PRICES[n % 4] * (1 + n % 3)


def test_two_hundred_orders_through_lost_answers_are_two_hundred_orders(cluster: Cluster) -> None:
    with cluster.client(0, "app") as app:
        amy = app.identity.identify(anonymous_id="orders-amy").customer_id
        app.consent.grant(amy, "analytics")
    dropped_before = cluster.dropped

    def channel_worker(worker: int) -> None:
        channel = ("web", "app", "pos", "pos")[worker]
        with cluster.client(worker, channel) as client:
            for k in range(50):
                n = worker * 50 + k
                store = {"store_id": f"store-{worker}"} if channel == "pos" else {}
                buyer = {"customer_id": amy} if channel != "pos" or n % 2 else {}
                recorded = client.orders.record(
                    f"R-{n}", [line(n), line(n + 1)], currency="EUR", **store, **buyer
                )
                assert recorded.order.reference == f"R-{n}"

    threads = [threading.Thread(target=channel_worker, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert cluster.dropped > dropped_before  # answers were lost, and retried

    with cluster.direct() as admin:
        stored = [admin.orders.get(f"R-{n}") for n in range(200)]
        hers = admin.orders.of_customer(amy, limit=200)
        profile = admin.identity.get_profile(amy)
    assert len({order.order_id for order in stored}) == 200
    expected = sum((value(n) + value(n + 1) for n in range(200)), Decimal(0))
    assert sum(Decimal(str(order.total)) for order in stored) == expected
    linked = [n for n in range(200) if n < 100 or n % 2]
    assert len(hers) == len(linked) == 150
    assert {order.link_method for order in hers} == {"checkout"}
    assert sum(1 for order in stored if order.customer_id is None) == 50
    assert profile.orders.count == 150
    assert profile.purchases.by_channel == {"app": 50, "pos": 50, "web": 50}


def test_refunds_and_till_returns_reduce_the_net_value_once(cluster: Cluster) -> None:
    with cluster.client(0, "web") as web:
        amy = web.identity.identify(anonymous_id="refunds-amy").customer_id
        web.orders.record(
            "F-1",
            [
                {"sku": "TR2-38", "quantity": 2, "unit_price": 89.90},
                {"sku": "SOCK", "quantity": 3, "unit_price": 4.99},
            ],
            currency="EUR",
            customer_id=amy,
        )
        issued = web.returns.issue(
            "F-1",
            [{"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.90}],
            customer_id=amy,
            currency="EUR",
        )
        for _ in range(3):  # the same refund sent again is the same refund
            web.orders.refund("F-1", "RF-1", lines={2: 1})
            web.orders.refund("F-1", "RF-2", amount=1.00)
    with cluster.client(1, "pos") as till:
        for _ in range(2):  # the till's retry of one transaction
            till.returns.redeem(issued.token, {"1": 1}, "till-tx-1", "warsaw-1", "original_payment")
    with cluster.direct() as admin:
        order = admin.orders.get("F-1")
    assert Decimal(str(order.total)) == Decimal("194.77")
    assert Decimal(str(order.refunded)) == Decimal("4.99") + Decimal("1.00") + Decimal("89.90")
    assert Decimal(str(order.net)) == Decimal("98.88")
    assert [line.returned_quantity for line in order.lines] == [1, 1]


def test_sales_queued_by_an_offline_till_arrive_once_linked_by_her_customer_code(
    cluster: Cluster, tmp_path: Path
) -> None:
    with cluster.client(0, "app") as app:
        amy = app.identity.identify(anonymous_id="queued-amy").customer_id
        app.consent.grant(amy, "analytics")
        code = app.orders.customer_code(amy).code
    with cluster.client(1, "pos", data_dir=tmp_path / "till") as till:
        assert till.orders.verify_code(code).valid  # offline-capable check, keys now cached
        for n in range(40):
            till.orders.queue(
                f"Q-{n}",
                [line(n)],
                currency="EUR",
                store_id="krakow-2",
                customer_code=code if n % 4 == 0 else None,
            )
        assert till.events.flush(timeout=60) == 0
        assert till.outbox.status().dead_letters == 0
    with cluster.direct() as admin:
        stored = [admin.orders.get(f"Q-{n}") for n in range(40)]
        hers = [order for order in admin.orders.of_customer(amy) if order.reference.startswith("Q")]
    assert sum(Decimal(str(order.total)) for order in stored) == sum(
        (value(n) for n in range(40)), Decimal(0)
    )
    assert sorted(order.reference for order in hers) == sorted(f"Q-{n}" for n in range(0, 40, 4))
    assert {(order.link_method, order.link_confidence, order.channel) for order in hers} == {
        ("customer_code", 1.0, "pos")
    }


def test_an_async_till_queues_and_records_the_same_way(cluster: Cluster, tmp_path: Path) -> None:
    async def till_work() -> list[str]:
        async with omnisdk.AsyncClient(
            cluster.proxies[0].url,
            cluster.shop.key("pos"),
            channel="pos",
            data_dir=tmp_path / "async-till",
            retry_policy=FAST_RETRIES,
        ) as till:
            keys = [
                await till.orders.queue(f"AQ-{n}", [line(n)], currency="EUR", store_id="s-9")
                for n in range(20)
            ]
            now = await till.orders.record("AQ-now", [line(1)], currency="EUR", store_id="s-9")
            assert now.created and now.order.customer_id is None
            assert await till.events.flush(timeout=60) == 0
            return keys

    keys = asyncio.run(till_work())
    assert keys == [f"order-AQ-{n}" for n in range(20)]
    with cluster.direct() as admin:
        stored = [admin.orders.get(f"AQ-{n}") for n in range(20)]
    assert [Decimal(str(order.total)) for order in stored] == [value(n) for n in range(20)]


def test_tills_racing_on_one_order_never_refund_more_than_it_is_worth(cluster: Cluster) -> None:
    with cluster.client(0, "pos") as till:
        till.orders.record(
            "RACE-1",
            [{"sku": "TV-55", "quantity": 1, "unit_price": 100.0}],
            currency="EUR",
            store_id="s-1",
        )
    outcomes: list[str] = []
    recorded: list[str] = []
    lock = threading.Lock()

    def refund(n: int) -> None:
        with cluster.client(n, "pos") as till:
            try:
                till.orders.refund("RACE-1", f"RACE-RF-{n}", amount=30.0)
                result = "refunded"
            except omnisdk.ValidationError:
                result = "refused"
        with lock:
            outcomes.append(result)

    def record_again(n: int) -> None:
        with cluster.client(n, "pos") as till:
            try:  # the same sale sent by six tills at six moments: one order
                same = till.orders.record(
                    "RACE-2",
                    [{"sku": "CAP", "quantity": 1, "unit_price": 15.0}],
                    currency="EUR",
                    store_id="s-1",
                )
                result = f"created={same.created}"
            except omnisdk.OmnisdkError as error:
                result = repr(error)
        with lock:
            recorded.append(result)

    threads = [threading.Thread(target=refund, args=(n,)) for n in range(6)]
    threads += [threading.Thread(target=record_again, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with cluster.direct() as admin:
        order = admin.orders.get("RACE-1")
        again = admin.orders.get("RACE-2")
    assert sorted(outcomes) == ["refunded"] * 3 + ["refused"] * 3  # 3 x 30 fit in 100, not 4
    assert (order.refunded, order.net) == (90.0, 10.0)
    assert again.total == 15.0
    # One till created it; the others were told it exists (a retry whose first answer was
    # lost may also be told so: its first attempt created it).
    assert len(recorded) == 6 and set(recorded) <= {"created=True", "created=False"}
    assert recorded.count("created=True") <= 1
