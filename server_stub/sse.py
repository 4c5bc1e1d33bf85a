"""Server-Sent Events over the change feed: replay from a position, then follow live."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import StreamingResponse

from server_stub.runtime import runtime_of

KEEPALIVE_SECONDS = 15.0

Reader = Callable[[AsyncConnection, int], Awaitable[list[Any]]]


def sse_stream(request: Request, topic: str, after: int, read: Reader) -> StreamingResponse:
    """Stream the rows `read` finds after each position as SSE (`id` is the change's seq,
    so a watcher resumes with Last-Event-ID); wait on `topic` when there is nothing new."""
    runtime = runtime_of(request)

    async def stream() -> AsyncIterator[str]:
        position = after
        yield ": watching\n\n"
        while not await request.is_disconnected():
            # Listen first, then read: a change committed in between still wakes us.
            async with runtime.changes.watching(topic) as woken:
                async with runtime.database.transaction(write=False) as reader:
                    rows = await read(reader, position)
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(woken.wait(), KEEPALIVE_SECONDS)
            for row in rows:
                position = row.seq
                yield f"id: {row.seq}\nevent: {row.kind}\ndata: {json.dumps(row.payload)}\n\n"
            if not rows:
                yield ": keepalive\n\n"

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-store"}
    )
