"""Content rules target named segments and the preferred channel (issue 19): the SDK decides
on her profile, which carries her segments and her preferred channel."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from omnisdk.testing import ReferenceServer
from server_stub.services import segments
from server_stub.storage.database import Database
from tests.conftest import DATABASES, PostgresDatabases, new_database_url

SLOTS = {
    "landing.hero": {
        "default": {"title": "Welcome"},
        "variants": [
            {
                "id": "vip",
                "condition": {"segments": {"$in": ["vip"]}},
                "content": {"title": "Your VIP preview"},
            },
        ],
    },
    "landing.contact": {
        "default": {"cta": "Sign up for e-mails"},
        "variants": [
            {
                "id": "sms",
                "condition": {"preferred_channel": "sms"},
                "content": {"cta": "Text STYLE to 4242"},
            },
        ],
    },
}


@pytest.fixture(params=DATABASES)
def server(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> Iterator[ReferenceServer]:
    url = new_database_url(request.param, tmp_path, postgres_databases)
    with ReferenceServer(url) as running:
        yield running


def evaluate_segments(database_url: str) -> None:
    """What the server's background evaluator does, done to the end (no waiting on time)."""

    async def work() -> None:
        database = Database(database_url)
        try:
            await segments.backfill_due(database)
            while await segments.drain(database):
                pass
        finally:
            await database.dispose()

    asyncio.run(work())


def test_a_landing_page_targets_her_segment_and_her_declared_channel(
    server: ReferenceServer,
) -> None:
    shop = server.create_tenant("Amy's shoe shop")
    with shop.client("admin", data_dir=server.data_path("admin")) as admin:
        admin.content.publish(SLOTS, note="segments and channels")
        admin.segments.create("vip", {"traits.tier": "gold"}, "gold tier")
    with shop.client("web", data_dir=server.data_path("web")) as web:
        amy = web.identity.identify(anonymous_id="amy", traits={"tier": "gold"}).customer_id
        bob = web.identity.identify(anonymous_id="bob", traits={"tier": "silver"}).customer_id
        for who in (amy, bob):
            web.consent.grant(who, "personalisation", source="web_banner", method="click")
        web.identity.declare_preferred_channel(amy, "sms")
        evaluate_segments(server.database_url)
        for_amy = web.content.decide(amy)
        for_bob = web.content.decide(bob)
        assert web.identity.get_profile(amy).segments == ["vip"]
    assert (for_amy["landing.hero"].variant, for_amy["landing.contact"].variant) == ("vip", "sms")
    assert (for_bob["landing.hero"].variant, for_bob["landing.contact"].variant) == (
        "default",
        "default",
    )
