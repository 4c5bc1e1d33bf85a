"""Consent rules (DESIGN: consent), pure: the ledger is append-only and the current state is
computed from it.

- No decision means not granted; `pending` (a double opt-in not yet confirmed) is not granted.
- The latest decision for a purpose counts, except that a grant made under an older notice
  version than a later-or-equal withdrawal never overrides that withdrawal.
- Merging two customers' ledgers (identity merge): device-scoped decisions are never merged
  (they stay with their device); person-scoped ones take the latest decision per purpose, and
  when the two latest decisions are within the clock-skew window of each other and disagree,
  deny wins and the purpose is flagged for a re-prompt. The result does not depend on the order
  in which customers are linked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_SKEW_SECONDS = 120.0


class Status(StrEnum):
    GRANTED = "granted"
    DENIED = "denied"
    WITHDRAWN = "withdrawn"
    PENDING = "pending"


class ConsentScope(StrEnum):
    PERSON = "person"
    DEVICE = "device"


STANDARD_PURPOSES = (
    "personalisation",
    "analytics",
    "marketing:email",
    "marketing:sms",
    "marketing:push",
    "ad_storage",
    "analytics_storage",
    "ad_user_data",
    "ad_personalization",
)

# Our purposes → Google Consent Mode v2 signals (for gtag('consent', 'update', …)).
CONSENT_MODE = {
    "ad_storage": "ad_storage",
    "analytics_storage": "analytics_storage",
    "ad_user_data": "ad_user_data",
    "ad_personalization": "ad_personalization",
}
# A signal not decided itself follows this purpose of ours.
CONSENT_MODE_FALLBACK = {
    "analytics_storage": "analytics",
    "ad_personalization": "personalisation",
}


@dataclass(frozen=True, order=True)
class Decision:
    """One entry of the ledger. `at` is the server's time of recording."""

    at: float
    purpose: str
    status: Status
    scope: ConsentScope = ConsentScope.PERSON
    device_id: str | None = None
    notice_version: int = 0
    channel: str = ""
    decision_id: str = ""
    origin: str = ""  # the customer the decision was recorded for (kept through merges)


@dataclass(frozen=True)
class PurposeState:
    purpose: str
    granted: bool
    status: Status | None  # None: no decision
    decided_at: float | None
    reprompt: bool = False


def _refusal(decision: Decision) -> bool:
    return decision.status in (Status.WITHDRAWN, Status.DENIED)


def _eligible(entries: list[Decision]) -> list[Decision]:
    """All but the grants made under an older notice than some refusal: those cannot override
    a refusal."""
    refused_notice = max((d.notice_version for d in entries if _refusal(d)), default=-1)
    return [
        d for d in entries if d.status is not Status.GRANTED or d.notice_version >= refused_notice
    ]


def resolve(entries: list[Decision], skew: float) -> tuple[Decision, bool]:
    """The standing decision of one purpose, and whether to re-prompt.

    The latest eligible decision stands; but when a decision of the other kind recorded for a
    different customer (before a merge) lies within `skew` seconds of it, the clocks cannot
    tell which came last: the latest refusal among those stands (deny wins) and the customer
    is asked again. Defined on the set of decisions, so the order of merges does not matter.
    """
    eligible = _eligible(entries)
    latest = max(eligible, key=lambda d: (d.at, d.decision_id))
    rivals = [
        d
        for d in eligible
        if d.origin != latest.origin
        and abs(d.at - latest.at) <= skew
        and (d.status is Status.GRANTED) != (latest.status is Status.GRANTED)
    ]
    if not rivals:
        return latest, False
    refusals = [d for d in [latest, *rivals] if d.status is not Status.GRANTED]
    return max(refusals, key=lambda d: (d.at, d.decision_id)), True


def standing(
    decisions: Iterable[Decision], skew: float = DEFAULT_SKEW_SECONDS
) -> dict[str, tuple[Decision, bool]]:
    """Per purpose: the standing decision and whether to re-prompt."""
    by_purpose: dict[str, list[Decision]] = {}
    for decision in decisions:
        by_purpose.setdefault(decision.purpose, []).append(decision)
    return {purpose: resolve(entries, skew) for purpose, entries in by_purpose.items()}


def state(
    decisions: Iterable[Decision],
    device_id: str | None = None,
    reprompt: frozenset[str] = frozenset(),
) -> dict[str, PurposeState]:
    """The current state per purpose: person-scoped decisions, overridden for `device_id` by
    that device's own decisions."""
    ledger = list(decisions)
    person = standing(d for d in ledger if d.scope is ConsentScope.PERSON)
    device = (
        standing(d for d in ledger if d.scope is ConsentScope.DEVICE and d.device_id == device_id)
        if device_id
        else {}
    )
    combined = {**person, **device}
    return {
        purpose: PurposeState(
            purpose,
            decision.status is Status.GRANTED,
            decision.status,
            decision.at,
            again or purpose in reprompt,
        )
        for purpose, (decision, again) in sorted(combined.items())
    }


def granted(decisions: Iterable[Decision], purpose: str, device_id: str | None = None) -> bool:
    """No decision means not granted."""
    current = state(decisions, device_id).get(purpose)
    return current is not None and current.granted


def merge(a: Iterable[Decision], b: Iterable[Decision]) -> tuple[Decision, ...]:
    """The ledger of two merged customers: every entry of both (the ledger is append-only;
    each keeps its origin). Device-scoped entries stay bound to their device; the skew rule
    applies when the state is read (`resolve`)."""
    return tuple(sorted(set(a) | set(b)))


def consent_mode(states: dict[str, PurposeState]) -> dict[str, str]:
    """Google Consent Mode v2 signals: each signal's own purpose if decided, else the purpose of
    ours it follows, else denied."""
    signals = {}
    for signal in CONSENT_MODE.values():
        current = states.get(signal) or states.get(CONSENT_MODE_FALLBACK.get(signal, ""))
        signals[signal] = "granted" if current is not None and current.granted else "denied"
    return signals
