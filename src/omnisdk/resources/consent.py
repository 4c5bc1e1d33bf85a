"""Consent: record decisions, confirm double opt-ins, and ask cheaply before using personal data.

`check(customer, purpose)` is meant for every request: it answers from the client's cache, which
the consent change feed keeps true (a withdrawal on any channel drops the entry the moment it
commits). No decision means not granted, and so does a server that cannot be asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from omnisdk.core.consent import MARKETING_CHANNELS, ConsentScope, Status
from omnisdk.core.problems import ProblemType
from omnisdk.errors import APIConnectionError, InvalidRequestError
from omnisdk.models import (
    ConfirmConsentRequest,
    ConsentDecisionIn,
    ConsentHistory,
    ConsentSource,
    ConsentState,
    NoticeIn,
    RecordConsentRequest,
    RecordConsentResult,
)
from omnisdk.resources._resource import (
    MISS,
    Append,
    C,
    Call,
    Flow,
    Resource,
    checked_customer_id,
    model,
    operation,
    send,
)

if TYPE_CHECKING:
    from omnisdk._consent_cache import ConsentCache


def state_call(customer_id: str, device_id: str | None) -> Call[ConsentState]:
    params = {"device_id": device_id} if device_id else None
    path = f"/v1/consent/{checked_customer_id(customer_id)}"
    return Call("GET", path, model(ConsentState), params=params)


def history_call(customer_id: str) -> Call[ConsentHistory]:
    path = f"/v1/consent/{checked_customer_id(customer_id)}/history"
    return Call("GET", path, model(ConsentHistory))


def decisions_of(
    purposes: Iterable[str],
    status: Status | str,
    *,
    scope: ConsentScope | str = ConsentScope.PERSON,
    device_id: str | None = None,
    source: str = "other",
    method: str = "",
    notice: NoticeIn | Mapping[str, Any] | None = None,
    client_time: datetime | None = None,
) -> list[ConsentDecisionIn]:
    return [
        ConsentDecisionIn.model_validate(
            {
                "purpose": purpose,
                "status": status,
                "scope": scope,
                "device_id": device_id,
                "source": source,
                "method": method,
                "notice": notice,
                "client_time": client_time,
            }
        )
        for purpose in purposes
    ]


def record_call(customer_id: str, decisions: list[ConsentDecisionIn]) -> Call[RecordConsentResult]:
    body = RecordConsentRequest(decisions=decisions)
    return Call(
        "POST",
        f"/v1/consent/{checked_customer_id(customer_id)}",
        model(RecordConsentResult),
        json=body.model_dump(mode="json", exclude_none=True),
    )


CONSENT = "consent"  # the outbox kind of a decision recorded while offline


def queued_item(customer_id: str, decisions: list[ConsentDecisionIn]) -> tuple[str, dict[str, Any]]:
    """The outbox key and payload of decisions to deliver later, stamped with the time now
    when they carry no time of their own."""
    now = datetime.now(UTC)
    decisions = [
        d.model_copy(update={"queued": True, "client_time": d.client_time or now})
        for d in decisions
    ]
    body = RecordConsentRequest(decisions=decisions).model_dump(mode="json", exclude_none=True)
    payload = {"customer_id": checked_customer_id(customer_id), "request": body}
    return f"consent-{uuid.uuid4().hex}", payload


def delivery_call(payload: dict[str, Any], key: str) -> Call[RecordConsentResult]:
    """The request that delivers a queued item (its outbox key is its Idempotency-Key)."""
    return Call(
        "POST",
        f"/v1/consent/{payload['customer_id']}",
        model(RecordConsentResult),
        json=payload["request"],
        idempotency_key=key,
    )


def confirm_call(token: str) -> Call[RecordConsentResult]:
    body = ConfirmConsentRequest(token=token)
    return Call(
        "POST", "/v1/consent/confirmations", model(RecordConsentResult), json=body.model_dump()
    )


def _remember(cache: ConsentCache, asked: str, result: RecordConsentResult) -> None:
    cache.invalidate([asked, result.state.customer_id])
    cache.put(result.state, None, asked)


def granted_in(state: ConsentState | None, purpose: str) -> bool:
    """Whether `state` grants `purpose` (no state, no decision: not granted)."""
    current = state.purposes.get(purpose) if state is not None else None
    return current is not None and current.granted


def _marketing_purpose(channel: str) -> str:
    purpose = MARKETING_CHANNELS.get(channel)
    if purpose is None:
        raise InvalidRequestError(
            ProblemType.VALIDATION_ERROR,
            f"unknown marketing channel {channel!r}: use email, sms or push",
        )
    return purpose


def _purposes(purposes: str | Iterable[str]) -> list[str]:
    return [purposes] if isinstance(purposes, str) else list(purposes)


class Consent(Resource[C]):
    """The consent ledger: record decisions, confirm double opt-ins, ask before using data."""

    @operation
    def record(
        self,
        customer_id: str,
        purposes: str | Iterable[str],
        status: Status | Literal["granted", "denied", "withdrawn"],
        *,
        scope: ConsentScope | Literal["person", "device"] = ConsentScope.PERSON,
        device_id: str | None = None,
        source: ConsentSource = "other",
        method: str = "",
        notice: NoticeIn | Mapping[str, Any] | None = None,
        client_time: datetime | None = None,
    ) -> Flow[RecordConsentResult]:
        """Append decisions (one per purpose) to the customer's ledger and return the new
        state. A grant of a double opt-in purpose (marketing:email) comes back pending, with
        a token in `confirmations` to send in the opt-in e-mail.

        `scope` is "person" (merged across the customer's devices) or "device" (with
        `device_id`, the device's anonymous id: never merged). `source` says where the
        decision was taken (web_banner, app_settings, pos_signature_pad, email_double_opt_in,
        call_centre, other), `method` how (click, checkbox, signature), `notice` which notice
        the customer saw (`{"id", "version", "text_sha256"}`), and `client_time` when she
        decided by the device's clock (default: when the server receives it)."""
        decisions = decisions_of(
            _purposes(purposes),
            status,
            scope=scope,
            device_id=device_id,
            source=source,
            method=method,
            notice=notice,
            client_time=client_time,
        )
        result: RecordConsentResult = yield record_call(customer_id, decisions)
        _remember(self._client.consent_cache, customer_id, result)
        return result

    @operation
    def grant(
        self,
        customer_id: str,
        *purposes: str,
        scope: ConsentScope | Literal["person", "device"] = ConsentScope.PERSON,
        device_id: str | None = None,
        source: ConsentSource = "other",
        method: str = "",
        notice: NoticeIn | Mapping[str, Any] | None = None,
        client_time: datetime | None = None,
    ) -> Flow[RecordConsentResult]:
        """Record that the customer granted `purposes` (for example "personalisation",
        "analytics", "marketing:email"); the options are those of `record`."""
        return (
            yield from Consent.record.flow(
                self,
                customer_id,
                purposes,
                Status.GRANTED,
                scope=scope,
                device_id=device_id,
                source=source,
                method=method,
                notice=notice,
                client_time=client_time,
            )
        )

    @operation
    def deny(
        self,
        customer_id: str,
        *purposes: str,
        scope: ConsentScope | Literal["person", "device"] = ConsentScope.PERSON,
        device_id: str | None = None,
        source: ConsentSource = "other",
        method: str = "",
        notice: NoticeIn | Mapping[str, Any] | None = None,
        client_time: datetime | None = None,
    ) -> Flow[RecordConsentResult]:
        """Record that the customer refused `purposes` when asked; the options are those of
        `record`."""
        return (
            yield from Consent.record.flow(
                self,
                customer_id,
                purposes,
                Status.DENIED,
                scope=scope,
                device_id=device_id,
                source=source,
                method=method,
                notice=notice,
                client_time=client_time,
            )
        )

    @operation
    def withdraw(
        self,
        customer_id: str,
        *purposes: str,
        scope: ConsentScope | Literal["person", "device"] = ConsentScope.PERSON,
        device_id: str | None = None,
        source: ConsentSource = "other",
        method: str = "",
        notice: NoticeIn | Mapping[str, Any] | None = None,
        client_time: datetime | None = None,
    ) -> Flow[RecordConsentResult]:
        """Record that the customer withdrew `purposes` she had granted: every channel stops
        using them at once (ConsentTransitionError if she never granted them)."""
        return (
            yield from Consent.record.flow(
                self,
                customer_id,
                purposes,
                Status.WITHDRAWN,
                scope=scope,
                device_id=device_id,
                source=source,
                method=method,
                notice=notice,
                client_time=client_time,
            )
        )

    @operation
    def queue(
        self,
        customer_id: str,
        purposes: str | Iterable[str],
        status: Status | Literal["granted", "denied", "withdrawn"],
        *,
        scope: ConsentScope | Literal["person", "device"] = ConsentScope.PERSON,
        device_id: str | None = None,
        source: ConsentSource = "other",
        method: str = "",
        notice: NoticeIn | Mapping[str, Any] | None = None,
        client_time: datetime | None = None,
    ) -> Flow[str]:
        """Record decisions through the durable outbox (a till or app without network): they
        are delivered in the background, applied once, and take their place in the ledger at
        the time they were made. Until then this client stops trusting its cached state for
        the customer. Returns the outbox key; the options are those of `record`."""
        decisions = decisions_of(
            _purposes(purposes),
            status,
            scope=scope,
            device_id=device_id,
            source=source,
            method=method,
            notice=notice,
            client_time=client_time,
        )
        key, payload = queued_item(customer_id, decisions)
        client = self._client
        outbox = yield from self._open_outbox()
        yield Append(outbox, CONSENT, key, payload)
        client.consent_cache.invalidate([customer_id])
        client.delivery.nudge()
        return key

    @operation
    def confirm(self, token: str) -> Flow[RecordConsentResult]:
        """The customer clicked the opt-in e-mail's link: confirm the pending grant."""
        result: RecordConsentResult = yield confirm_call(token)
        _remember(self._client.consent_cache, result.state.customer_id, result)
        return result

    @operation
    def get(self, customer_id: str, device_id: str | None = None) -> Flow[ConsentState]:
        """The current state, from the server (and remembered for `check`)."""
        state: ConsentState = yield state_call(customer_id, device_id)
        self._client.consent_cache.put(state, device_id, customer_id)
        return state

    @operation
    def state(self, customer_id: str, device_id: str | None = None) -> Flow[ConsentState | None]:
        """The state from the cache, asking the server only when it is not known; None when
        the server cannot be asked (treat as nothing granted)."""
        entry = self._client.consent_cache.get(checked_customer_id(customer_id), device_id)
        if entry is not None:
            return entry.state
        try:
            return (yield from Consent.get.flow(self, customer_id, device_id))
        except APIConnectionError:
            return None

    @operation
    def check(self, customer_id: str, purpose: str, device_id: str | None = None) -> Flow[bool]:
        """Is `purpose` granted? Cheap enough for every request (answered from memory)."""
        remembered = self._check_from_memory(customer_id, purpose, device_id)
        if remembered is not MISS:
            return bool(remembered)
        state = yield from Consent.state.flow(self, customer_id, device_id)
        return granted_in(state, purpose)

    @check.from_memory
    def _check_from_memory(
        self, customer_id: str, purpose: str, device_id: str | None = None
    ) -> bool:
        cache = self._client._consent_cache or self._client.consent_cache
        entry = cache.get(checked_customer_id(customer_id), device_id)
        return MISS if entry is None else purpose in entry.granted

    @operation
    def can_contact(self, customer_id: str, channel: str) -> Flow[bool]:
        """May a marketing message go out on `channel` (email, sms or push)?"""
        return (yield from Consent.check.flow(self, customer_id, _marketing_purpose(channel)))

    @operation
    def consent_mode(self, customer_id: str, device_id: str | None = None) -> Flow[dict[str, str]]:
        """Google Consent Mode v2 signals for the page's gtag('consent', 'update', ...)."""
        state = yield from Consent.state.flow(self, customer_id, device_id)
        if state is None:
            return {signal: "denied" for signal in _SIGNALS}
        return dict(state.consent_mode)

    @operation
    def history(self, customer_id: str) -> Flow[ConsentHistory]:
        """Every decision in the customer's ledger, oldest first (proof of consent)."""
        return (yield from send(history_call(customer_id)))


_SIGNALS = ("ad_storage", "analytics_storage", "ad_user_data", "ad_personalization")
