"""API keys of the tenant (admin keys only): create, list, revoke."""

from __future__ import annotations

from omnisdk.core.channels import Channel, Scope
from omnisdk.models import ApiKey, ApiKeyCreate, ApiKeyList, CreatedApiKey
from omnisdk.resources._resource import C, Call, Flow, Resource, model, operation, send


def create_call(
    channel: Channel | str, name: str, scopes: list[Scope] | None, idempotency_key: str | None
) -> Call[CreatedApiKey]:
    body = ApiKeyCreate(channel=Channel(channel), name=name, scopes=scopes)
    return Call(
        "POST",
        "/v1/keys",
        model(CreatedApiKey),
        json=body.model_dump(mode="json"),
        idempotency_key=idempotency_key,
    )


def list_call() -> Call[list[ApiKey]]:
    return Call("GET", "/v1/keys", lambda data: ApiKeyList.model_validate(data).items)


def revoke_call(key_id: str) -> Call[ApiKey]:
    return Call("DELETE", f"/v1/keys/{key_id}", model(ApiKey))


class Keys(Resource[C]):
    """The tenant's API keys (admin keys only)."""

    @operation
    def create(
        self,
        channel: Channel | str,
        name: str = "",
        scopes: list[Scope] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Flow[CreatedApiKey]:
        """A new key for `channel`; its `secret` is returned this once only."""
        return (yield from send(create_call(channel, name, scopes, idempotency_key)))

    @operation
    def list(self) -> Flow[list[ApiKey]]:
        """Every key of the tenant, revoked ones included, without secrets."""
        return (yield from send(list_call()))

    @operation
    def revoke(self, key_id: str) -> Flow[ApiKey]:
        """Revoke a key; requests made with it fail from then on."""
        return (yield from send(revoke_call(key_id)))
