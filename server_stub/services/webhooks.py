"""The shop's webhook endpoints and the signed requests that hand it messages.

Messages reach the shop as webhooks signed by the Standard Webhooks specification (the
`standardwebhooks` library): headers `webhook-id` (the message id, the same on every retry, so
the receiver drops a redelivery), `webhook-timestamp` and `webhook-signature` (HMAC-SHA-256 of
`id.timestamp.body` with the endpoint's secret). The secret is shown once, when the endpoint
is made, and stored sealed with the server's secret key.

Unless the operator allows it (`OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS`), an endpoint must be on
the public internet: a tenant could otherwise make the server post to its own machine or the
operator's network, and read what answered there in its messages' failure reasons. An address
is judged by `is_public`; a URL whose host plainly is not public is refused when it is added
(`refuse_private_url`), and every send resolves the name and checks it again (alert_delivery).
"""

from __future__ import annotations

import base64
import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_address
from typing import Any

import httpx
import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks.webhooks import Webhook

from omnisdk.core.problems import ProblemType
from omnisdk.notification_models import WebhookEndpoint, WebhookEndpointIn
from server_stub.errors import Problem
from server_stub.ids import new_id
from server_stub.sealing import Sealer
from server_stub.settings import settings_from_environment
from server_stub.storage.tables import webhook_endpoints

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24
# The one failure reason of a send refused for its address: it says nothing of what the name
# resolved to, nor whether it resolved at all (either would map the operator's network).
NOT_PUBLIC = "the endpoint's address is not a public one"
NOT_PUBLIC_ERROR = "webhook_url_not_public"  # the field error's `type` in the 422 problem

IPAddress = IPv4Address | IPv6Address
# Names that never leave the machine or the site: RFC 6761 (localhost), RFC 6762 (.local),
# RFC 8375 (home.arpa) and ICANN's private-use .internal.
_LOCAL_NAMES = ("localhost", "local", "home.arpa", "internal")
# What inet_aton reads as an IPv4 address besides the dotted quad: 127.1, 2130706433, 0x7f.1.
_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+", re.IGNORECASE)
_NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052: the low 32 bits are an IPv4 address


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 one stands for (mapped, 6to4, NAT64), which a connection to it
    may reach."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """Whether `address` is on the public internet: not loopback, private (RFC 1918, unique
    local), shared, link-local, unspecified, reserved or multicast, nor an IPv6 form of one."""
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None and not is_public(embedded):
            return False
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_loopback
        or address.is_link_local
        or address.is_unspecified
    )


def address_literal(host: str) -> IPAddress | None:
    """The address a URL's host writes literally (in any form a resolver accepts), or None."""
    try:
        return ip_address(host)
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _plainly_private_name(host: str) -> bool:
    name = host.lower().rstrip(".")
    if "." not in name:  # a single label is resolved by the local search domains
        return True
    return any(name == local or name.endswith("." + local) for local in _LOCAL_NAMES)


def private_networks_allowed(allowed: bool | None) -> bool:
    """`allowed` if given, else the process's setting (OMNISDK_WEBHOOK_ALLOW_PRIVATE_NETWORKS)."""
    if allowed is None:
        return settings_from_environment().webhook_allow_private_networks
    return allowed


def refuse_private_url(url: str) -> None:
    """Raise a 422 problem when `url`'s host is an address that is not public, or a name
    that never is (`localhost`, a single label); other names are checked at each send."""
    try:
        host = httpx.URL(url).host
    except httpx.InvalidURL:
        host = ""
    literal = address_literal(host)
    if (
        not host
        or (literal is not None and not is_public(literal))
        or (literal is None and _plainly_private_name(host))
    ):
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            "a webhook endpoint must be on the public internet: "
            "give an https URL whose host has a public address",
            errors=[
                {
                    "loc": ["body", "url"],
                    "msg": "the endpoint's address is not a public one",
                    "type": NOT_PUBLIC_ERROR,
                }
            ],
        )


def _context(tenant_id: str, endpoint_id: str) -> str:
    return f"omnisdk webhook secret v1 {tenant_id} {endpoint_id}"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def view(row: Any, secret: str | None = None) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id, url=row.url, kinds=list(row.kinds), created_at=row.created_at, secret=secret
    )


async def create(
    conn: AsyncConnection,
    sealer: Sealer,
    tenant_id: str,
    body: WebhookEndpointIn,
    now: datetime,
    *,
    allow_private_networks: bool | None = None,
) -> WebhookEndpoint:
    """Add an endpoint; one on a private network only if allowed (None: as the process's
    settings say)."""
    if not private_networks_allowed(allow_private_networks):
        refuse_private_url(body.url)
    endpoint_id = new_id("whe", 8)
    secret = new_secret()
    values = {
        "tenant_id": tenant_id,
        "id": endpoint_id,
        "url": body.url,
        "kinds": [str(kind) for kind in body.kinds],
        "sealed_secret": sealer.seal(secret.encode(), _context(tenant_id, endpoint_id)),
        "created_at": now,
        "disabled_at": None,
    }
    await conn.execute(webhook_endpoints.insert().values(**values))
    row = (
        await conn.execute(
            select(webhook_endpoints).where(
                webhook_endpoints.c.tenant_id == tenant_id, webhook_endpoints.c.id == endpoint_id
            )
        )
    ).one()
    return view(row, secret)


async def list_all(conn: AsyncConnection, tenant_id: str) -> list[WebhookEndpoint]:
    rows = await conn.execute(
        select(webhook_endpoints)
        .where(
            webhook_endpoints.c.tenant_id == tenant_id, webhook_endpoints.c.disabled_at.is_(None)
        )
        .order_by(webhook_endpoints.c.created_at)
    )
    return [view(row) for row in rows]


async def disable(
    conn: AsyncConnection, tenant_id: str, endpoint_id: str, now: datetime
) -> tuple[WebhookEndpoint, bool]:
    """Stop sending to an endpoint: (it, whether this call did; False: it was already)."""
    where = (webhook_endpoints.c.tenant_id == tenant_id, webhook_endpoints.c.id == endpoint_id)
    row = (await conn.execute(select(webhook_endpoints).where(*where))).first()
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no webhook endpoint {endpoint_id!r}")
    still = webhook_endpoints.c.disabled_at.is_(None)
    done = await conn.execute(
        update(webhook_endpoints).where(*where, still).values(disabled_at=now)
    )
    return view(row), bool(done.rowcount)


@dataclass(frozen=True)
class Target:
    """Where one message goes, and the key it is signed with."""

    endpoint_id: str
    url: str
    signer: Webhook


async def targets(conn: AsyncConnection, sealer: Sealer, tenant_id: str, kind: str) -> list[Target]:
    """The tenant's live endpoints that take messages of `kind`."""
    rows = await conn.execute(
        select(webhook_endpoints)
        .where(
            webhook_endpoints.c.tenant_id == tenant_id, webhook_endpoints.c.disabled_at.is_(None)
        )
        .order_by(webhook_endpoints.c.created_at)
    )
    found = []
    for row in rows:
        if row.kinds and kind not in row.kinds:
            continue
        secret = sealer.unseal(bytes(row.sealed_secret), _context(tenant_id, row.id)).decode()
        found.append(Target(row.id, row.url, Webhook(secret)))
    return found


def signed_request(
    target: Target, message_id: str, body: dict[str, Any], at: datetime
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of a webhook, signed as the Standard Webhooks specification says."""
    content = orjson.dumps(body)
    signature = target.signer.sign(message_id, at, content.decode())
    headers = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": signature,
    }
    return content, headers
