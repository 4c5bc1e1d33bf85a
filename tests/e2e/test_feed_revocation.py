"""An open change feed ends soon after its key is revoked: a stream authenticates when it
opens, and looks at its key again while it stays open."""

from __future__ import annotations

import httpx
import pytest

from omnisdk.testing import ServerProcess


@pytest.mark.parametrize("path", ["/v1/changes", "/v1/customers/{customer}/changes"])
def test_an_open_feed_ends_when_its_key_is_revoked(
    server_process: ServerProcess, path: str
) -> None:
    shop = server_process.create_tenant("revoking shop")
    admin = {"Authorization": f"Bearer {shop.key('admin')}"}
    with httpx.Client(base_url=server_process.url, timeout=30) as http:
        created = http.post("/v1/keys", json={"channel": "web"}, headers=admin).json()
        watcher = {"Authorization": f"Bearer {created['secret']}"}
        customer = http.post(
            "/v1/identity/identify", json={"anonymous_id": "feed-device"}, headers=watcher
        ).json()["customer_id"]
        with http.stream("GET", path.format(customer=customer), headers=watcher) as feed:
            assert feed.status_code == 200
            chunks = feed.iter_text()
            assert next(chunks).startswith(": watching")
            revoked = http.delete(f"/v1/keys/{created['key_id']}", headers=admin)
            assert revoked.status_code == 200
            # The stream ends by itself (a read timeout of 30 s would fail the test instead).
            rest = "".join(chunks)
        assert "event:" not in rest
        again = http.get(path.format(customer=customer), headers=watcher)
        assert again.status_code == 401
