"""The scale bench's baseline server: sign-ins one at a time per tenant, as before issue 21.

Python imports this module at start-up when its directory is on PYTHONPATH (bench/scale/
run.py puts it there for the baseline servers only). It puts back the tenant-wide identity
lock that `identify` took before issue 21 (an exclusive PostgreSQL advisory lock held to the
end of the transaction), in front of today's code, so the sign-in storm measures what that
lock costs at 10 M customers on the same database, in the same run. Nothing else changes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from server_stub.services import identity

_TENANT_LOCK = text("SELECT pg_advisory_xact_lock(hashtext(:key))")
_identify = identity.identify


async def _identify_one_at_a_time(conn: Any, context: Any, *args: Any, **kwargs: Any) -> Any:
    await conn.execute(_TENANT_LOCK, {"key": f"identity:{context.tenant_id}"})
    return await _identify(conn, context, *args, **kwargs)


identity.identify = _identify_one_at_a_time
