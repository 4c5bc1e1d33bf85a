"""A collector that takes what analytics SDKs send (any POST path) and counts the events.

Stands in for Segment's and PostHog's ingestion endpoints so that their SDKs can be measured
delivering to a local server, as ours does. `GET /count` answers how many events arrived.
Run as `python -m bench.peers.sink PORT`.
"""

from __future__ import annotations

import gzip
import json
import sys
from typing import Any

import uvicorn

received = {"events": 0, "requests": 0}


def _count(payload: Any) -> int:
    if isinstance(payload, dict) and isinstance(payload.get("batch"), list):
        return len(payload["batch"])
    if isinstance(payload, list):
        return len(payload)
    return 1


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["method"] == "POST":
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        try:
            received["events"] += _count(json.loads(body))
        except ValueError:
            received["events"] += 0
        received["requests"] += 1
        answer = b'{"status": 1}'
    else:
        answer = json.dumps(received).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": answer})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
