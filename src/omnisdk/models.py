"""Pydantic models of the wire format, shared by the SDK (to read answers) and the server."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from omnisdk.core.channels import Channel, Scope


class WireModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Principal(WireModel):
    """Who a request is: the tenant, the key's public id, its channel and scopes."""

    tenant_id: str
    key_id: str
    channel: Channel
    scopes: list[Scope]


class PingRequest(WireModel):
    """A write that changes nothing: proves a key can write, and measures the stack."""

    message: str = Field(default="ping", max_length=256)
    sequence: int = Field(default=0, ge=0)


class Pong(WireModel):
    message: str
    sequence: int
    tenant_id: str
    channel: Channel
    received_at: datetime


class ApiKeyCreate(WireModel):
    channel: Channel
    name: str = Field(default="", max_length=100)
    scopes: list[Scope] | None = Field(
        default=None, description="A subset of the channel's default scopes; all of them if absent."
    )


class ApiKey(WireModel):
    """An API key as the server shows it: never the secret, except `secret` once at creation."""

    key_id: str
    tenant_id: str
    channel: Channel
    name: str
    scopes: list[Scope]
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedApiKey(ApiKey):
    secret: str = Field(description="The full API key. Shown once; the server keeps only a hash.")


class ApiKeyList(WireModel):
    items: list[ApiKey]
