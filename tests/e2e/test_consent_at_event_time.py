"""Through the SDK's outbox: an event is judged by the consent that stood when it was tracked,
however late it is delivered, on both clients."""

from __future__ import annotations

from pathlib import Path

import omnisdk
from omnisdk.testing import ServerProcess, free_port


def test_an_event_held_offline_is_judged_by_the_consent_of_its_time(
    server_process: ServerProcess, tmp_path: Path
) -> None:
    shop = server_process.create_tenant()  # consent.analytics: opt_in
    till_disk = tmp_path / "till"
    with shop.client("web") as web:
        amy = web.identity.identify(anonymous_id="laptop-c1").customer_id
    # The till has no network: the event waits in its outbox on disk.
    offline = omnisdk.Client(
        f"http://127.0.0.1:{free_port()}",
        shop.key("pos"),
        channel="pos",
        data_dir=till_disk,
        close_timeout=0.2,
        max_retries=0,
    )
    offline.events.track("product_viewed", customer_id=amy, properties={"sku": "HELD"})
    offline.close()
    with shop.client("web") as web:
        web.consent.grant(amy, "analytics", source="web_banner")  # granted after it happened
        web.events.send("product_viewed", customer_id=amy, properties={"sku": "AFTER"})
    with shop.client("pos", data_dir=till_disk) as till:  # the network is back
        assert till.events.flush(10) == 0
        seen = till.identity.timeline(amy).items
    assert [e.properties.get("sku") for e in seen if e.name == "product_viewed"] == ["AFTER"]


async def test_the_async_client_gets_the_same_judgement(server_process: ServerProcess) -> None:
    shop = server_process.create_tenant()
    async with shop.async_client("app") as app:
        amy = (await app.identity.identify(anonymous_id="phone-c2")).customer_id
        await app.events.track("product_viewed", customer_id=amy, properties={"sku": "EARLY"})
        await app.consent.grant(amy, "analytics")
        await app.events.track("product_viewed", customer_id=amy, properties={"sku": "LATE"})
        assert await app.events.flush(10) == 0
        seen = (await app.identity.timeline(amy)).items
    assert [e.properties.get("sku") for e in seen if e.name == "product_viewed"] == ["LATE"]
