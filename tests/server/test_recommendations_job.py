"""The recommendations rebuild as a job: counted in bounded batches, incremental (a build
counts only new events, yet gives the model one pass over everything gives), resumable after
its runner died, and behind the old endpoint."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from sqlalchemy import delete, event, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.util import await_only

from omnisdk.core import recs
from server_stub.ids import new_id, utcnow
from server_stub.services import changes, jobs, privacy, recommendations
from server_stub.storage import prepared
from server_stub.storage.database import Database
from server_stub.storage.tables import (
    change_positions,
    customers,
    events,
    recommendation_baskets,
    recommendation_pair_deltas,
)
from server_stub.storage.tables import jobs as jobs_table
from tests.server.conftest import Harness, ShopForTest
from tests.server.interleave import waiting_for_a_lock

SKUS = [f"sku-{n:02d}" for n in range(30)]


def reference_baskets(rows: list[dict[str, Any]]) -> list[list[str]]:
    """The baskets as the rebuild before jobs read them: every basket event in one pass."""
    found: list[list[str]] = []
    added: dict[str, list[str]] = {}
    for row in rows:
        if row["name"] not in recommendations.BASKET_EVENTS:
            continue
        properties = row["properties"] or {}
        if row["name"] == "order_completed":
            skus = properties.get("skus")
            if isinstance(skus, list):
                found.append([str(sku) for sku in skus if isinstance(sku, str | int)])
        elif row["customer_id"] and isinstance(properties.get("sku"), str):
            added.setdefault(row["customer_id"], []).append(properties["sku"])
    return found + list(added.values())


SHOPPERS = [f"cus_{n}" for n in range(12)]


@pytest.fixture(autouse=True)
async def shoppers(server: Harness, shop: ShopForTest) -> None:
    """The customers random_events names (a build keeps baskets only of customers there)."""
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            insert(customers),
            [
                {"tenant_id": shop.id, "id": id, "created_at": utcnow(), "traits": {}}
                for id in SHOPPERS
            ],
        )


def random_events(rng: random.Random, tenant_id: str, count: int) -> list[dict[str, Any]]:
    shoppers = [*SHOPPERS, ""]  # "": anonymous
    rows = []
    for _ in range(count):
        customer = rng.choice(shoppers)
        kind = rng.random()
        if kind < 0.3:
            name, properties = "order_completed", {"skus": rng.sample(SKUS, rng.randint(0, 5))}
        elif kind < 0.9:
            name, properties = "product_added", {"sku": rng.choice(SKUS)}
        else:
            name, properties = "product_viewed", {"sku": rng.choice(SKUS)}
        now = utcnow()
        rows.append(
            {
                "tenant_id": tenant_id,
                "event_id": new_id("evt"),
                "customer_id": customer,
                "origin_customer_id": customer,
                "name": name,
                "channel": "web",
                "occurred_at": now,
                "received_at": now,
                "properties": properties,
            }
        )
    return rows


async def store(database: Database, rows: list[dict[str, Any]]) -> None:
    async with database.transaction(write=True) as conn:
        await conn.execute(insert(events), rows)


async def build(database: Database, tenant_id: str, **params: Any) -> jobs.Job:
    claim = await jobs.start(database, tenant_id, recommendations.KIND, params)
    return await jobs.execute(database, claim)


async def stored_model(server: Harness, shop: ShopForTest) -> dict[str, Any]:
    model = (await shop.request("GET", "/v1/content/recommendations")).json()
    return {key: model[key] for key in ("baskets", "together", "popular")}


async def pending_deltas(database: Database, tenant_id: str) -> int:
    async with database.transaction(write=False) as conn:
        count = await conn.scalar(
            select(func.count()).where(recommendation_pair_deltas.c.tenant_id == tenant_id)
        )
    return int(count or 0)


class ProcessDied(BaseException):
    """Stands for the process being killed: not an Exception, so no handler sees it."""


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of 7 events, queries of 3 customers, windows of a few pairs or customers, pairs
    # written 4 a statement: every boundary is crossed many times.
    monkeypatch.setattr(recommendations, "BATCH_EVENTS", 7)
    monkeypatch.setattr(recommendations, "CUSTOMERS_PER_QUERY", 3)
    monkeypatch.setattr(recommendations, "WINDOW_PAIRS", 25)
    monkeypatch.setattr(recommendations, "WINDOW_CUSTOMERS", 3)
    monkeypatch.setattr(recommendations, "ADD_ROWS", 4)
    monkeypatch.setattr(recommendations, "ANALYZE_AFTER_BASKETS", 2)  # in the window's transaction


@pytest.mark.usefixtures("small_batches")
@pytest.mark.parametrize("max_basket", [recs.MAX_BASKET, 4])
async def test_builds_in_steps_give_the_model_of_one_pass_over_everything(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch, max_basket: int
) -> None:
    # With baskets cut at 4 SKUs, a customer's stored basket grown by her new adds is cut
    # again: the model is still that of one pass.
    monkeypatch.setattr(recs, "MAX_BASKET", max_basket)
    rng = random.Random(21)
    everything: list[dict[str, Any]] = []
    for step in range(4):
        rows = random_events(rng, shop.id, 40 + step * 15)
        await store(server.database, rows)
        everything += rows
        job = await build(server.database, shop.id)
        assert job.state == "done", job.error
        assert job.result is not None and job.result["events_counted"] > 0
        expected = recs.build(reference_baskets(everything))
        assert await stored_model(server, shop) == expected
    # Nothing new: a build reads nothing and publishes the same model.
    again = await build(server.database, shop.id)
    assert again.result is not None and again.result["events_counted"] == 0
    assert await stored_model(server, shop) == recs.build(reference_baskets(everything))


@pytest.mark.usefixtures("small_batches")
async def test_a_full_build_recounts_after_events_were_erased(
    server: Harness, shop: ShopForTest
) -> None:
    rows = random_events(random.Random(7), shop.id, 80)
    await store(server.database, rows)
    await build(server.database, shop.id)
    async with server.database.transaction(write=True) as conn:
        await conn.execute(delete(events).where(events.c.customer_id == "cus_3"))
    kept = [row for row in rows if row["customer_id"] != "cus_3"]
    incremental = await build(server.database, shop.id)
    assert incremental.result is not None and incremental.result["events_counted"] == 0
    full = await build(server.database, shop.id, full=True)
    assert full.result is not None and full.result["events_counted"] > 0
    assert await stored_model(server, shop) == recs.build(reference_baskets(kept))


async def baskets_of(database: Database, tenant_id: str) -> set[str]:
    async with database.transaction(write=False) as conn:
        found = await conn.scalars(
            select(recommendation_baskets.c.customer_id).where(
                recommendation_baskets.c.tenant_id == tenant_id
            )
        )
        return set(found)


async def erase(database: Database, tenant_id: str, customer_id: str) -> None:
    async with database.transaction(write=True) as conn:
        await privacy.erase(conn, tenant_id, customer_id)


def adds_of(tenant_id: str, customer_id: str) -> list[dict[str, Any]]:
    rows = random_events(random.Random(5), tenant_id, 3)
    return [
        {**row, "customer_id": customer_id, "origin_customer_id": customer_id}
        | {"name": "product_added", "properties": {"sku": sku}}
        for row, sku in zip(rows, ("a", "b", "c"), strict=True)
    ]


async def build_erasing_after_the_read(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch, customer_id: str
) -> jobs.Job:
    """A build during which `customer_id` is erased between each window's read and its write
    (when the job reports progress, no transaction open)."""
    progress = jobs.JobContext.progress

    async def erased_after_the_read(ctx: jobs.JobContext, *args: Any) -> None:
        await erase(server.database, shop.id, customer_id)
        await progress(ctx, *args)

    monkeypatch.setattr(jobs.JobContext, "progress", erased_after_the_read)
    return await build(server.database, shop.id)


async def test_a_customer_erased_after_a_window_read_her_adds_gets_no_basket_back(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window read her cart adds, then her erasure deleted her events and basket and
    committed, then the window wrote: it must not store her basket again."""
    await store(server.database, adds_of(shop.id, "cus_3") + adds_of(shop.id, "cus_4"))
    job = await build_erasing_after_the_read(server, shop, monkeypatch, "cus_3")
    assert job.state == "done", job.error
    assert await baskets_of(server.database, shop.id) == {"cus_4"}


