"""The session a customer shares across channels: she continues on one device where she
stopped on another (recently viewed, last landing page, a half-filled form, the chat thread)."""

from __future__ import annotations

from typing import Any

from omnisdk.models import SessionView, SessionWrite
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model


def get_call(customer_id: str) -> Call[SessionView]:
    return Call("GET", f"/v1/sessions/{customer_id}", model(SessionView))


def write_call(
    customer_id: str, entries: dict[str, Any], ttl_seconds: int | None
) -> Call[SessionView]:
    body = SessionWrite(entries=entries, **({"ttl_seconds": ttl_seconds} if ttl_seconds else {}))
    return Call(
        "POST", f"/v1/sessions/{customer_id}", model(SessionView), json=body.model_dump(mode="json")
    )


class Sessions(SyncResource):
    def get(self, customer_id: str) -> SessionView:
        """The live keys of the customer's session, with who wrote each and when."""
        return self._client.execute(get_call(customer_id))

    def set(
        self, customer_id: str, entries: dict[str, Any], ttl_seconds: int | None = None
    ) -> SessionView:
        """Write keys (None deletes one); the latest write of a key wins on every channel."""
        return self._client.execute(write_call(customer_id, entries, ttl_seconds))


class AsyncSessions(AsyncResource):
    async def get(self, customer_id: str) -> SessionView:
        return await self._client.execute(get_call(customer_id))

    async def set(
        self, customer_id: str, entries: dict[str, Any], ttl_seconds: int | None = None
    ) -> SessionView:
        return await self._client.execute(write_call(customer_id, entries, ttl_seconds))
