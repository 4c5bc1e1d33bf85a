"""The session a customer shares across channels: she continues on one device where she
stopped on another (recently viewed, last landing page, a half-filled form, the chat thread)."""

from __future__ import annotations

from typing import Any

from omnisdk.models import SessionView, SessionWrite
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


def get_call(customer_id: str) -> Call[SessionView]:
    return Call("GET", f"/v1/sessions/{checked_customer_id(customer_id)}", model(SessionView))


def write_call(
    customer_id: str, entries: dict[str, Any], ttl_seconds: int | None
) -> Call[SessionView]:
    body = SessionWrite(entries=entries, **({"ttl_seconds": ttl_seconds} if ttl_seconds else {}))
    return Call(
        "POST",
        f"/v1/sessions/{checked_customer_id(customer_id)}",
        model(SessionView),
        json=body.model_dump(mode="json"),
    )


class Sessions(Resource[C]):
    """The session document every channel shares for a customer."""

    @operation
    def get(self, customer_id: str) -> Flow[SessionView]:
        """The live keys of the customer's session, with who wrote each and when."""
        return (yield from send(get_call(customer_id)))

    @operation
    def set(
        self, customer_id: str, entries: dict[str, Any], ttl_seconds: int | None = None
    ) -> Flow[SessionView]:
        """Write keys (None deletes one); the latest write of a key wins on every channel."""
        return (yield from send(write_call(customer_id, entries, ttl_seconds)))
