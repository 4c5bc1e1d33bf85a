"""Rules of stock alerts and messages (issue 20), pure and shared by the server and the SDK.

A message is decided when it is due, not when it was triggered (DESIGN: messages): these
functions are the parts of that decision that need no storage — the message's idempotency
key, quiet hours in the customer's time zone, the frequency caps, the pacing of a restock,
the channel order and the delivery backoff.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


class Kind(StrEnum):
    """What a message is about."""

    BACK_IN_STOCK = "back_in_stock"
    LOW_STOCK = "low_stock"
    PRICE_DROP = "price_drop"
    ABANDONED_CART = "abandoned_cart"
    RETURN_CODE = "return_code"  # staff resending an order's return code (the console)


SUBSCRIBABLE = (Kind.BACK_IN_STOCK, Kind.PRICE_DROP)
CART_KINDS = frozenset({Kind.LOW_STOCK, Kind.ABANDONED_CART})
# Messages she asked for (through staff), about something she did: not held back by the
# frequency caps, which are there against too much marketing; consent and quiet hours apply.
SERVICE_KINDS = frozenset({Kind.RETURN_CODE})


class Skip(StrEnum):
    """Why a due message was not sent (recorded on the message and the customer's timeline)."""

    OUT_OF_STOCK = "out_of_stock"
    BOUGHT_SINCE = "bought_since"
    NOT_IN_CART = "not_in_cart"
    CART_ACTIVE = "cart_active"
    NO_CONSENT = "no_consent"
    FREQUENCY_CAP = "frequency_cap"
    PRICE_NOT_LOWER = "price_not_lower"
    SUBSCRIPTION_CANCELLED = "subscription_cancelled"
    CUSTOMER_GONE = "customer_gone"
    RETURN_CODE_VOID = "return_code_void"  # revoked or expired since it was asked for


# Marketing channels in the order they are tried when the preferred one may not be used.
CHANNELS = ("email", "push", "sms")
PURPOSE_OF_CHANNEL = {"email": "marketing:email", "sms": "marketing:sms", "push": "marketing:push"}


def message_key(kind: Kind | str, customer_id: str, item: str, window: str) -> str:
    """The idempotency key of a message: one per (rule, customer, SKU, window). A trigger seen
    twice — a redelivered request, a restart, a second server process — yields the same key,
    and the store keeps one message per key."""
    text = "\x1f".join((str(kind), customer_id, item, window))
    return hashlib.sha256(text.encode()).hexdigest()[:48]


def window_of(at: datetime, seconds: int) -> str:
    """The window a trigger at `at` falls in: windows of `seconds` counted from the epoch."""
    return f"w{int(at.timestamp() // seconds)}"


def zone(name: str | None, default: str) -> ZoneInfo:
    """The customer's time zone (an IANA name), else the tenant's default, else UTC."""
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def parse_clock(text: str) -> time:
    """`HH:MM` (24-hour clock)."""
    hours, _, minutes = text.partition(":")
    return time(int(hours), int(minutes or 0))


def quiet_until(now: datetime, tz: ZoneInfo, start: str | None, end: str | None) -> datetime | None:
    """If `now` lies in the quiet hours [start, end) of the customer's local clock, the UTC
    time they end; None outside them (or with no quiet hours). Spans midnight when start is
    later than end (21:00-08:00)."""
    if not start or not end:
        return None
    begin, finish = parse_clock(start), parse_clock(end)
    if begin == finish:
        return None
    local = now.astimezone(tz)
    clock = local.time().replace(tzinfo=None)
    if begin < finish:
        inside = begin <= clock < finish
        ends_on = local.date()
    else:
        inside = clock >= begin or clock < finish
        ends_on = local.date() + timedelta(days=1) if clock >= begin else local.date()
    if not inside:
        return None
    ending = datetime.combine(ends_on, finish, tzinfo=tz)
    return ending.astimezone(now.tzinfo)


def over_cap(
    sent_at: Iterable[datetime], now: datetime, per_day: int | None, per_week: int | None
) -> bool:
    """Whether one more message now would exceed a cap (rolling 24 hours and 7 days, across
    every message kind). A cap of None or 0 is no cap."""
    times = list(sent_at)
    day = sum(1 for at in times if now - at < timedelta(days=1))
    week = sum(1 for at in times if now - at < timedelta(days=7))
    return bool(per_day and day >= per_day) or bool(per_week and week >= per_week)


def batch_size(units: int, factor: float) -> int:
    """How many waiting subscribers a restock of `units` notifies in one pacing interval:
    k x units (at least one while there is stock)."""
    if units <= 0:
        return 0
    return max(1, math.ceil(units * factor))


def channel_order(preferred: str | None, fallback: Sequence[str] = CHANNELS) -> list[str]:
    """Channels to try, the customer's preferred one first, then the fallback order."""
    order = [preferred] if preferred in PURPOSE_OF_CHANNEL else []
    return order + [c for c in fallback if c in PURPOSE_OF_CHANNEL and c not in order]


def backoff_seconds(attempt: int, base: float, ceiling: float) -> float:
    """Delay before delivery attempt `attempt + 1` (attempt counts from 1): exponential."""
    return float(min(ceiling, base * (2 ** max(0, attempt - 1))))


@dataclass(frozen=True)
class Crossing:
    """What a stock change means for alerts."""

    back_in_stock: bool
    low_stock: bool


def crossing(before: int, after: int, threshold: int) -> Crossing:
    """Back in stock: from none to some. Low stock: from at or above the threshold to below
    it, with some left."""
    return Crossing(
        back_in_stock=before <= 0 < after,
        low_stock=0 < after < threshold <= before,
    )
