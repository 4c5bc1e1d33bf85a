"""A shop that wants plain e-mail: the server's signed webhook reaches `omnisdk.webhooks.
SmtpRelay`, which sends it through a real SMTP server (aiosmtpd) — once, however often the
same webhook arrives."""

from __future__ import annotations

import email
import threading
from collections.abc import Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

import omnisdk
from omnisdk.testing import ServerProcess, free_port
from omnisdk.webhooks import SmtpRelay


class Mailbox:
    """aiosmtpd's handler: keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self.arrived = threading.Condition()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.arrived:
            self.messages.append(
                (list(envelope.rcpt_tos), email.message_from_bytes(envelope.content))
            )
            self.arrived.notify_all()
        return "250 OK"


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    yield box, port
    controller.stop()


class RelayEndpoint:
    """The shop's webhook endpoint: a real HTTP server handing each request to the relay."""

    def __init__(self) -> None:
        self.relay: SmtpRelay | None = None
        self.answers: list[int] = []
        self.last: tuple[bytes, dict[str, str]] | None = None
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                headers = dict(self.headers.items())
                assert endpoint.relay is not None
                endpoint.last = (body, headers)
                status = endpoint.relay.handle(body, headers)
                endpoint.answers.append(status)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/omnisdk"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_back_in_stock_webhook_becomes_one_e_mail(
    server_process: ServerProcess, mailbox: tuple[Mailbox, int]
) -> None:
    box, smtp_port = mailbox
    endpoint = RelayEndpoint()
    shop = server_process.create_tenant("mail shop")
    try:
        with (
            shop.client("admin") as admin,
            shop.client("web") as web,
        ):
            hook = admin.alerts.add_webhook(endpoint.url, ["back_in_stock"])
            assert hook.secret is not None and hook.secret.startswith("whsec_")
            amy = web.identity.identify(
                anonymous_id="amy-laptop", email="amy@example.com", traits={"first_name": "Amy"}
            ).customer_id
            pending = web.consent.grant(amy, "marketing:email", source="checkout")
            web.consent.confirm(pending.confirmations[0].token)
            # The shop knows its customers' addresses; the server holds only keyed hashes.
            addresses = {amy: "amy@example.com"}
            # The e-mail's words come from the content engine: a slot per message kind.
            admin.content.publish(
                {
                    "message.back_in_stock": {
                        "default": {
                            "subject": "{{ data.first_name }}, your {{ data.sku }} is back",
                            "body": "Size {{ data.options.size }} is waiting for you.",
                        }
                    }
                },
                note="back-in-stock e-mail",
            )
            endpoint.relay = SmtpRelay(
                secret=hook.secret,
                address_of=addresses.get,
                sender="shop@example.com",
                port=smtp_port,
                content=web,
            )
            web.alerts.subscribe(amy, "TR2", {"size": "38"})
            admin.inventory.set_level("TR2", 3, options={"size": "38"})
            with box.arrived:
                assert box.arrived.wait_for(lambda: len(box.messages) == 1, timeout=60)
            # The same webhook again (a redelivery): acknowledged, no second e-mail.
            assert endpoint.last is not None
            body, headers = endpoint.last
            again = httpx.post(endpoint.url, content=body, headers=headers)
            assert again.status_code == 204
            forged = httpx.post(endpoint.url, content=body.replace(b"TR2", b"TR9"), headers=headers)
            assert forged.status_code == 401
    finally:
        endpoint.close()
    [(recipients, message)] = box.messages
    assert recipients == ["amy@example.com"]
    assert message["Subject"] == "Amy, your TR2 is back"
    assert message["From"] == "shop@example.com"
    text = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert text.strip() == "Size 38 is waiting for you."


def test_verify_refuses_a_request_not_signed_with_the_endpoint_secret() -> None:
    from standardwebhooks.webhooks import Webhook

    from omnisdk.webhooks import InvalidWebhook, verify

    secret, other = "whsec_" + "A" * 32, "whsec_" + "B" * 32
    signer = Webhook(secret)
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    body = '{"type": "message.low_stock", "timestamp": "2026-12-03T10:00:00+00:00", "data": {}}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signer.sign("msg_1", now, body),
    }
    assert verify(secret, body, headers).type == "message.low_stock"
    with pytest.raises(InvalidWebhook):
        verify(other, body, headers)
    assert omnisdk.Client  # the SDK imports without the server's packages


def test_without_a_content_engine_the_relay_writes_its_own_e_mail_per_kind() -> None:
    from omnisdk.notification_models import MessagePayload

    relay = SmtpRelay(secret="whsec_" + "A" * 32, address_of=lambda _: None, sender="s@x.test")
    message = MessagePayload.model_validate(
        {
            "type": "message.back_in_stock",
            "timestamp": "2026-12-03T10:00:00+00:00",
            "data": {
                "message_id": "msg_1",
                "kind": "back_in_stock",
                "customer_id": "cus_1",
                "sku": "TR2",
                "options": {"size": "38"},
                "first_name": "Amy",
            },
        }
    )
    email = relay.render(message, "amy@example.com")
    assert (email["To"], email["Subject"]) == ("amy@example.com", "TR2 is back in stock")
    assert "Hello Amy" in email.get_content() and "TR2 (size 38) is back." in email.get_content()
