"""A shop that wants plain e-mail: the server's signed webhook reaches `omnisdk.webhooks.
SmtpRelay`, which sends it through a real SMTP server (aiosmtpd) — once, however often the
same webhook arrives."""

from __future__ import annotations

import email
import json
import threading
from collections.abc import Callable, Iterator
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

import omnisdk
from omnisdk.errors import APIConnectionError
from omnisdk.testing import ServerProcess, free_port
from omnisdk.webhooks import BODY, SUBJECTS, SmtpRelay


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


SECRET = "whsec_" + "A" * 32
AMY = {"cus_1": "amy@example.com"}


def signed_webhook(webhook_id: str = "msg_7", **data: Any) -> tuple[str, dict[str, str]]:
    """A back-in-stock e-mail message as the server sends it: body and signed headers."""
    from datetime import UTC, datetime

    from standardwebhooks.webhooks import Webhook

    now = datetime.now(UTC)
    body = json.dumps(
        {
            "type": "message.back_in_stock",
            "timestamp": now.isoformat(),
            "data": {
                "message_id": webhook_id,
                "kind": "back_in_stock",
                "channel": "email",
                "customer_id": "cus_1",
                "sku": "TR2",
                "options": {"size": "38"},
                "first_name": "Amy",
                **data,
            },
        }
    )
    headers = {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign(webhook_id, now, body),
    }
    return body, headers


class ContentEngine:
    """Stands in for the relay's omnisdk.Client (`client.content.decide`): each decision is the
    next of `answers` — the `message.back_in_stock` slot as an author with `content:write`
    wrote it, or the error the client raised; the last answer repeats."""

    def __init__(self, *answers: dict[str, str] | Exception) -> None:
        self.answers = list(answers)
        self.content = self

    def decide(self, customer_id: str, slots: list[str]) -> SimpleNamespace:
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return SimpleNamespace(slots=slots, content=lambda slot: answer)


class FailsOnce:
    """The shop's address lookup, failing the first time it is asked."""

    def __init__(self, error: Exception, addresses: dict[str, str]) -> None:
        self.error: Exception | None = error
        self.addresses = addresses

    def __call__(self, customer_id: str) -> str | None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.addresses.get(customer_id)


def relay_to(smtp_port: int, **fields: Any) -> SmtpRelay:
    fields.setdefault("address_of", AMY.get)
    return SmtpRelay(secret=SECRET, sender="shop@example.com", port=smtp_port, **fields)


def test_a_newline_in_her_first_name_is_sent_on_a_one_line_subject(
    mailbox: tuple[Mailbox, int],
) -> None:
    box, smtp_port = mailbox
    slot = {"subject": "{{ data.first_name }}, your {{ data.sku }} is back", "body": "Hi"}
    relay = relay_to(smtp_port, content=ContentEngine(slot))
    webhook = signed_webhook(first_name="Amy\r\nBcc: all@example.com\x0b\u2028Smith")
    assert relay.handle(*webhook) == 204
    [(recipients, message)] = box.messages
    assert recipients == ["amy@example.com"]
    assert message["Subject"] == "Amy Bcc: all@example.com Smith, your TR2 is back"
    assert message["Bcc"] is None


FINE = {"subject": "Your {{ data.sku }} is back", "body": "Size {{ data.options.size }}."}
FAILURES: dict[str, Callable[[], dict[str, Any]]] = {
    "content engine unreachable": lambda: {
        "content": ContentEngine(APIConnectionError("amy@example.com"), FINE)
    },
    "template syntax error": lambda: {
        "content": ContentEngine({"subject": "{{ data.sku ", "body": ""}, FINE)
    },
    "template renders an undefined": lambda: {
        "content": ContentEngine({"subject": "{{ data.sku.nothing.deeper }}"}, FINE)
    },
    "template refused by the sandbox": lambda: {
        "content": ContentEngine({"body": "{{ ''.__class__.__mro__[1].__subclasses__() }}"}, FINE)
    },
    "address lookup": lambda: {
        "address_of": FailsOnce(RuntimeError("amy@example.com"), AMY),
        "content": ContentEngine(FINE),
    },
}


