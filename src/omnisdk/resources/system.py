"""Who am I, and can I write: the smallest calls, used to check a key and its connection."""

from __future__ import annotations

from omnisdk.models import PingRequest, Pong, Principal
from omnisdk.resources._resource import C, Call, Flow, Resource, model, operation, send


def whoami_call() -> Call[Principal]:
    return Call("GET", "/v1/system/whoami", model(Principal))


def ping_call(message: str, sequence: int, idempotency_key: str | None) -> Call[Pong]:
    body = PingRequest(message=message, sequence=sequence).model_dump(mode="json")
    return Call("POST", "/v1/system/ping", model(Pong), json=body, idempotency_key=idempotency_key)


class System(Resource[C]):
    """Who this client is, and whether it may write."""

    @operation
    def whoami(self) -> Flow[Principal]:
        """The tenant, channel and scopes of this client's API key."""
        return (yield from send(whoami_call()))

    @operation
    def ping(
        self, message: str = "ping", sequence: int = 0, *, idempotency_key: str | None = None
    ) -> Flow[Pong]:
        """A write that changes nothing: proves the key may write and the server answers."""
        return (yield from send(ping_call(message, sequence, idempotency_key)))
