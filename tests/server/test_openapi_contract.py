"""The OpenAPI document says what the server does: measured (security, problem responses,
descriptions, examples), and checked against a real server process by schemathesis with all
of its checks (undocumented status codes and content types included)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.core.parameters import ParameterLocation

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE
from omnisdk.testing import ServerProcess
from server_stub.app import create_app
from server_stub.settings import Settings
from tests.server.conftest import ShopForTest

SECRET = "c2VjcmV0LWtleS1mb3ItdGhlLW9wZW5hcGktdGVzdHMtMDA="


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    database = tmp_path_factory.mktemp("openapi") / "doc.sqlite3"
    app = create_app(Settings(database_url=f"sqlite+aiosqlite:///{database}", secret_key=SECRET))
    return app.openapi()


def operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, operation)
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    ]


def coverage(document: dict[str, Any]) -> dict[str, float]:
    """The measures of issue 16, as fractions."""
    ops = operations(document)
    secured = [op for _, _, op in ops if op.get("security")]
    with_problems = [
        op
        for op in secured
        if all(
            PROBLEM_CONTENT_TYPE in op["responses"].get(str(status), {}).get("content", {})
            for status in (401, 403, 422)
        )
    ]
    fields = [
        prop
        for schema in document["components"]["schemas"].values()
        for prop in (schema.get("properties") or {}).values()
    ]
    bodies = [op for _, _, op in ops if "requestBody" in op]
    with_example = [
        op
        for op in bodies
        if all("example" in c or "examples" in c for c in op["requestBody"]["content"].values())
    ]
    return {
        "operations with security declared": sum("security" in op for _, _, op in ops) / len(ops),
        "authenticated operations with problem responses": len(with_problems) / len(secured),
        "fields with a description": sum(bool(f.get("description")) for f in fields) / len(fields),
        "operations with a body that have an example": len(with_example) / len(bodies),
    }


def test_the_document_meets_its_measures(document: dict[str, Any]) -> None:
    measured = coverage(document)
    assert measured["operations with security declared"] == 1.0
    assert measured["authenticated operations with problem responses"] == 1.0
    assert measured["fields with a description"] >= 0.9
    assert measured["operations with a body that have an example"] == 1.0


def test_every_error_response_is_problem_json(document: dict[str, Any]) -> None:
    for method, path, operation in operations(document):
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                assert list(response["content"]) == [PROBLEM_CONTENT_TYPE], (method, path, status)
    assert "HTTPValidationError" not in document["components"]["schemas"]


def test_api_routes_need_the_bearer_key_and_writes_take_an_idempotency_key(
    document: dict[str, Any],
) -> None:
    scheme = document["components"]["securitySchemes"]["apiKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for method, path, operation in operations(document):
        if path.startswith("/v1/"):
            assert operation["security"] == [{"apiKey": []}], (method, path)
            names = {p["name"].lower() for p in operation.get("parameters", [])}
            if method in {"post", "put", "patch", "delete"} and not operation.get("x-read-only"):
                assert "idempotency-key" in names, (method, path)


def test_mark_ordered_requires_if_match_and_streams_and_images_say_their_media_type(
    document: dict[str, Any],
) -> None:
    paths = document["paths"]
    ordered = paths["/v1/carts/{customer_id}/mark-ordered"]["post"]
    [if_match] = [p for p in ordered["parameters"] if p["name"].lower() == "if-match"]
    assert if_match["required"] is True and "428" in ordered["responses"]
    feed = paths["/v1/customers/{customer_id}/changes"]["get"]["responses"]["200"]["content"]
    assert list(feed) == ["text/event-stream"]
    png = paths["/v1/returns/{token_id}/qr.png"]["get"]["responses"]["200"]["content"]
    assert list(png) == ["image/png"]


def test_the_docs_page_loads_its_assets_from_this_server(tmp_path: Path) -> None:
    with ServerProcess(f"sqlite+aiosqlite:///{tmp_path / 'docs.sqlite3'}") as server:
        page = httpx.get(f"{server.url}/docs")
        assert page.status_code == 200
        assert "cdn." not in page.text and "https://" not in page.text
        script = httpx.get(f"{server.url}/static-offline-docs/swagger-ui-bundle.js")
        assert script.status_code == 200 and len(script.content) > 100_000


# --- schemathesis, against a real server process ----------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, Path]]:
    directory = tmp_path_factory.mktemp("contract")
    # The server's log is kept beside its database: a 500 found by a generated case is
    # explained there, and in the failure itself (see _errors_logged).
    database = f"sqlite+aiosqlite:///{directory / 'contract.sqlite3'}"
    log = directory / "server.log"
    with ServerProcess(database, log_path=log) as server:
        shop = server.create_tenant("contract shop")
        yield server, shop.key("admin"), log


def _errors_logged(log: Path, since: int) -> str:
    """The server's error records written after byte `since` of its log."""
    with log.open("rb") as lines:
        lines.seek(since)
        return "".join(
            line.decode(errors="replace")
            for line in lines
            if b'"level": "error"' in line or b'"level":"error"' in line
        )


