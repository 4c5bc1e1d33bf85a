"""Orders on every channel: record an online order or a sale at a till (now, or through the
durable outbox when the till is offline), read them net of returns, refund, and the signed
customer codes that link a store sale to the customer's online profile (docs/orders.md).

An order is applied once per shop reference: `record` sends it with an Idempotency-Key made
from its content, and the server stores each reference once, so a retry after a lost answer,
or an outbox replay, never records a sale twice. The sale's time is fixed when it is made, so
a sale delivered hours later keeps its time (and its customer code is judged at that time).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from omnisdk.core import customer_codes
from omnisdk.errors import APIConnectionError
from omnisdk.models import (
    CustomerCodeIssued,
    OrderList,
    OrderView,
    PublishedKeys,
    RecordedOrder,
    RecordOrderRequest,
    RefundLineIn,
    RefundRequest,
    SaleLineIn,
)
from omnisdk.resources._resource import (
    Append,
    Blocking,
    C,
    Call,
    Flow,
    Resource,
    checked_customer_id,
    model,
    operation,
)
from omnisdk.resources.returns import keys_call

ORDER = "order"  # the outbox kind of an order recorded while offline


def record_request(
    reference: str,
    lines: Sequence[SaleLineIn | Mapping[str, Any]],
    *,
    currency: str,
    channel: str | None = None,
    store_id: str | None = None,
    placed_at: datetime | None = None,
    total: float | None = None,
    customer_id: str | None = None,
    customer_code: str | None = None,
    loyalty_id: str | None = None,
    email: str | None = None,
    phone: str | None = None,
    e_receipt_email: str | None = None,
    ship_to_other_name: bool = False,
    ship_to_other_address: bool = False,
) -> RecordOrderRequest:
    """The request of an order, checked by the server's own model; its time fixed now."""
    return RecordOrderRequest.model_validate(
        {
            "reference": reference,
            "lines": [
                line.model_dump() if isinstance(line, SaleLineIn) else dict(line) for line in lines
            ],
            "currency": currency,
            "channel": channel,
            "store_id": store_id,
            "placed_at": placed_at or datetime.now(UTC),
            "total": total,
            "customer_id": customer_id,
            "customer_code": customer_code.strip() if customer_code else None,
            "loyalty_id": loyalty_id,
            "email": email,
            "phone": phone,
            "e_receipt_email": e_receipt_email,
            "ship_to_other_name": ship_to_other_name,
            "ship_to_other_address": ship_to_other_address,
        }
    )


def record_call(request: RecordOrderRequest) -> Call[RecordedOrder]:
    """The request; its Idempotency-Key is the body's digest, so a retry (or an outbox
    replay) is the same request, while another till sending the same sale at another time is
    answered by the server's one-order-per-reference rule (`created` false), not refused."""
    body = request.model_dump(mode="json", exclude_none=True)
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:48]
    return Call(
        "POST", "/v1/orders", model(RecordedOrder), json=body, idempotency_key=f"order-{digest}"
    )


def delivery_call(payload: dict[str, Any]) -> Call[RecordedOrder]:
    """The request that delivers a queued order (stored as its request's JSON)."""
    return record_call(RecordOrderRequest.model_validate(payload))


def refund_call(reference: str, request: RefundRequest) -> Call[OrderView]:
    return Call(
        "POST",
        f"/v1/orders/{reference}/refunds",
        model(OrderView),
        json=request.model_dump(mode="json", exclude_none=True),
        idempotency_key=f"refund-{request.refund_id}",
    )


def _remember(client: Any, keys: PublishedKeys) -> None:
    client.returns.till.remember_keys(keys)


