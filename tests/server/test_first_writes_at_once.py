"""Two requests at once that each check a fact no row holds yet and then insert it: the next
ruleset version, a segment name (and the tenant's count of them), a return order, an order
placed from a cart, a refund id, the tenant's signing key. Each pair must get the answers it
would get one after the other, and store what that would store. Before services/named_locks,
one of each pair answered 500 (a unique violation), or both stored a duplicate (two current
signing keys, 201 segments where 200 is the limit). PostgreSQL only: SQLite has one writer."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from server_stub.services import segments
from server_stub.storage.database import lost_a_lock_race
from tests.server.conftest import Harness

ROUNDS = 4  # each round a fresh pair; one was enough to fail before, almost every time
RULESET = {"slots": {"landing.hero": {"default": {"title": "x"}, "variants": []}}}
LINES = [{"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0}]


async def _at_once(*requests: Awaitable[httpx.Response]) -> list[int]:
    answers = await asyncio.gather(*requests)
    for answer in answers:
        assert answer.status_code < 500, answer.text
    return sorted(answer.status_code for answer in answers)


async def _scalar(server: Harness, sql: str, **parameters: Any) -> Any:
    """The one value the query returns (a tuple if it returns several)."""
    async with server.database.transaction(write=False) as conn:
        row = (await conn.execute(text(sql), parameters)).one()
    return row[0] if len(row) == 1 else tuple(row)


async def test_two_publishes_of_the_ruleset_take_turns(pg_server: Harness) -> None:
    shop = await pg_server.shop()
    for _ in range(ROUNDS):
        current = await shop.request("PUT", "/v1/content/ruleset", json=RULESET)
        assert current.status_code == 200, current.text
        version = current.json()["version"]
        guarded = {"If-Match": current.headers["ETag"]}
        put = shop.request("PUT", "/v1/content/ruleset", json=RULESET, headers=guarded)
        again = shop.request("PUT", "/v1/content/ruleset", json=RULESET, headers=guarded)
        assert await _at_once(put, again) == [200, 409]  # the second read a changed ruleset
        stored = await _scalar(
            pg_server, "SELECT max(version) FROM content_rulesets WHERE tenant_id = :t", t=shop.id
        )
        assert stored == version + 1


async def test_two_first_publishes_make_two_versions(pg_server: Harness) -> None:
    for _ in range(ROUNDS):
        shop = await pg_server.shop()
        put = shop.request("PUT", "/v1/content/ruleset", json=RULESET)
        assert await _at_once(put, shop.request("PUT", "/v1/content/ruleset", json=RULESET)) == [
            200,
            200,
        ]
        versions = await _scalar(
            pg_server,
            "SELECT string_agg(CAST(version AS text), ',' ORDER BY version) "
            "FROM content_rulesets WHERE tenant_id = :t",
            t=shop.id,
        )
        assert versions == "1,2"


async def test_two_segments_of_one_name_or_past_the_limit_are_refused(pg_server: Harness) -> None:
    shop = await pg_server.shop()
    for n in range(ROUNDS):
        body = {"name": f"vip-{n}", "condition": {"orders.count": 1}}
        make = shop.request("POST", "/v1/segments", json=body)
        assert await _at_once(make, shop.request("POST", "/v1/segments", json=body)) == [201, 422]
    for n in range(ROUNDS, segments.MAX_SEGMENTS - 1):
        body = {"name": f"fill-{n}", "condition": {"orders.count": 1}}
        assert (await shop.request("POST", "/v1/segments", json=body)).status_code == 201
    last = [{"name": name, "condition": {"orders.count": 1}} for name in ("last-a", "last-b")]
    made = [shop.request("POST", "/v1/segments", json=body) for body in last]
    assert await _at_once(*made) == [201, 422]
    count = await _scalar(
        pg_server, "SELECT count(*) FROM segments WHERE tenant_id = :t", t=shop.id
    )
    assert count == segments.MAX_SEGMENTS


async def test_two_return_codes_for_one_new_order_register_it_once(pg_server: Harness) -> None:
    shop = await pg_server.shop()
    for n in range(ROUNDS):
        body = {"order_ref": f"R-{n}", "lines": LINES, "currency": "EUR"}
        issue = shop.request("POST", "/v1/returns", "web", json=body)
        assert await _at_once(issue, shop.request("POST", "/v1/returns", "web", json=body)) == [
            201,
            201,
        ]
        stored = await _scalar(
            pg_server,
            "SELECT (SELECT count(*) FROM return_orders WHERE tenant_id = :t AND order_ref = :o),"
            " (SELECT count(*) FROM return_tokens WHERE tenant_id = :t AND order_ref = :o)",
            t=shop.id,
            o=f"R-{n}",
        )
        assert stored == (1, 2)  # one order, a code for each request


async def test_a_new_shop_gets_one_signing_key_and_two_rotations_leave_one_current(
    pg_server: Harness,
) -> None:
    current = "SELECT count(*) FROM signing_keys WHERE tenant_id = :t AND retires_at IS NULL"
    for _ in range(ROUNDS):
        shop = await pg_server.shop()
        issued = [
            shop.request(
                "POST",
                "/v1/returns",
                "web",
                json={"order_ref": ref, "lines": LINES, "currency": "EUR"},
            )
            for ref in ("A", "B")
        ]
        assert await _at_once(*issued) == [201, 201]
        assert await _scalar(pg_server, current, t=shop.id) == 1
        rotations = [shop.request("POST", "/v1/returns/keys/rotate") for _ in range(2)]
        assert await _at_once(*rotations) == [200, 200]
        assert await _scalar(pg_server, current, t=shop.id) == 1


async def test_one_order_placed_from_two_carts_at_once_is_placed_once(pg_server: Harness) -> None:
    shop = await pg_server.shop()
    line = {"sku": "TR2", "unit_price": 10.0, "currency": "EUR"}
    for n in range(ROUNDS):
        carts = []
        for who in ("amy", "bob"):
            found = await shop.request(
                "POST", "/v1/identity/identify", json={"anonymous_id": f"{who}-{n}"}
            )
            customer_id = found.json()["customer_id"]
            op = {"op_id": f"{who}-{n}:1", "type": "add", "line": line, "delta": 1}
            added = await shop.request(
                "POST", f"/v1/carts/{customer_id}/ops", "web", json={"ops": [op]}
            )
            assert added.status_code == 200, added.text
            carts.append((customer_id, added.json()["version"]))
        placed = [
            shop.request(
                "POST",
                f"/v1/carts/{customer_id}/mark-ordered",
                "web",
                json={"order_ref": f"O-{n}"},
                headers={"If-Match": f'"{version}"'},
            )
            for customer_id, version in carts
        ]
        assert await _at_once(*placed) == [200, 409]
        stored = await _scalar(
            pg_server,
            "SELECT count(*) FROM ordered_carts WHERE tenant_id = :t AND order_ref = :o",
            t=shop.id,
            o=f"O-{n}",
        )
        assert stored == 1


async def test_one_refund_id_on_two_orders_at_once_is_recorded_once(pg_server: Harness) -> None:
    shop = await pg_server.shop()
    for n in range(ROUNDS):
        for ref in (f"X-{n}", f"Y-{n}"):
            sale = {
                "reference": ref,
                "currency": "EUR",
                "lines": [{"sku": "TR2", "quantity": 2, "unit_price": 50.0}],
            }
            assert (await shop.request("POST", "/v1/orders", "web", json=sale)).status_code == 201
        refund = {"refund_id": f"RF-{n}", "lines": [{"line_no": 1, "quantity": 1}]}
        refunds = [
            shop.request("POST", f"/v1/orders/{ref}-{n}/refunds", json=refund) for ref in "XY"
        ]
        assert await _at_once(*refunds) == [200, 409]
        refunded = await _scalar(
            pg_server,
            "SELECT sum(refunded) FROM orders WHERE tenant_id = :t AND reference IN (:x, :y)",
            t=shop.id,
            x=f"X-{n}",
            y=f"Y-{n}",
        )
        assert refunded == 50


async def test_a_unique_violation_left_unforeseen_runs_the_request_again(
    pg_server: Harness,
) -> None:
    """The backstop: a request stopped by a unique key another committed first is run again
    by the routing (and then finds that row), like one stopped to break a deadlock."""
    shop = await pg_server.shop()
    row = {"t": shop.id, "n": "twice", "c": "{}"}
    insert = (
        "INSERT INTO segments (tenant_id, id, name, description, condition, version, "
        "created_at, updated_at, backfill_done, backfill_total) VALUES "
        "(:t, :id, :n, '', CAST(:c AS json), 1, now(), now(), 0, 0)"
    )
    async with pg_server.database.transaction(write=True) as conn:
        await conn.execute(text(insert), {**row, "id": "seg_first"})
    with pytest.raises(DBAPIError) as stopped:
        async with pg_server.database.transaction(write=True) as conn:
            await conn.execute(text(insert), {**row, "id": "seg_second"})
    assert lost_a_lock_race(stopped.value)
