"""Analytics writes through lost answers: real server processes (two on one PostgreSQL
database, one on SQLite) behind fault proxies that lose about half of the write answers after
the server applied them; the caller retries with the same Idempotency-Key. Exact totals."""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

import omnisdk
from omnisdk.core import recs
from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess, TestTenant
from tests.conftest import DATABASES, PostgresDatabases, new_database_url
from tests.fault_proxy import FaultProxy, writes

BUYERS = 34


@dataclass
class Cluster:
    servers: list[ServerProcess]
    proxies: list[FaultProxy]
    shop: TestTenant

    def post(self, n: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST through proxy `n`, retrying lost answers with the same Idempotency-Key."""
        key = uuid.uuid4().hex
        headers = {"Authorization": f"Bearer {self.shop.key('admin')}", "Idempotency-Key": key}
        for _ in range(20):
            try:
                answer = httpx.post(
                    self.proxies[n % 2].url + path, json=body, headers=headers, timeout=60
                )
            except httpx.TransportError:
                continue
            if answer.status_code == 202:  # the job outlasted the server's wait: follow it
                return self.follow(n, answer.json()["job_id"])
            assert answer.status_code == 200, answer.text
            return dict(answer.json())
        raise AssertionError(f"{path}: every answer was lost")

    def follow(self, n: int, job_id: str) -> dict[str, Any]:
        """The result of a job, once it has ended (it must end done)."""
        while True:
            job = self.get(n, f"/v1/jobs/{job_id}")
            if job["state"] not in ("queued", "running"):
                assert job["state"] == "done", job
                return dict(job["result"])
            time.sleep(0.2)  # polling pace only: nothing is asserted about time

    def get(self, n: int, path: str, **params: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.shop.key('admin')}"}
        answer = httpx.get(
            self.servers[n % len(self.servers)].url + path,
            params=params,
            headers=headers,
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    @property
    def dropped(self) -> int:
        return sum(proxy.dropped for proxy in self.proxies)


@pytest.fixture(scope="module", params=DATABASES)
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("analytics")
    url = new_database_url(request.param, directory, postgres_databases)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ServerProcess(url, log_path=directory / "first.log"))
        servers = [first]
        if request.param == "postgres":
            servers.append(
                stack.enter_context(
                    ServerProcess(url, secret_key=first.secret_key, log_path=directory / "2.log")
                )
            )
        proxies = [
            stack.enter_context(FaultProxy(servers[n % len(servers)].url, writes(0.5, n + 18)))
            for n in range(2)
        ]
        yield Cluster(servers, proxies, first.create_tenant("analytics shop"))


def purchases_of(n: int) -> int:
    return 1 if n < 4 else 2 + n % 2  # 4 one-time buyers, 15 with 2 purchases, 15 with 3


def test_lifetime_value_fit_and_journey_aggregate_through_lost_answers(cluster: Cluster) -> None:
    now = datetime.now(UTC)

    def seed(first: int) -> list[str]:
        # Straight to a server, four clients at once: the writes under test come after.
        made = []
        url = cluster.servers[0].url
        with omnisdk.Client(url, cluster.shop.key("web"), channel="web") as web:
            for n in range(first, BUYERS, 4):
                who = web.identity.identify(anonymous_id=f"ltv-{n}").customer_id
                made.append(who)
                for k in range(purchases_of(n)):
                    web.orders.record(
                        f"L-{n}-{k}",
                        [{"sku": "TR2-38", "quantity": 1, "unit_price": 20.0 + n % 5}],
                        currency="EUR",
                        customer_id=who,
                        placed_at=now - timedelta(days=300 - 90 * k - n),
                    )
        return made

    with ThreadPoolExecutor(4) as pool:
        buyers = [who for made in pool.map(seed, range(4)) for who in made]
    dropped = cluster.dropped
    fit = cluster.post(0, "/v1/analytics/ltv", {"holdout_days": 60})
    again = cluster.post(1, "/v1/analytics/ltv", {"holdout_days": 60})
    assert fit["model"] == "bgnbd+gamma_gamma"
    assert fit["customers"] == BUYERS and fit["repeat_buyers"] == 30
    assert sum(bin["customers"] for bin in fit["clv_histogram"]) == BUYERS
    # The same orders fitted by either process give the same parameters (deterministic).
    assert again["parameters"] == fit["parameters"] and again["clv_total"] == fit["clv_total"]
    with omnisdk.Client(cluster.servers[-1].url, cluster.shop.key("web"), channel="web") as web:
        profiles = [web.identity.get_profile(who) for who in buyers]
    assert all(p.ltv is not None and p.rfm is not None for p in profiles)
    # Ties share the lower rank: the 19 buyers with 1 or 2 purchase days rank lowest.
    assert sorted(p.rfm.frequency for p in profiles if p.rfm) == [1] * 19 + [3] * 15

    # A retry after a lost answer starts a job that finds the days stored: `days_stored` is
    # the answer that does not depend on which run wrote them.
    written = cluster.post(0, "/v1/analytics/journeys/refresh", {"days": 7})
    assert len(written["days_stored"]) == 7
    again = cluster.post(1, "/v1/analytics/journeys/refresh", {"days": 7})
    assert again["days_written"] == [] and again["days_stored"] == written["days_stored"]
    report = cluster.get(
        1,
        "/v1/analytics/attribution",
        since=(now - timedelta(days=7))
        .replace(hour=0, minute=0, second=0, microsecond=0)
        .isoformat(),
        bootstrap=0,
    )
    assert report["days_from_aggregate"] == 7
    assert cluster.dropped > dropped  # answers were lost, and retried


SKUS = [f"rec-{n:02d}" for n in range(12)]


def basket_events(rng: random.Random, step: int, count: int) -> list[dict[str, Any]]:
    """Orders (with several SKUs) and cart adds by a dozen visitors, each with its event id."""
    made = []
    for n in range(count):
        visitor = f"rec-visitor-{rng.randrange(12)}"
        if rng.random() < 0.4:
            name = "order_completed"
            properties: dict[str, Any] = {
                "order_id": f"R-{step}-{n}",
                "skus": rng.sample(SKUS, rng.randint(1, 4)),
            }
        else:
            name, properties = "product_added", {"sku": rng.choice(SKUS)}
        made.append(
            {
                "event_id": f"rec-{step}-{n}",
                "name": name,
                "anonymous_id": visitor,
                "properties": properties,
            }
        )
    return made


def one_pass(sent: list[dict[str, Any]]) -> dict[str, Any]:
    """The model one pass over every basket event gives (omnisdk.core.recs.build): each order
    a basket, each visitor's cart adds one more."""
    orders = [e["properties"]["skus"] for e in sent if e["name"] == "order_completed"]
    added: dict[str, list[str]] = {}
    for event in sent:
        if event["name"] == "product_added":
            added.setdefault(event["anonymous_id"], []).append(event["properties"]["sku"])
    return recs.build(orders + list(added.values()))


def test_recommendations_rebuilt_through_lost_answers_give_one_pass_over_every_basket(
    cluster: Cluster,
) -> None:
    """Events sent through both processes (answers lost, retried), builds started through both
    at once (the second joins the first's job; a retry after a lost answer counts nothing
    twice): each incremental build publishes the model of one pass over everything sent. On
    PostgreSQL the windows' counts are appended beside the counts and folded in by the cut."""
    shop = cluster.servers[0].create_tenant("recommendations shop", ATTRIBUTED_EVENTS)
    here = dataclasses.replace(cluster, shop=shop)
    rng = random.Random(21)
    sent: list[dict[str, Any]] = []
    dropped = cluster.dropped

    def rebuild(n: int) -> dict[str, Any]:
        return here.post(n, "/v1/content/recommendations/rebuild", {})

    for step in range(3):
        events = basket_events(rng, step, 60)
        for n, start in enumerate(range(0, len(events), 20)):
            stored = here.post(n, "/v1/events/batch", {"events": events[start : start + 20]})
            assert not stored["rejected"], stored
        sent += events
        with ThreadPoolExecutor(2) as pool:
            assert len(list(pool.map(rebuild, range(2)))) == 2
        model = here.get(step, "/v1/content/recommendations")
        assert {key: model[key] for key in ("baskets", "together", "popular")} == one_pass(sent)
    assert cluster.dropped > dropped  # answers were lost, and retried
