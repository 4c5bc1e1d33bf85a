"""The shop's webhook endpoints and the signed requests that hand it messages.

Messages reach the shop as webhooks signed by the Standard Webhooks specification (the
`standardwebhooks` library): headers `webhook-id` (the message id, the same on every retry, so
the receiver drops a redelivery), `webhook-timestamp` and `webhook-signature` (HMAC-SHA-256 of
`id.timestamp.body` with the endpoint's secret). The secret is shown once, when the endpoint
is made, and stored sealed with the server's secret key.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection
from standardwebhooks.webhooks import Webhook

from omnisdk.core.problems import ProblemType
from omnisdk.notification_models import WebhookEndpoint, WebhookEndpointIn
from server_stub.errors import Problem
from server_stub.ids import new_id
from server_stub.sealing import Sealer
from server_stub.storage.tables import webhook_endpoints

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 24


def _context(tenant_id: str, endpoint_id: str) -> str:
    return f"omnisdk webhook secret v1 {tenant_id} {endpoint_id}"


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(os.urandom(SECRET_BYTES)).decode()


def view(row: Any, secret: str | None = None) -> WebhookEndpoint:
    return WebhookEndpoint(
        id=row.id, url=row.url, kinds=list(row.kinds), created_at=row.created_at, secret=secret
    )


async def create(
    conn: AsyncConnection, sealer: Sealer, tenant_id: str, body: WebhookEndpointIn, now: datetime
) -> WebhookEndpoint:
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
