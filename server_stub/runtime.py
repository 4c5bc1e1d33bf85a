"""What one server process holds while it runs: settings, storage, key cache, metrics."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.auth import KeyCache
from server_stub.budget import RequestBudget
from server_stub.observability import Metrics
from server_stub.sealing import Sealer
from server_stub.services.changes import ChangeHub
from server_stub.services.jobs import JobRunner
from server_stub.services.signing_keys import SigningKeys
from server_stub.services.tenant_context import TenantContext, TenantContexts
from server_stub.settings import Settings
from server_stub.storage.database import Database


@dataclass
class Runtime:
    settings: Settings
    database: Database
    key_cache: KeyCache
    metrics: Metrics
    tenants: TenantContexts
    signing_keys: SigningKeys
    changes: ChangeHub
    budget: RequestBudget
    jobs: JobRunner
    qr_images: dict[tuple[str, str, str, str], bytes] = field(default_factory=dict)
    sealer: Sealer | None = None  # the server's secret key (webhook secrets are sealed with it)


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


async def tenant_context(request: Request, conn: AsyncConnection) -> TenantContext:
    """The calling tenant's identity context (secret and settings)."""
    return await runtime_of(request).tenants.get(conn, request.state.principal.tenant_id)
