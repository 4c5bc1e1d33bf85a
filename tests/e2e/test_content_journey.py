"""Amy's landing pages through the SDK against a real server: consent gates the profile (checked
on the server's side), withdrawal on one channel reaches the other, experiments are exposed
once, recommendations skip her cart and purchases, and decisions survive the server going away.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from omnisdk import Client
from omnisdk.testing import ReferenceServer, TestTenant
from tests.conftest import DATABASES, PostgresDatabases, new_database_url

LANDING = yaml.safe_load(
    (Path(__file__).resolve().parents[2] / "examples" / "content" / "landing.yaml").read_text()
)


class ProfileReads:
    """ASGI middleware around the real server: records every profile read it serves."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def wrap(self, app: Any) -> Any:
        async def counting(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].endswith("/profile"):
                self.paths.append(scope["path"])
            await app(scope, receive, send)

        return counting


@pytest.fixture
def reads() -> ProfileReads:
    return ProfileReads()


@pytest.fixture(params=DATABASES)
def server(
    request: pytest.FixtureRequest,
    reads: ProfileReads,
    tmp_path: Path,
    postgres_databases: PostgresDatabases | None,
) -> Iterator[ReferenceServer]:
    """The real server on SQLite and on PostgreSQL (where the change feed is LISTEN/NOTIFY)."""
    url = new_database_url(request.param, tmp_path, postgres_databases)
    with ReferenceServer(url, wrap=reads.wrap) as running:
        yield running


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for something another thread does (the change feed), failing after `timeout`."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def shop_with_landing(server: ReferenceServer) -> TestTenant:
    shop = server.create_tenant("Amy's shoe shop")
    with shop.client("admin", data_dir=server.data_path("admin")) as admin:
        admin.content.publish(LANDING["slots"], note="landing page")
    return shop


def amy_the_runner(web: Client) -> str:
    amy = web.identity.identify(anonymous_id="amy-laptop", email="amy@example.com").customer_id
    web.consent.grant(amy, "analytics", source="web_banner", method="click")
    for n in range(3):
        web.events.send(
            "product_viewed",
            customer_id=amy,
            properties={"sku": f"TR{n}", "category": "running"},
        )
    return amy


def test_consent_gates_personalisation_and_a_withdrawal_reaches_every_channel(
    server: ReferenceServer, reads: ProfileReads
) -> None:
    shop = shop_with_landing(server)
    with (
        shop.client("web", data_dir=server.data_path("laptop")) as laptop,
        shop.client("app", data_dir=server.data_path("phone")) as phone,
    ):
        billboard = laptop.content.decide(
            anonymous_id="phone-visitor", campaign="billboard-berlin-7"
        )
        assert billboard["landing.hero"].variant == "billboard"
        assert laptop.content.decide(anonymous_id="someone")["landing.hero"].variant == "default"

        amy = amy_the_runner(laptop)
        before = laptop.content.decide(amy)
        assert not before.personalised
        assert before["landing.hero"].variant == "default"
        assert reads.paths == []  # no consent: the server was never asked for her profile

        laptop.consent.grant(amy, "personalisation", source="web_banner", method="click")
        personal = laptop.content.decide(amy)
        assert personal.personalised
        assert personal["landing.hero"].variant == "runner"
        assert personal["landing.hero"].content["media"]["type"] == "video"
        assert "top_interest" in personal["landing.hero"].explanation
        assert len(reads.paths) == 1

        # On her phone she changes her mind.
        phone.consent.withdraw(amy, "personalisation", source="app_settings")
        until(lambda: laptop.consent_cache.get(amy, None) is None, "the laptop to hear of it")
        after = laptop.content.decide(amy)
        assert not after.personalised
        assert after["landing.hero"].variant == "default"
        assert len(reads.paths) == 1  # and her profile was not read again


def test_an_experiment_is_exposed_once_per_visitor_and_arm_across_backends(
    server: ReferenceServer,
) -> None:
    shop = shop_with_landing(server)
    with (
        shop.client("web", data_dir=server.data_path("web")) as web,
        shop.client("app", data_dir=server.data_path("app")) as app,
    ):
        amy = amy_the_runner(web)
        web.consent.grant(amy, "personalisation")
        arms = {web.content.decide(amy)["landing.cta"].variant for _ in range(5)}
        arms |= {app.content.decide(amy)["landing.cta"].variant for _ in range(5)}
        assert len(arms) == 1 and arms.pop().startswith("returning-runner/")
        assert web.events.flush(10) == 0 and app.events.flush(10) == 0
        timeline = web.identity.timeline(amy, limit=100)
        exposures = [e for e in timeline.items if e.name == "experiment_viewed"]
        assert len(exposures) == 1
        assert exposures[0].properties["experiment"] == "cta-2026"