async def test_a_customer_erased_just_after_the_batch_read_her_adds_gets_no_basket_back(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her erasure commits while the window's first read is still open, just after its batch
    query found her adds. The window took the feed's position before that query, so the
    erasure shows after it; taken after the query, the position would include the erasure
    and the window would write her basket back."""
    await store(server.database, adds_of(shop.id, "cus_3") + adds_of(shop.id, "cus_4"))
    read_batch = recommendations._read_batch
    erased: list[str] = []

    async def erased_after_the_query(*args: Any) -> tuple[int, int]:
        found = await read_batch(*args)
        if not erased:
            erased.append("cus_3")
            await erase(server.database, shop.id, "cus_3")
        return found

    monkeypatch.setattr(recommendations, "_read_batch", erased_after_the_query)
    job = await build(server.database, shop.id)
    assert job.state == "done", job.error
    assert erased and await baskets_of(server.database, shop.id) == {"cus_4"}


async def test_a_window_with_no_erasure_since_its_read_looks_up_no_customer(
    server: Harness, shop: ShopForTest
) -> None:
    """Every adder is there when no erasure committed since the window began reading: the
    window reads only the baskets, not every adder's customer row (half its time at 10 M).
    An erasure before the build leaves nothing of hers to read."""
    await store(server.database, adds_of(shop.id, "cus_3") + adds_of(shop.id, "cus_5"))
    await erase(server.database, shop.id, "cus_5")
    await store(server.database, adds_of(shop.id, "cus_4"))
    statements: list[str] = []
    prepared.statement_observers.append(lambda sql, _values: statements.append(sql))
    try:
        job = await build(server.database, shop.id)
    finally:
        prepared.statement_observers.pop()
    assert job.state == "done", job.error
    assert await baskets_of(server.database, shop.id) == {"cus_3", "cus_4"}
    assert [sql for sql in statements if "FROM recommendation_baskets" in sql]
    assert not [sql for sql in statements if "customers" in sql]


async def test_erased_since_sees_erasures_committed_after_the_position_and_only_those(
    server: Harness, shop: ShopForTest
) -> None:
    async def newest() -> int:
        async with server.database.transaction(write=False) as conn:
            return (await changes.horizon(conn, shop.id)).newest

    async def erased_since(position: int) -> bool:
        async with server.database.transaction(write=False) as conn:
            return await privacy.erased_since(conn, shop.id, position)

    await store(server.database, adds_of(shop.id, "cus_3"))
    before = await newest()
    assert not await erased_since(before)
    await erase(server.database, shop.id, "cus_3")
    assert await erased_since(before)
    after = await newest()
    assert not await erased_since(after)
    # Changes after the position were pruned: an erasure may be among them.
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(change_positions)
            .where(change_positions.c.tenant_id == shop.id)
            .values(pruned_through=after + 1)
        )
    assert await erased_since(after)


async def test_adds_under_a_merged_away_id_get_no_basket_once_the_person_is_erased(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """cus_3 was merged into cus_4: her adds stay recorded under cus_3. Erasing the person
    (cus_4) erases cus_3 too, so the window must keep no basket under either id."""
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(customers)
            .where(customers.c.tenant_id == shop.id, customers.c.id == "cus_3")
            .values(merged_into="cus_4", merged_at=utcnow())
        )
    rows = adds_of(shop.id, "cus_3") + adds_of(shop.id, "cus_4") + adds_of(shop.id, "cus_5")
    await store(server.database, rows)
    job = await build_erasing_after_the_read(server, shop, monkeypatch, "cus_4")
    assert job.state == "done", job.error
    assert await baskets_of(server.database, shop.id) == {"cus_5"}


async def test_an_erasure_waits_for_the_window_writing_her_basket_then_deletes_it(
    pg_server: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Her erasure starts while a window is writing her basket: it waits for the window to
    commit (each erasure shares a lock the window holds alone), then deletes what it wrote.
    Without the lock it ran beside the window, deleted nothing yet written, and the basket
    the window then committed outlived her."""
    server = pg_server
    shop = await server.shop()
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            insert(customers),
            [{"tenant_id": shop.id, "id": "cus_3", "created_at": utcnow(), "traits": {}}],
        )
    await store(server.database, adds_of(shop.id, "cus_3"))
    erasing: list[asyncio.Task[None]] = []
    store_baskets = recommendations._store_baskets

    async def erased_meanwhile(conn: AsyncConnection, *args: Any) -> None:
        await store_baskets(conn, *args)
        erasing.append(asyncio.create_task(erase(server.database, shop.id, "cus_3")))
        for _ in range(100):  # until the erasure waits for this window (at most ~5 s)
            if await waiting_for_a_lock(server, "advisory"):
                break
            await asyncio.sleep(0.05)

    monkeypatch.setattr(recommendations, "_store_baskets", erased_meanwhile)
    job = await build(server.database, shop.id)
    await asyncio.wait_for(erasing[0], timeout=60)
    assert job.state == "done", job.error
    assert await baskets_of(server.database, shop.id) == set()


