"""Tenant settings change in part with a JSON Merge Patch (RFC 7396), validated whole."""

from __future__ import annotations

from typing import Any

from tests.server.conftest import ShopForTest

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
