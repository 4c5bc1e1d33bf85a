"""The calling shop's settings (admin keys): identity limits and junk patterns, profile
thresholds, the cart merge policy and the abandoned-cart threshold."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omnisdk.core import merge_patch
from omnisdk.models import TenantSettings
from omnisdk.resources._resource import C, Call, Flow, Resource, model, operation, send


def get_call() -> Call[TenantSettings]:
    return Call("GET", "/v1/tenant/settings", model(TenantSettings))


def put_call(settings: TenantSettings | Mapping[str, Any]) -> Call[TenantSettings]:
    document = TenantSettings.model_validate(settings).model_dump(mode="json")
    return Call("PUT", "/v1/tenant/settings", model(TenantSettings), json=document)


def patch_call(changes: Mapping[str, Any]) -> Call[TenantSettings]:
    if not isinstance(changes, Mapping):
        raise TypeError(
            "settings changes are a mapping, such as {'carts': {'merge_policy': 'sum'}}"
        )
    return Call(
        "PATCH",
        "/v1/tenant/settings",
        model(TenantSettings),
        json=dict(changes),
        headers={"Content-Type": merge_patch.MEDIA_TYPE},
    )


class Tenant(Resource[C]):
    """The calling shop's settings (admin keys)."""

    @operation
    def settings(self) -> Flow[TenantSettings]:
        """The shop's current settings."""
        return (yield from send(get_call()))

    @operation
    def update_settings(self, changes: Mapping[str, Any]) -> Flow[TenantSettings]:
        """Change only the settings named in `changes` and return them all, for example
        `update_settings({"carts": {"merge_policy": "sum"}})`. Sent as a JSON Merge Patch
        (RFC 7396): nested objects merge, `None` puts a setting back to its default. The
        result is validated whole; if it is refused, nothing changes."""
        return (yield from send(patch_call(changes)))

    @operation
    def replace_settings(
        self, settings: TenantSettings | Mapping[str, Any]
    ) -> Flow[TenantSettings]:
        """Replace the whole settings document (what it leaves out takes its default)."""
        return (yield from send(put_call(settings)))
