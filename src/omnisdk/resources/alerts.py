"""Stock alerts: a customer subscribes to an item (back in stock, price drop); the server
decides each message when it is due — stock, orders on every channel, consent, quiet hours,
caps, her preferred channel — and hands it to the shop's signed webhook.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import Literal

from omnisdk.core.notifications import Kind
from omnisdk.notification_models import (
    AlertMetrics,
    MessageList,
    MessageView,
    ReplayRequest,
    ReplayResult,
    SubscribeRequest,
    Subscription,
    SubscriptionList,
    WebhookEndpoint,
    WebhookEndpointIn,
    WebhookEndpointList,
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

MessageStatus = Literal["pending", "sending", "retry", "sent", "skipped", "failed"]


def subscribe_call(customer_id: str, body: SubscribeRequest) -> Call[Subscription]:
    return Call(
        "POST",
        f"/v1/alerts/{checked_customer_id(customer_id)}/subscriptions",
        model(Subscription),
        json=body.model_dump(mode="json", exclude_none=True),
    )


class Alerts(Resource[C]):
    """Subscriptions, the messages decided for a customer, and (admin keys) webhooks,
    metrics and replays."""

    @operation
    def subscribe(
        self,
        customer_id: str,
        sku: str,
        options: Mapping[str, str] | None = None,
        *,
        kind: Literal["back_in_stock", "price_drop"] = "back_in_stock",
        store: str | None = None,
        min_quantity: int = 1,
    ) -> Flow[Subscription]:
        """Subscribe the customer to an item (`sku` with `options`, such as a size): told
        when it is back in stock (online, or in `store`), or when its price drops. Made
        twice, the same subscription comes back."""
        body = SubscribeRequest(
            sku=sku,
            options=dict(options or {}),
            kind=kind,
            store=store,
            min_quantity=min_quantity,
        )
        return (yield from send(subscribe_call(customer_id, body)))

    @operation
    def unsubscribe(self, customer_id: str, subscription_id: str) -> Flow[Subscription]:
        """Cancel a subscription: a message already due for it is skipped."""
        return (
            yield from send(
                Call(
                    "DELETE",
                    f"/v1/alerts/{checked_customer_id(customer_id)}/subscriptions/{subscription_id}",
                    model(Subscription),
                )
            )
        )

    @operation
    def list(self, customer_id: str) -> Flow[builtins.list[Subscription]]:
        """The customer's subscriptions, oldest first."""
        found = yield from send(
            Call(
                "GET",
                f"/v1/alerts/{checked_customer_id(customer_id)}/subscriptions",
                model(SubscriptionList),
            )
        )
        return list(found.items)

    @operation
    def messages(self, customer_id: str) -> Flow[builtins.list[MessageView]]:
        """Messages decided for the customer, newest first: sent (with the consent decision
        relied on), skipped (with the reason), or waiting."""
        found = yield from send(
            Call(
                "GET", f"/v1/alerts/{checked_customer_id(customer_id)}/messages", model(MessageList)
            )
        )
        return list(found.items)

    @operation
    def all_messages(
        self,
        *,
        status: MessageStatus | None = None,
        kind: Kind | str | None = None,
        limit: int = 100,
    ) -> Flow[builtins.list[MessageView]]:
        """The tenant's messages, newest first, by status and kind (admin keys)."""
        params = {"limit": str(limit)}
        if status is not None:
            params["status"] = status
        if kind is not None:
            params["kind"] = Kind(kind).value
        found = yield from send(
            Call("GET", "/v1/alerts/messages", model(MessageList), params=params)
        )
        return list(found.items)

    @operation
    def metrics(self) -> Flow[AlertMetrics]:
        """Per kind: triggered, skipped by reason, sent, failed, pending (admin keys)."""
        return (yield from send(Call("GET", "/v1/alerts/metrics", model(AlertMetrics))))

    @operation
    def replay(self, ids: Sequence[str] | None = None) -> Flow[int]:
        """Decide and deliver dead-lettered messages again (these, or every failed one);
        returns how many (admin keys)."""
        body = ReplayRequest(ids=list(ids) if ids is not None else None)
        result = yield from send(
            Call(
                "POST",
                "/v1/alerts/replay",
                model(ReplayResult),
                json=body.model_dump(mode="json", exclude_none=True),
            )
        )
        return int(result.replayed)

    @operation
    def add_webhook(self, url: str, kinds: Sequence[Kind | str] = ()) -> Flow[WebhookEndpoint]:
        """Register the shop's webhook receiver (every kind, or these); the answer carries
        its signing secret (`whsec_...`) this once (admin keys)."""
        body = WebhookEndpointIn(url=url, kinds=[Kind(k) for k in kinds])
        return (
            yield from send(
                Call(
                    "POST",
                    "/v1/alerts/webhooks",
                    model(WebhookEndpoint),
                    json=body.model_dump(mode="json"),
                )
            )
        )

    @operation
    def webhooks(self) -> Flow[builtins.list[WebhookEndpoint]]:
        """The shop's webhook endpoints, without their secrets (admin keys)."""
        found = yield from send(Call("GET", "/v1/alerts/webhooks", model(WebhookEndpointList)))
        return list(found.items)

    @operation
    def remove_webhook(self, endpoint_id: str) -> Flow[WebhookEndpoint]:
        """Stop posting to an endpoint (admin keys)."""
        return (
            yield from send(
                Call("DELETE", f"/v1/alerts/webhooks/{endpoint_id}", model(WebhookEndpoint))
            )
        )
