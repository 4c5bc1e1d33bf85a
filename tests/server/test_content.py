"""Content on the server: rulesets validated at save, versioned with ETags, audited; recs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from server_stub import cli
from server_stub.storage.tables import audit_log, content_rulesets
from tests.server.conftest import Harness, ShopForTest

PROBLEMS = "https://omnisdk.dev/problems/"
RULESET: dict[str, Any] = {
    "slots": {
        "landing.hero": {
            "default": {"title": "Shoes for every day"},
            "variants": [
                {
                    "id": "billboard",
                    "condition": {"campaign.id": "billboard-berlin-7"},
                    "content": {"title": "Berlin runs"},
                }
            ],
        }
    },
    "note": "spring campaign",
}


async def publish(shop: ShopForTest, body: dict[str, Any], **headers: str) -> Any:
    return await shop.request("PUT", "/v1/content/ruleset", json=body, headers=headers)


async def test_a_published_ruleset_is_served_with_an_etag_and_rechecked_cheaply(
    server: Harness, shop: ShopForTest
) -> None:
    assert (await shop.request("GET", "/v1/content/ruleset", "web")).status_code == 404
    published = await publish(shop, RULESET)
    assert published.status_code == 200, published.text
    assert published.json()["version"] == 1
    etag = published.headers["ETag"]
    served = await shop.request("GET", "/v1/content/ruleset", "web")
    assert served.headers["ETag"] == etag
    assert served.json()["slots"] == RULESET["slots"]
    again = await shop.request("GET", "/v1/content/ruleset", "web", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""

    second = await publish(shop, {**RULESET, "note": "typo"}, **{"If-Match": etag})
    assert second.json()["version"] == 2
    stale = await publish(shop, RULESET, **{"If-Match": etag})  # someone published meanwhile
    assert stale.status_code == 409
    versions = (await shop.request("GET", "/v1/content/ruleset/versions")).json()["items"]
    assert [(v["version"], v["note"]) for v in versions] == [(2, "typo"), (1, "spring campaign")]
    assert versions[0]["author_key_id"] is not None
    async with server.database.transaction(write=False) as conn:
        audited = [
            row.subject
            for row in await conn.execute(
                select(audit_log).where(
                    audit_log.c.tenant_id == shop.id, audit_log.c.action == "content.publish"
                )
            )
        ]
    assert audited == ["ruleset v1", "ruleset v2"]


async def test_an_invalid_ruleset_is_refused_with_every_problem_and_nothing_changes(
    server: Harness, shop: ShopForTest
) -> None:
    bad = {
        "slots": {
            "landing.hero": {
                "default": {},
                "variants": [
                    {"id": "x", "condition": {"age": {"$regx": 1}}, "content": {}},
                    {"id": "y", "condition": {"$or": {"a": 1}}, "content": {}},
                ],
            }
        }
    }
    refused = await publish(shop, bad)
    assert refused.status_code == 422
    problem = refused.json()
    assert problem["type"] == PROBLEMS + "invalid-ruleset"
    assert len(problem["errors"]) == 2
    assert "variants[0].condition.age: unknown operator $regx" in problem["errors"][0]
    async with server.database.transaction(write=False) as conn:
        stored = await conn.execute(
            select(content_rulesets).where(content_rulesets.c.tenant_id == shop.id)
        )
        assert list(stored) == []


async def test_only_admin_keys_author_content(shop: ShopForTest) -> None:
    for channel in ("web", "app", "pos"):
        assert (
            await shop.request("PUT", "/v1/content/ruleset", channel, json=RULESET)
        ).status_code == 403


async def test_recommendations_are_rebuilt_from_orders_and_cart_adds(
    server: Harness, shop: ShopForTest
) -> None:
    for n, skus in enumerate([["shoe", "sock"], ["shoe", "sock", "insole"], ["cap"]]):
        event = {
            "anonymous_id": f"buyer-{n}",  # no consent: anonymous orders still count
            "name": "order_completed",
            "properties": {"order_id": f"o-{n}", "skus": skus},
        }
        assert (await shop.request("POST", "/v1/events", "web", json=event)).is_success
    rebuilt = await shop.request("POST", "/v1/content/recommendations/rebuild")
    assert rebuilt.status_code == 200, rebuilt.text
    model = (await shop.request("GET", "/v1/content/recommendations", "web")).json()
    assert model["baskets"] == 3
    assert model["together"]["shoe"][0] == ["sock", 2]
    assert model["popular"][0] == ["shoe", 2]


def test_the_cli_imports_yaml_and_refuses_a_bad_file(
    migrated_database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = migrated_database_url
    assert cli.main(["tenant", "create", "cli shop", "--database-url", url]) == 0
    tenant = capsys.readouterr().out.split()[0]
    good = tmp_path / "content.yaml"
    good.write_text(
        "slots:\n"
        "  landing.hero:\n"
        "    default: {title: Hello}\n"
        "    variants:\n"
        "      - id: billboard\n"
        "        condition: {campaign.id: billboard-berlin-7}\n"
        "        content: {title: Berlin runs}\n"
    )
    args = ["content", "import", "--tenant", tenant, "--database-url", url]
    assert cli.main([*args, str(good)]) == 0
    assert "published ruleset version 1 with 1 slot(s)" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"slots": {"landing.hero": {"variants": []}}}))
    assert cli.main([*args, str(bad)]) == 2
    assert "default is required" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("slots: [unclosed\n")
    assert cli.main([*args, str(broken)]) == 2
    assert "cannot be parsed" in capsys.readouterr().err
    assert cli.main(["recs", "rebuild", "--tenant", tenant, "--database-url", url]) == 0
    assert "rebuilt from 0 baskets" in capsys.readouterr().out
