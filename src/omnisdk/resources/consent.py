"""Consent: record decisions, confirm double opt-ins, and ask cheaply before using personal data.

`check(customer, purpose)` is meant for every request: it answers from the client's cache, which
the consent change feed keeps true (a withdrawal on any channel drops the entry the moment it
commits). No decision means not granted, and so does a server that cannot be asked.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from omnisdk.core.consent import MARKETING_CHANNELS, ConsentScope, Status
from omnisdk.errors import APIConnectionError
from omnisdk.models import (
    ConfirmConsentRequest,
    ConsentDecisionIn,
    ConsentHistory,
    ConsentState,
    NoticeIn,
    RecordConsentRequest,
    RecordConsentResult,
)
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model

if TYPE_CHECKING:
    from omnisdk._consent_cache import ConsentCache


def state_call(customer_id: str, device_id: str | None) -> Call[ConsentState]:
    params = {"device_id": device_id} if device_id else None
    return Call("GET", f"/v1/consent/{customer_id}", model(ConsentState), params=params)


def history_call(customer_id: str) -> Call[ConsentHistory]:
    return Call("GET", f"/v1/consent/{customer_id}/history", model(ConsentHistory))


def decisions_of(
    purposes: Iterable[str],
    status: Status | str,
    *,
    scope: ConsentScope | str = ConsentScope.PERSON,
    device_id: str | None = None,
    source: str = "other",
    method: str = "",
    notice: NoticeIn | dict[str, Any] | None = None,
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
        f"/v1/consent/{customer_id}",
        model(RecordConsentResult),
        json=body.model_dump(mode="json", exclude_none=True),
    )


CONSENT = "consent"  # the outbox kind of a decision recorded while offline


def queued_item(
    customer_id: str, purposes: str | Iterable[str], status: Status | str, **details: Any
) -> tuple[str, dict[str, Any]]:
    """The outbox key and payload of decisions to deliver later, stamped with the time now."""
    wanted = [purposes] if isinstance(purposes, str) else list(purposes)
    details.setdefault("client_time", datetime.now(UTC))
    decisions = [
        d.model_copy(update={"queued": True}) for d in decisions_of(wanted, status, **details)
    ]
    body = RecordConsentRequest(decisions=decisions).model_dump(mode="json", exclude_none=True)
    return f"consent-{uuid.uuid4().hex}", {"customer_id": customer_id, "request": body}


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
        raise ValueError(f"unknown marketing channel {channel!r}: use email, sms or push")
    return purpose


class Consent(SyncResource):
    def record(
        self,
        customer_id: str,
        purposes: str | Iterable[str],
        status: Status | str,
        **details: Any,
    ) -> RecordConsentResult:
        """Append decisions (one per purpose) to the customer's ledger.

        `details`: scope ("person"/"device"), device_id, source (web_banner, app_settings,
        pos_signature_pad, email_double_opt_in, call_centre, ...), method, notice
        ({"id", "version", "text_sha256"}), client_time. A grant of a double opt-in purpose
        (marketing:email) comes back pending with a token in `confirmations`.
        """
        wanted = [purposes] if isinstance(purposes, str) else list(purposes)
        result = self._client.execute(
            record_call(customer_id, decisions_of(wanted, status, **details))
        )
        _remember(self._client.consent_cache, customer_id, result)
        return result

    def grant(self, customer_id: str, *purposes: str, **details: Any) -> RecordConsentResult:
        return self.record(customer_id, purposes, Status.GRANTED, **details)

    def deny(self, customer_id: str, *purposes: str, **details: Any) -> RecordConsentResult:
        return self.record(customer_id, purposes, Status.DENIED, **details)

    def withdraw(self, customer_id: str, *purposes: str, **details: Any) -> RecordConsentResult:
        return self.record(customer_id, purposes, Status.WITHDRAWN, **details)

    def queue(
        self,
        customer_id: str,
        purposes: str | Iterable[str],
        status: Status | str,
        **details: Any,
    ) -> str:
        """Record decisions through the durable outbox (a till or app without network): they
        are delivered in the background, applied once, and take their place in the ledger at
        the time they were made. Until then this client stops trusting its cached state for
        the customer. Returns the outbox key."""
        key, payload = queued_item(customer_id, purposes, status, **details)
        self._client.outbox.append(CONSENT, key, payload)
        self._client.consent_cache.invalidate([customer_id])
        self._client.delivery.nudge()
        return key

    def confirm(self, token: str) -> RecordConsentResult:
        """The customer clicked the opt-in e-mail's link: confirm the pending grant."""
        result = self._client.execute(confirm_call(token))
        _remember(self._client.consent_cache, result.state.customer_id, result)
        return result

    def get(self, customer_id: str, device_id: str | None = None) -> ConsentState:
        """The current state, from the server (and remembered for `check`)."""
        state = self._client.execute(state_call(customer_id, device_id))
        self._client.consent_cache.put(state, device_id, customer_id)
        return state

    def state(self, customer_id: str, device_id: str | None = None) -> ConsentState | None:
        """The state from the cache, asking the server only when it is not known; None when
        the server cannot be asked (treat as nothing granted)."""
        entry = self._client.consent_cache.get(customer_id, device_id)
        if entry is not None:
            return entry.state
        try:
            return self.get(customer_id, device_id)
        except APIConnectionError:
            return None

    def check(self, customer_id: str, purpose: str, device_id: str | None = None) -> bool:
        """Is `purpose` granted? Cheap enough for every request (answered from memory)."""
        entry = self._client.consent_cache.get(customer_id, device_id)
        if entry is not None:
            return purpose in entry.granted
        state = self.state(customer_id, device_id)
        return granted_in(state, purpose)

    def can_contact(self, customer_id: str, channel: str) -> bool:
        """May a marketing message go out on `channel` (email, sms or push)?"""
        return self.check(customer_id, _marketing_purpose(channel))

    def consent_mode(self, customer_id: str, device_id: str | None = None) -> dict[str, str]:
        """Google Consent Mode v2 signals for the page's gtag('consent', 'update', ...)."""
        state = self.state(customer_id, device_id)
        if state is None:
            return {signal: "denied" for signal in _SIGNALS}
        return dict(state.consent_mode)

    def history(self, customer_id: str) -> ConsentHistory:
        return self._client.execute(history_call(customer_id))


