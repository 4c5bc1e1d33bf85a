"""The customer's rights of access and erasure (admin keys only; both are audited)."""

from __future__ import annotations

from omnisdk.models import CustomerExport, ErasureReceipt
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model


def export_call(customer_id: str) -> Call[CustomerExport]:
    return Call("POST", f"/v1/privacy/{customer_id}/export", model(CustomerExport))


def erase_call(customer_id: str) -> Call[ErasureReceipt]:
    return Call("POST", f"/v1/privacy/{customer_id}/erase", model(ErasureReceipt))


class Privacy(SyncResource):
    def export(self, customer_id: str) -> CustomerExport:
        """Everything held about the customer, across every linked identifier."""
        return self._client.execute(export_call(customer_id))

    def erase(self, customer_id: str) -> ErasureReceipt:
        """Erase the customer everywhere, in one transaction; legal records stay anonymised."""
        receipt = self._client.execute(erase_call(customer_id))
        self._client.consent_cache.invalidate([customer_id])
        return receipt


class AsyncPrivacy(AsyncResource):
    async def export(self, customer_id: str) -> CustomerExport:
        return await self._client.execute(export_call(customer_id))

    async def erase(self, customer_id: str) -> ErasureReceipt:
        receipt = await self._client.execute(erase_call(customer_id))
        self._client.consent_cache.invalidate([customer_id])
        return receipt
