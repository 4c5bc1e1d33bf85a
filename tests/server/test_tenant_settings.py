"""Tenant settings change in part with a JSON Merge Patch (RFC 7396), validated whole."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.models import TenantSettings
from server_stub.storage.tables import tenants
from tests.server.conftest import Harness, ShopForTest
from tests.server.interleave import Step, interleaved

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


async def patch(shop: ShopForTest, body: Any, channel: str = "admin") -> Any:
    return await shop.request(
        "PATCH", "/v1/tenant/settings", channel, json=body, headers=MERGE_PATCH
    )


async def settings(shop: ShopForTest) -> Any:
    return (await shop.request("GET", "/v1/tenant/settings")).json()


async def test_a_patch_changes_only_what_it_names(shop: ShopForTest) -> None:
    before = await settings(shop)
    answer = await patch(shop, {"carts": {"merge_policy": "sum"}})
    assert answer.status_code == 200, answer.text
    after = await settings(shop)
    assert after["carts"]["merge_policy"] == "sum"
    assert {**after, "carts": before["carts"]} == before
    assert {**after["carts"], "merge_policy": before["carts"]["merge_policy"]} == before["carts"]


async def test_null_puts_a_setting_back_to_its_default(shop: ShopForTest) -> None:
    default = (await settings(shop))["carts"]["merge_policy"]
    await patch(shop, {"carts": {"merge_policy": "sum"}})
    answer = await patch(shop, {"carts": {"merge_policy": None}})
    assert answer.status_code == 200, answer.text
    assert (await settings(shop))["carts"]["merge_policy"] == default


async def test_an_invalid_result_is_refused_and_changes_nothing(shop: ShopForTest) -> None:
    before = await settings(shop)
    for body in (
        {"carts": {"merge_policy": "whatever"}},
        {"identity": {"junk_patterns": ["(unclosed"]}},
        ["not", "an", "object"],
    ):
        answer = await patch(shop, body)
        assert answer.status_code == 422, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.json()["type"].endswith("validation-error")
    assert await settings(shop) == before


async def test_only_admin_keys_change_settings(shop: ShopForTest) -> None:
    answer = await patch(shop, {"carts": {"merge_policy": "sum"}}, channel="web")
    assert answer.status_code == 403


async def test_a_patch_keeps_what_another_process_changed_meanwhile(
    server: Harness, shop: ShopForTest
) -> None:
    """This process has the settings cached when another one changes them: a patch here
    applies to what is stored, not to its cached copy (which it used to write back whole)."""
    await settings(shop)  # cached here
    async with server.database.transaction(write=True) as conn:
        stored = (
            await conn.execute(select(tenants.c.settings).where(tenants.c.id == shop.id))
        ).scalar_one()
        elsewhere = {**stored, "carts": {**stored.get("carts", {}), "merge_policy": "sum"}}
        await conn.execute(
            update(tenants).where(tenants.c.id == shop.id).values(settings=elsewhere)
        )
    answer = await patch(shop, {"profile": {"new_days": 45}})
    assert answer.status_code == 200, answer.text
    after = await settings(shop)
    assert (after["carts"]["merge_policy"], after["profile"]["new_days"]) == ("sum", 45)


async def test_a_read_before_a_patch_commits_does_not_keep_the_old_settings(
    server: Harness, shop: ShopForTest
) -> None:
    """The cache was dropped when a patch wrote, before it committed: another request of the
    same process reading in between cached the settings as they were, and served them for the
    cache's lifetime (a patch of new_days answered 200, then read back 30 in CI)."""
    contexts = server.app.state.runtime.tenants
    async with server.database.transaction(write=True) as conn:
        await contexts.patch_settings(conn, shop.id, {"profile": {"new_days": 45}})
        async with server.database.transaction(write=False) as other:
            assert (await contexts.get(other, shop.id)).settings.profile.new_days == 30
    async with server.database.transaction(write=False) as conn:
        assert (await contexts.get(conn, shop.id)).settings.profile.new_days == 45
    assert (await settings(shop))["profile"]["new_days"] == 45


async def test_two_patches_at_once_both_land(server: Harness, shop: ShopForTest) -> None:
    if server.database.sqlite:
        pytest.skip("PostgreSQL only: SQLite has one writer, so two writes cannot overlap")

    def patching(patch: dict[str, Any]) -> Step:
        async def step(conn: AsyncConnection) -> TenantSettings:
            return await server.app.state.runtime.tenants.patch_settings(conn, shop.id, patch)

        return step

    await interleaved(
        server,
        patching({"carts": {"merge_policy": "sum"}}),
        patching({"profile": {"new_days": 45}}),
    )
    after = await settings(shop)
    assert (after["carts"]["merge_policy"], after["profile"]["new_days"]) == ("sum", 45)
