"""Event rules: names, the standard commerce events and their properties, and limits.

Custom events are welcome; standard events have documented properties whose types are checked
when present, so the profile can rely on them (an order's `value` is a number, say).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from omnisdk.core.identifiers import MAX_VALUE_LENGTH
from omnisdk.core.strict_json import MAX_SAFE_INTEGER, bad_value

MAX_PROPERTIES_BYTES = 16_384
MAX_FUTURE_SKEW = timedelta(minutes=10)
MAX_AGE = timedelta(days=3 * 365)
MAX_BATCH = 500
MAX_BATCH_BYTES = 1_048_576  # the server's default request body limit; senders size batches by it
MAX_EVENT_ID = 64
MAX_CUSTOMER_ID = 40
MAX_INTEGER = MAX_SAFE_INTEGER  # the strict JSON policy's bound (RFC 7493 §2.2)
_NAME = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")

# name -> {property: (type or types, what it means)}
STANDARD_EVENTS: dict[str, dict[str, tuple[type | tuple[type, ...], str]]] = {
    "product_viewed": {
        "sku": (str, "the product's stock keeping unit"),
        "category": (str, "the product's category; feeds interests"),
        "price": ((int, float), "unit price"),
    },
    "product_added": {
        "sku": (str, "the product added to the cart"),
        "category": (str, "feeds interests"),
        "quantity": (int, "units added"),
        "price": ((int, float), "unit price"),
    },
    "cart_viewed": {"cart_id": (str, "the cart")},
    "order_completed": {
        "order_id": (str, "the shop's order reference"),
        "value": ((int, float), "order total; feeds order value"),
        "currency": (str, "ISO 4217 code"),
        "category": (str, "main category of the order; feeds interests"),
        "skus": (list, "the products bought"),
        "gift": (bool, "bought as a gift; feeds gift buyer"),
        "shipping_differs_from_billing": (bool, "shipped elsewhere; feeds gift buyer"),
    },
    "campaign_scanned": {
        "campaign": (str, "the campaign id of the scanned QR code"),
        "utm_source": (str, "UTM source"),
        "utm_medium": (str, "UTM medium"),
        "utm_campaign": (str, "UTM campaign"),
    },
    "experiment_viewed": {
        "experiment": (str, "the experiment's key"),
        "variant": (str, "the arm shown"),
    },
    "chat_started": {"thread_id": (str, "the chat thread")},
    "email_opened": {"campaign": (str, "the e-mail campaign")},
    "email_clicked": {"campaign": (str, "the e-mail campaign"), "url": (str, "the link")},
    "store_visit": {"store_id": (str, "the store")},
    "return_completed": {
        "order_id": (str, "the order returned from"),
        "value": ((int, float), "refunded value"),
        "store_id": (str, "where"),
        "refund_method": (str, "how the money went back"),
    },
}

_JSON_NAMES: dict[Any, str] = {str: "string", int: "integer", bool: "boolean", list: "array"}
INTEREST_EVENTS = {"product_viewed": 1.0, "product_added": 3.0, "order_completed": 5.0}


def order_event_id(order_ref: str) -> str:
    """The event id of the `order_completed` the server records when a cart becomes order
    `order_ref` (carts.mark_ordered): one order, one event, however often it is asked."""
    return "order-" + hashlib.sha256(order_ref.encode()).hexdigest()[:40]


def cart_order_properties(
    order_ref: str, lines: list[dict[str, Any]], source: str = "cart"
) -> dict[str, Any]:
    """The `order_completed` properties of an order the server records (a cart turned into
    an order, `source` "cart"; an order sent to /v1/orders, "order"): its skus (every
    product bought), `gift_skus` (those bought only on gift lines, which say nothing of her
    taste and stay out of the recommendations' baskets) and, when every line carries a price
    in one currency, its value."""
    skus = list(dict.fromkeys(str(line["sku"]) for line in lines))
    properties: dict[str, Any] = {"order_id": order_ref, "skus": skus, "source": source}
    for_herself = {str(line["sku"]) for line in lines if not line.get("gift")}
    gift_skus = [sku for sku in skus if sku not in for_herself]
    if gift_skus:
        properties["gift_skus"] = gift_skus
    prices = [line.get("unit_price") for line in lines]
    currencies = {line.get("currency") for line in lines}
    if lines and None not in prices and len(currencies) == 1:
        total = sum(float(line["unit_price"]) * int(line["quantity"]) for line in lines)
        properties["value"] = round(total, 2)
        currency = currencies.pop()
        if currency is not None:
            properties["currency"] = currency
    return properties


# Records of a contract with the customer (a purchase, a return): kept with the customer without
# analytics consent. Every other event is behavioural and needs `analytics` to keep an identity.
TRANSACTIONAL_EVENTS = frozenset({"order_completed", "return_completed"})
# Properties an event loses when it is stored without identifiers.
PERSONAL_PROPERTIES = frozenset(
    {
        "email",
        "phone",
        "name",
        "first_name",
        "last_name",
        "address",
        "ip",
        "ip_address",
        "user_agent",
        "user_id",
        "customer_id",
        "anonymous_id",
        "device_id",
        "loyalty_card",
    }
)


def without_identifiers(properties: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in properties.items() if k.lower() not in PERSONAL_PROPERTIES}


class InvalidEvent(ValueError):
    """An event the server will not store; the message says what to fix."""


@dataclass(frozen=True)
class Extracted:
    """The few properties the server indexes for the profile."""

    category: str | None
    value: float | None


_SCALARS = (str, int, float, bool, type(None))
_NESTING = (dict, list, tuple)
MAX_DEPTH = 32  # how deep JSON a customer record may nest (deeper is refused, never stored)


def json_depth(value: Any) -> int:
    """How deep objects and arrays nest in `value` (a scalar is 0), without recursion: a
    hostile body nested a thousand levels deep must not exhaust the stack."""
    if type(value) is dict and not any(isinstance(child, _NESTING) for child in value.values()):
        return 1  # the common case: an object of scalars
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        depth += 1
        if depth > deepest:
            deepest = depth
            if deepest > MAX_DEPTH:
                return deepest
        stack.extend((child, depth) for child in children)
    return deepest


def _bad_value(value: Any) -> str | None:
    """Why `value` (a JSON leaf or key) cannot be stored, or None: the strict JSON policy."""
    problem = bad_value(value)
    return None if problem is None else problem[1]


def storable_text(text: str) -> bool:
    """Text every store keeps as it is: no NUL, no lone surrogate."""
    return _bad_value(text) is None


def json_problem(value: Any) -> str | None:
    """Why `value` is not JSON every store keeps as it is (depth, NaN, huge integers, lone
    surrogates), or None. Walks without recursion."""
    if type(value) is dict and _flat(value):
        return None  # the common case: an object of plain scalars, checked in one pass
    if json_depth(value) > MAX_DEPTH:
        return f"nested deeper than {MAX_DEPTH} levels"
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, child in item.items():
                problem = _bad_value(key)
                if problem is not None:
                    return problem
                stack.append(child)
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            problem = _bad_value(item)
            if problem is not None:
                return problem
    return None


def _flat(properties: dict[Any, Any]) -> bool:
    """True if `properties` holds only ASCII keys and scalars that need no closer look."""
    for key, item in properties.items():
        if type(key) is not str or not key.isascii() or "\x00" in key:
            return False
        kind = type(item)
        if kind is str:
            if not item.isascii() or "\x00" in item:
                return False
        elif kind is float:
            if not math.isfinite(item):
                return False
        elif kind is int:
            if not -MAX_INTEGER <= item <= MAX_INTEGER:
                return False
        elif kind is not bool and item is not None:
            return False
    return True


def check_names(event_id: str | None, customer_id: str | None) -> None:
    """The envelope's limits, the same in the SDK and on the server."""
    if event_id is not None and not 1 <= len(event_id) <= MAX_EVENT_ID:
        raise InvalidEvent(f"event_id must be 1-{MAX_EVENT_ID} characters")
    if customer_id is not None and not 1 <= len(customer_id) <= MAX_CUSTOMER_ID:
        raise InvalidEvent(f"customer_id must be 1-{MAX_CUSTOMER_ID} characters")
    for name, text in (("event_id", event_id), ("customer_id", customer_id)):
        if text is not None and _bad_value(text) is not None:
            raise InvalidEvent(f"{name}: {_bad_value(text)}")


def check_identifier_value(value: str) -> None:
    """An identifier's value as the server can take it: text, not too long."""
    if not 0 < len(value.strip()) <= MAX_VALUE_LENGTH:
        raise InvalidEvent(f"identifier values must be 1-{MAX_VALUE_LENGTH} characters")
    problem = _bad_value(value)
    if problem is not None:
        raise InvalidEvent(f"identifier value: {problem}")


def shallow(value: Any) -> Any:
    """`value` if it nests at most MAX_DEPTH levels; else ValueError (a pydantic validator)."""
    if json_depth(value) > MAX_DEPTH:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return value


def _json_size(properties: dict[str, Any]) -> int:
    """The size of the properties as compact JSON; exact when it matters.

    A flat object of scalars is bounded without encoding it (a character of a string is at most
    6 bytes of JSON): only an object that might be near the limit is encoded to measure it.
    """
    bound = 2
    for key, value in properties.items():
        if type(value) not in _SCALARS or type(key) is not str:
            bound = MAX_PROPERTIES_BYTES + 1
            break
        text = value if type(value) is str else "null" if value is None else str(value)
        bound += 6 * (len(key) + len(text)) + 6
    if bound <= MAX_PROPERTIES_BYTES:
        return bound
    return len(json.dumps(properties, separators=(",", ":"), default=str))


def check_event(
    name: str, properties: dict[str, Any], occurred_at: datetime, now: datetime
) -> Extracted:
    """Raise InvalidEvent if the event breaks a rule; otherwise what the profile indexes."""
    problem = json_problem(properties)
    if problem is not None:
        raise InvalidEvent(f"properties: {problem}")
    if not _NAME.fullmatch(name):
        raise InvalidEvent(
            "event names are 1-64 characters: lower-case letters, digits and _ . : - "
            "starting with a letter"
        )
    size = _json_size(properties)
    if size > MAX_PROPERTIES_BYTES:
        raise InvalidEvent(f"properties take {size} bytes; the limit is {MAX_PROPERTIES_BYTES}")
    if occurred_at.tzinfo is None:
        raise InvalidEvent("the timestamp needs a time zone (e.g. 2026-11-24T09:30:00Z)")
    if occurred_at > now + MAX_FUTURE_SKEW:
        raise InvalidEvent("the timestamp is in the future; check the sender's clock")
    if occurred_at < now - MAX_AGE:
        raise InvalidEvent("the timestamp is more than three years old")
    for prop, (kind, _meaning) in STANDARD_EVENTS.get(name, {}).items():
        value = properties.get(prop)
        if value is None:
            continue
        if isinstance(value, bool) and kind in (int, (int, float)):
            raise InvalidEvent(f"{name}.{prop} must be a number, not true/false")
        if not isinstance(value, kind):
            raise InvalidEvent(f"{name}.{prop} must be a JSON {_JSON_NAMES.get(kind, 'number')}")
    category = properties.get("category")
    value = properties.get("value")
    return Extracted(
        category=category if isinstance(category, str) and category else None,
        value=float(value)
        if isinstance(value, int | float) and not isinstance(value, bool)
        else None,
    )
