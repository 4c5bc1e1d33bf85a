"""Consent decisions taken at a till without network: queued in the outbox, delivered once,
and placed in the ledger at the time they were made."""

from __future__ import annotations

from pathlib import Path

import omnisdk
from omnisdk.testing import ReferenceServer


def test_a_queued_decision_arrives_later_and_takes_its_place_in_time(tmp_path: Path) -> None:
    with ReferenceServer() as server:
        shop = server.create_tenant()
        till_dir = tmp_path / "till"
        with shop.client("web", data_dir=tmp_path / "web") as web:
            amy = web.identity.identify(anonymous_id="amy-phone").customer_id
            web.consent.grant(amy, "personalisation", "marketing:sms")

            offline = omnisdk.Client(
                "http://127.0.0.1:9",  # nothing listens: the till's network is down
                shop.key("pos"),
                channel="pos",
                data_dir=till_dir,
                retry_policy=omnisdk.RetryPolicy(max_retries=0),
                close_timeout=0.1,
            )
            # At the till she signs: no more text messages; and she renews personalisation.
            offline.consent.queue(amy, "marketing:sms", "withdrawn", source="pos_signature_pad")
            offline.consent.queue(amy, "personalisation", "granted", source="pos_signature_pad")
            assert offline.outbox.status().depth == 2
            offline.close()

            # Later, online on the laptop, she turns personalisation off.
            web.consent.withdraw(amy, "personalisation", source="web_banner")

            with shop.client("pos", data_dir=till_dir) as back:  # the network is back
                assert back.events.flush(10) == 0
                assert back.delivery.status.delivered == 2

            state = web.consent.get(amy)
            assert not state.purposes["marketing:sms"].granted  # the till's withdrawal counts
            # The till's grant was made before the laptop's withdrawal: it does not undo it.
            assert not state.purposes["personalisation"].granted
            history = web.consent.history(amy).items
            till_grant = next(
                d for d in history if d.channel == "pos" and d.purpose == "personalisation"
            )
            laptop_withdrawal = next(
                d for d in history if d.channel == "web" and d.status == "withdrawn"
            )
            assert till_grant.recorded_at < laptop_withdrawal.recorded_at
            assert till_grant.client_time is not None
            assert len([d for d in history if d.channel == "pos"]) == 2  # applied once each