@pytest.mark.parametrize("failure", FAILURES.values(), ids=FAILURES.keys())
def test_a_message_that_failed_in_any_way_is_retried_and_then_sent(
    failure: Callable[[], dict[str, Any]],
    mailbox: tuple[Mailbox, int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    box, smtp_port = mailbox
    relay = relay_to(smtp_port, **failure())
    webhook = signed_webhook()
    assert relay.handle(*webhook) == 503
    assert box.messages == []
    assert "msg_7" in caplog.text and "amy@example.com" not in caplog.text
    # The server delivers the same webhook again: handled, not acknowledged as already sent.
    assert relay.handle(*webhook) == 204
    assert relay.handle(*webhook) == 204
    [(recipients, message)] = box.messages
    assert (recipients, message["Subject"]) == (["amy@example.com"], "Your TR2 is back")


ESCAPES = {
    "lipsum globals": "{{ lipsum.__globals__.os.popen('touch ' ~ data.marker).read() }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.popen('touch ' ~ data.marker).read() }}",
    "class hierarchy": (
        "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
        "{% if c.__name__ == 'Popen' %}{{ c(['touch', data.marker]).wait() }}{% endif %}"
        "{% endfor %}"
    ),
}


@pytest.mark.parametrize("part", ["subject", "body"])
@pytest.mark.parametrize("template", ESCAPES.values(), ids=ESCAPES.keys())
def test_an_authored_template_cannot_run_code_on_the_receiver(
    template: str, part: str, mailbox: tuple[Mailbox, int], tmp_path: Path
) -> None:
    box, smtp_port = mailbox
    marker = tmp_path / "pwned"
    relay = relay_to(smtp_port, content=ContentEngine({part: template}))
    status = relay.handle(*signed_webhook(marker=str(marker)))
    assert not marker.exists()
    assert status == 503
    assert box.messages == []


KINDS: dict[str, dict[str, Any]] = {
    "back_in_stock": {"sku": "TR2", "options": {"size": "38"}},
    "low_stock": {"sku": "TR2", "units_available": 2},
    "price_drop": {"sku": "TR2", "price": "79.00", "currency": "EUR"},
    "abandoned_cart": {"cart_items": [{"sku": "TR2"}, {"sku": "SOCK"}]},
}
# The relay's own e-mail per kind, and the slots of notifications.md and of the test above.
DOCUMENTED = [
    *((kind, {"subject": SUBJECTS[kind], "body": BODY}) for kind in KINDS),
    (
        "abandoned_cart",
        {
            "subject": "Your cart is waiting",
            "body": "{{ data.cart_items | length }} items are still in your cart.",
        },
    ),
    (
        "abandoned_cart",
        {
            "subject": "Your trail shoes are waiting",
            "body": "Ready when you are, {{ data.first_name }}.",
        },
    ),
    (
        "back_in_stock",
        {
            "subject": "{{ data.first_name }}, your {{ data.sku }} is back",
            "body": "Size {{ data.options.size }} is waiting for you.",
        },
    ),
]


@pytest.mark.parametrize("first_name", ["Amy", "Amy & <Bo>"])
@pytest.mark.parametrize(("kind", "slot"), DOCUMENTED)
def test_the_documented_templates_render_as_they_did_before_the_sandbox(
    kind: str, slot: dict[str, str], first_name: str
) -> None:
    from jinja2 import Environment, select_autoescape

    from omnisdk.notification_models import MessagePayload

    data: dict[str, Any] = {"message_id": "msg_1", "kind": kind, "customer_id": "cus_1"}
    data["first_name"] = first_name
    data |= KINDS[kind]
    message = MessagePayload.model_validate(
        {"type": f"message.{kind}", "timestamp": "2026-12-03T10:00:00+00:00", "data": data}
    )
    relay = relay_to(25, content=ContentEngine(slot))
    rendered = relay.render(message, "amy@example.com")
    unsandboxed = Environment(autoescape=select_autoescape(default=False))
    expected = {part: unsandboxed.from_string(slot[part]).render(data=data) for part in slot}
    assert rendered["Subject"] == expected["subject"]
    assert rendered.get_content() == expected["body"] + "\n"