def _contract_schema() -> Any:
    """The document as the server builds it (no database is touched to build it); the calls
    go to a real server process (`base_url` below)."""
    app = create_app(Settings(database_url="sqlite+aiosqlite:///unused.sqlite3", secret_key=SECRET))
    schema = schemathesis.openapi.from_dict(app.openapi())
    # Input the schema allows can still break a domain rule the schema cannot state (an
    # undeclared consent purpose, a junk identifier, an unknown token): 422 problem+json.
    schema.config.checks.positive_data_acceptance.expected_statuses.append("422")
    # A missing If-Match is answered 428 Precondition Required (RFC 6585), the status made for it.
    schema.config.checks.missing_required_header.expected_statuses.append("428")
    return schema


contract = _contract_schema()


def _streams(case: Any) -> bool:
    """Whether the operation answers 200 with an event stream (the change feeds)."""
    ok = case.operation.definition.raw.get("responses", {}).get("200", {})
    return "text/event-stream" in ok.get("content", {})


def _first_event(case: Any, base_url: str, headers: dict[str, str]) -> httpx.Response:
    """The answer to `case`, where a 200 event stream (which never ends) is cut after its
    first event: status, headers and media type are all there to validate."""
    with (
        httpx.Client(timeout=10) as http,
        http.stream(
            case.method,
            base_url + case.formatted_path,
            params=case.query,
            headers={**(case.headers or {}), **headers},
        ) as response,
    ):
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if response.status_code != 200 or b"\n\n" in body:
                break
    answer = httpx.Response(
        response.status_code, headers=response.headers, content=body, request=response.request
    )
    answer.elapsed = response.elapsed  # known once the stream is closed
    return answer


def _auth_left_out_on_purpose(case: Any) -> bool:
    """A negative case that drops the required Authorization header: send it without."""
    info = case.meta.components.get(ParameterLocation.HEADER) if case.meta else None
    return (
        info is not None
        and info.mode is schemathesis.GenerationMode.NEGATIVE
        and "Authorization" not in (case.headers or {})
    )


@contract.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_server_keeps_its_contract(case: Any, served: tuple[ServerProcess, str, Path]) -> None:
    server, key, log = served
    headers = {}
    if not _auth_left_out_on_purpose(case):
        headers["Authorization"] = f"Bearer {key}"
    key_sent = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key_sent, str) and re.fullmatch(r"[\x20-\x7e]{1,255}", key_sent):
        # A client sends a new key with each new request; generated keys repeat ("0", "0")
        # across different requests, which the server rightly answers 409. (An invalid key,
        # generated to be refused, is sent as it is.)
        headers["Idempotency-Key"] = str(uuid.uuid4())
    since = log.stat().st_size
    try:
        if _streams(case):
            case.validate_response(_first_event(case, server.url, headers), headers=headers)
        else:
            case.call_and_validate(base_url=server.url, headers=headers)
    except Exception as failure:
        errors = _errors_logged(log, since)
        if not errors:
            raise
        raise AssertionError(f"{failure}\n--- the server logged ---\n{errors}") from failure


async def test_a_wrong_method_is_answered_with_every_method_the_path_allows(
    shop: ShopForTest,
) -> None:
    sessions = await shop.request("DELETE", "/v1/sessions/cus_any")
    assert sessions.status_code == 405
    assert sessions.headers["allow"] == "GET, POST"
    assert sessions.headers["content-type"] == PROBLEM_CONTENT_TYPE
    confirmations = await shop.request("GET", "/v1/consent/confirmations")
    # GET there reads a customer's consent (the template), so it is not a 405...
    assert confirmations.status_code == 404
    wrong = await shop.request("DELETE", "/v1/consent/confirmations")
    assert wrong.headers["allow"] == "POST"  # ... but the path is documented for POST only