_SIGNALS = ("ad_storage", "analytics_storage", "ad_user_data", "ad_personalization")


class AsyncConsent(AsyncResource):
    async def record(
        self,
        customer_id: str,
        purposes: str | Iterable[str],
        status: Status | str,
        **details: Any,
    ) -> RecordConsentResult:
        wanted = [purposes] if isinstance(purposes, str) else list(purposes)
        result = await self._client.execute(
            record_call(customer_id, decisions_of(wanted, status, **details))
        )
        _remember(self._client.consent_cache, customer_id, result)
        return result

    async def grant(self, customer_id: str, *purposes: str, **details: Any) -> RecordConsentResult:
        return await self.record(customer_id, purposes, Status.GRANTED, **details)

    async def deny(self, customer_id: str, *purposes: str, **details: Any) -> RecordConsentResult:
        return await self.record(customer_id, purposes, Status.DENIED, **details)

    async def withdraw(
        self, customer_id: str, *purposes: str, **details: Any
    ) -> RecordConsentResult:
        return await self.record(customer_id, purposes, Status.WITHDRAWN, **details)

    async def queue(
        self,
        customer_id: str,
        purposes: str | Iterable[str],
        status: Status | str,
        **details: Any,
    ) -> str:
        import asyncio

        key, payload = queued_item(customer_id, purposes, status, **details)
        await asyncio.to_thread(self._client.outbox.append, CONSENT, key, payload)
        self._client.consent_cache.invalidate([customer_id])
        self._client.delivery.nudge()
        return key

    async def confirm(self, token: str) -> RecordConsentResult:
        result = await self._client.execute(confirm_call(token))
        _remember(self._client.consent_cache, result.state.customer_id, result)
        return result

    async def get(self, customer_id: str, device_id: str | None = None) -> ConsentState:
        state = await self._client.execute(state_call(customer_id, device_id))
        self._client.consent_cache.put(state, device_id, customer_id)
        return state

    async def state(self, customer_id: str, device_id: str | None = None) -> ConsentState | None:
        entry = self._client.consent_cache.get(customer_id, device_id)
        if entry is not None:
            return entry.state
        try:
            return await self.get(customer_id, device_id)
        except APIConnectionError:
            return None

    async def check(self, customer_id: str, purpose: str, device_id: str | None = None) -> bool:
        entry = self._client.consent_cache.get(customer_id, device_id)
        if entry is not None:
            return purpose in entry.granted
        state = await self.state(customer_id, device_id)
        return granted_in(state, purpose)

    async def can_contact(self, customer_id: str, channel: str) -> bool:
        return await self.check(customer_id, _marketing_purpose(channel))

    async def consent_mode(self, customer_id: str, device_id: str | None = None) -> dict[str, str]:
        state = await self.state(customer_id, device_id)
        if state is None:
            return {signal: "denied" for signal in _SIGNALS}
        return dict(state.consent_mode)

    async def history(self, customer_id: str) -> ConsentHistory:
        return await self._client.execute(history_call(customer_id))
