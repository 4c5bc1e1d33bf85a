"""The shop's side of message webhooks: verify them, and (optionally) send them as e-mail.

The server hands every message (back in stock, low stock, price drop, abandoned cart) to the
shop as a webhook signed by the Standard Webhooks specification; it sends no e-mail itself, and
holds no e-mail address to send to (addresses are kept only as keyed hashes). `verify` checks a
request's signature and returns the message; `SmtpRelay` is a ready receiver for shops that want
plain e-mail: it verifies, drops a redelivered message by its `webhook-id`, asks the shop for the
customer's address, renders the message with Jinja2 and hands it to an SMTP server.

Templates may come from the content engine, written by anyone holding `content:write`, so they
are rendered in Jinja2's immutable sandbox: an authored template must not run code on the host
that holds the webhook secret and the SMTP password.

Needs the `webhooks` extra (`pip install omnisdk[webhooks]`, the `standardwebhooks` library).
"""

from __future__ import annotations

import logging
import re
import smtplib
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from jinja2 import select_autoescape
from jinja2.sandbox import ImmutableSandboxedEnvironment

from omnisdk.notification_models import MessagePayload

logger = logging.getLogger(__name__)

SUBJECTS = {
    "back_in_stock": "{{ data.sku }} is back in stock",
    "low_stock": "Only a few {{ data.sku }} left",
    "price_drop": "{{ data.sku }} now costs less",
    "abandoned_cart": "Your cart is waiting",
}
BODY = """Hello{% if data.first_name %} {{ data.first_name }}{% endif %},

{% if data.kind == "back_in_stock" -%}
{{ data.sku }}{% for k, v in (data.options or {}).items() %} ({{ k }} {{ v }}){% endfor %} is back.
{%- elif data.kind == "low_stock" -%}
{{ data.sku }} in your cart is running out.
{%- elif data.kind == "price_drop" -%}
{{ data.sku }} now costs {{ data.price }} {{ data.currency }}.
{%- else -%}
You left {{ (data.cart_items or []) | length }} item(s) in your cart.
{%- endif %}
"""


# C0 and C1 controls and the Unicode line and paragraph separators: a header value holding one
# is refused by `EmailMessage` (CR, LF) or may be split into two header lines by a mail agent.
_HEADER_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def _one_line(text: str) -> str:
    """A rendered header value (a Subject) on one line: control characters become spaces."""
    return " ".join(_HEADER_BREAKS.sub(" ", text).split())


class InvalidWebhook(ValueError):
    """The request is not a message from the server: bad signature, stale or missing headers."""


def verify(secret: str, body: bytes | str, headers: Mapping[str, str]) -> MessagePayload:
    """The message a webhook request carries, if its signature is the server's (the
    endpoint's `whsec_...` secret) and its timestamp within five minutes; else InvalidWebhook."""
    try:
        from standardwebhooks.webhooks import Webhook, WebhookVerificationError
    except ImportError as missing:  # pragma: no cover - the extra is documented
        raise ImportError("verifying webhooks needs `pip install omnisdk[webhooks]`") from missing
    try:
        payload = Webhook(secret).verify(body, dict(headers))
    except WebhookVerificationError as error:
        raise InvalidWebhook(str(error)) from None
    return MessagePayload.model_validate(payload)


class SeenIds:
    """The webhook ids handled lately (bounded): a redelivery of one is acknowledged, not
    handled again. Shops with several receiver processes keep this in their database."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def first_time(self, webhook_id: str) -> bool:
        with self._lock:
            if webhook_id in self._ids:
                return False
            self._ids[webhook_id] = None
            while len(self._ids) > self.capacity:
                self._ids.popitem(last=False)
            return True

    def forget(self, webhook_id: str) -> None:
        with self._lock:
            self._ids.pop(webhook_id, None)


@dataclass
class SmtpRelay:
    """A webhook receiver that sends e-mail messages through the shop's SMTP server.

    `address_of(customer_id)` returns the customer's e-mail address from the shop's own
    records (None: not sent, acknowledged). `handle(body, headers)` returns the HTTP status to
    answer: 204 when handled (or a redelivery), 401 for a bad signature, 503 when handling
    failed in any way — SMTP server, address lookup, content engine, a template the sandbox
    refuses — so the server retries with backoff. Messages for other channels (sms, push) are
    acknowledged and left to `other_channel`, if given.
    """

    secret: str
    address_of: Callable[[str], str | None]
    sender: str
    host: str = "127.0.0.1"
    port: int = 25
    starttls: bool = False
    username: str | None = None
    password: str | None = None
    timeout: float = 10.0
    other_channel: Callable[[MessagePayload], None] | None = None
    seen: SeenIds | None = None
    # An omnisdk.Client whose content engine writes the e-mail: the slot `message.<kind>`
    # (content `subject` and `body`, Jinja2 templates over `data`), decided for the customer
    # as her landing page is — personalised only with her consent to personalisation.
    content: Any = None

    def __post_init__(self) -> None:
        self.seen = self.seen or SeenIds()
        self._jinja = ImmutableSandboxedEnvironment(autoescape=select_autoescape(default=False))

    def handle(self, body: bytes | str, headers: Mapping[str, str]) -> int:
        try:
            message = verify(self.secret, body, headers)
        except InvalidWebhook:
            return 401
        webhook_id = {k.lower(): v for k, v in headers.items()}["webhook-id"]
        assert self.seen is not None
        if not self.seen.first_time(webhook_id):
            return 204
        try:
            self._handle(message)
        except Exception as error:
            # Not sent: the retry must be handled, not acknowledged as a redelivery. Only the
            # error's type is logged; its text may hold her address or a template's secrets.
            self.seen.forget(webhook_id)
            logger.warning("webhook %s not handled: %s", webhook_id, type(error).__name__)
            return 503
        except BaseException:
            self.seen.forget(webhook_id)
            raise
        return 204

    def _handle(self, message: MessagePayload) -> None:
        data = message.data
        if data.get("channel") != "email":
            if self.other_channel is not None:
                self.other_channel(message)
            return
        address = self.address_of(str(data["customer_id"]))
        if not address:
            return
        self.send(self.render(message, address))

    def render(self, message: MessagePayload, address: str) -> EmailMessage:
        """The e-mail of a message (override to use the shop's own templates)."""
        data: dict[str, Any] = dict(message.data)
        email = EmailMessage()
        email["From"] = self.sender
        email["To"] = address
        subject = SUBJECTS.get(str(data.get("kind")), "A message from the shop")
        body = BODY
        slot = self._slot(data)
        subject, body = slot.get("subject", subject), slot.get("body", body)
        email["Subject"] = _one_line(self._jinja.from_string(str(subject)).render(data=data))
        email["Message-ID"] = f"<{data['message_id']}@omnisdk>"
        email.set_content(self._jinja.from_string(str(body)).render(data=data))
        return email

    def _slot(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """The content engine's `message.<kind>` slot for her, if the relay has a client and
        the shop's ruleset has the slot."""
        if self.content is None:
            return {}
        slot = f"message.{data.get('kind')}"
        decision = self.content.content.decide(str(data["customer_id"]), slots=[slot])
        return decision.content(slot) if slot in decision.slots else {}

    def send(self, email: EmailMessage) -> None:
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username is not None:
                smtp.login(self.username, self.password or "")
            smtp.send_message(email)
