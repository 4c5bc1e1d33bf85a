"""Dependencies the domain routers share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncConnection

from server_stub.routing import connection
from server_stub.runtime import tenant_context
from server_stub.services.tenant_context import TenantContext

Connection = Annotated[AsyncConnection, Depends(connection)]


async def _context(request: Request, conn: Connection) -> TenantContext:
    return await tenant_context(request, conn)


Context = Annotated[TenantContext, Depends(_context)]
