"""Amy's devices become one customer with one timeline, through the SDK over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

import omnisdk
from omnisdk.testing import ATTRIBUTED_EVENTS, ServerProcess


def test_phone_chat_email_and_laptop_click_become_one_customer(
    server_process: ServerProcess,
) -> None:
    shop = server_process.create_tenant("Amy's shoe shop")
    with shop.client("app") as app, shop.client("web") as web:
        # The app's first launch: Amy, still anonymous, allows analytics on her phone.
        phone = app.identity.identify(anonymous_id="amy-phone").customer_id
        app.consent.grant(phone, "analytics", source="app_settings", method="toggle")
        # The billboard: Amy's phone is an anonymous visitor.
        app.events.track(
            "campaign_scanned",
            anonymous_id="amy-phone",
            properties={"campaign": "billboard-berlin-7"},
        )
        # The chat: she leaves her e-mail; the phone becomes a known customer.
        app.events.track("chat_started", anonymous_id="amy-phone", properties={"thread_id": "t-1"})
        assert app.events.flush(10) == 0
        known = app.identity.identify(anonymous_id="amy-phone", email="Amy@Example.com")
        # At home: the laptop is another anonymous visitor until she clicks the e-mail link;
        # she accepts the shop's cookie banner.
        laptop_visitor = web.identity.identify(anonymous_id="amy-laptop").customer_id
        web.consent.grant(laptop_visitor, "analytics", source="web_banner", method="click")
        web.events.track(
            "email_clicked", anonymous_id="amy-laptop", properties={"campaign": "welcome"}
        )
        assert web.events.flush(10) == 0
        laptop = web.identity.resolve("anonymous", "amy-laptop")
        assert laptop is not None and laptop != known.customer_id
        linked = web.identity.identify(anonymous_id="amy-laptop", email="amy@example.com")

        assert linked.merged and linked.customer_id == known.customer_id
        assert linked.merged_customer_ids == [laptop]
        profile = web.identity.get_profile(laptop)  # the laptop's old id still works
        assert profile.customer_id == known.customer_id
        devices = {i.value for i in profile.identifiers if i.type == "anonymous"}
        assert devices == {"amy-phone", "amy-laptop"}
        timeline = web.identity.timeline(known.customer_id)
        assert [(e.name, e.channel.value) for e in reversed(timeline.items)] == [
            ("campaign_scanned", "app"),
            ("chat_started", "app"),
            ("email_clicked", "web"),
        ]
        assert "amy@example.com" not in profile.model_dump_json().lower()


async def test_async_client_tracks_and_identifies(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant(settings=ATTRIBUTED_EVENTS)
    async with shop.async_client("pos") as till:
        for n in range(120):
            await till.events.track(
                "store_visit",
                anonymous_id=f"card-reader-{n % 3}",
                properties={"store_id": "berlin-1"},
            )
        assert await till.events.flush(10) == 0
        assert till.delivery.status.delivered == 120
        result = await till.identity.identify(loyalty_card="LC-991", anonymous_id="card-reader-0")
        profile = await till.identity.get_profile(result.customer_id)
        assert profile.last_seen.keys() == {omnisdk.Channel.POS}


def test_track_refuses_a_bad_event_at_once(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    with shop.client("web") as web:
        with pytest.raises(ValueError, match="event names"):
            web.events.track("Order Completed", anonymous_id="p")
        with pytest.raises(ValueError, match="exactly one"):
            web.events.track("order_completed")
        with pytest.raises(omnisdk.ValidationError) as refused:
            web.identity.identify(anonymous_id="undefined")
        assert refused.value.type.endswith("invalid-identifier")


def test_events_queued_while_the_server_is_away_arrive_when_it_is_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    first = ServerProcess(url).start()
    shop = first.create_tenant(settings=ATTRIBUTED_EVENTS)
    key = shop.key("web")
    address = first.url
    first.stop()
    retry = omnisdk.RetryPolicy(max_retries=1, initial_delay=0.01, max_delay=0.02)
    with omnisdk.Client(address, key, channel="web", retry_policy=retry) as web:
        for n in range(50):
            web.events.track("product_viewed", anonymous_id="offline-visitor", event_id=f"off-{n}")
        assert web.events.flush(0.5) > 0  # nobody is listening
        port = int(address.rsplit(":", 1)[1])
        # The same server secret key: it unseals the tenant's secrets (as an operator keeps it).
        second = ServerProcess(url, port=port, secret_key=first.secret_key).start()
        try:
            assert web.events.flush(60) == 0
            customer = web.identity.resolve("anonymous", "offline-visitor")
            assert customer is not None
            page = web.identity.timeline(customer, limit=200)
            assert sorted(e.event_id for e in page.items) == sorted(f"off-{n}" for n in range(50))
        finally:
            second.stop()
