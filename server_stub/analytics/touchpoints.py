"""Touchpoints from events, and a customer's journeys: pure rules, no I/O, no numpy.

The taxonomy (docs/analytics.md): an event is a touchpoint of one kind, or none.

| kind          | from                                                                  |
|---------------|-----------------------------------------------------------------------|
| `qr_scan`     | `campaign_scanned` (a campaign QR code)                               |
| `ad_click`    | any event carrying a paid `utm_medium` (cpc, ppc, paid, display, ...) |
|               | or an ad click id (`gclid`, `fbclid`, `msclkid`, `ttclid`)            |
| `email_click` | `email_clicked`, or `utm_medium` = email / newsletter                 |
| `chat`        | `chat_started` and other `chat_*` events                              |
| `store_visit` | `store_visit`, and behavioural events of the `pos` channel            |
| `site_visit`  | other behavioural events of the `web` channel                         |
| `app_visit`   | other behavioural events of the `app` channel                         |

Orders, returns, experiment exposures and e-mail opens are not touchpoints. The shop groups
kinds into the channels its reports show (`Grouping`); by default each kind is its own channel.
Touches of the same channel less than `SESSION_GAP` apart are one touch (a visit of twenty page
views is one visit), and a journey keeps its last `MAX_TOUCHES` touches.

A journey ends with an order on any channel (a conversion) within the lookback window of its
touches, or, when `lookback` passes after the last touch with no order, without one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

SESSION_GAP = timedelta(minutes=30)
MAX_TOUCHES = 20
DEFAULT_LOOKBACK = timedelta(days=30)
PAID_MEDIA = frozenset(
    {
        "cpc",
        "ppc",
        "paid",
        "paidsearch",
        "paid_search",
        "paid_social",
        "paidsocial",
        "display",
        "banner",
        "cpm",
        "affiliate",
        "ad",
        "ads",
        "video",
    }
)
EMAIL_MEDIA = frozenset({"email", "e-mail", "newsletter"})
CLICK_IDS = ("gclid", "fbclid", "msclkid", "ttclid", "dclid")
NOT_TOUCHES = frozenset(
    {"order_completed", "return_completed", "experiment_viewed", "email_opened"}
)


class Kind(StrEnum):
    QR_SCAN = "qr_scan"
    AD_CLICK = "ad_click"
    EMAIL_CLICK = "email_click"
    CHAT = "chat"
    STORE_VISIT = "store_visit"
    SITE_VISIT = "site_visit"
    APP_VISIT = "app_visit"

    @property
    def online(self) -> bool:
        return self is not Kind.STORE_VISIT


def classify(name: str, channel: str, properties: Mapping[str, Any]) -> Kind | None:
    """The touchpoint kind of an event, or None when the event is not a touchpoint."""
    if name in NOT_TOUCHES:
        return None
    if name == "campaign_scanned":
        return Kind.QR_SCAN
    medium = str(properties.get("utm_medium") or "").strip().lower()
    if name == "email_clicked" or medium in EMAIL_MEDIA:
        return Kind.EMAIL_CLICK
    if medium in PAID_MEDIA or any(properties.get(key) for key in CLICK_IDS):
        return Kind.AD_CLICK
    if name.startswith("chat_"):
        return Kind.CHAT
    if name == "store_visit" or channel == "pos":
        return Kind.STORE_VISIT
    if channel == "web":
        return Kind.SITE_VISIT
    if channel == "app":
        return Kind.APP_VISIT
    return None


def campaign_of(properties: Mapping[str, Any]) -> str | None:
    for key in ("campaign", "utm_campaign"):
        value = properties.get(key)
        if isinstance(value, str) and value:
            return value[:100]
    return None


@dataclass(frozen=True)
class Grouping:
    """How the shop names its channels: touchpoint kind -> channel (default: the kind)."""

    channels: Mapping[str, str] = field(default_factory=dict)
    by_campaign: bool = False

    def label(self, kind: Kind, campaign: str | None) -> str:
        channel = self.channels.get(kind.value, kind.value)
        if self.by_campaign:
            return f"{channel}:{campaign or '-'}"
        return channel

    @staticmethod
    def parse(pairs: Iterable[str], by_campaign: bool = False) -> Grouping:
        """From `kind=channel` pairs (CLI and API)."""
        channels: dict[str, str] = {}
        for pair in pairs:
            kind, sep, channel = pair.partition("=")
            if not sep or kind not in Kind.__members__.values() or not channel.strip():
                kinds = ", ".join(k.value for k in Kind)
                raise ValueError(f"a grouping is `kind=channel` with a kind among {kinds}")
            channels[kind] = channel.strip()[:64]
        return Grouping(channels, by_campaign)


@dataclass(frozen=True)
class Touch:
    at: datetime
    kind: Kind
    label: str


@dataclass(frozen=True)
class Sale:
    """An order as a journey's end: when, where, its net value and how its buyer was linked."""

    at: datetime
    channel: str
    value: float
    link_method: str


@dataclass(frozen=True)
class JourneyEnd:
    """A finished journey: its touches (oldest first), ages in days, and its sale if any."""

    ended_at: datetime
    touches: tuple[Touch, ...]
    ages: tuple[int, ...]
    sale: Sale | None
    # For ROPO: whether the buyer had an online / a store touchpoint in the lookback window
    # before the sale, whatever ended her previous journey (an earlier order does not hide
    # her research).
    online: bool = False
    in_store: bool = False

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(touch.label for touch in self.touches)


def _ended(
    touches: Sequence[Touch], end: datetime, sale: Sale | None, before: Sequence[Touch] = ()
) -> JourneyEnd:
    kept = tuple(touches[-MAX_TOUCHES:])
    ages = tuple(max(0, (end - touch.at) // timedelta(days=1)) for touch in kept)
    online = any(touch.kind.online for touch in before)
    in_store = any(not touch.kind.online for touch in before)
    return JourneyEnd(end, kept, ages, sale, online, in_store)


def journeys(
    touches: Iterable[Touch],
    sales: Iterable[Sale],
    *,
    lookback: timedelta = DEFAULT_LOOKBACK,
    as_of: datetime,
) -> list[JourneyEnd]:
    """One customer's journeys, oldest first. A sale ends the journey with the touches of the
    lookback window before it (none: an unattributed sale); a touch more than `lookback` after
    the previous one ends the journey before it without a sale; the last open journey ends
    without a sale only once `lookback` has passed by `as_of` (until then it is still open)."""
    timeline: list[tuple[datetime, int, Touch | Sale]] = [(t.at, 0, t) for t in touches]
    timeline += [(s.at, 1, s) for s in sales]
    timeline.sort(key=lambda item: (item[0], item[1]))
    ended: list[JourneyEnd] = []
    current: list[Touch] = []
    seen: list[Touch] = []  # every touch so far, for ROPO's look back across earlier orders
    for at, _, item in timeline:
        if isinstance(item, Sale):
            window = [t for t in current if at - t.at <= lookback]
            before = [t for t in seen[-4 * MAX_TOUCHES :] if at - t.at <= lookback]
            ended.append(_ended(window, at, item, before))
            current = []
            continue
        seen.append(item)
        if current and at - current[-1].at > lookback:
            ended.append(_ended(current, current[-1].at + lookback, None))
            current = []
        if current and current[-1].label == item.label and at - current[-1].at < SESSION_GAP:
            continue
        current.append(item)
    if current and as_of - current[-1].at > lookback:
        ended.append(_ended(current, current[-1].at + lookback, None))
    return ended
