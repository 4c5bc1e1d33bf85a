"""Her orders as content rules see them: net of returns, and where she buys."""

from __future__ import annotations

from datetime import UTC, datetime

from omnisdk.core.conditions import evaluate
from omnisdk.core.profile import BuyerType, Lifecycle
from omnisdk.models import OrderSummary, Profile, Purchases
from omnisdk.resources.content import profile_facts

NOW = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)


def profile(purchases: Purchases) -> Profile:
    return Profile(
        customer_id="cus_amy",
        created_at=NOW,
        previous_ids=[],
        identifiers=[],
        traits={},
        interests={},
        first_seen=NOW,
        last_seen={},
        orders=OrderSummary(count=2, total_value=327.0),
        lifecycle=Lifecycle.ACTIVE,
        buyer_type=BuyerType.SELF,
        annotations=[],
        recent_events=[],
        purchases=purchases,
    )


def test_a_rule_can_target_store_buyers_by_their_net_value() -> None:
    store_buyer = profile(
        Purchases(net_value=149.0, refunded=178.0, by_channel={"web": 1, "pos": 1})
    )
    online_only = profile(Purchases(net_value=327.0, by_channel={"web": 2}))
    rule = {"orders.by_channel.pos": {"$gt": 0}, "orders.net_value": {"$gte": 100}}
    assert evaluate(rule, profile_facts(store_buyer, NOW.timestamp()).attributes)
    assert not evaluate(rule, profile_facts(online_only, NOW.timestamp()).attributes)
