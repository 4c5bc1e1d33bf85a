"""The calling shop's settings (admin keys): identity limits and junk patterns, profile
thresholds, the cart merge policy and the abandoned-cart threshold."""

from __future__ import annotations

from omnisdk.models import TenantSettings
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model


def get_call() -> Call[TenantSettings]:
    return Call("GET", "/v1/tenant/settings", model(TenantSettings))


def put_call(settings: TenantSettings) -> Call[TenantSettings]:
    return Call(
        "PUT", "/v1/tenant/settings", model(TenantSettings), json=settings.model_dump(mode="json")
    )


class Tenant(SyncResource):
    def settings(self) -> TenantSettings:
        return self._client.execute(get_call())

    def update_settings(self, settings: TenantSettings) -> TenantSettings:
        """Replace the settings (validated: a bad junk pattern is refused, nothing changes)."""
        return self._client.execute(put_call(settings))


class AsyncTenant(AsyncResource):
    async def settings(self) -> TenantSettings:
        return await self._client.execute(get_call())

    async def update_settings(self, settings: TenantSettings) -> TenantSettings:
        return await self._client.execute(put_call(settings))
