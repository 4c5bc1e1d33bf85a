"""Carts, merges and sessions stay exact when several server processes, lost answers, retries,
sign-ins and forks meet.

Real `omnisdk-server serve` processes (two on one PostgreSQL database; one on a SQLite file),
behind two fault proxies (tests/fault_proxy.py) that loses answers after the server applied
the request, so the SDK retries with the same idempotency key or operation ids. Every test
states the exact outcome.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

import omnisdk
from omnisdk.core.cart import MergePolicy, merged_quantity
from omnisdk.testing import ServerProcess, TestTenant
from tests.conftest import DATABASES, PostgresDatabases, new_database_url
from tests.fault_proxy import FaultProxy, writes

FAST_RETRIES = omnisdk.RetryPolicy(max_retries=10, initial_delay=0.005, max_delay=0.05)
LOSS_RATE = 0.25  # of write answers lost after the server applied the write
POLICIES = [MergePolicy.MAX, MergePolicy.SUM]


@dataclass
class Cluster:
    servers: list[ServerProcess]
    proxies: list[FaultProxy]
    shops: dict[MergePolicy, TestTenant] = field(default_factory=dict)

    def client(self, n: int, policy: MergePolicy, channel: str = "web") -> omnisdk.Client:
        """A client of the n-th device, talking to one of the servers through its proxy."""
        proxy = self.proxies[n % len(self.proxies)]
        key = self.shops[policy].key(channel)
        return omnisdk.Client(proxy.url, key, channel=channel, retry_policy=FAST_RETRIES)

    def direct(self, n: int, policy: MergePolicy) -> omnisdk.Client:
        """A client with no proxy in between (to read what the servers hold)."""
        server = self.servers[n % len(self.servers)]
        return omnisdk.Client(server.url, self.shops[policy].key("web"), channel="web")

    @property
    def dropped(self) -> int:
        return sum(proxy.dropped for proxy in self.proxies)


@pytest.fixture(scope="module", params=DATABASES)
def cluster(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[Cluster]:
    directory = tmp_path_factory.mktemp("faults")
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
        found = Cluster(servers, proxies)
        for policy in POLICIES:
            found.shops[policy] = first.create_tenant(
                f"shop {policy}", {"carts": {"merge_policy": policy.value}}
            )
        yield found


def together(*work: Callable[[], Any]) -> list[Any]:
    """Run the callables at the same moment on threads; their results, or raise the first
    error."""
    start = threading.Barrier(len(work))
    results: list[Any] = [None] * len(work)
    errors: list[BaseException] = []

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = work[n]()
        except BaseException as error:  # surfaced below, in the test's thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(work))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]
    return results


def units(cart: Any, key: str = "TR2") -> int:
    return sum(line.quantity for line in cart.lines if line.key == key)


# --- carts ----------------------------------------------------------------------------------


def test_sixteen_clients_on_one_cart_count_every_acknowledged_add_once(cluster: Cluster) -> None:
    policy = MergePolicy.MAX
    with cluster.client(0, policy) as web:
        amy = web.identity.identify(anonymous_id="sixteen").customer_id
    dropped_before = cluster.dropped

    def device(n: int) -> int:
        added = 0
        with cluster.client(n, policy) as client:
            for step in range(6):
                quantity = 1 + (n + step) % 3
                answer = client.carts.add(amy, "TR2", quantity)
                assert len(answer.applied) + len(answer.duplicates) == 1
                added += quantity
        return added

    added = together(*(lambda n=n: device(n) for n in range(16)))
    with cluster.direct(1, policy) as reader:
        assert units(reader.carts.get(amy)) == sum(added)
    assert cluster.dropped > dropped_before  # answers were lost, and retried


@dataclass
class Lane:
    """The clients of one sequence of sign-in rounds: the shop, three devices, a reader."""

    web: omnisdk.Client
    devices: list[omnisdk.Client]
    reader: omnisdk.Client


def sign_in_racing_adds(lane: Lane, policy: MergePolicy, round: int) -> None:
    """A customer has 3 units, a guest 2; the guest signs in while three devices add 2 units
    each to the guest's cart. Every add counts once, before or after the merge."""
    customer_units, guest_units, adds_each = 3, 2, 2
    ref, anonymous = f"race-{round}", f"race-guest-{round}"
    customer = lane.web.identity.identify(customer_ref=ref).customer_id
    lane.web.carts.add(customer, "TR2", customer_units)
    guest = lane.web.identity.identify(anonymous_id=anonymous).customer_id
    lane.web.carts.add(guest, "TR2", guest_units)

    def add_as_guest(device: omnisdk.Client) -> None:
        for _ in range(adds_each):
            device.carts.add(guest, "TR2", 1)

    signed_in, *_ = together(
        lambda: lane.web.identity.identify(anonymous_id=anonymous, customer_ref=ref),
        *(lambda d=d: add_as_guest(d) for d in lane.devices),
    )
    assert signed_in.customer_id == customer
    assert signed_in.merged_customer_ids == [guest]
    (report,) = signed_in.cart_merges
    folded = report.from_lines["TR2"]  # the guest's units at the merge
    before_merge = folded - guest_units  # adds that reached the guest's own cart
    assert 0 <= before_merge <= len(lane.devices) * adds_each
    assert report.result["TR2"] == merged_quantity(policy, customer_units, folded)
    expected = report.result["TR2"] + len(lane.devices) * adds_each - before_merge
    assert units(lane.reader.carts.get(customer)) == expected
    by_guest_id = lane.reader.carts.get(guest)
    assert by_guest_id.customer_id == customer and units(by_guest_id) == expected


