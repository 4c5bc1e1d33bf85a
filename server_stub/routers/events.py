"""Events: one at a time, or in batches of up to 500 (each event stored at most once)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import ConfigDict, Field

from omnisdk.core.channels import Scope
from omnisdk.core.events import MAX_BATCH
from omnisdk.core.problems import ProblemType
from omnisdk.models import BatchResult, EventIn, TrackResult, WireModel
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.services import events


class EventBatchBody(WireModel):
    """A batch as the server takes it: each event is validated on its own (an `EventIn`), so
    one bad event is rejected with its index instead of refusing the batch."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {"name": "product_viewed", "anonymous_id": "phone-1", "event_id": "e-1"},
                        {"name": "campaign_scanned", "anonymous_id": "phone-1", "event_id": "e-2"},
                    ]
                }
            ]
        }
    )

    events: list[dict[str, Any]] = Field(
        description="1 to 500 events (each an EventIn); each is validated on its own.",
        min_length=1,
        max_length=MAX_BATCH,
        # Each item is checked on its own against EventIn, and one that does not match is
        # rejected with its index (the batch is still taken): any object is a valid item.
        json_schema_extra={
            "items": {
                "type": "object",
                "description": "An event, as EventIn; one that is not is rejected alone.",
            }
        },
    )


router = APIRouter(prefix="/v1/events", tags=["events"], route_class=ApiRoute)


@router.post("", summary="Record one event", openapi_extra=needs(Scope.EVENTS_WRITE))
async def track(body: EventIn, request: Request, conn: Connection, context: Context) -> TrackResult:
    outcome = await events.ingest(conn, context, principal_of(request).channel, [body])
    if outcome.rejected:
        rejection = outcome.rejected[0]
        raise Problem(ProblemType(rejection.type), rejection.detail)
    _, event_id, customer_id = (outcome.accepted or outcome.duplicates)[0]
    return TrackResult(
        event_id=event_id, customer_id=customer_id or None, duplicate=not outcome.accepted
    )


@router.post(
    "/batch",
    summary="Record up to 500 events; each is accepted, a duplicate, or rejected with a reason",
    openapi_extra=needs(Scope.EVENTS_WRITE, items_judged_alone="events"),
)
async def track_batch(
    body: EventBatchBody, request: Request, conn: Connection, context: Context
) -> BatchResult:
    outcome = await events.ingest_raw(conn, context, principal_of(request).channel, body.events)
    return outcome.summary()
