"""Server-Sent Events over the change feed: replay from a position, then follow live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import StreamingResponse

from omnisdk.models import Principal
from server_stub.auth import principal_of, still_valid
from server_stub.runtime import Runtime, runtime_of
from server_stub.services import changes

KEEPALIVE_SECONDS = 15.0
KEY_RECHECK_SECONDS = 2.0
LARGEST_POSITION = 2**63 - 1  # positions are BIGINT

Reader = Callable[[AsyncConnection, int], Awaitable[changes.FeedPage]]


def sse_stream(request: Request, topic: str, after: int, read: Reader) -> StreamingResponse:
    """Stream the rows `read` finds after each position as SSE (`id` is the change's feed
    position, so a watcher resumes with Last-Event-ID); wait on `topic` when there is nothing
    new. A position the feed no longer keeps gets a `resync` event, then the stream goes on
    from the newest position."""
    runtime = runtime_of(request)
    principal = principal_of(request)

    async def stream() -> AsyncIterator[str]:
        position = after
        # The id alone (no data) is no event, but it is where the watcher stands: one that
        # reconnects before any change arrived resumes here rather than at the newest.
        yield f": watching\nid: {position}\n\n"
        while not await request.is_disconnected():
            if not await still_valid(principal, runtime.database, runtime.key_cache):
                return  # the key was revoked (or its tenant removed) since the stream opened
            # Listen first, then read: a change committed in between still wakes us.
            async with runtime.changes.watching(topic) as woken:
                async with runtime.database.single_reads() as reader:
                    page = await read(reader, position)
                rows = page.rows
                if page.horizon.resync_needed(position):
                    position = page.horizon.newest
                    yield _event(position, changes.RESYNC, changes.resync_event(position))
                    continue
                if not rows:
                    await _wait(woken, principal, runtime)
            for row in rows:
                position = row.position
                yield _event(row.position, row.kind, row.payload)
            if not rows:
                yield ": keepalive\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )


async def _wait(woken: asyncio.Event, principal: Principal, runtime: Runtime) -> None:
    """Until a change wakes the stream, or the keepalive is due, or the key is no longer
    valid: a stream authenticates once when it opens, so it looks again every
    `KEY_RECHECK_SECONDS` (plus the key cache's lifetime in other processes)."""
    deadline = time.monotonic() + KEEPALIVE_SECONDS
    while (remaining := deadline - time.monotonic()) > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), min(remaining, KEY_RECHECK_SECONDS))
            return
        if not await still_valid(principal, runtime.database, runtime.key_cache):
            return


async def resume_position(conn: AsyncConnection, tenant_id: str, last_event_id: str | None) -> int:
    """Where a watcher starts: after the change it saw last, or (a new one) at the newest."""
    if last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit():
        # Beyond any position a tenant can reach: the stream answers with a resync. (Digits
        # beyond a BIGINT's are not converted: int() of thousands of digits raises.)
        if len(last_event_id) > len(str(LARGEST_POSITION)):
            return LARGEST_POSITION
        return min(int(last_event_id), LARGEST_POSITION)
    return (await changes.horizon(conn, tenant_id)).newest


def _event(position: int, kind: str, data: Any) -> str:
    return f"id: {position}\nevent: {kind}\ndata: {json.dumps(data)}\n\n"