@pytest.mark.parametrize("policy", POLICIES)
def test_adds_racing_a_sign_in_are_all_in_the_merged_cart(
    cluster: Cluster, policy: MergePolicy
) -> None:
    rounds, lanes = 20, 2  # two lanes of rounds at a time, on different customers
    with contextlib.ExitStack() as stack:
        enter = stack.enter_context
        each = [
            Lane(
                enter(cluster.client(4 * n, policy)),
                [enter(cluster.client(4 * n + d, policy)) for d in range(1, 4)],
                enter(cluster.direct(n, policy)),
            )
            for n in range(lanes)
        ]
        together(
            *(
                lambda lane=lane, n=n: [
                    sign_in_racing_adds(lane, policy, r) for r in range(n, rounds, lanes)
                ]
                for n, lane in enumerate(each)
            )
        )


@pytest.mark.parametrize("policy", POLICIES)
def test_a_guest_add_retried_after_sign_in_is_a_duplicate(
    cluster: Cluster, policy: MergePolicy
) -> None:
    server = cluster.servers[0]
    key = cluster.shops[policy].key("web")
    carts_lost = FaultProxy(server.url, lambda method, path: path.startswith("/v1/carts/"))
    with carts_lost, omnisdk.Client(server.url, key, channel="web") as web:
        customer = web.identity.identify(customer_ref="retry-ref").customer_id
        web.carts.add(customer, "TR2", 1)
        guest = web.identity.identify(anonymous_id="retry-guest").customer_id
        op = web.carts.ops.add(guest, "TR2", 2, None)
        hasty = omnisdk.Client(
            carts_lost.url, key, channel="web", retry_policy=omnisdk.RetryPolicy(max_retries=0)
        )
        with hasty, pytest.raises(omnisdk.APIConnectionError):
            hasty.carts.apply(guest, [op])  # applied, but the answer was lost
        signed_in = web.identity.identify(anonymous_id="retry-guest", customer_ref="retry-ref")
        assert signed_in.cart_merges[0].from_lines == {"TR2": 2}
        retried = web.carts.apply(guest, [op])  # the device tries again, after the sign-in
    assert retried.customer_id == customer
    assert retried.duplicates == [op.op_id] and retried.applied == []
    assert units(retried) == merged_quantity(policy, 1, 2)


def test_a_split_gives_back_the_guest_cart_with_the_adds_addressed_to_it_since(
    cluster: Cluster,
) -> None:
    policy = MergePolicy.SUM
    shop = cluster.shops[policy]
    with cluster.client(0, policy) as web, shop.client("admin") as admin:
        customer = web.identity.identify(customer_ref="split-ref").customer_id
        web.carts.add(customer, "TR2", 1)
        guest = web.identity.identify(anonymous_id="split-guest").customer_id
        web.carts.add(guest, "TR2", 2)
        merge_id = web.identity.identify(
            anonymous_id="split-guest", customer_ref="split-ref"
        ).merge_ids[0]
        web.carts.add(guest, "CAP", 1)  # addressed to the guest after the merge
        web.carts.add(customer, "TR2", 4)  # the customer's own, after the merge
        assert units(web.carts.get(customer)) == 1 + 2 + 4
        admin.identity.split(merge_id)
        survivor, split_off = web.carts.get(customer), web.carts.get(guest)
    assert {line.key: line.quantity for line in survivor.lines} == {"TR2": 5}
    assert split_off.customer_id == guest
    assert {line.key: line.quantity for line in split_off.lines} == {"CAP": 1, "TR2": 2}