@pytest.mark.usefixtures("small_batches")
async def test_a_rebuild_cut_short_resumes_after_its_last_batch(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = random_events(random.Random(3), shop.id, 120)
    await store(server.database, rows)
    claim = await jobs.start(server.database, shop.id, recommendations.KIND)
    written = []
    write = recommendations._write

    async def counted_write(*args: Any) -> None:
        await write(*args)
        written.append(args[-1])

    monkeypatch.setattr(recommendations, "_write", counted_write)

    def die_after_a_written_window(done: int, total: int | None) -> None:
        if written and done > written[0]:
            raise ProcessDied  # nothing after this point runs: no finish, no rollback of work

    with pytest.raises(ProcessDied):
        await jobs.execute(server.database, claim, on_progress=die_after_a_written_window)
    postgres = not server.database.sqlite
    # PostgreSQL: the written windows' counts wait beside the counts, committed with the mark.
    assert (await pending_deltas(server.database, shop.id) > 0) == postgres
    resumed = await jobs.start(server.database, shop.id, recommendations.KIND, stale_seconds=0)
    assert resumed.runner is not None and resumed.resumed_state is not None
    ended = await jobs.execute(server.database, resumed)
    assert ended.state == "done" and ended.attempts == 2
    assert await pending_deltas(server.database, shop.id) == 0  # folded in by the cut
    # It counted only what the dead runner had not, and the model is the whole one.
    assert ended.result is not None and 0 < ended.result["events_counted"] < len(rows)
    assert await stored_model(server, shop) == recs.build(reference_baskets(rows))


@pytest.mark.usefixtures("small_batches")
async def test_a_build_checkpointed_among_the_old_cart_pass_counts_again_from_nothing(
    server: Harness, shop: ShopForTest
) -> None:
    # A version before counted a first build's carts in a pass of its own, checkpointing the
    # customer it reached ("carts_after"). Such a build, resumed by this version, cannot be
    # finished where it stopped: it counts from nothing and gives the whole model.
    rows = random_events(random.Random(11), shop.id, 120)
    await store(server.database, rows)
    first = await build(server.database, shop.id)
    assert first.state == "done", first.error
    claim = await jobs.start(server.database, shop.id, recommendations.KIND)
    async with server.database.transaction(write=True) as conn:
        await conn.execute(
            update(jobs_table)
            .where(jobs_table.c.id == claim.job.job_id)
            .values(
                checkpoint={"reset": True, "fresh": True, "counted_through": 3, "carts_after": "c"}
            )
        )
    resumed = await jobs.start(server.database, shop.id, recommendations.KIND, stale_seconds=0)
    assert resumed.resumed_state is not None and "carts_after" in resumed.resumed_state
    ended = await jobs.execute(server.database, resumed)
    assert ended.state == "done", ended.error
    assert ended.result is not None and ended.result["events_counted"] > 0
    assert await stored_model(server, shop) == recs.build(reference_baskets(rows))


async def test_the_endpoint_answers_202_with_the_job_when_it_stops_waiting(
    migrated_database_url: str,
) -> None:
    from tests.server.conftest import start_harness

    async for server in start_harness(migrated_database_url, job_wait_seconds=0):
        shop = await server.shop()
        await store(server.database, random_events(random.Random(5), shop.id, 30))
        answer = await shop.request("POST", "/v1/content/recommendations/rebuild")
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        assert answer.headers["location"] == f"/v1/jobs/{job_id}"
        ended = await server.app.state.runtime.jobs.wait(shop.id, job_id, timeout=60)
        assert ended is not None and ended.state == "done"
        assert (await stored_model(server, shop))["baskets"] == ended.result["baskets"]  # type: ignore[index]


async def test_a_build_waits_for_writers_in_its_database_only(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An order written before the build began (a lower seq) but committed after it fixed its
    # ceiling is counted: the build waits for the writers open in its database. A long
    # transaction in another database of the same server does not hold it back.
    if server.database.sqlite:
        pytest.skip("SQLite has one writer at a time: rows become visible in seq order")
    from tests.conftest import direct_connection, postgres_admin_url

    admin_url = postgres_admin_url()
    assert admin_url is not None
    elsewhere = await direct_connection(admin_url)  # the server's maintenance database
    late = await direct_connection(server.database.url)
    try:
        await elsewhere.execute("BEGIN")
        await elsewhere.fetchval("SELECT txid_current()")  # a transaction id: a writer
        await late.execute("BEGIN")
        rows = random_events(random.Random(1), shop.id, 1)
        first = {**rows[0], "name": "order_completed", "properties": {"skus": ["a", "b"]}}
        await late.execute(
            "INSERT INTO events (tenant_id, event_id, customer_id, origin_customer_id, name, "
            "channel, occurred_at, received_at, properties) "
            "VALUES ($1, $2, $3, $3, $4, 'web', $5, $5, $6)",
            shop.id,
            first["event_id"],
            first["customer_id"],
            "order_completed",
            first["occurred_at"],
            '{"skus": ["a", "b"]}',
        )
        second = {**first, "event_id": new_id("evt"), "properties": {"skus": ["a", "c"]}}
        await store(server.database, [second])  # a higher seq, committed first
        polls = []

        async def commit_the_late_writer(seconds: float) -> None:
            polls.append(seconds)
            if len(polls) == 1:
                await late.execute("COMMIT")

        monkeypatch.setattr(recommendations, "_pause", commit_the_late_writer)
        monkeypatch.setattr(recommendations, "SETTLE_LIMIT_SECONDS", 3_600.0)
        # Were it to wait for the other database's transaction, it would wait for an hour.
        job = await asyncio.wait_for(build(server.database, shop.id), timeout=120)
    finally:
        await elsewhere.execute("ROLLBACK")
        await elsewhere.close()
        await late.close()
    assert job.state == "done", job.error
    assert polls, "the build did not wait for the writer open in its database"
    assert (await stored_model(server, shop))["baskets"] == 2


# --- a runner taken for dead while it folds ------------------------------------------------------


class StallAfterTheFold:
    """Stalls the first transaction that folds the appended counts just after its statement
    naming them, holding whatever it has locked, until `resume` is set (a runner that stalls
    past the stale limit while it folds)."""

    def __init__(self) -> None:
        self.folding: Any = None  # the stalled transaction's connection
        self.stalled = asyncio.Event()
        self.resume = asyncio.Event()

    def __call__(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        if self.folding is None and "recommendation_pair_deltas" in statement:
            self.folding = conn
        elif conn is self.folding and not self.stalled.is_set():
            self.stalled.set()
            await_only(self.resume.wait())  # in SQLAlchemy's greenlet: the loop runs on


async def _taken_over_while_folding(
    server: Harness,
    shop: ShopForTest,
    monkeypatch: pytest.MonkeyPatch,
    rows: list[dict[str, Any]],
    *,
    stored_meanwhile: list[dict[str, Any]],
) -> None:
    """Build; while the first runner stalls in its fold, store `stored_meanwhile` and let a
    second runner take the job over (its lease stale), holding the second runner back from
    its own fold when it counted new events, until the first has gone on and ended."""
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer at a time, and no counts to fold")
    # The new runner does not wait for the stalled one's open transaction to settle its ceiling.
    monkeypatch.setattr(recommendations, "SETTLE_LIMIT_SECONDS", 0.0)
    await store(server.database, rows)
    stall = StallAfterTheFold()
    engine = server.database.write_engine.sync_engine
    event.listen(engine, "before_cursor_execute", stall)
    cut, cutting, may_cut = recommendations._cut, asyncio.Event(), asyncio.Event()

    async def held_cut(conn: AsyncConnection, tenant_id: str) -> dict[str, Any]:
        if stall.stalled.is_set() and stored_meanwhile:  # the second runner's
            cutting.set()
            await may_cut.wait()
        return await cut(conn, tenant_id)

    async def take_over() -> jobs.Job:
        claim = await jobs.start(server.database, shop.id, recommendations.KIND, stale_seconds=0)
        assert claim.runner is not None, "the stalled runner's job was not taken over"
        return await jobs.execute(server.database, claim)

    monkeypatch.setattr(recommendations, "_cut", held_cut)
    try:
        async with asyncio.timeout(60):
            first = asyncio.create_task(build(server.database, shop.id))
            await stall.stalled.wait()
            if stored_meanwhile:
                await store(server.database, stored_meanwhile)
            second = asyncio.create_task(take_over())
            # The second runner waits for a lock the first holds, or is about to fold.
            while not cutting.is_set() and await waiting_for_a_lock(server) == 0:
                assert not second.done(), "the second runner ended while the first stalled"
                await asyncio.sleep(0.01)
            stall.resume.set()
            await first
            may_cut.set()
            ended = await second
    finally:
        stall.resume.set()
        event.remove(engine, "before_cursor_execute", stall)
    assert ended.state == "done", ended.error
    assert await pending_deltas(server.database, shop.id) == 0


async def test_a_runner_taken_over_while_it_folds_does_not_fold_the_counts_twice(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = random_events(random.Random(13), shop.id, 60)
    await _taken_over_while_folding(server, shop, monkeypatch, rows, stored_meanwhile=[])
    assert await stored_model(server, shop) == recs.build(reference_baskets(rows))


async def test_counts_written_by_the_runner_that_took_over_a_folding_one_are_not_lost(
    server: Harness, shop: ShopForTest, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(17)
    rows, meanwhile = random_events(rng, shop.id, 60), random_events(rng, shop.id, 40)
    await _taken_over_while_folding(server, shop, monkeypatch, rows, stored_meanwhile=meanwhile)
    assert await stored_model(server, shop) == recs.build(reference_baskets(rows + meanwhile))
