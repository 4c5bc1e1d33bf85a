"""The station's door and its till sessions, without a browser: bounded bodies, nothing read
from anyone not signed in, and sessions kept on disk without the cookies themselves."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx

import omnisdk
from server_stub.pos.gate import Gate
from server_stub.pos.tills import TillSession, TillSessions, cookie_hash


def gate(signed_in: bool, read: list[int]) -> Gate:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        size, more = 0, True
        while more:
            message = await receive()
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        read.append(size)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return Gate(app, signed_in=lambda scope: signed_in, photo_bytes=100, form_bytes=50)


async def post(app: Gate, path: str, content: Any, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://station") as http:
        return await http.post(path, content=content, headers=headers)


async def test_a_post_from_no_till_is_answered_before_its_body_is_read() -> None:
    read: list[int] = []
    answer = await post(gate(False, read), "/returns/photo", b"x" * 10_000)
    assert answer.status_code == 303 and answer.headers["location"] == "/login"
    assert read == []
    assert "script-src 'self'" in answer.headers["content-security-policy"]


async def test_bodies_over_their_route_limit_are_refused() -> None:
    read: list[int] = []
    assert (await post(gate(True, read), "/returns/photo", b"x" * 100)).status_code == 200
    assert (await post(gate(True, read), "/returns/photo", b"x" * 101)).status_code == 413
    assert (await post(gate(True, read), "/returns/scan", b"x" * 51)).status_code == 413

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for _ in range(5):
            yield b"x" * 30

    assert (await post(gate(True, read), "/returns/photo", chunks())).status_code == 413
    assert read == [100]  # only the body within its limit reached the station


def test_sessions_are_kept_on_disk_by_hash_only_and_readable_by_the_owner(
    tmp_path: Path,
) -> None:
    path = tmp_path / "till-sessions.json"

    def client(key: str, till: str) -> omnisdk.AsyncClient:
        return omnisdk.AsyncClient("http://127.0.0.1:9", key, channel="pos")

    sessions = TillSessions(path, client)
    sessions.add("cookie-1", TillSession("key-1", "s-1", "t-1", "csrf", time.time() + 60))
    sessions.add("cookie-2", TillSession("key-2", "s-1", "t-2", "csrf", time.time() - 1))
    stored = path.read_text()
    assert "cookie-1" not in stored and cookie_hash("cookie-1") in json.loads(stored)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    restarted = TillSessions(path, client)
    session = restarted.get("cookie-1")
    assert session is not None and session.api_key == "key-1" and session.client is not None
    assert restarted.get("cookie-2") is None  # expired
    asyncio.run(restarted.close())
    path.write_text("{not json")
    assert TillSessions(path, client).get("cookie-1") is None  # signed out, not broken