class Orders(Resource[C]):
    """Orders on every channel, net of returns, and customer codes for store sales."""

    @operation
    def record(
        self,
        reference: str,
        lines: Sequence[SaleLineIn | Mapping[str, Any]],
        *,
        currency: str,
        channel: str | None = None,
        store_id: str | None = None,
        placed_at: datetime | None = None,
        total: float | None = None,
        customer_id: str | None = None,
        customer_code: str | None = None,
        loyalty_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        e_receipt_email: str | None = None,
        ship_to_other_name: bool = False,
        ship_to_other_address: bool = False,
    ) -> Flow[RecordedOrder]:
        """Record an order now: an online order, or a sale at a till (`store_id`). Name the
        buyer by at most one of `customer_id`, `customer_code` (scanned from her app),
        `loyalty_id`, `email`, `phone`, `e_receipt_email` (matched as keyed hashes); none
        records an unlinked sale. Safe to retry: one order per `reference`. Where it was
        shipped (`ship_to_other_*`) and the lines' attributes label each line gift or for
        herself (docs/orders.md)."""
        request = record_request(
            reference,
            lines,
            currency=currency,
            channel=channel,
            store_id=store_id,
            placed_at=placed_at,
            total=total,
            customer_id=customer_id,
            customer_code=customer_code,
            loyalty_id=loyalty_id,
            email=email,
            phone=phone,
            e_receipt_email=e_receipt_email,
            ship_to_other_name=ship_to_other_name,
            ship_to_other_address=ship_to_other_address,
        )
        result: RecordedOrder = yield record_call(request)
        return result

    @operation
    def queue(
        self,
        reference: str,
        lines: Sequence[SaleLineIn | Mapping[str, Any]],
        *,
        currency: str,
        channel: str | None = None,
        store_id: str | None = None,
        placed_at: datetime | None = None,
        total: float | None = None,
        customer_id: str | None = None,
        customer_code: str | None = None,
        loyalty_id: str | None = None,
        email: str | None = None,
        phone: str | None = None,
        e_receipt_email: str | None = None,
        ship_to_other_name: bool = False,
        ship_to_other_address: bool = False,
    ) -> Flow[str]:
        """Record an order through the durable outbox (a till without network): it is
        delivered in the background and applied once, at the time it was made. Returns the
        outbox key; the options are those of `record`. Queued orders are never dropped."""
        request = record_request(
            reference,
            lines,
            currency=currency,
            channel=channel,
            store_id=store_id,
            placed_at=placed_at,
            total=total,
            customer_id=customer_id,
            customer_code=customer_code,
            loyalty_id=loyalty_id,
            email=email,
            phone=phone,
            e_receipt_email=e_receipt_email,
            ship_to_other_name=ship_to_other_name,
            ship_to_other_address=ship_to_other_address,
        )
        client = self._client
        outbox = yield from self._open_outbox()
        key = f"order-{request.reference}"
        yield Append(outbox, ORDER, key, request.model_dump(mode="json", exclude_none=True))
        client.delivery.nudge()
        return key

    @operation
    def get(self, reference: str) -> Flow[OrderView]:
        """The order of this reference, with its lines, what came back and its net value."""
        result: OrderView = yield Call("GET", f"/v1/orders/{reference}", model(OrderView))
        return result

    @operation
    def of_customer(self, customer_id: str, limit: int = 50) -> Flow[list[OrderView]]:
        """Her orders on every channel, newest first (any current or merged id of hers)."""
        result: OrderList = yield Call(
            "GET",
            f"/v1/customers/{checked_customer_id(customer_id)}/orders",
            model(OrderList),
            params={"limit": str(limit)},
        )
        return result.items

    @operation
    def refund(
        self,
        reference: str,
        refund_id: str,
        *,
        amount: float | None = None,
        lines: Mapping[int, int] | None = None,
    ) -> Flow[OrderView]:
        """Give back money on an order, once per `refund_id`: `lines` maps line numbers to
        units taken back, `amount` defaults to their value. Returns the order, net of it."""
        request = RefundRequest(
            refund_id=refund_id,
            amount=amount,
            lines=[RefundLineIn(line_no=n, quantity=q) for n, q in (lines or {}).items()],
        )
        result: OrderView = yield refund_call(reference, request)
        return result

    @operation
    def customer_code(
        self, customer_id: str, lifetime_seconds: int = 600
    ) -> Flow[CustomerCodeIssued]:
        """A signed customer code for her app to show at a till (render it with
        `omnisdk.qr`): no personal data in it, valid for `lifetime_seconds`."""
        result: CustomerCodeIssued = yield Call(
            "POST",
            f"/v1/customers/{checked_customer_id(customer_id)}/customer-code",
            model(CustomerCodeIssued),
            params={"lifetime_seconds": str(lifetime_seconds)},
        )
        return result

    @operation
    def verify_code(
        self, code: str, now: datetime | None = None
    ) -> Flow[customer_codes.CodeVerification]:
        """Check a scanned customer code offline, from the shop's keys the till caches for
        return codes (fetched when missing, or when the code names a key not yet known)."""
        unknown = customer_codes.CodeVerification(customer_codes.Status.UNKNOWN_KEY)
        issuer_keys = self._client.returns.till.keys
        if issuer_keys is None:
            issuer_keys = yield from _fetch_keys(self._client)
            if issuer_keys is None:
                return unknown
        at = now or datetime.now(UTC)
        outcome = customer_codes.verify(
            code, issuer_keys.verification_keys(), issuer=issuer_keys.issuer, now=at
        )
        if outcome.status is customer_codes.Status.UNKNOWN_KEY:
            fresh = yield from _fetch_keys(self._client)
            if fresh is None:
                return unknown
            outcome = customer_codes.verify(
                code, fresh.verification_keys(), issuer=fresh.issuer, now=at
            )
        return outcome


def _fetch_keys(client: Any) -> Flow[PublishedKeys | None]:
    """The shop's keys, fetched and remembered on the till's disk (None: no network)."""
    try:
        keys: PublishedKeys = yield keys_call()
    except APIConnectionError:
        return None
    yield Blocking(functools.partial(_remember, client, keys))
    return keys