def test_a_forked_child_adds_under_its_own_replica(cluster: Cluster) -> None:
    policy = MergePolicy.MAX
    server = cluster.servers[0]
    key = cluster.shops[policy].key("web")
    with omnisdk.Client(server.url, key, channel="web") as web:
        amy = web.identity.identify(anonymous_id="forking").customer_id
        web.carts.add(amy, "TR2", 1)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: builds its add with the parent's client, sends it on its own
            status = 1
            try:
                op = web.carts.ops.add(amy, "TR2", 1, None)
                with omnisdk.Client(server.url, key, channel="web") as own:
                    answer = own.carts.apply(amy, [op])
                os.write(write, f"{op.op_id} {len(answer.applied)}".encode())
                status = 0
            finally:
                os._exit(status)
        os.close(write)
        child_op, child_applied = os.read(read, 200).decode().split()
        os.close(read)
        assert os.waitpid(pid, 0)[1] == 0
        parent = web.carts.add(amy, "TR2", 1)
    assert child_applied == "1" and parent.applied and parent.duplicates == []
    assert child_op.rpartition(":")[0] != parent.applied[0].rpartition(":")[0]
    assert units(parent) == 3


# --- sessions -------------------------------------------------------------------------------


def test_first_session_writes_of_two_devices_both_survive(cluster: Cluster) -> None:
    policy = MergePolicy.MAX
    with contextlib.ExitStack() as stack:
        laptop = stack.enter_context(cluster.client(0, policy, "web"))
        phone = stack.enter_context(cluster.client(1, policy, "app"))
        readers = [stack.enter_context(cluster.direct(n, policy)) for n in range(2)]
        for round in range(20):
            amy = laptop.identity.identify(anonymous_id=f"session-{round}").customer_id
            together(
                lambda amy=amy: laptop.sessions.set(amy, {"viewed": ["TR2"]}),
                lambda amy=amy: phone.sessions.set(amy, {"landing": "/spring"}),
            )
            for reader in readers:
                entries = reader.sessions.get(amy).entries
                assert {k: e.value for k, e in entries.items()} == {
                    "viewed": ["TR2"],
                    "landing": "/spring",
                }


def test_first_session_writes_of_one_key_have_one_winner_everywhere(cluster: Cluster) -> None:
    policy = MergePolicy.MAX
    with contextlib.ExitStack() as stack:
        laptop = stack.enter_context(cluster.client(0, policy, "web"))
        phone = stack.enter_context(cluster.client(1, policy, "app"))
        readers = [stack.enter_context(cluster.direct(n, policy)) for n in range(2)]
        for round in range(20):
            amy = laptop.identity.identify(anonymous_id=f"same-key-{round}").customer_id
            answers = together(
                lambda amy=amy: laptop.sessions.set(amy, {"chat": "from laptop"}),
                lambda amy=amy: phone.sessions.set(amy, {"chat": "from phone"}),
            )
            seen = [answer.entries["chat"] for answer in answers]
            latest = max(seen, key=lambda e: (e.written_at, e.channel, e.value))
            for reader in readers:
                final = reader.sessions.get(amy).entries["chat"]
                # The later write (time, then channel, then value) wins, on every server.
                assert (final.value, final.channel, final.written_at) == (
                    latest.value,
                    latest.channel,
                    latest.written_at,
                )


# --- sign-ins (issue 21: identifier locks, not a tenant-wide one) ----------------------------


def test_sign_ins_racing_through_lost_answers_end_in_one_customer_per_person(
    cluster: Cluster,
) -> None:
    """Four devices of each of six people, each its own guest customer with a cart line,
    sign in with the person's e-mail at the same moment, on both servers, through proxies
    that lose answers (the SDK retries). Each person ends as one customer holding every
    device, made of exactly three merges, with every device's cart line; people stay apart."""
    policy, people, devices = MergePolicy.SUM, 6, 4
    shop = cluster.shops[policy]
    with contextlib.ExitStack() as stack:
        clients = {
            (p, d): stack.enter_context(cluster.client(p * devices + d, policy))
            for p in range(people)
            for d in range(devices)
        }
        guests = {}
        for (p, d), client in clients.items():
            guests[p, d] = client.identity.identify(anonymous_id=f"storm-{p}-{d}").customer_id
            client.carts.add(guests[p, d], f"SKU-{d}", 1)
        together(
            *(
                lambda client=client, p=p, d=d: client.identity.identify(
                    anonymous_id=f"storm-{p}-{d}", email=f"storm{p}@example.com"
                )
                for (p, d), client in clients.items()
            )
        )
        with shop.client("admin") as admin:
            survivors = set()
            for p in range(people):
                owners = {admin.identity.resolve("email", f"storm{p}@example.com")}
                owners |= {
                    admin.identity.resolve("anonymous", f"storm-{p}-{d}") for d in range(devices)
                }
                assert len(owners) == 1 and None not in owners
                person = owners.pop()
                assert person in {guests[p, d] for d in range(devices)}
                survivors.add(person)
                merges = admin.identity.merges(person)
                assert len(merges) == devices - 1
                assert all(m.split_at is None for m in merges)
                cart = admin.carts.get(person)
                assert {line.key: line.quantity for line in cart.lines} == {
                    f"SKU-{d}": 1 for d in range(devices)
                }
            assert len(survivors) == people
    assert cluster.dropped > 0
