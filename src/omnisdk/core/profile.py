"""What the single customer view derives from events: interests, lifecycle, buyer type."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Lifecycle(StrEnum):
    NEW = "new"
    ACTIVE = "active"
    LAPSING = "lapsing"
    LAPSED = "lapsed"


class BuyerType(StrEnum):
    GIFT = "gift"
    SELF = "self"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class LifecycleThresholds:
    """Days: a customer first seen within `new_days` is new; otherwise active if seen within
    `active_days`, lapsing within `lapsing_days`, else lapsed."""

    new_days: int = 30
    active_days: int = 90
    lapsing_days: int = 180


def lifecycle(
    first_seen: datetime, last_seen: datetime, now: datetime, thresholds: LifecycleThresholds
) -> Lifecycle:
    if (now - first_seen).days < thresholds.new_days:
        return Lifecycle.NEW
    idle = (now - last_seen).days
    if idle < thresholds.active_days:
        return Lifecycle.ACTIVE
    if idle < thresholds.lapsing_days:
        return Lifecycle.LAPSING
    return Lifecycle.LAPSED


def interests(
    signals: Iterable[tuple[str, datetime, float]], now: datetime, half_life_days: float
) -> dict[str, float]:
    """Score per category: each (category, when, weight) decays by half every half-life."""
    scores: dict[str, float] = {}
    decay = math.log(2) / half_life_days
    for category, when, weight in signals:
        age_days = max((now - when).total_seconds() / 86_400, 0.0)
        scores[category] = scores.get(category, 0.0) + weight * math.exp(-decay * age_days)
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return {category: round(score, 4) for category, score in ranked}


def buyer_type(orders: Iterable[tuple[bool, bool]]) -> BuyerType:
    """From (gift flag, shipped elsewhere) per order: gift buyer if most orders are gifts."""
    gifts = total = 0
    for gift, shipped_elsewhere in orders:
        total += 1
        gifts += gift or shipped_elsewhere
    if total == 0:
        return BuyerType.UNKNOWN
    return BuyerType.GIFT if gifts * 2 > total else BuyerType.SELF
