"""Each API key has a request budget per process: beyond it, 429 `rate-limited`."""

from __future__ import annotations

from omnisdk.core.channels import Channel, Scope
from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from tests.server.conftest import start_harness


async def test_a_key_beyond_its_budget_is_told_to_wait_and_others_go_on(
    migrated_database_url: str,
) -> None:
    async for server in start_harness(
        migrated_database_url, rate_limit_per_second=0.01, rate_limit_burst=2
    ):
        shop = await server.shop()
        for _ in range(2):
            assert (await shop.request("GET", "/v1/system/whoami", Channel.WEB)).status_code == 200
        refused = await shop.request("GET", "/v1/system/whoami", Channel.WEB)
        assert refused.status_code == 429
        assert refused.headers["content-type"] == PROBLEM_CONTENT_TYPE
        assert refused.json()["type"] == ProblemType.RATE_LIMITED
        assert int(refused.headers["retry-after"]) >= 1
        # Another key of the same shop has its own budget.
        assert (await shop.request("GET", "/v1/system/whoami", Channel.APP)).status_code == 200


async def test_a_refused_write_changes_nothing(migrated_database_url: str) -> None:
    async for server in start_harness(
        migrated_database_url, rate_limit_per_second=0.01, rate_limit_burst=1
    ):
        shop = await server.shop()
        before = (await shop.request("GET", "/v1/keys")).json()["items"]
        refused = await shop.request("POST", "/v1/keys", json={"channel": "pos"})
        assert refused.status_code == 429
        other = await server.key_with_scopes(shop, Channel.ADMIN, {Scope.KEYS_MANAGE})
        after = await server.http.get("/v1/keys", headers={"Authorization": f"Bearer {other}"})
        assert len(after.json()["items"]) == len(before) + 1  # only `other` itself


async def test_a_budget_of_zero_means_no_limit(migrated_database_url: str) -> None:
    async for server in start_harness(
        migrated_database_url, rate_limit_per_second=0, rate_limit_burst=1
    ):
        shop = await server.shop()
        for _ in range(5):
            assert (await shop.request("GET", "/v1/system/whoami", Channel.WEB)).status_code == 200