def test_recommendations_skip_the_cart_and_what_she_bought(server: ReferenceServer) -> None:
    shop = shop_with_landing(server)
    with (
        shop.client("web", data_dir=server.data_path("web")) as web,
        shop.client("admin", data_dir=server.data_path("admin")) as admin,
    ):
        for n, skus in enumerate(
            [["TR2", "SOCK-M", "INSOLE"], ["TR2", "SOCK-M"], ["TR2", "CAP"], ["BOTTLE"]]
        ):
            web.events.send(
                "order_completed",
                anonymous_id=f"buyer-{n}",
                properties={"order_id": f"o-{n}", "skus": skus},
            )
        amy = amy_the_runner(web)
        web.consent.grant(amy, "personalisation")
        web.events.send(
            "order_completed",
            customer_id=amy,
            properties={"order_id": "amy-1", "skus": ["SOCK-M"]},
        )
        admin.content.rebuild_recommendations()
        web.carts.add(amy, "TR2", quantity=1)
        web.content.refresh()
        decision = web.content.decide(amy)
        assert decision["landing.recommendations"].variant == "cross-sell"
        skus = [item["sku"] for item in decision.items["landing.recommendations"]]
        assert skus[:2] == ["CAP", "INSOLE"]  # bought with the Trail 2 by others
        assert "TR2" not in skus and "SOCK-M" not in skus
        fragment = decision.html("landing.recommendations")
        assert 'data-sku="INSOLE"' in fragment and "Gel insoles" in fragment


def test_decisions_go_on_from_the_last_good_ruleset_while_the_server_is_down(
    tmp_path: Path,
) -> None:
    server = ReferenceServer(f"sqlite:///{tmp_path / 'shop.sqlite3'}").start()
    shop = shop_with_landing(server)
    key = shop.key("web")
    with Client(server.url, key, channel="web", data_dir=tmp_path / "web") as web:
        assert (
            web.content.decide(anonymous_id="x", campaign="billboard-berlin-7")[
                "landing.hero"
            ].variant
            == "billboard"
        )
    url = server.url
    server.stop()
    # A backend restarting during the outage decides from the ruleset it kept on disk.
    with Client(url, key, channel="web", data_dir=tmp_path / "web", max_retries=0) as restarted:
        decision = restarted.content.decide(anonymous_id="x", campaign="billboard-berlin-7")
        assert decision["landing.hero"].variant == "billboard"
        assert decision.ruleset_version == 1


def test_a_new_ruleset_reaches_deciding_clients_through_the_feed(server: ReferenceServer) -> None:
    shop = shop_with_landing(server)
    with (
        shop.client("web", data_dir=server.data_path("web"), content_refresh_interval=3600) as web,
        shop.client("admin", data_dir=server.data_path("admin")) as admin,
    ):
        assert web.content.decide(anonymous_id="v")["landing.hero"].content["title"] == (
            "Shoes for every day"
        )
        slots = {**LANDING["slots"]}
        slots["landing.hero"] = {**slots["landing.hero"], "default": {"title": "Winter sale"}}
        admin.content.publish(slots, note="winter")
        until(lambda: web.content_cache.ruleset_version == 2, "the new ruleset")
        assert web.content.decide(anonymous_id="v")["landing.hero"].content["title"] == (
            "Winter sale"
        )


def test_html_fragments_escape_what_content_and_context_carry(server: ReferenceServer) -> None:
    shop = server.create_tenant()
    evil = {
        "landing.hero": {
            "default": {
                "title": "<script>alert(1)</script>",
                "cta": {"label": "Go", "url": "javascript:alert(1)"},
            },
            "variants": [],
        }
    }
    with (
        shop.client("admin", data_dir=server.data_path("admin")) as admin,
        shop.client("web", data_dir=server.data_path("web")) as web,
    ):
        admin.content.publish(evil)
        fragment = web.content.decide(anonymous_id="v").html("landing.hero")
    assert "<script>" not in fragment and "&lt;script&gt;" in fragment
    assert "javascript:" not in fragment


async def test_the_async_client_gates_and_decides_the_same_way(
    server: ReferenceServer, reads: ProfileReads
) -> None:
    shop = shop_with_landing(server)
    async with shop.async_client("web", data_dir=server.data_path("async")) as web:
        amy = (await web.identity.identify(anonymous_id="amy-async")).customer_id
        await web.consent.grant(amy, "analytics")
        await web.events.send("product_viewed", customer_id=amy, properties={"category": "running"})
        generic = await web.content.decide(amy)
        assert not generic.personalised and reads.paths == []
        await web.consent.grant(amy, "personalisation")
        assert await web.consent.check(amy, "personalisation")
        personal = await web.content.decide(amy, device="mobile")
        assert personal["landing.hero"].variant == "runner" and len(reads.paths) == 1
        signals = await web.consent.consent_mode(amy)
        assert signals["ad_personalization"] == "granted"
        await web.consent.withdraw(amy, "personalisation")
        assert (await web.content.decide(amy))["landing.hero"].variant == "default"


def test_a_customer_the_server_does_not_know_gets_the_visitor_s_page(
    server: ReferenceServer,
) -> None:
    shop = shop_with_landing(server)
    with (
        shop.client("web", data_dir=server.data_path("web")) as web,
        shop.client("admin", data_dir=server.data_path("admin")) as admin,
    ):
        amy = amy_the_runner(web)
        web.consent.grant(amy, "personalisation")
        until(web.consent_cache.connected.is_set, "the laptop to follow the feed")
        assert web.content.decide(amy).personalised
        admin.privacy.erase(amy)
        until(lambda: web.consent_cache.erasures == 1, "the erasure to be heard")
        assert web.content_cache.profile(amy) is None
        page = web.content.decide(amy, campaign="billboard-berlin-7")  # a stale session cookie
        assert not page.personalised and page["landing.hero"].variant == "billboard"
