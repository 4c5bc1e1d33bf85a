"""Bad input gets a problem+json answer with a stable type, and stores nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from server_stub.observability import flush_logs
from tests.server.conftest import Harness, ShopForTest, start_harness


async def _key_count(shop: ShopForTest) -> int:
    return len((await shop.request("GET", "/v1/keys")).json()["items"])


async def test_malformed_json_is_400_and_stores_nothing(shop: ShopForTest) -> None:
    before = await _key_count(shop)
    response = await shop.request(
        "POST",
        "/v1/keys",
        content=b'{"channel": "pos"',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["type"] == ProblemType.MALFORMED_JSON
    assert await _key_count(shop) == before


async def test_body_that_is_not_json_is_415(shop: ShopForTest) -> None:
    response = await shop.request(
        "POST", "/v1/keys", content=b"channel=pos", headers={"Content-Type": "text/plain"}
    )
    assert response.status_code == 415
    assert response.json()["type"] == ProblemType.UNSUPPORTED_MEDIA_TYPE


async def test_invalid_fields_are_listed_without_echoing_values(shop: ShopForTest) -> None:
    secret_looking = "amy@example.com"
    response = await shop.request("POST", "/v1/keys", json={"channel": secret_looking, "name": 5})
    assert response.status_code == 422
    body = response.json()
    assert body["type"] == ProblemType.VALIDATION_ERROR
    assert {tuple(e["loc"]) for e in body["errors"]} == {("body", "channel"), ("body", "name")}
    assert secret_looking not in response.text


async def test_declared_oversized_body_is_413(migrated_database_url: str) -> None:
    async for server in start_harness(migrated_database_url, max_body_bytes=1024):
        shop = await server.shop()
        before = await _key_count(shop)
        response = await shop.request(
            "POST", "/v1/keys", json={"channel": "pos", "name": "x" * 2000}
        )
        assert response.status_code == 413
        assert response.json()["type"] == ProblemType.PAYLOAD_TOO_LARGE
        assert await _key_count(shop) == before


async def test_streamed_oversized_body_is_413(migrated_database_url: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"channel": "pos", "name": "'
        for _ in range(8):
            yield b"y" * 512
        yield b'"}'

    async for server in start_harness(migrated_database_url, max_body_bytes=1024):
        shop = await server.shop()
        response = await shop.request(
            "POST", "/v1/keys", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json()["type"] == ProblemType.PAYLOAD_TOO_LARGE


async def test_unknown_path_and_wrong_method_are_problems(
    server: Harness, shop: ShopForTest
) -> None:
    missing = await server.http.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["type"] == ProblemType.NOT_FOUND
    wrong = await shop.request("PUT", "/v1/system/whoami")
    assert wrong.status_code == 405
    assert wrong.json()["type"] == ProblemType.METHOD_NOT_ALLOWED


async def test_unknown_key_id_is_404_problem(shop: ShopForTest) -> None:
    response = await shop.request("DELETE", "/v1/keys/key_0000000000000000")
    assert response.status_code == 404
    assert response.json()["type"] == ProblemType.NOT_FOUND


async def test_garbage_inputs_never_get_a_5xx(shop: ShopForTest) -> None:
    bodies: list[bytes] = [
        b"",
        b"null",
        b"[]",
        b'"x"',
        b"{}",
        b'{"channel": null}',
        b"\xff\xfe",
        b'{"channel": "pos", "scopes": "all"}',
        b"1e999",
        b'{"a":' * 50,
    ]
    for path in ("/v1/keys", "/v1/system/ping"):
        for body in bodies:
            response = await shop.request(
                "POST", path, content=body, headers={"Content-Type": "application/json"}
            )
            assert response.status_code < 500, (path, body, response.text)
            assert response.headers["content-type"] in {PROBLEM_CONTENT_TYPE, "application/json"}


async def test_request_id_is_echoed_when_sane_and_replaced_when_not(server: Harness) -> None:
    sane = await server.http.get("/healthz", headers={"X-Request-Id": "till-7:req-0001"})
    assert sane.headers["x-request-id"] == "till-7:req-0001"
    odd = await server.http.get("/healthz", headers={"X-Request-Id": "<script>"})
    assert odd.headers["x-request-id"] != "<script>"
    assert len(odd.headers["x-request-id"]) == 32


def test_problem_types_are_unique_and_well_formed() -> None:
    slugs = [t.slug for t in ProblemType]
    assert len(slugs) == len(set(slugs))
    for problem in ProblemType:
        assert 400 <= problem.status < 600
        assert problem.default_title
        assert problem.value.startswith("https://")


async def test_httpx_sees_json_problem(server: Harness) -> None:
    response = await server.http.get("/v1/system/whoami")
    assert isinstance(response, httpx.Response)
    assert response.json()["title"] == ProblemType.AUTHENTICATION_REQUIRED.default_title


async def test_json_nested_too_deep_is_refused_not_a_crash(shop: ShopForTest) -> None:
    """Customer data nested hundreds of levels deep would break whatever reads it back."""

    def nested(depth: int) -> str:
        return '{"a": ' * depth + "1" + "}" * depth

    customer = (
        await shop.request(
            "POST",
            "/v1/identity/identify",
            "web",
            json={"identifiers": [{"type": "anonymous", "value": "deep"}]},
        )
    ).json()["customer_id"]
    deep = nested(600)
    bodies = [
        ("POST", "/v1/events", "web", '{"anonymous_id": "x", "name": "e", "properties": %s}'),
        ("POST", "/v1/identity/identify", "web", '{"anonymous_id": "x", "traits": %s}'),
        ("POST", f"/v1/sessions/{customer}", "web", '{"entries": {"k": %s}}'),
        ("PUT", "/v1/content/ruleset", "admin", '{"slots": {"a": {"default": %s}}}'),
    ]
    for method, path, channel, template in bodies:
        response = await shop.request(
            method,
            path,
            channel,
            content=template % deep,
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 422, (path, response.text)
        assert response.json()["type"] == ProblemType.VALIDATION_ERROR
    fine = f'{{"anonymous_id": "x", "name": "e", "properties": {nested(5)}}}'
    assert (
        await shop.request(
            "POST", "/v1/events", "web", content=fine, headers={"Content-Type": "application/json"}
        )
    ).is_success


async def test_a_bug_is_logged_by_route_template_never_by_raw_path(
    server: Harness, capfd: pytest.CaptureFixture[str]
) -> None:
    async def fails(who: str) -> None:
        raise RuntimeError("a bug")

    server.app.add_api_route("/test-only/fails/{who}", fails)
    # Starlette answers the 500, then re-raises for the server to log: keep it from the test.
    transport = httpx.ASGITransport(app=server.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        response = await http.get("/test-only/fails/amy@example.com")
    assert response.status_code == 500
    assert response.json()["type"] == ProblemType.INTERNAL_ERROR
    flush_logs()  # log lines are written by a thread of their own
    logged = capfd.readouterr().err
    assert "unhandled error" in logged
    assert "/test-only/fails/{who}" in logged
    assert "amy@example.com" not in logged
