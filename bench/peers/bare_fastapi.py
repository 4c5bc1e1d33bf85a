"""The ceiling: a bare FastAPI endpoint taking the same pydantic body as our no-op write.

Run as `python -m bench.peers.bare_fastapi PORT`, with the uvicorn settings that
`omnisdk-server serve` uses, so the only difference measured is our stack.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

import uvicorn
from fastapi import FastAPI

from omnisdk.models import PingRequest, Pong

app = FastAPI()


@app.post("/v1/system/ping")
async def ping(body: PingRequest) -> Pong:
    return Pong(
        message=body.message,
        sequence=body.sequence,
        tenant_id="bare",
        channel="web",
        received_at=datetime.now(UTC),
    )


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        workers=1,
        access_log=False,
        log_config=None,
        server_header=False,
    )
