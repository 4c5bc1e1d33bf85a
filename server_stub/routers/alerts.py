"""Stock alert subscriptions, messages, the shop's webhook endpoints and the operator's view."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from omnisdk.core.channels import Scope
from omnisdk.core.notifications import Kind
from omnisdk.notification_models import (
    AlertMetrics,
    MessageList,
    ReplayRequest,
    ReplayResult,
    SubscribeRequest,
    Subscription,
    SubscriptionList,
    WebhookEndpoint,
    WebhookEndpointIn,
    WebhookEndpointList,
)
from server_stub.auth import needs, principal_of
from server_stub.ids import utcnow
from server_stub.routers.dependencies import Connection
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import alerts, audit, identity, messages, webhooks
from server_stub.services.profile import require_customer

router = APIRouter(prefix="/v1/alerts", tags=["alerts"], route_class=ApiRoute)
MANAGE = needs(Scope.ALERTS_MANAGE)
Status = Literal["pending", "sending", "retry", "sent", "skipped", "failed"]


@router.get(
    "/metrics",
    summary="Messages per kind: triggered, skipped by reason, sent, failed",
    openapi_extra=MANAGE,
)
async def get_metrics(request: Request, conn: Connection) -> AlertMetrics:
    return await messages.metrics(conn, principal_of(request).tenant_id)


@router.get("/messages", summary="The tenant's messages, newest first", openapi_extra=MANAGE)
async def list_messages(
    request: Request,
    conn: Connection,
    status: Status | None = None,
    kind: Kind | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> MessageList:
    tenant_id = principal_of(request).tenant_id
    found = await messages.listing(
        conn, tenant_id, status=status, kind=kind.value if kind else None, limit=limit
    )
    return MessageList(items=found)


@router.post(
    "/replay",
    summary="Send dead-lettered messages again (each is decided again first)",
    openapi_extra=MANAGE,
)
async def replay(body: ReplayRequest, request: Request, conn: Connection) -> ReplayResult:
    principal = principal_of(request)
    count = await messages.replay(conn, principal.tenant_id, body.ids, utcnow())
    await audit.record(
        conn, principal.tenant_id, principal.key_id, "alerts.replay", "messages", f"count={count}"
    )
    return ReplayResult(replayed=count)


@router.post(
    "/webhooks",
    status_code=201,
    summary="Add a webhook endpoint; its signing secret is shown this once",
    openapi_extra=needs(Scope.ALERTS_MANAGE, replay_redacts=("secret",)),
)
async def add_webhook(
    body: WebhookEndpointIn, request: Request, conn: Connection
) -> WebhookEndpoint:
    principal = principal_of(request)
    runtime = runtime_of(request)
    assert runtime.sealer is not None, "the app's lifespan sets the sealer"
    endpoint = await webhooks.create(
        conn,
        runtime.sealer,
        principal.tenant_id,
        body,
        utcnow(),
        allow_private_networks=runtime.settings.webhook_allow_private_networks,
    )
    await audit.record(conn, principal.tenant_id, principal.key_id, "webhook.create", endpoint.id)
    return endpoint


@router.get(
    "/webhooks",
    summary="The tenant's webhook endpoints (never their secrets)",
    openapi_extra=MANAGE,
)
async def list_webhooks(request: Request, conn: Connection) -> WebhookEndpointList:
    return WebhookEndpointList(items=await webhooks.list_all(conn, principal_of(request).tenant_id))


@router.delete("/webhooks/{endpoint_id}", summary="Remove a webhook endpoint", openapi_extra=MANAGE)
async def remove_webhook(endpoint_id: str, request: Request, conn: Connection) -> WebhookEndpoint:
    principal = principal_of(request)
    removed, now_disabled = await webhooks.disable(conn, principal.tenant_id, endpoint_id, utcnow())
    if now_disabled:  # audited once, however often it is asked
        await audit.record(
            conn, principal.tenant_id, principal.key_id, "webhook.remove", endpoint_id
        )
    return removed


@router.post(
    "/{customer_id}/subscriptions",
    summary="Subscribe the customer to a back-in-stock or price-drop alert",
    openapi_extra=needs(Scope.ALERTS_WRITE),
)
async def subscribe(
    customer_id: str, body: SubscribeRequest, request: Request, conn: Connection
) -> Subscription:
    principal = principal_of(request)
    live = await identity.lock_customer(conn, principal.tenant_id, customer_id)
    return await alerts.subscribe(
        conn, principal.tenant_id, live, body, principal.channel.value, utcnow()
    )


@router.get(
    "/{customer_id}/subscriptions",
    summary="The customer's alert subscriptions",
    openapi_extra=needs(Scope.ALERTS_READ),
)
async def list_subscriptions(
    customer_id: str, request: Request, conn: Connection
) -> SubscriptionList:
    tenant_id = principal_of(request).tenant_id
    live = await require_customer(conn, tenant_id, customer_id)
    return SubscriptionList(items=await alerts.subscriptions_of(conn, tenant_id, live))


@router.delete(
    "/{customer_id}/subscriptions/{subscription_id}",
    summary="Cancel one of the customer's subscriptions",
    openapi_extra=needs(Scope.ALERTS_WRITE),
)
async def unsubscribe(
    customer_id: str, subscription_id: str, request: Request, conn: Connection
) -> Subscription:
    principal = principal_of(request)
    live = await identity.lock_customer(conn, principal.tenant_id, customer_id)
    return await alerts.unsubscribe(conn, principal.tenant_id, live, subscription_id)


@router.get(
    "/{customer_id}/messages",
    summary="The customer's messages: sent, skipped (with the reason) and waiting",
    openapi_extra=needs(Scope.ALERTS_READ),
)
async def customer_messages(customer_id: str, request: Request, conn: Connection) -> MessageList:
    tenant_id = principal_of(request).tenant_id
    live = await require_customer(conn, tenant_id, customer_id)
    return MessageList(items=await messages.listing(conn, tenant_id, customer_id=live))
