"""Every /v1 endpoint authenticates and checks one scope; no tenant sees another's data."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter

from omnisdk.core.channels import Channel, Scope
from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from server_stub.app import API_ROUTERS, create_app
from server_stub.auth import SCOPE_EXTENSION
from server_stub.routing import ApiRoute
from server_stub.services import keys
from server_stub.settings import Settings
from tests.server.conftest import Harness, ShopForTest


@pytest.fixture(scope="module")
def server_app_openapi() -> dict[str, Any]:
    return create_app(Settings(database_url="sqlite:///unused.sqlite3")).openapi()


def test_every_v1_route_authenticates_and_declares_its_scope() -> None:
    routes = [route for router in API_ROUTERS for route in router.routes]
    assert routes
    for route in routes:
        assert isinstance(route, ApiRoute), f"{route.path} does not authenticate"
        assert route.path.startswith("/v1/"), route.path
        assert route.openapi_extra is not None
        assert route.openapi_extra[SCOPE_EXTENSION] == route.required_scope.value


def test_a_route_without_a_scope_cannot_be_declared() -> None:
    router = APIRouter(route_class=ApiRoute)
    with pytest.raises(TypeError, match="declares no scope"):

        @router.get("/v1/forgotten")
        async def forgotten() -> None:
            return None


def test_openapi_shows_each_operations_scope(server_app_openapi: dict[str, Any]) -> None:
    ping = server_app_openapi["paths"]["/v1/system/ping"]["post"]
    assert ping[SCOPE_EXTENSION] == Scope.SYSTEM_WRITE


async def test_request_without_key_is_refused_with_problem(server: Harness) -> None:
    response = await server.http.get("/v1/system/whoami")
    assert response.status_code == 401
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["type"] == ProblemType.AUTHENTICATION_REQUIRED
    assert body["status"] == 401
    assert body["request_id"] == response.headers["x-request-id"]


async def test_non_bearer_authorization_is_refused(server: Harness) -> None:
    response = await server.http.get("/v1/system/whoami", headers={"Authorization": "Basic Zm9v"})
    assert response.status_code == 401
    assert response.json()["type"] == ProblemType.AUTHENTICATION_REQUIRED


async def test_unknown_and_malformed_keys_are_refused_alike(
    server: Harness, shop: ShopForTest
) -> None:
    real = shop.keys[Channel.WEB]
    forged = real[:-4] + ("AAAA" if not real.endswith("AAAA") else "BBBB")
    for key in ("nonsense", "osk_web_0000000000000000_" + "x" * 43, forged):
        response = await server.http.get(
            "/v1/system/whoami", headers={"Authorization": f"Bearer {key}"}
        )
        assert response.status_code == 401, key
        assert response.json()["type"] == ProblemType.INVALID_API_KEY


async def test_key_works_for_its_own_tenant(shop: ShopForTest) -> None:
    response = await shop.request("GET", "/v1/system/whoami", Channel.POS)
    assert response.status_code == 200
    body = response.json()
    assert body["tenant_id"] == shop.id
    assert body["channel"] == "pos"
    assert Scope.RETURNS_REDEEM in body["scopes"]


async def test_web_key_lacks_admin_scope(shop: ShopForTest) -> None:
    response = await shop.request("GET", "/v1/keys", Channel.WEB)
    assert response.status_code == 403
    body = response.json()
    assert body["type"] == ProblemType.INSUFFICIENT_SCOPE
    assert body["required_scope"] == Scope.KEYS_MANAGE


async def test_key_limited_to_fewer_scopes_cannot_use_the_others(
    server: Harness, shop: ShopForTest
) -> None:
    read_only = await server.key_with_scopes(shop, Channel.WEB, {Scope.SYSTEM_READ})
    headers = {"Authorization": f"Bearer {read_only}"}
    assert (await server.http.get("/v1/system/whoami", headers=headers)).status_code == 200
    response = await server.http.post("/v1/system/ping", headers=headers, json={})
    assert response.status_code == 403
    assert response.json()["required_scope"] == Scope.SYSTEM_WRITE


async def test_channel_header_must_match_the_key(shop: ShopForTest) -> None:
    response = await shop.request(
        "GET", "/v1/system/whoami", Channel.WEB, headers={"X-Omnisdk-Channel": "pos"}
    )
    assert response.status_code == 403
    assert "web key" in response.json()["detail"]


async def test_other_tenants_key_is_not_found_and_untouched(server: Harness) -> None:
    alice, mallory = await server.shop("alice"), await server.shop("mallory")
    alice_keys = (await alice.request("GET", "/v1/keys")).json()["items"]
    victim = alice_keys[0]["key_id"]

    seen = await mallory.request("GET", f"/v1/keys/{victim}")
    revoked = await mallory.request("DELETE", f"/v1/keys/{victim}")
    assert seen.status_code == revoked.status_code == 404
    assert seen.json()["type"] == ProblemType.NOT_FOUND
    listed = (await mallory.request("GET", "/v1/keys")).json()["items"]
    assert victim not in {k["key_id"] for k in listed}
    still = await alice.request("GET", f"/v1/keys/{victim}")
    assert still.json()["revoked_at"] is None


async def test_revoked_key_stops_working_at_once(shop: ShopForTest) -> None:
    whoami = (await shop.request("GET", "/v1/system/whoami", Channel.APP)).json()
    assert (await shop.request("DELETE", f"/v1/keys/{whoami['key_id']}")).status_code == 200
    response = await shop.request("GET", "/v1/system/whoami", Channel.APP)
    assert response.status_code == 401
    assert response.json()["type"] == ProblemType.INVALID_API_KEY


async def test_created_key_secret_is_shown_once_and_never_listed(shop: ShopForTest) -> None:
    created = await shop.request("POST", "/v1/keys", json={"channel": "pos", "name": "till 7"})
    assert created.status_code == 201
    secret = created.json()["secret"]
    assert secret.startswith("osk_pos_")
    listing = await shop.request("GET", "/v1/keys")
    assert secret not in listing.text
    parsed = keys.parse(secret)
    assert parsed is not None and parsed.key_id == created.json()["key_id"]
    # The secret part may itself hold "_", so it is taken as the key's parser takes it.
    assert parsed.secret not in listing.text
    fetched = await shop.request("GET", f"/v1/keys/{created.json()['key_id']}")
    assert "secret" not in fetched.json()


async def test_key_cannot_be_given_scopes_beyond_its_channel(shop: ShopForTest) -> None:
    response = await shop.request(
        "POST", "/v1/keys", json={"channel": "web", "scopes": ["returns:redeem"]}
    )
    assert response.status_code == 422
    assert "returns:redeem" in response.json()["detail"]
