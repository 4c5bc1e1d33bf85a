"""16 clients race on one cart through real server processes, some requests timing out on the
client and sent again: every acknowledged operation counts once, none is lost or doubled."""

from __future__ import annotations

import contextlib
import random
import threading
from pathlib import Path

import pytest

import omnisdk
from omnisdk.models import CartOpIn, LineRef
from omnisdk.testing import ServerProcess
from tests.conftest import PostgresDatabases

CLIENTS = 16
OPS_EACH = 12


def race(urls: list[str], key: str, customer: str) -> tuple[dict[str, int], int]:
    acknowledged: dict[str, int] = {}
    lock = threading.Lock()

    def device(n: int) -> None:
        rng = random.Random(n)
        hasty = omnisdk.Client(
            urls[n % len(urls)],
            key,
            channel="web",
            timeout=0.002,
            retry_policy=omnisdk.RetryPolicy(max_retries=0),
        )
        patient = omnisdk.Client(urls[n % len(urls)], key, channel="web")
        for step in range(OPS_EACH):
            op = CartOpIn(
                op_id=f"dev{n}:{step + 1}",
                type="add",
                line=LineRef(sku="TR2"),
                delta=rng.choice([1, 1, 2, -1]),
            )
            if rng.random() < 0.3:  # sent once with a timeout too short to see the answer
                with contextlib.suppress(omnisdk.APIConnectionError):
                    hasty.carts.apply(customer, [op])
            answer = patient.carts.apply(customer, [op])  # then sent (again) and answered
            assert op.op_id in answer.applied or op.op_id in answer.duplicates
            with lock:
                acknowledged[op.op_id] = op.delta
        hasty.close()
        patient.close()

    threads = [threading.Thread(target=device, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    with omnisdk.Client(urls[0], key, channel="web") as reader:
        cart = reader.carts.get(customer)
    return acknowledged, sum(line.quantity for line in cart.lines)


def test_one_process_on_sqlite(tmp_path: Path) -> None:
    with ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}") as server:
        shop = server.create_tenant()
        with shop.client("web") as web:
            amy = web.identity.identify(anonymous_id="amy").customer_id
        acknowledged, quantity = race([server.url], shop.key("web"), amy)
    assert len(acknowledged) == CLIENTS * OPS_EACH
    assert quantity == max(sum(acknowledged.values()), 0)


def test_two_processes_on_postgresql(postgres_databases: PostgresDatabases | None) -> None:
    if postgres_databases is None:
        pytest.skip("needs PostgreSQL (two server processes share it)")
    url = postgres_databases.new()
    with ServerProcess(url) as first:
        shop = first.create_tenant()
        with ServerProcess(url, secret_key=first.secret_key) as second:
            with shop.client("web") as web:
                amy = web.identity.identify(anonymous_id="amy").customer_id
            acknowledged, quantity = race([first.url, second.url], shop.key("web"), amy)
    assert len(acknowledged) == CLIENTS * OPS_EACH
    assert quantity == max(sum(acknowledged.values()), 0)
