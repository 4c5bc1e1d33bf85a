"""API keys of the tenant (admin keys only): create, list, revoke."""

from __future__ import annotations

from omnisdk.core.channels import Channel, Scope
from omnisdk.models import ApiKey, ApiKeyCreate, ApiKeyList, CreatedApiKey
from omnisdk.resources._resource import AsyncResource, Call, SyncResource, model


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


class Keys(SyncResource):
    def create(
        self,
        channel: Channel | str,
        name: str = "",
        scopes: list[Scope] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> CreatedApiKey:
        """A new key for `channel`; its `secret` is returned this once only."""
        return self._client.execute(create_call(channel, name, scopes, idempotency_key))

    def list(self) -> list[ApiKey]:
        """Every key of the tenant, revoked ones included, without secrets."""
        return self._client.execute(list_call())

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key; requests made with it fail from then on."""
        return self._client.execute(revoke_call(key_id))


class AsyncKeys(AsyncResource):
    async def create(
        self,
        channel: Channel | str,
        name: str = "",
        scopes: list[Scope] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> CreatedApiKey:
        """A new key for `channel`; its `secret` is returned this once only."""
        return await self._client.execute(create_call(channel, name, scopes, idempotency_key))

    async def list(self) -> list[ApiKey]:
        """Every key of the tenant, revoked ones included, without secrets."""
        return await self._client.execute(list_call())

    async def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key; requests made with it fail from then on."""
        return await self._client.execute(revoke_call(key_id))
