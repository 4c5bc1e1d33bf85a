"""The example web shop's landing page in headless Chromium: the billboard page, the generic
page, and Amy's personalised page (screenshots kept in test-output/browser/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from examples.shop_web.app import create_shop
from omnisdk.testing import ReferenceServer
from tests.browser.conftest import ServedApp

LANDING = Path(__file__).resolve().parents[2] / "examples" / "content" / "landing.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A shop with the landing ruleset, Amy the consenting runner, and the web app."""
    data = tmp_path_factory.mktemp("clients")
    with ReferenceServer(log_level="WARNING") as server:
        tenant = server.create_tenant("Trail & Co")
        with tenant.client("admin", data_dir=data / "admin") as admin:
            admin.content.publish(yaml.safe_load(LANDING.read_text())["slots"])
            with tenant.client("web", data_dir=data / "web") as web:
                for n, skus in enumerate([["TR2", "SOCK-M", "INSOLE"], ["TR2", "CAP"]]):
                    web.events.send(
                        "order_completed",
                        anonymous_id=f"shopper-{n}",
                        properties={"order_id": f"o-{n}", "skus": skus},
                    )
                admin.content.rebuild_recommendations()
                amy = web.identity.identify(anonymous_id="amy-laptop").customer_id
                web.consent.grant(amy, "analytics", "personalisation", source="web_banner")
                for sku in ("TR2", "TR3"):
                    web.events.send(
                        "product_viewed",
                        customer_id=amy,
                        properties={"sku": sku, "category": "running"},
                    )
                web.carts.add(amy, "TR2", 1, name="Trail 2")
                with ServedApp(create_shop(web)) as shop:
                    yield shop.url, amy


def test_billboard_generic_and_amy_s_personalised_landing_pages(
    browser: Any, world: tuple[str, str], shots: Path
) -> None:
    url, amy = world
    page = browser.new_page(viewport={"width": 1024, "height": 900})

    page.goto(f"{url}/?qr=billboard-berlin-7")
    assert page.inner_text(".hero h2") == "Berlin runs. So do you."
    assert page.inner_text(".cta .omnisdk-cta") == "Take the 2-minute shoe quiz"
    page.screenshot(path=shots / "landing-billboard.png", full_page=True)

    page.goto(f"{url}/")
    assert page.inner_text(".hero h2") == "Shoes for every day"
    assert "not personalised" in page.inner_text("footer summary")
    page.screenshot(path=shots / "landing-generic.png", full_page=True)

    page.goto(f"{url}/login?customer={amy}")
    assert page.inner_text(".hero h2") == "Your next trail starts here"
    assert page.get_attribute(".hero video", "poster") == "/static/runner.svg"
    assert page.inner_text(".cta .omnisdk-cta") in ("Buy the Trail 2", "Run 30 days on us")
    assert page.inner_text(".recs h2") == "Goes with your cart"
    picks = page.eval_on_selector_all(".recs li", "items => items.map(i => i.dataset.sku)")
    assert "TR2" not in picks and picks[:2] == ["CAP", "INSOLE"]
    consent = page.evaluate("window.dataLayer[0][2]")
    assert consent["ad_personalization"] == "granted" and consent["ad_storage"] == "denied"
    page.screenshot(path=shots / "landing-amy.png", full_page=True)
    page.close()
