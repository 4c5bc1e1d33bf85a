"""The reference server's till page keeps its tills signed in across a restart when it has a
data directory (OMNISDK_POS_DATA_DIR), as a shop's own POS backend with a data_dir does."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from omnisdk.testing import ServerProcess
from tests.conftest import DATABASES, PostgresDatabases, new_database_url


def test_a_restarted_server_keeps_its_tills_signed_in(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    env = {"OMNISDK_POS_DATA_DIR": str(tmp_path / "pos")}
    first = ServerProcess(url, env=env).start()
    shop = first.create_tenant()
    key, address, secret = shop.key("pos"), first.url, first.secret_key
    with httpx.Client(base_url=address) as http:
        signed_in = http.post(
            "/pos/login", data={"api_key": key, "store_id": "s-1", "till_id": "t-1"}
        )
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/pos/returns"
        cookies = dict(http.cookies)
    first.stop()
    port = int(address.rsplit(":", 1)[1])
    with ServerProcess(url, env=env, port=port, secret_key=secret):
        with httpx.Client(base_url=address, cookies=cookies) as http:
            page = http.get("/pos/returns")
            assert page.status_code == 200 and 'id="code"' in page.text
        with httpx.Client(base_url=address) as stranger:
            assert stranger.get("/pos/returns").status_code == 303


def sign_in(address: str, key: str, store_id: str, till_id: str) -> dict[str, str]:
    with httpx.Client(base_url=address) as http:
        form = {"api_key": key, "store_id": store_id, "till_id": till_id}
        answer = http.post("/pos/login", data=form)
        assert answer.status_code == 303 and answer.headers["location"] == "/pos/returns"
        return dict(http.cookies)


def signed_in(address: str, cookies: dict[str, str]) -> bool:
    with httpx.Client(base_url=address, cookies=cookies) as http:
        return http.get("/pos/returns").status_code == 200


def test_two_station_processes_sharing_a_data_directory_keep_each_others_tills(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'shop.sqlite3'}"
    env = {"OMNISDK_POS_DATA_DIR": str(tmp_path / "pos")}
    first = ServerProcess(url, env=env).start()
    shop = first.create_tenant()
    with ServerProcess(url, env=env, secret_key=first.secret_key) as second:
        till_1 = sign_in(first.url, shop.key("pos"), "s-1", "t-1")
        till_2 = sign_in(second.url, shop.key("pos"), "s-1", "t-2")
        till_3 = sign_in(first.url, shop.key("pos"), "s-1", "t-3")
        assert signed_in(second.url, till_1) and signed_in(first.url, till_2)
        with httpx.Client(base_url=second.url, cookies=till_3) as http:  # signs out at second
            page = http.get("/pos/returns")
            csrf = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
            assert http.post("/pos/logout", data={"csrf": csrf}).status_code == 303
        assert not signed_in(first.url, till_3)  # ... and so at first
    first.stop()
    with ServerProcess(url, env=env, secret_key=first.secret_key) as restarted:
        assert signed_in(restarted.url, till_1) and signed_in(restarted.url, till_2)
        assert not signed_in(restarted.url, till_3)


def test_tills_of_two_shops_with_one_name_keep_their_data_apart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'shops.sqlite3'}"
    pos = tmp_path / "pos"
    with ServerProcess(url, env={"OMNISDK_POS_DATA_DIR": str(pos)}) as server:
        shops = [server.create_tenant(), server.create_tenant()]
        for shop in shops:
            sign_in(server.url, shop.key("pos"), "s-1", "till-1")
            sign_in(server.url, shop.key("pos"), "s-2", "till-1")
    folders = sorted(pos.glob("tills/*/*/till-1"))
    assert len(folders) == 4
    issuers = [json.loads((f / "return-keys.json").read_text())["issuer"] for f in folders]
    assert sorted(issuers) == sorted(shop.id for shop in shops for _ in (1, 2))
    assert all(f.parent.parent.name == issuer for f, issuer in zip(folders, issuers, strict=True))


def test_a_host_that_mounts_the_station_closes_its_tills_clients(tmp_path: Path) -> None:
    from contextlib import asynccontextmanager

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from server_stub.pos import StationConfig, close_station, create_station

    with ServerProcess(f"sqlite:///{tmp_path / 'shop.sqlite3'}") as server:
        shop = server.create_tenant()
        station = create_station(StationConfig(server_url=server.url, data_dir=tmp_path / "pos"))

        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            yield
            await close_station(station)

        host = FastAPI(lifespan=lifespan)
        host.mount("/pos", station)
        with TestClient(host, base_url="http://testserver") as http:
            form = {"api_key": shop.key("pos"), "store_id": "s-1", "till_id": "t-1"}
            assert http.post("/pos/login", data=form, follow_redirects=False).status_code == 303
            session = station.state.tills.get(http.cookies["omnisdk_till"])
            client = session.client
            assert http.get("/pos/returns").status_code == 200
            assert not client._station_http.is_closed
        assert client._station_http.is_closed and session.client is None


def form_value(page: str, name: str) -> str:
    return page.split(f'name="{name}" value="', 1)[1].split('"', 1)[0]


@pytest.mark.parametrize("kind", DATABASES)
def test_a_review_shown_by_one_station_process_is_confirmed_through_another(
    kind: str, tmp_path: Path, postgres_databases: PostgresDatabases | None
) -> None:
    """As under `uvicorn --workers 2`: each request of one clerk may reach another process."""
    url = new_database_url(kind, tmp_path, postgres_databases)
    env = {"OMNISDK_POS_DATA_DIR": str(tmp_path / "pos")}
    with ServerProcess(url, env=env) as first:
        shop = first.create_tenant()
        with shop.client("web") as web:
            lines = [{"line_id": "1", "sku": "TR2-38", "quantity": 2, "unit_price": 89.0}]
            token = web.returns.issue("W1", lines, refund_methods=["card"]).token
        cookies = sign_in(first.url, shop.key("pos"), "s-1", "t-1")
        with ServerProcess(url, env=env, secret_key=first.secret_key) as second:
            one = httpx.Client(base_url=first.url, cookies=cookies)
            two = httpx.Client(base_url=second.url, cookies=cookies)
            csrf = form_value(one.get("/pos/returns").text, "csrf")
            order = {"csrf": csrf, "token": token, "qty-1": "1", "refund_method": "card"}
            review = one.post("/pos/returns/review", data=order)
            assert review.status_code == 200, review.text
            confirm = {"csrf": csrf, "transaction": form_value(review.text, "transaction")}
            confirmed = two.post("/pos/returns/confirm", data=confirm)
            assert confirmed.status_code == 303, confirmed.text
            receipt = one.get(confirmed.headers["location"])
            assert receipt.status_code == 200 and "W1" in receipt.text
            again = one.post("/pos/returns/confirm", data=confirm)  # resent to the other
            assert again.headers["location"] == confirmed.headers["location"]
            one.close()
            two.close()
        with shop.client("pos") as till:
            status = till.returns.status(token)
        assert status.lines[0].remaining == 1 and len(status.redemptions) == 1
