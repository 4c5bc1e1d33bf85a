"""Named segments over the profile: define them, count and list their members, ask why."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnisdk.models import (
    SegmentEdit,
    SegmentExplanation,
    SegmentIn,
    SegmentList,
    SegmentMemberPage,
    SegmentView,
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


def create_call(name: str, condition: Mapping[str, Any], description: str) -> Call[SegmentView]:
    body = SegmentIn(name=name, condition=dict(condition), description=description)
    return Call("POST", "/v1/segments", model(SegmentView), json=body.model_dump(mode="json"))


def list_call() -> Call[list[SegmentView]]:
    return Call("GET", "/v1/segments", lambda d: SegmentList.model_validate(d).items)


def get_call(segment: str) -> Call[SegmentView]:
    return Call("GET", f"/v1/segments/{segment}", model(SegmentView))


def update_call(
    segment: str, condition: Mapping[str, Any] | None, description: str | None
) -> Call[SegmentView]:
    body = SegmentEdit(
        condition=dict(condition) if condition is not None else None, description=description
    )
    return Call(
        "PATCH",
        f"/v1/segments/{segment}",
        model(SegmentView),
        json=body.model_dump(mode="json", exclude_none=True),
    )


def delete_call(segment: str) -> Call[SegmentView]:
    return Call("DELETE", f"/v1/segments/{segment}", model(SegmentView))


def members_call(segment: str, after: str | None, limit: int) -> Call[SegmentMemberPage]:
    params = {"limit": str(limit)} | ({"after": after} if after else {})
    return Call("GET", f"/v1/segments/{segment}/members", model(SegmentMemberPage), params=params)


def explain_call(segment: str, customer_id: str) -> Call[SegmentExplanation]:
    return Call(
        "GET",
        f"/v1/segments/{segment}/explain/{checked_customer_id(customer_id)}",
        model(SegmentExplanation),
    )


class Segments(Resource[C]):
    """Named segments over the profile (content rules target them by name)."""

    @operation
    def create(
        self, name: str, condition: Mapping[str, Any], description: str = ""
    ) -> Flow[SegmentView]:
        """Define a segment (admin keys); the server backfills it in the background."""
        return (yield from send(create_call(name, condition, description)))

    @operation
    def list(self) -> Flow[list[SegmentView]]:
        """The shop's segments, with how many customers each holds now."""
        return (yield from send(list_call()))

    @operation
    def get(self, segment: str) -> Flow[SegmentView]:
        """A segment by id or name."""
        return (yield from send(get_call(segment)))

    @operation
    def update(
        self,
        segment: str,
        *,
        condition: Mapping[str, Any] | None = None,
        description: str | None = None,
    ) -> Flow[SegmentView]:
        """Change the condition (a new version, backfilled) or the description."""
        return (yield from send(update_call(segment, condition, description)))

    @operation
    def delete(self, segment: str) -> Flow[SegmentView]:
        """Delete a segment; its members exit."""
        return (yield from send(delete_call(segment)))

    @operation
    def members(
        self, segment: str, after: str | None = None, limit: int = 500
    ) -> Flow[SegmentMemberPage]:
        """A page of current members in id order; pass `next_after` as `after` for the next."""
        return (yield from send(members_call(segment, after, limit)))

    @operation
    def explain(self, segment: str, customer_id: str) -> Flow[SegmentExplanation]:
        """Why she is (or is not) in the segment, clause by clause."""
        return (yield from send(explain_call(segment, customer_id)))
