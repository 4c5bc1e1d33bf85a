"""Notes, preferred channels, segments and gift corrections stay exact when answers are lost
after the server applied the write and the SDK retries (issue 19).

Real `omnisdk-server serve` processes (two on one PostgreSQL database; one on a SQLite file)
behind fault proxies that lose a quarter of the write answers (tests/fault_proxy.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

import omnisdk
from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess, TestTenant
from server_stub.services import segments, staff
from server_stub.services.staff import Role
from server_stub.storage.database import Database
from server_stub.storage.tables import (
    annotation_revisions,
    annotations_table,
    audit_log,
    changes,
    preference_declarations,
)
from tests.conftest import DATABASES, PostgresDatabases, new_database_url
from tests.fault_proxy import FaultProxy, writes

FAST_RETRIES = omnisdk.RetryPolicy(max_retries=12, initial_delay=0.005, max_delay=0.05)
LOSS_RATE = 0.25


@dataclass
class Cluster:
    servers: list[ServerProcess]
    proxies: list[FaultProxy]
    shop: TestTenant
    agent: str  # a staff key of customer service

    def client(self, n: int, key: str) -> omnisdk.Client:
        proxy = self.proxies[n % len(self.proxies)]
        return omnisdk.Client(proxy.url, key, channel="admin", retry_policy=FAST_RETRIES)

    def web(self, n: int) -> omnisdk.Client:
        proxy = self.proxies[n % len(self.proxies)]
        key = self.shop.key("web")
        return omnisdk.Client(proxy.url, key, channel="web", retry_policy=FAST_RETRIES)

    @property
    def dropped(self) -> int:
        return sum(proxy.dropped for proxy in self.proxies)

    def count(self, table: Any, *where: Any) -> int:
        async def work(conn: Any) -> int:
            found = await conn.execute(
                select(func.count()).where(table.c.tenant_id == self.shop.id, *where)
            )
            return int(found.scalar_one())

        return self.servers[0]._write(work)


@pytest.fixture(scope="module", params=DATABASES)
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("console-faults")
    url = new_database_url(request.param, directory, postgres_databases)
    with contextlib.ExitStack() as stack:
        first = stack.enter_context(ServerProcess(url, log_path=directory / "first.log"))
        servers = [first]
        if request.param == "postgres":
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
        shop = first.create_tenant("console shop", ATTRIBUTED_EVENTS)

        async def add_agent(conn: Any) -> str:
            return (await staff.create(conn, shop.id, "Kim", "service", Role.AGENT))[1]

        yield Cluster(servers, proxies, shop, first._write(add_agent))


def test_notes_edits_and_deletions_are_applied_once_each(cluster: Cluster) -> None:
    with cluster.web(0) as web:
        amy = web.identity.identify(anonymous_id="notes-amy").customer_id
    before = cluster.dropped
    written = []
    for n in range(12):
        with cluster.client(n, cluster.agent) as kim:
            written.append(kim.identity.annotate(amy, "service", "Kim", f"note {n}"))
    for n, note in enumerate(written[:6]):
        with cluster.client(n + 1, cluster.agent) as kim:
            kim.identity.edit_annotation(note.annotation_id, text=f"note {n}, edited")
    for n, note in enumerate(written[:3]):
        with cluster.client(n, cluster.agent) as kim:
            kim.identity.delete_annotation(note.annotation_id, "written on the wrong customer")
    assert cluster.dropped > before  # answers were lost, and retried
    ours = annotations_table.c.customer_id == amy
    assert cluster.count(annotations_table, ours) == 12
    assert cluster.count(annotations_table, ours, annotations_table.c.deleted_at.is_not(None)) == 3
    ids = [note.annotation_id for note in written]
    # 12 created + 6 edited + 3 deleted: one revision per applied change, none twice.
    assert cluster.count(annotation_revisions, annotation_revisions.c.annotation_id.in_(ids)) == 21
    feed = (changes.c.kind == "annotation") & (changes.c.customer_id == amy)
    assert cluster.count(changes, feed) == 21
    with cluster.client(0, cluster.agent) as kim:
        listed = kim.identity.annotations(amy)
    assert sorted(n.text for n in listed) == sorted(
        [f"note {n}, edited" for n in range(3, 6)] + [f"note {n}" for n in range(6, 12)]
    )


def test_declared_preferences_are_recorded_once_per_change(cluster: Cluster) -> None:
    with cluster.web(0) as web:
        amy = web.identity.identify(anonymous_id="prefs-amy").customer_id
    sequence = ["sms", "sms", "email", None, "app", "app"]
    for n, channel in enumerate(sequence):
        with cluster.web(n) as web:
            answer = web.identity.declare_preferred_channel(amy, channel)
            assert answer.channel == channel or (channel is None and answer.source != "declared")
    ours = preference_declarations.c.customer_id == amy
    assert cluster.count(preference_declarations, ours) == 4  # sms, email, withdrawn, app
    with cluster.web(1) as web:
        assert web.identity.preferred_channel(amy).channel == "app"


def test_segments_and_their_memberships_are_exact(cluster: Cluster) -> None:
    admin = cluster.shop.key("admin")
    with cluster.client(0, admin) as client:
        created = client.segments.create("gold", {"traits.tier": "gold"})
    people = []
    for n in range(8):
        with cluster.web(n) as web:
            tier = "gold" if n % 2 == 0 else "silver"
            people.append(
                web.identity.identify(anonymous_id=f"tier-{n}", traits={"tier": tier}).customer_id
            )
    server = cluster.servers[0]

    # What the servers' background evaluators do, done here to the end (no waiting on time).
    async def drain_all() -> None:
        database = Database(server.database_url)
        try:
            await segments.backfill_due(database)
            while await segments.drain(database):
                pass
        finally:
            await database.dispose()

    asyncio.run(drain_all())
    with cluster.client(1, admin) as client:
        listed = client.segments.list()
        page = client.segments.members("gold")
    assert [s.name for s in listed] == ["gold"] and created.version == 1
    assert {m.customer_id for m in page.items} == set(people[0::2])
    entered = changes.c.kind == "segment.entered"
    assert cluster.count(changes, entered, changes.c.customer_id.in_(people)) == 4


def test_a_gift_correction_retried_is_one_correction(cluster: Cluster) -> None:
    with cluster.web(0) as web:
        amy = web.identity.identify(anonymous_id="gift-amy").customer_id
    headers = {"Authorization": f"Bearer {cluster.shop.key('web')}"}
    line = {"sku": "KIDS-31", "quantity": 1, "unit_price": 30.0}
    order = {"reference": "G-1", "currency": "EUR", "customer_id": amy, "lines": [line]}
    response = httpx.post(f"{cluster.servers[0].url}/v1/orders", json=order, headers=headers)
    assert response.status_code in (200, 201), response.text
    before = cluster.dropped
    answered = 0
    for n in range(60):  # a caller repeating it through lossy proxies, some answers lost
        if answered >= 3 and cluster.dropped > before:
            break
        url = cluster.proxies[n % 2].url
        with contextlib.suppress(httpx.HTTPError):
            put = httpx.put(
                f"{url}/v1/orders/G-1/lines/1/gift", json={"gift": True}, headers=headers
            )
            answered += put.status_code == 200
    assert answered >= 1 and cluster.dropped > before
    with cluster.web(1) as web:
        assert web.identity.get_profile(amy).buyer_type == "gift"
    corrected = audit_log.c.action == "order.gift_corrected"
    assert cluster.count(audit_log, corrected) == 1
