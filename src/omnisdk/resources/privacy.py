"""The customer's rights of access and erasure (admin keys only; both are audited)."""

from __future__ import annotations

from omnisdk.models import CustomerExport, ErasureReceipt
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


def export_call(customer_id: str) -> Call[CustomerExport]:
    return Call(
        "POST", f"/v1/privacy/{checked_customer_id(customer_id)}/export", model(CustomerExport)
    )


def erase_call(customer_id: str) -> Call[ErasureReceipt]:
    return Call(
        "POST", f"/v1/privacy/{checked_customer_id(customer_id)}/erase", model(ErasureReceipt)
    )


class Privacy(Resource[C]):
    """The customer's rights of access and erasure (admin keys only; both are audited)."""

    @operation
    def export(self, customer_id: str) -> Flow[CustomerExport]:
        """Everything held about the customer, across every linked identifier."""
        return (yield from send(export_call(customer_id)))

    @operation
    def erase(self, customer_id: str) -> Flow[ErasureReceipt]:
        """Erase the customer everywhere, in one transaction; legal records stay anonymised."""
        receipt: ErasureReceipt = yield erase_call(customer_id)
        self._client.consent_cache.invalidate([customer_id])
        return receipt
