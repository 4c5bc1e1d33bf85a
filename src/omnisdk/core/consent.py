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

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

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
    skew: float = DEFAULT_SKEW_SECONDS,
) -> dict[str, PurposeState]:
    """The current state per purpose: person-scoped decisions, overridden for `device_id` by
    that device's own decisions."""
    ledger = list(decisions)
    person = standing((d for d in ledger if d.scope is ConsentScope.PERSON), skew)
    device = (
        standing(
            (d for d in ledger if d.scope is ConsentScope.DEVICE and d.device_id == device_id),
            skew,
        )
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


def state_at(
    decisions: Iterable[Decision],
    when: float,
    device_id: str | None = None,
    skew: float = DEFAULT_SKEW_SECONDS,
) -> dict[str, PurposeState]:
    """The state as it stood at `when` (POSIX seconds): only the decisions recorded by then
    count. What a customer did is judged by the consent that stood when she did it, not when
    the news of it arrived (an event held in an outbox, or sent with an earlier timestamp).
    A decision queued offline is recorded at the time it was made, so it is placed right."""
    return state((d for d in decisions if d.at <= when), device_id, skew=skew)


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


# --- recording rules -------------------------------------------------------------------------

MARKETING_CHANNELS = {"email": "marketing:email", "sms": "marketing:sms", "push": "marketing:push"}
DOUBLE_OPT_IN_DEFAULT = ("marketing:email",)
CUSTOM_PURPOSE = re.compile(r"^[a-z][a-z0-9_]{0,30}(:[a-z0-9_]{1,31})?$")


class ConsentError(ValueError):
    """A decision that may not be recorded. `kind` is `unknown-purpose` or `transition`."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def check_purpose(purpose: str, custom: Iterable[str] = ()) -> None:
    if purpose not in STANDARD_PURPOSES and purpose not in set(custom):
        raise ConsentError(
            "unknown-purpose",
            f"unknown purpose {purpose!r}: use one of {', '.join(STANDARD_PURPOSES)} "
            "or add it to the tenant's consent purposes",
        )


def check_transition(current: PurposeState | None, status: Status) -> None:
    """What may be recorded given the standing state of the same purpose and scope.

    `pending` is never recorded directly: a grant of a double opt-in purpose becomes pending
    until confirmed. Withdrawing needs something granted (or pending) to withdraw; a first
    refusal is `denied`.
    """
    if status is Status.PENDING:
        raise ConsentError(
            "transition",
            "pending cannot be recorded: record granted, and a double opt-in purpose stays "
            "pending until its confirmation token comes back",
        )
    if status is Status.WITHDRAWN and (
        current is None or current.status not in (Status.GRANTED, Status.PENDING)
    ):
        was = "nothing" if current is None or current.status is None else current.status.value
        raise ConsentError(
            "transition", f"nothing to withdraw (the standing decision is {was}); record denied"
        )


def can_contact(states: dict[str, PurposeState], channel: str) -> bool:
    """Whether a marketing message may go out on `channel` (email, sms or push)."""
    purpose = MARKETING_CHANNELS.get(channel)
    if purpose is None:
        raise ValueError(f"unknown marketing channel {channel!r}: use email, sms or push")
    current = states.get(purpose)
    return current is not None and current.granted


# --- double opt-in confirmation tokens -------------------------------------------------------
# `oc1.` + base64url(JSON claims) + `.` + base64url(HMAC-SHA-256 of the claims), keyed per tenant.


class ConfirmationInvalid(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_confirmation(key: bytes, claims: dict[str, str | int]) -> str:
    body = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    return f"oc1.{_b64(body)}.{_b64(hmac.new(key, body, hashlib.sha256).digest())}"


def read_confirmation(key: bytes, token: str, now: float) -> dict[str, Any]:
    """The claims of a genuine, unexpired token; raises ConfirmationInvalid saying why."""
    parts = token.strip().split(".")
    if len(parts) != 3 or parts[0] != "oc1":
        raise ConfirmationInvalid("this is not a consent confirmation token")
    try:
        body, signature = _unb64(parts[1]), _unb64(parts[2])
    except (ValueError, binascii.Error) as exc:
        raise ConfirmationInvalid("the token is damaged") from exc
    if _b64(body) != parts[1] or _b64(signature) != parts[2]:  # one spelling per token
        raise ConfirmationInvalid("the token is damaged")
    if not hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), signature):
        raise ConfirmationInvalid("the token's signature does not match: it was not issued here")
    try:
        claims: dict[str, Any] = json.loads(body)
        expires = float(claims["exp"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfirmationInvalid("the token is damaged") from exc
    if now > expires:
        raise ConfirmationInvalid("the token has expired: ask the customer to opt in again")
    return claims
