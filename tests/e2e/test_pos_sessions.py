"""The reference server's till page keeps its tills signed in across a restart when it has a
data directory (OMNISDK_POS_DATA_DIR), as a shop's own POS backend with a data_dir does."""

from __future__ import annotations

from pathlib import Path

import httpx

from omnisdk.testing import ServerProcess


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
