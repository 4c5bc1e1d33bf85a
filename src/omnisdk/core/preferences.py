"""The customer's preferred channel (issue 19), pure: declared wins over observed.

Declared: what she said, through any channel (a form on the web shop, the app's settings, a
clerk at the till, an agent in the console). Observed: where she engages, from her events —
opening and clicking messages count for the message's channel, shopping on the web, in the
app or in a store counts for that channel — each signal decaying by half every half-life, so
a habit she dropped fades. A tie goes to the channel of her latest signal.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class PreferredChannel(StrEnum):
    EMAIL = "email"
    SMS = "sms"
    PUSH = "push"
    PHONE = "phone"
    WEB = "web"
    APP = "app"
    STORE = "store"


class PreferenceSource(StrEnum):
    DECLARED = "declared"
    OBSERVED = "observed"
    NONE = "none"


# Message engagement: (event name) -> (channel, weight). `message_opened` / `message_clicked`
# name their channel in the `channel` property (email, sms, push).
MESSAGE_EVENTS: dict[str, tuple[PreferredChannel | None, float]] = {
    "email_opened": (PreferredChannel.EMAIL, 1.0),
    "email_clicked": (PreferredChannel.EMAIL, 3.0),
    "sms_clicked": (PreferredChannel.SMS, 3.0),
    "push_opened": (PreferredChannel.PUSH, 2.0),
    "message_opened": (None, 1.0),
    "message_clicked": (None, 3.0),
}
# Shopping on a channel: the event's own channel (web, app, pos) names where she engaged.
SHOPPING_EVENTS: dict[str, float] = {
    "product_viewed": 1.0,
    "product_added": 2.0,
    "cart_viewed": 1.0,
    "chat_started": 2.0,
    "store_visit": 2.0,
    "order_completed": 3.0,
}
BACKEND_CHANNELS = {
    "web": PreferredChannel.WEB,
    "app": PreferredChannel.APP,
    "pos": PreferredChannel.STORE,
}
ENGAGEMENT_EVENTS = frozenset(MESSAGE_EVENTS) | frozenset(SHOPPING_EVENTS)
HALF_LIFE_DAYS = 30.0


@dataclass(frozen=True, slots=True)
class Signal:
    """One engagement event: its name, the backend channel it came from, the `channel`
    property (for message events) and when it happened."""

    name: str
    channel: str
    message_channel: str | None
    occurred_at: datetime


def signal_channel(signal: Signal) -> tuple[PreferredChannel, float] | None:
    """The channel an event is engagement with, and its weight; None if it is none."""
    if signal.name in MESSAGE_EVENTS:
        channel, weight = MESSAGE_EVENTS[signal.name]
        if channel is None:
            try:
                channel = PreferredChannel(signal.message_channel or "")
            except ValueError:
                return None
        return channel, weight
    shopping = SHOPPING_EVENTS.get(signal.name)
    backend = BACKEND_CHANNELS.get(signal.channel)
    if shopping is None or backend is None:
        return None
    return backend, shopping


def engagement(
    signals: Iterable[Signal], now: datetime, half_life_days: float = HALF_LIFE_DAYS
) -> dict[PreferredChannel, float]:
    """Decayed engagement score per channel."""
    decay = math.log(2) / half_life_days
    scores: dict[PreferredChannel, float] = {}
    for signal in signals:
        found = signal_channel(signal)
        if found is None:
            continue
        channel, weight = found
        age_days = max((now - signal.occurred_at).total_seconds() / 86_400, 0.0)
        scores[channel] = scores.get(channel, 0.0) + weight * math.exp(-decay * age_days)
    return scores


def observed_channel(
    signals: Iterable[Signal], now: datetime, half_life_days: float = HALF_LIFE_DAYS
) -> PreferredChannel | None:
    """The channel she engages with most; a tie goes to her latest signal's channel."""
    ordered = sorted(signals, key=lambda signal: signal.occurred_at)
    scores = engagement(ordered, now, half_life_days)
    if not scores:
        return None
    latest: dict[PreferredChannel, int] = {}
    for n, signal in enumerate(ordered):
        found = signal_channel(signal)
        if found is not None:
            latest[found[0]] = n
    return max(scores, key=lambda channel: (round(scores[channel], 9), latest[channel]))


def preferred(
    declared: PreferredChannel | None, observed: PreferredChannel | None
) -> tuple[PreferredChannel | None, PreferenceSource]:
    """Declared wins; then observed; else none."""
    if declared is not None:
        return declared, PreferenceSource.DECLARED
    if observed is not None:
        return observed, PreferenceSource.OBSERVED
    return None, PreferenceSource.NONE
