"""Events: `track` queues and returns at once (a background sender delivers in batches);
`send` and `send_batch` deliver now and return the server's answer."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from omnisdk.core.channels import Channel
from omnisdk.core.events import InvalidEvent, check_event, check_identifier_value, check_names
from omnisdk.core.problems import ProblemType
from omnisdk.errors import InvalidRequestError
from omnisdk.models import BatchResult, EventBatch, EventIn, IdentifierIn, TrackResult
from omnisdk.resources._resource import (
    Append,
    C,
    Call,
    Flow,
    OnClient,
    Resource,
    model,
    operation,
    send,
)

EVENT = "event"  # the outbox kind of a tracked event


class _EventIds:
    """Unique event ids without a system call each: 64 random bits drawn once per process
    (again in a forked child) and a 64-bit counter. A `urandom` per event cost a fifth of
    `track`."""

    def __init__(self) -> None:
        self._renew()
        os.register_at_fork(after_in_child=self._renew)

    def _renew(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count(int.from_bytes(os.urandom(4), "big"))

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


event_ids = _EventIds()


def make_event(
    name: str,
    *,
    customer_id: str | None = None,
    anonymous_id: str | None = None,
    identifier: IdentifierIn | Mapping[str, Any] | None = None,
    properties: Mapping[str, Any] | None = None,
    channel: Channel | str | None = None,
    timestamp: datetime | None = None,
    event_id: str | None = None,
) -> dict[str, Any]:
    """The wire form of an event, checked here by the same rules the server applies, so an
    event the outbox accepts is never refused later for its form (InvalidRequestError, which is
    also a ValueError, names what to fix).

    The event id and the time are fixed now, when the event happens, not when it is sent:
    retries and replays then carry the same id and time.
    """
    if sum(x is not None for x in (customer_id, anonymous_id, identifier)) != 1:
        raise InvalidRequestError(
            ProblemType.VALIDATION_ERROR,
            "name the customer by exactly one of customer_id, anonymous_id, identifier",
        )
    now = datetime.now(UTC)
    when = timestamp or now
    props = dict(properties or {})
    if identifier is not None and not isinstance(identifier, IdentifierIn):
        identifier = IdentifierIn.model_validate(identifier)
    try:
        check_names(event_id, customer_id)
        for value in (anonymous_id, identifier.value if identifier is not None else None):
            if value is not None:
                check_identifier_value(value)
        check_event(name, props, when, now)
    except InvalidEvent as error:
        raise InvalidRequestError(ProblemType.INVALID_EVENT, str(error)) from None
    event: dict[str, Any] = {
        "name": name,
        "event_id": event_id or event_ids.next(),
        "properties": props,
        "timestamp": when.isoformat(),
    }
    if customer_id is not None:
        event["customer_id"] = customer_id
    elif anonymous_id is not None:
        event["anonymous_id"] = anonymous_id
    elif identifier is not None:
        event["identifier"] = identifier.model_dump(mode="json")
    if channel is not None:
        event["channel"] = Channel(channel).value
    return event


def send_call(event: dict[str, Any]) -> Call[TrackResult]:
    # The event id makes the write idempotent; use it as the request's key too.
    return Call(
        "POST", "/v1/events", model(TrackResult), json=event, idempotency_key=event["event_id"]
    )


def raw_batch_call(events_json: list[str]) -> Call[BatchResult]:
    """A batch of events already encoded as JSON (as the outbox stores them). The
    Idempotency-Key is the body's digest: a retry sends the same key, and no other body ever
    does (two backends may queue the same event id, say an experiment exposure)."""
    body = ('{"events":[' + ",".join(events_json) + "]}").encode()
    key = "batch-" + hashlib.sha256(body).hexdigest()[:48]
    return Call("POST", "/v1/events/batch", model(BatchResult), body=body, idempotency_key=key)


def batch_call(
    events: list[dict[str, Any]], idempotency_key: str | None = None
) -> Call[BatchResult]:
    EventBatch.model_validate({"events": events})
    return Call(
        "POST",
        "/v1/events/batch",
        model(BatchResult),
        json={"events": events},
        idempotency_key=idempotency_key,
    )


def event_from(event: EventIn | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(event, EventIn):
        return event.model_dump(mode="json", exclude_none=True)
    return dict(event)


class Events(Resource[C]):
    """Record what customers do: `track` queues durably and returns at once, `send` delivers
    now. Name the customer by exactly one of `customer_id`, `anonymous_id`, `identifier`."""

    @operation
    def track(
        self,
        name: str,
        *,
        customer_id: str | None = None,
        anonymous_id: str | None = None,
        identifier: IdentifierIn | Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        channel: Channel | str | None = None,
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> Flow[str]:
        """Queue an event in the durable outbox and return its id; it is delivered in the
        background, in batches.

        `timestamp` is when it happened (default: now); consent is judged at that time.
        `event_id` makes delivery idempotent (default: a new unique id). Raises
        `InvalidRequestError` at once for an event the server would refuse."""
        event = make_event(
            name,
            customer_id=customer_id,
            anonymous_id=anonymous_id,
            identifier=identifier,
            properties=properties,
            channel=channel,
            timestamp=timestamp,
            event_id=event_id,
        )
        client = self._client
        outbox = yield from self._open_outbox()
        yield Append(outbox, EVENT, event["event_id"], event)
        client.delivery.nudge()
        return str(event["event_id"])

    @operation
    def send(
        self,
        name: str,
        *,
        customer_id: str | None = None,
        anonymous_id: str | None = None,
        identifier: IdentifierIn | Mapping[str, Any] | None = None,
        properties: Mapping[str, Any] | None = None,
        channel: Channel | str | None = None,
        timestamp: datetime | None = None,
        event_id: str | None = None,
    ) -> Flow[TrackResult]:
        """Deliver one event now and return the server's answer (fields as for `track`)."""
        event = make_event(
            name,
            customer_id=customer_id,
            anonymous_id=anonymous_id,
            identifier=identifier,
            properties=properties,
            channel=channel,
            timestamp=timestamp,
            event_id=event_id,
        )
        return (yield from send(send_call(event)))

    @operation
    def send_batch(self, events: Sequence[EventIn | Mapping[str, Any]]) -> Flow[BatchResult]:
        """Deliver up to 500 events now; each is accepted, a duplicate, or rejected."""
        return (yield from send(batch_call([event_from(e) for e in events])))

    @operation
    def flush(self, timeout: float | None = None) -> Flow[int]:
        """Wait until the outbox is delivered (or `timeout` seconds); return how many items
        are left (they stay safe on disk)."""
        yield from self._open_outbox()  # opened off the event loop first
        left: int = yield OnClient(lambda client: client.delivery.flush(timeout))
        return left
