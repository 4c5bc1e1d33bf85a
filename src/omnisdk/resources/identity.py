"""Identity: one customer across devices and channels, and the single customer view."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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
from omnisdk.resources._resource import C, Call, Flow, Resource, model, operation, send


def identify_call(
    anonymous_id: str | None,
    customer_ref: str | None,
    email: str | None,
    phone: str | None,
    loyalty_card: str | None,
    identifiers: Sequence[IdentifierIn | Mapping[str, Any]] | None,
    traits: Mapping[str, Any] | None,
    idempotency_key: str | None,
) -> Call[IdentifyResult]:
    body = IdentifyRequest(
        anonymous_id=anonymous_id,
        customer_ref=customer_ref,
        email=email,
        phone=phone,
        loyalty_card=loyalty_card,
        identifiers=[IdentifierIn.model_validate(x) for x in identifiers or []],
        traits=dict(traits or {}),
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


class Identity(Resource[C]):
    """One customer across devices and channels, and the single customer view."""

    @operation
    def identify(
        self,
        *,
        anonymous_id: str | None = None,
        customer_ref: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        loyalty_card: str | None = None,
        identifiers: Sequence[IdentifierIn | Mapping[str, Any]] | None = None,
        traits: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Flow[IdentifyResult]:
        """Link these identifiers to one customer; says whether customers were merged.

        `identifiers` takes `IdentifierIn` models or mappings such as
        `{"type": "loyalty_card", "value": "LC-1"}`; e-mail and phone are hashed by the server
        and never stored in clear."""
        return (
            yield from send(
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
        )

    @operation
    def resolve(self, type: IdentifierType | str, value: str) -> Flow[str | None]:
        """The customer id an identifier belongs to, or None if no customer has it."""
        try:
            found: Resolution = yield resolve_call(type, value)
        except NotFoundError:
            return None
        return found.customer_id

    @operation
    def get_profile(self, customer_id: str) -> Flow[Profile]:
        """The single customer view; any current or merged customer id works."""
        return (yield from send(profile_call(customer_id)))

    @operation
    def timeline(
        self, customer_id: str, limit: int = 50, cursor: str | None = None
    ) -> Flow[TimelinePage]:
        """A page of the customer's events, newest first; pass `next_cursor` for the next."""
        return (yield from send(timeline_call(customer_id, limit, cursor)))

    @operation
    def annotate(
        self, customer_id: str, department: str, author: str, text: str
    ) -> Flow[Annotation]:
        """Leave a department's note on the customer's profile."""
        return (yield from send(annotate_call(customer_id, department, author, text)))

    @operation
    def merges(self, customer_id: str) -> Flow[list[Merge]]:
        """The merges this customer took part in, oldest first."""
        return (yield from send(merges_call(customer_id)))

    @operation
    def split(self, merge_id: str) -> Flow[Merge]:
        """Undo a wrong merge (admin keys): both customers come back as they were."""
        return (yield from send(split_call(merge_id)))

    @operation
    def mark_shared(
        self, type: IdentifierType | str, value: str, shared: bool = True
    ) -> Flow[SharedIdentifierRequest]:
        """Mark a device shared (admin keys): it never links or merges customers."""
        return (yield from send(shared_call(type, value, shared)))
