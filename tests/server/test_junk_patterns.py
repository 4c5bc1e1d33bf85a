"""A shop's junk identifier patterns run in linear time (RE2): one tenant's admin cannot stall
every tenant with a pattern that backtracks."""

from __future__ import annotations

from typing import Any

from sqlalchemy import update

from omnisdk.core.problems import ProblemType
from server_stub.storage.tables import tenants
from tests.server.conftest import Harness, ShopForTest


async def _save_patterns(shop: ShopForTest, patterns: list[str]) -> Any:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["identity"]["junk_patterns"] = patterns
    return await shop.request("PUT", "/v1/tenant/settings", json=settings)


async def test_a_pattern_that_backtracks_in_python_matches_at_once(shop: ShopForTest) -> None:
    # With Python's re, (a+)+$ against 40 a's and a b takes 2^40 steps: this test would hang.
    assert (await _save_patterns(shop, ["(a+)+$", "pos-terminal-[0-9]+"])).status_code == 200
    taken = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "a" * 40 + "b"}
    )
    assert taken.status_code == 200
    junk = await shop.request("POST", "/v1/identity/identify", json={"anonymous_id": "a" * 40})
    assert junk.status_code == 422
    assert junk.json()["type"] == ProblemType.INVALID_IDENTIFIER
    # Case-insensitive, as before.
    pos = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "POS-Terminal-7"}
    )
    assert pos.status_code == 422


async def test_patterns_that_need_backtracking_are_refused_when_saved(shop: ShopForTest) -> None:
    for pattern in [r"(a)\1", r"a(?=b)", r"(?<!x)y"]:
        response = await _save_patterns(shop, [pattern])
        assert response.status_code == 422, pattern
        assert response.json()["type"] == ProblemType.VALIDATION_ERROR
        assert "linear time" in response.json()["detail"]


async def test_long_patterns_are_refused_when_saved(shop: ShopForTest) -> None:
    response = await _save_patterns(shop, ["a" * 201])
    assert response.status_code == 422
    assert "1-200 characters" in response.json()["detail"]


async def test_a_stored_pattern_re2_refuses_is_ignored_not_a_failure(
    server: Harness, shop: ShopForTest
) -> None:
    settings = (await shop.request("GET", "/v1/tenant/settings")).json()
    settings["identity"]["junk_patterns"] = [r"(x)\1", "junk-[0-9]+"]
    async with server.database.transaction(write=True) as conn:
        await conn.execute(update(tenants).where(tenants.c.id == shop.id).values(settings=settings))
    server.app.state.runtime.tenants._entries.clear()
    ok = await shop.request("POST", "/v1/identity/identify", json={"anonymous_id": "xx"})
    assert ok.status_code == 200
    junk = await shop.request("POST", "/v1/identity/identify", json={"anonymous_id": "junk-1"})
    assert junk.status_code == 422
