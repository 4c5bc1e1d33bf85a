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


def client(key: str, folder: Path | None) -> omnisdk.AsyncClient:
    return omnisdk.AsyncClient("http://127.0.0.1:9", key, channel="pos", data_dir=folder)


def test_sessions_are_kept_on_disk_by_hash_only_and_readable_by_the_owner(
    tmp_path: Path,
) -> None:
    sessions = TillSessions(tmp_path, client)
    sessions.add("cookie-1", TillSession("key-1", "s-1", "t-1", "csrf", time.time() + 60))
    sessions.add("cookie-2", TillSession("key-2", "s-1", "t-2", "csrf", time.time() - 1))
    kept = tmp_path / "till-sessions" / f"{cookie_hash('cookie-1')}.json"
    assert "cookie-1" not in kept.read_text() and json.loads(kept.read_text())["api_key"] == "key-1"
    assert not any("cookie-1" in path.name for path in tmp_path.rglob("*"))
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    restarted = TillSessions(tmp_path, client)
    session = restarted.get("cookie-1")
    assert session is not None and session.api_key == "key-1" and session.client is not None
    assert restarted.get("cookie-2") is None  # expired
    asyncio.run(restarted.close())
    kept.write_text("{not json")
    assert TillSessions(tmp_path, client).get("cookie-1") is None  # signed out, not broken


def test_a_till_signed_out_by_one_station_process_is_signed_out_in_the_others(
    tmp_path: Path,
) -> None:
    first, second = TillSessions(tmp_path, client), TillSessions(tmp_path, client)
    first.add("cookie-1", TillSession("key-1", "s-1", "t-1", "csrf", time.time() + 60))
    second.add("cookie-2", TillSession("key-2", "s-1", "t-2", "csrf", time.time() + 60))
    assert first.get("cookie-2") is not None and second.get("cookie-1") is not None
    asyncio.run(second.remove("cookie-1"))
    assert first.get("cookie-1") is None
    assert TillSessions(tmp_path, client).get("cookie-2") is not None
    asyncio.run(first.close())
    asyncio.run(second.close())


def legacy_till(data_dir: Path, till_id: str, shop: str) -> Path:
    folder = data_dir / till_id
    folder.mkdir(parents=True)
    (folder / "return-keys.json").write_text(json.dumps({"issuer": shop, "keys": []}))
    (folder / "outbox.sqlite3").write_bytes(b"pending returns")
    return folder


def test_sessions_and_till_folders_of_the_older_layout_are_moved_at_start(
    tmp_path: Path,
) -> None:
    legacy_till(tmp_path, "t-1", "shop-a")
    stored = {
        cookie_hash("cookie-1"): {
            "api_key": "key-1",
            "store_id": "s-1",
            "till_id": "t-1",
            "csrf": "csrf",
            "expires": time.time() + 60,
        }
    }
    (tmp_path / "till-sessions.json").write_text(json.dumps(stored))
    sessions = TillSessions(tmp_path, client)
    session = sessions.get("cookie-1")
    assert session is not None and session.tenant_id == "shop-a"
    moved = tmp_path / "tills" / "shop-a" / "s-1" / "t-1"
    assert (moved / "outbox.sqlite3").read_bytes() == b"pending returns"
    assert not (tmp_path / "t-1").exists() and not (tmp_path / "till-sessions.json").exists()
    asyncio.run(sessions.close())


def test_an_older_till_folder_goes_to_its_own_shop_only(tmp_path: Path) -> None:
    legacy_till(tmp_path, "t-1", "shop-a")
    sessions = TillSessions(tmp_path, client)
    sessions.adopt_legacy_folder("shop-b", "s-1", "t-1")  # another shop's till-1
    assert (tmp_path / "t-1").exists()
    sessions.adopt_legacy_folder("shop-a", "s-2", "t-1")
    assert (tmp_path / "tills" / "shop-a" / "s-2" / "t-1" / "outbox.sqlite3").exists()
    assert sessions.folder("..", "s-1", "/etc") == sessions.folder("..", "s-1", "/etc")
    outside = sessions.folder("..", "..", "..")
    assert outside is not None and outside.resolve().is_relative_to(tmp_path / "tills")


async def test_a_post_from_another_site_is_refused_sign_in_included() -> None:
    read: list[int] = []
    station = gate(True, read)
    for path in ("/login", "/enrol", "/returns/confirm"):
        foreign = await post(station, path, b"x", origin="https://evil.example", host="station")
        assert foreign.status_code == 403
        sandboxed = await post(station, path, b"x", origin="null", host="station")
        assert sandboxed.status_code == 403
        fetched = await post(station, path, b"x", **{"sec-fetch-site": "cross-site"})
        assert fetched.status_code == 403
    assert read == []
    own = await post(station, "/login", b"x", origin="http://station", host="station")
    assert own.status_code == 200 and read == [1]
    proxied = {"origin": "https://pos.shop", "host": "backend:8000", "x-forwarded-host": "pos.shop"}
    assert (await post(station, "/login", b"x", **proxied)).status_code == 200
    # Chromium's own form post: Fetch Metadata decides, whatever Origin says.
    ours = {"sec-fetch-site": "same-origin", "origin": "null"}
    assert (await post(station, "/login", b"x", **ours)).status_code == 200
    sibling = {"sec-fetch-site": "same-site", "origin": "https://www.shop.example"}
    assert (await post(station, "/login", b"x", **sibling)).status_code == 403


def test_a_tills_receipts_on_disk_keep_every_pending_one_and_the_last_others(
    tmp_path: Path,
) -> None:
    from datetime import UTC, datetime

    from omnisdk.models import Redemption
    from server_stub.pos.tills import KEPT_RECEIPTS, LineView, Receipt, Review, TillWork

    work = TillWork(tmp_path)
    line = LineView("1", "TR2-38", "Trail runner", 2, None, None)

    def receipt(transaction: str, status: str) -> Receipt:
        review = Review(transaction, "RT1:X", "A1", {"1": 1}, "card", (line,), None, 80.0)
        redemption = Redemption.model_validate(
            {
                "redemption_id": f"r-{transaction}",
                "token_id": "00",
                "order_ref": "A1",
                "till_transaction_id": transaction,
                "store_id": "s-1",
                "refund_method": "card",
                "value": 80.0,
                "lines": [],
                "status": status,
                "created_at": datetime.now(UTC).isoformat(),
            }
        )
        return Receipt(review, redemption)

    work.keep_review(receipt("t-pending", "pending").review)
    assert work.review("t-pending") == receipt("t-pending", "pending").review
    work.keep_receipt(receipt("t-pending", "pending"))
    assert work.review("t-pending") is None  # done with
    for n in range(KEPT_RECEIPTS + 5):
        work.keep_receipt(receipt(f"t-{n}", "confirmed"))
    assert work.receipt("t-pending") is not None  # never dropped while pending
    assert work.receipt("t-0") is None and work.receipt(f"t-{KEPT_RECEIPTS + 4}") is not None
    assert work.receipt("../../etc/passwd") is None


async def test_the_doors_refusals_speak_the_clerks_language() -> None:
    from server_stub.pos.language import Words

    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("refused before the station")

    polish = Gate(app, lambda scope: True, photo_bytes=10, words=lambda scope: Words("pl"))
    too_large = await post(polish, "/returns/photo", b"x" * 11)
    assert too_large.status_code == 413 and "Plik lub formularz jest za duży" in too_large.text
    assert 'lang="pl"' in too_large.text
    foreign = await post(polish, "/returns/scan", b"x", **{"sec-fetch-site": "cross-site"})
    assert foreign.status_code == 403 and "innej strony" in foreign.text
