"""Channels and the scopes each channel's API keys carry (DESIGN: tenancy and auth)."""

from __future__ import annotations

from enum import StrEnum


class Channel(StrEnum):
    """Where a request comes from: a shop backend of one kind, or the shop's administration."""

    WEB = "web"
    APP = "app"
    POS = "pos"
    ADMIN = "admin"


class Scope(StrEnum):
    """What an API key may do. Each endpoint of the server requires exactly one scope."""

    SYSTEM_READ = "system:read"
    SYSTEM_WRITE = "system:write"
    KEYS_MANAGE = "keys:manage"
    IDENTITY_WRITE = "identity:write"
    IDENTITY_ADMIN = "identity:admin"
    PROFILE_READ = "profile:read"
    PROFILE_ANNOTATE = "profile:annotate"
    EVENTS_WRITE = "events:write"
    CARTS_READ = "carts:read"
    CARTS_WRITE = "carts:write"
    CONSENT_READ = "consent:read"
    CONSENT_WRITE = "consent:write"
    CONTENT_READ = "content:read"
    CONTENT_WRITE = "content:write"
    RETURNS_ISSUE = "returns:issue"
    RETURNS_VERIFY = "returns:verify"
    RETURNS_REDEEM = "returns:redeem"
    RETURNS_REVOKE = "returns:revoke"
    PRIVACY_EXPORT = "privacy:export"
    PRIVACY_ERASE = "privacy:erase"
    SETTINGS_MANAGE = "settings:manage"
    INVENTORY_READ = "inventory:read"
    INVENTORY_WRITE = "inventory:write"
    ALERTS_READ = "alerts:read"
    ALERTS_WRITE = "alerts:write"
    ALERTS_MANAGE = "alerts:manage"
    ORDERS_READ = "orders:read"
    ORDERS_WRITE = "orders:write"
    CUSTOMER_CODES_ISSUE = "customer_codes:issue"


_SHOP_BACKEND = frozenset(
    {
        Scope.SYSTEM_READ,
        Scope.SYSTEM_WRITE,
        Scope.IDENTITY_WRITE,
        Scope.PROFILE_READ,
        Scope.PROFILE_ANNOTATE,
        Scope.EVENTS_WRITE,
        Scope.CARTS_READ,
        Scope.CARTS_WRITE,
        Scope.CONSENT_READ,
        Scope.CONSENT_WRITE,
        Scope.CONTENT_READ,
        Scope.RETURNS_VERIFY,
        Scope.INVENTORY_READ,
        Scope.ALERTS_READ,
        Scope.ALERTS_WRITE,
        Scope.ORDERS_READ,
        Scope.ORDERS_WRITE,
    }
)

# A web or app backend sells and issues return codes; only a till takes goods back
# (DESIGN: "a web key cannot redeem returns"); only admin keys author content, manage keys,
# export or erase.
DEFAULT_SCOPES: dict[Channel, frozenset[Scope]] = {
    Channel.WEB: _SHOP_BACKEND | {Scope.RETURNS_ISSUE, Scope.CUSTOMER_CODES_ISSUE},
    Channel.APP: _SHOP_BACKEND | {Scope.RETURNS_ISSUE, Scope.CUSTOMER_CODES_ISSUE},
    # A till also counts stock in its store (inventory:write); webhooks, replays and the
    # operator's metrics of messages (alerts:manage) are the administration's.
    Channel.POS: _SHOP_BACKEND | {Scope.RETURNS_REDEEM, Scope.INVENTORY_WRITE},
    Channel.ADMIN: frozenset(Scope),
}


def scopes_for(
    channel: Channel, requested: frozenset[Scope] | None = None, *, strict: bool = True
) -> frozenset[Scope]:
    """The scopes of a key: its channel's defaults, or the requested subset of them.

    With `strict`, asking for a scope the channel may not have is an error; without, such a
    scope is just not granted (a stored key whose channel lost a scope loses it too).
    """
    allowed = DEFAULT_SCOPES[channel]
    if requested is None:
        return allowed
    extra = requested - allowed
    if extra and not strict:
        return requested & allowed
    if extra:
        names = ", ".join(sorted(extra))
        raise ValueError(f"a {channel.value} key cannot carry the scopes {names}")
    return requested
