"""Identity: one customer across devices and channels, and the single customer view."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from omnisdk.core.identifiers import IdentifierType
from omnisdk.core.preferences import PreferredChannel
from omnisdk.errors import NotFoundError
from omnisdk.models import (
    Annotation,
    AnnotationDeletion,
    AnnotationEdit,
    AnnotationIn,
    AnnotationKind,
    AnnotationList,
    AnnotationRevision,
    AnnotationRevisionList,
    AnnotationVisibility,
    IdentifierIn,
    IdentifyRequest,
    IdentifyResult,
    Merge,
    MergeList,
    PreferredChannelIn,
    PreferredChannelView,
    Profile,
    Resolution,
    ResolveRequest,
    SharedIdentifierRequest,
    TimelinePage,
)
from omnisdk.resources._resource import (
    C,
    Call,
    Flow,
    Resource,
    checked_customer_id,
    model,
    operation,
    send,
)


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
    return Call("GET", f"/v1/customers/{checked_customer_id(customer_id)}/profile", model(Profile))


def timeline_call(customer_id: str, limit: int, cursor: str | None) -> Call[TimelinePage]:
    params = {"limit": str(limit)} | ({"cursor": cursor} if cursor else {})
    return Call(
        "GET",
        f"/v1/customers/{checked_customer_id(customer_id)}/timeline",
        model(TimelinePage),
        params=params,
    )


def annotate_call(
    customer_id: str,
    department: str,
    author: str,
    text: str,
    kind: AnnotationKind | str,
    visibility: AnnotationVisibility | str,
    pinned: bool,
    expires_at: datetime | None,
) -> Call[Annotation]:
    body = AnnotationIn(
        department=department,
        author=author,
        text=text,
        kind=AnnotationKind(kind),
        visibility=AnnotationVisibility(visibility),
        pinned=pinned,
        expires_at=expires_at,
    ).model_dump(mode="json", exclude_none=True)
    return Call(
        "POST",
        f"/v1/customers/{checked_customer_id(customer_id)}/annotations",
        model(Annotation),
        json=body,
    )


def annotations_call(
    customer_id: str, department: str | None, include_deleted: bool
) -> Call[list[Annotation]]:
    params = {"include_deleted": "true" if include_deleted else "false"}
    if department:
        params["department"] = department
    return Call(
        "GET",
        f"/v1/customers/{checked_customer_id(customer_id)}/annotations",
        lambda d: AnnotationList.model_validate(d).items,
        params=params,
    )


def edit_annotation_call(annotation_id: str, change: AnnotationEdit) -> Call[Annotation]:
    body = change.model_dump(mode="json", exclude_unset=True)
    return Call("PATCH", f"/v1/annotations/{annotation_id}", model(Annotation), json=body)


def delete_annotation_call(annotation_id: str, deletion: AnnotationDeletion) -> Call[Annotation]:
    body = deletion.model_dump(mode="json", exclude_none=True)
    return Call("POST", f"/v1/annotations/{annotation_id}/delete", model(Annotation), json=body)


def revisions_call(annotation_id: str) -> Call[list[AnnotationRevision]]:
    return Call(
        "GET",
        f"/v1/annotations/{annotation_id}/revisions",
        lambda d: AnnotationRevisionList.model_validate(d).items,
    )


def preferred_channel_call(customer_id: str) -> Call[PreferredChannelView]:
    return Call(
        "GET",
        f"/v1/customers/{checked_customer_id(customer_id)}/preferred-channel",
        model(PreferredChannelView),
    )


def declare_channel_call(
    customer_id: str, channel: PreferredChannel | str | None
) -> Call[PreferredChannelView]:
    body = PreferredChannelIn(channel=PreferredChannel(channel) if channel else None)
    return Call(
        "PUT",
        f"/v1/customers/{checked_customer_id(customer_id)}/preferred-channel",
        model(PreferredChannelView),
        json=body.model_dump(mode="json"),
    )


def merges_call(customer_id: str) -> Call[list[Merge]]:
    return Call(
        "GET",
        f"/v1/customers/{checked_customer_id(customer_id)}/merges",
        lambda d: MergeList.model_validate(d).items,
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
        self,
        customer_id: str,
        department: str,
        author: str,
        text: str,
        *,
        kind: AnnotationKind | str = AnnotationKind.NOTE,
        visibility: AnnotationVisibility | str = AnnotationVisibility.STAFF,
        pinned: bool = False,
        expires_at: datetime | None = None,
    ) -> Flow[Annotation]:
        """Leave a department's note on the customer's profile (a staff key writes as its
        staff member, whatever `department` and `author` say)."""
        call = annotate_call(
            customer_id, department, author, text, kind, visibility, pinned, expires_at
        )
        return (yield from send(call))

    @operation
    def annotations(
        self, customer_id: str, *, department: str | None = None, include_deleted: bool = False
    ) -> Flow[list[Annotation]]:
        """The notes on the customer the caller may see: pinned first, then newest. What a
        key sees is decided by the key (a staff key: her department's and the notes for all
        staff; a shop backend's key: the notes for all staff); `department` is ignored."""
        return (yield from send(annotations_call(customer_id, department, include_deleted)))

    @operation
    def edit_annotation(
        self,
        annotation_id: str,
        *,
        author: str | None = None,
        department: str | None = None,
        text: str | None = None,
        kind: AnnotationKind | str | None = None,
        visibility: AnnotationVisibility | str | None = None,
        pinned: bool | None = None,
        expires_at: datetime | None = None,
    ) -> Flow[Annotation]:
        """Change a note (its author within the edit window, a lead, an admin); every
        revision is kept. Only the arguments given change."""
        given = {
            "author": author,
            "department": department,
            "text": text,
            "kind": kind,
            "visibility": visibility,
            "pinned": pinned,
            "expires_at": expires_at,
        }
        change = AnnotationEdit.model_validate({k: v for k, v in given.items() if v is not None})
        return (yield from send(edit_annotation_call(annotation_id, change)))

    @operation
    def delete_annotation(
        self,
        annotation_id: str,
        reason: str,
        *,
        author: str | None = None,
        department: str | None = None,
    ) -> Flow[Annotation]:
        """Delete a note, softly and with a reason (kept with its revisions)."""
        deletion = AnnotationDeletion(reason=reason, author=author, department=department)
        return (yield from send(delete_annotation_call(annotation_id, deletion)))

    @operation
    def annotation_revisions(self, annotation_id: str) -> Flow[list[AnnotationRevision]]:
        """Every state the note had, the first included."""
        return (yield from send(revisions_call(annotation_id)))

    @operation
    def preferred_channel(self, customer_id: str) -> Flow[PreferredChannelView]:
        """Her preferred channel: declared (wins) or observed from engagement, or none."""
        return (yield from send(preferred_channel_call(customer_id)))

    @operation
    def declare_preferred_channel(
        self, customer_id: str, channel: PreferredChannel | str | None
    ) -> Flow[PreferredChannelView]:
        """Record the channel she says she prefers (None withdraws her declaration)."""
        return (yield from send(declare_channel_call(customer_id, channel)))

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
