"""The journey's stock alert step (issue 20), kept in its own module so the journey reads as
one line here: Amy's size is back, her preferred channel gets one signed webhook, and after
she bought the shoes no message reaches her.

The shop's webhook receiver is a small HTTP server in this process; it checks every request's
Standard Webhooks signature with `omnisdk.webhooks.verify`, as a shop's endpoint would. It
listens on 127.0.0.1, which a server refuses as a webhook target unless it runs with
OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true (docs/notifications.md): `make demo` sets it.
"""

from __future__ import annotations

import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import omnisdk
from omnisdk.notification_models import MessagePayload
from omnisdk.webhooks import InvalidWebhook, verify

SIZE_38 = {"size": "38"}


class ShopEndpoint:
    """The shop's webhook endpoint: verifies, keeps one message per webhook-id."""

    def __init__(self) -> None:
        self.secret = ""
        self.messages: dict[str, MessagePayload] = {}
        self.deliveries = 0
        self.arrived = threading.Condition()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                try:
                    message = verify(endpoint.secret, body, dict(self.headers.items()))
                except InvalidWebhook:
                    self.send_response(401)
                else:
                    with endpoint.arrived:
                        endpoint.deliveries += 1
                        endpoint.messages.setdefault(self.headers["webhook-id"], message)
                        endpoint.arrived.notify_all()
                    self.send_response(204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/omnisdk-webhooks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30.0) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: len(self.messages) >= count, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def back_in_stock(
    step: Any,
    customer_id: str,
    app: omnisdk.Client,
    pos: omnisdk.Client,
    admin: omnisdk.Client,
) -> None:
    endpoint = ShopEndpoint()
    try:
        _walk(step, customer_id, app, pos, admin, endpoint)
    finally:
        endpoint.close()


def _walk(
    step: Any,
    amy: str,
    app: omnisdk.Client,
    pos: omnisdk.Client,
    admin: omnisdk.Client,
    endpoint: ShopEndpoint,
) -> None:
    step("Size 38 sold out; on her phone Amy asks to be told when it is back")
    try:
        endpoint.secret = str(admin.alerts.add_webhook(endpoint.url).secret)
    except omnisdk.ValidationError as error:
        if not any(e.get("type") == "webhook_url_not_public" for e in error.errors):
            raise
        raise SystemExit(
            f"the server refused this example's local webhook endpoint ({error}): run it with "
            "OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS=true, as make demo does"
        ) from error
    admin.inventory.write(
        levels=[{"sku": "TR2", "options": SIZE_38, "location": "online", "quantity": 0}],
        items=[{"sku": "TR2", "options": SIZE_38, "price": 89.0, "currency": "EUR"}],
    )
    app.identity.declare_preferred_channel(amy, "email")
    wanted = app.alerts.subscribe(amy, "TR2", SIZE_38)
    watching = app.alerts.subscribe(amy, "TR2", SIZE_38, kind="price_drop")
    print(
        f"   subscribed ({wanted.kind}, {wanted.item}); relies on consent decision "
        f"{wanted.consent_decision_id}; she prefers e-mail"
    )

    step("The warehouse receives 12 pairs: one signed webhook for her, to her preferred channel")
    arrived = pos.inventory.adjust(
        "TR2", 12, options=SIZE_38, op_id=f"delivery-{uuid.uuid4().hex[:8]}"
    )
    print(f"   stock online {arrived.online}, in stores {arrived.stores or 'none'}")
    if not endpoint.wait_for(1):
        raise SystemExit("the back-in-stock webhook did not arrive")
    [(webhook_id, message)] = endpoint.messages.items()
    data = message.data
    print(
        f"   webhook {webhook_id} ({message.type}), signature verified: {data['channel']} "
        f"to {data['customer_id']} about {data['sku']} {data['options']}, "
        f"citing consent decision {data['consent_decision_id']}"
    )

    step("She buys a pair at the till; the next day the price drops: no message after her purchase")
    pos.orders.record(
        f"BERLIN-1-{uuid.uuid4().hex[:6]}",
        [{"sku": "TR2", "quantity": 1, "unit_price": 89.0}],
        currency="EUR",
        store_id="berlin-1",
        customer_id=amy,
    )
    admin.inventory.set_price("TR2", 69.0, "EUR", options=SIZE_38)
    decided = threading.Event()
    for _ in range(300):  # until the server's delivery loop has decided the price drop
        mine = admin.alerts.messages(amy)
        if len(mine) == 2 and all(m.status in ("sent", "skipped") for m in mine):
            break
        decided.wait(0.1)
    for m in sorted(mine, key=lambda m: m.created_at):
        print(f"   {m.kind.value}: {m.status}" + (f" ({m.reason})" if m.reason else ""))
    print(
        f"   her endpoint received {len(endpoint.messages)} message in all "
        f"({endpoint.deliveries} delivery); her price watch {watching.id} stays open"
    )
