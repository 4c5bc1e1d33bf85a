from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from omnisdk.core.events import InvalidEvent, check_event
from omnisdk.core.profile import (
    BuyerType,
    Lifecycle,
    LifecycleThresholds,
    buyer_type,
    interests,
    lifecycle,
)

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)


def test_interest_halves_every_half_life() -> None:
    scores = interests([("running", NOW, 4.0), ("hiking", NOW - timedelta(days=30), 4.0)], NOW, 30)
    assert scores == {"running": 4.0, "hiking": 2.0}


@pytest.mark.parametrize(
    ("first", "last", "stage"),
    [
        (5, 5, Lifecycle.NEW),
        (100, 10, Lifecycle.ACTIVE),
        (300, 120, Lifecycle.LAPSING),
        (400, 200, Lifecycle.LAPSED),
    ],
)
def test_lifecycle_stages(first: int, last: int, stage: Lifecycle) -> None:
    seen = lifecycle(
        NOW - timedelta(days=first), NOW - timedelta(days=last), NOW, LifecycleThresholds()
    )
    assert seen is stage


def test_buyer_type_follows_most_orders() -> None:
    assert buyer_type([]) is BuyerType.UNKNOWN
    assert buyer_type([(True, False), (False, True), (False, False)]) is BuyerType.GIFT
    assert buyer_type([(True, False), (False, False)]) is BuyerType.SELF


def test_standard_properties_are_type_checked() -> None:
    with pytest.raises(InvalidEvent, match="number"):
        check_event("order_completed", {"value": True}, NOW, NOW)
    with pytest.raises(InvalidEvent, match="string"):
        check_event("product_viewed", {"category": 7}, NOW, NOW)
    extracted = check_event("order_completed", {"value": 12, "category": "shoes"}, NOW, NOW)
    assert (extracted.value, extracted.category) == (12.0, "shoes")


def test_times_must_be_aware_recent_and_not_ahead() -> None:
    with pytest.raises(InvalidEvent, match="time zone"):
        check_event("x", {}, NOW.replace(tzinfo=None), NOW)
    with pytest.raises(InvalidEvent, match="future"):
        check_event("x", {}, NOW + timedelta(hours=1), NOW)
    with pytest.raises(InvalidEvent, match="three years"):
        check_event("x", {}, NOW - timedelta(days=4 * 365), NOW)
    check_event("x", {}, NOW + timedelta(minutes=5), NOW)
