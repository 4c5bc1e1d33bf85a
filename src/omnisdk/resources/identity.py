"""Identity: one customer across devices and channels, and the single customer view."""

from __future__ import annotations

from typing import Any

from omnisdk.core.identifiers import IdentifierType
from omnisdk.errors import NotFoundError
from omnisdk.models import (
    Annotation,
    AnnotationIn,
    IdentifierIn,
    IdentifyRequest,
    IdentifyResult,
    Merge,
    MergeList,
    Profile,
    Resolution,
    ResolveRequest,
    SharedIdentifierRequest,
    TimelinePage,
)
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model


def identify_call(
    anonymous_id: str | None,
    customer_ref: str | None,
    email: str | None,
    phone: str | None,
    loyalty_card: str | None,
    identifiers: list[IdentifierIn] | None,
    traits: dict[str, Any] | None,
    idempotency_key: str | None,
) -> Call[IdentifyResult]:
    body = IdentifyRequest(
        anonymous_id=anonymous_id,
        customer_ref=customer_ref,
        email=email,
        phone=phone,
        loyalty_card=loyalty_card,
        identifiers=identifiers or [],
        traits=traits or {},
    )
    return Call(
        "POST",
        "/v1/identity/identify",
        model(IdentifyResult),
        json=body.model_dump(mode="json", exclude_none=True),
        idempotency_key=idempotency_key,
    )


def resolve_call(type: IdentifierType | str, value: str) -> Call[Resolution]:
    body = ResolveRequest(type=IdentifierType(type), value=value).model_dump(mode="json")
    return Call("POST", "/v1/identity/resolve", model(Resolution), json=body)


def profile_call(customer_id: str) -> Call[Profile]:
    return Call("GET", f"/v1/customers/{customer_id}/profile", model(Profile))


def timeline_call(customer_id: str, limit: int, cursor: str | None) -> Call[TimelinePage]:
    params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
    return Call("GET", f"/v1/customers/{customer_id}/timeline", model(TimelinePage), params=params)


def annotate_call(customer_id: str, department: str, author: str, text: str) -> Call[Annotation]:
    body = AnnotationIn(department=department, author=author, text=text).model_dump()
    return Call("POST", f"/v1/customers/{customer_id}/annotations", model(Annotation), json=body)


def merges_call(customer_id: str) -> Call[list[Merge]]:
    return Call(
        "GET", f"/v1/customers/{customer_id}/merges", lambda d: MergeList.model_validate(d).items
    )


def split_call(merge_id: str) -> Call[Merge]:
    return Call("POST", f"/v1/merges/{merge_id}/split", model(Merge))


def shared_call(
    type: IdentifierType | str, value: str, shared: bool
) -> Call[SharedIdentifierRequest]:
    body = SharedIdentifierRequest(type=IdentifierType(type), value=value, shared=shared)
    return Call(
        "POST",
        "/v1/identity/shared",
        model(SharedIdentifierRequest),
        json=body.model_dump(mode="json"),
    )


class Identity(SyncResource):
    def identify(
        self,
        *,
        anonymous_id: str | None = None,
        customer_ref: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        loyalty_card: str | None = None,
        identifiers: list[IdentifierIn] | None = None,
        traits: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> IdentifyResult:
        """Link these identifiers to one customer; says whether customers were merged."""
        return self._client.execute(
            identify_call(
                anonymous_id,
                customer_ref,
                email,
                phone,
                loyalty_card,
                identifiers,
                traits,
                idempotency_key,
            )
        )

    def resolve(self, type: IdentifierType | str, value: str) -> str | None:
        """The customer id an identifier belongs to, or None if no customer has it."""
        try:
            return self._client.execute(resolve_call(type, value)).customer_id
        except NotFoundError:
            return None

    def get_profile(self, customer_id: str) -> Profile:
        """The single customer view; any current or merged customer id works."""
        return self._client.execute(profile_call(customer_id))

    def timeline(
        self, customer_id: str, limit: int = 50, cursor: str | None = None
    ) -> TimelinePage:
        """A page of the customer's events, newest first; pass `next_cursor` for the next."""
        return self._client.execute(timeline_call(customer_id, limit, cursor))

    def annotate(self, customer_id: str, department: str, author: str, text: str) -> Annotation:
        """Leave a department's note on the customer's profile."""
        return self._client.execute(annotate_call(customer_id, department, author, text))

    def merges(self, customer_id: str) -> list[Merge]:
        """The merges this customer took part in, oldest first."""
        return self._client.execute(merges_call(customer_id))

    def split(self, merge_id: str) -> Merge:
        """Undo a wrong merge (admin keys): both customers come back as they were."""
        return self._client.execute(split_call(merge_id))

    def mark_shared(
        self, type: IdentifierType | str, value: str, shared: bool = True
    ) -> SharedIdentifierRequest:
        """Mark a device shared (admin keys): it never links or merges customers."""
        return self._client.execute(shared_call(type, value, shared))


class AsyncIdentity(AsyncResource):
    async def identify(
        self,
        *,
        anonymous_id: str | None = None,
        customer_ref: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        loyalty_card: str | None = None,
        identifiers: list[IdentifierIn] | None = None,
        traits: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> IdentifyResult:
        """Link these identifiers to one customer; says whether customers were merged."""
        return await self._client.execute(
            identify_call(
                anonymous_id,
                customer_ref,
                email,
                phone,
                loyalty_card,
                identifiers,
                traits,
                idempotency_key,
            )
        )

    async def resolve(self, type: IdentifierType | str, value: str) -> str | None:
        """The customer id an identifier belongs to, or None if no customer has it."""
        try:
            return (await self._client.execute(resolve_call(type, value))).customer_id
        except NotFoundError:
            return None

    async def get_profile(self, customer_id: str) -> Profile:
        """The single customer view; any current or merged customer id works."""
        return await self._client.execute(profile_call(customer_id))

    async def timeline(
        self, customer_id: str, limit: int = 50, cursor: str | None = None
    ) -> TimelinePage:
        """A page of the customer's events, newest first; pass `next_cursor` for the next."""
        return await self._client.execute(timeline_call(customer_id, limit, cursor))

    async def annotate(
        self, customer_id: str, department: str, author: str, text: str
    ) -> Annotation:
        """Leave a department's note on the customer's profile."""
        return await self._client.execute(annotate_call(customer_id, department, author, text))

    async def merges(self, customer_id: str) -> list[Merge]:
        """The merges this customer took part in, oldest first."""
        return await self._client.execute(merges_call(customer_id))

    async def split(self, merge_id: str) -> Merge:
        """Undo a wrong merge (admin keys): both customers come back as they were."""
        return await self._client.execute(split_call(merge_id))

    async def mark_shared(
        self, type: IdentifierType | str, value: str, shared: bool = True
    ) -> SharedIdentifierRequest:
        """Mark a device shared (admin keys): it never links or merges customers."""
        return await self._client.execute(shared_call(type, value, shared))
