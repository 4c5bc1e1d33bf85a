"""The calling shop's settings (admin keys): identity limits and junk patterns, profile
thresholds, the cart merge policy and the abandoned-cart threshold."""

from __future__ import annotations

from omnisdk.models import TenantSettings
from omnisdk.resources._resource import C, Call, Flow, Resource, model, operation, send


def get_call() -> Call[TenantSettings]:
    return Call("GET", "/v1/tenant/settings", model(TenantSettings))


def put_call(settings: TenantSettings) -> Call[TenantSettings]:
    return Call(
        "PUT", "/v1/tenant/settings", model(TenantSettings), json=settings.model_dump(mode="json")
    )


class Tenant(Resource[C]):
    """The calling shop's settings (admin keys)."""

    @operation
    def settings(self) -> Flow[TenantSettings]:
        """The shop's current settings."""
        return (yield from send(get_call()))

    @operation
    def update_settings(self, settings: TenantSettings) -> Flow[TenantSettings]:
        """Replace the settings (validated: a bad junk pattern is refused, nothing changes)."""
        return (yield from send(put_call(settings)))
