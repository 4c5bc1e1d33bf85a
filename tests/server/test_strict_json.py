"""Every request body is parsed once, under the strict JSON policy: what the stores cannot keep
faithfully is refused with 422 naming the field, what is not JSON with 400, and nothing of a
refused request is stored."""

from __future__ import annotations

import gzip
import json

import pytest

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from omnisdk.testing import ATTRIBUTED_EVENTS
from tests.server.conftest import Harness, ShopForTest

JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def shop(server: Harness) -> ShopForTest:
    return await server.shop(settings=ATTRIBUTED_EVENTS)


async def _post(shop: ShopForTest, path: str, body: bytes, **headers: str) -> dict[str, object]:
    response = await shop.request("POST", path, content=body, headers={**JSON, **headers})
    assert response.status_code < 500, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    return {"status": response.status_code, **response.json()}


async def _timeline_size(shop: ShopForTest, anonymous_id: str) -> int:
    resolved = await shop.request(
        "POST", "/v1/identity/resolve", json={"type": "anonymous", "value": anonymous_id}
    )
    if resolved.status_code == 404:
        return 0
    customer = resolved.json()["customer_id"]
    page = await shop.request("GET", f"/v1/customers/{customer}/timeline")
    return len(page.json()["items"])


def _event(properties: str) -> bytes:
    envelope = '{"anonymous_id": "hostile", "name": "product_viewed", "properties": '
    return (envelope + properties + "}").encode()


REFUSED_PROPERTIES = {
    "NaN": ('{"price": NaN}', "number_not_finite"),
    "Infinity": ('{"price": Infinity}', "number_not_finite"),
    "-Infinity": ('{"price": -Infinity}', "number_not_finite"),
    "1e400": ('{"price": 1e400}', "number_not_finite"),
    "401 digits": ('{"price": ' + "9" * 401 + "}", "integer_too_large"),
    "2^53": (f'{{"price": {2**53}}}', "integer_too_large"),
    "lone surrogate": ('{"price": "\\udfff"}', "string_surrogate"),
    "NUL": ('{"price": "a\\u0000b"}', "string_nul"),
    "duplicate key": ('{"price": 1, "price": 2}', "duplicate_key"),
}


@pytest.mark.parametrize("case", REFUSED_PROPERTIES, ids=list(REFUSED_PROPERTIES))
async def test_a_value_the_stores_cannot_keep_is_refused_naming_its_field(
    shop: ShopForTest, case: str
) -> None:
    text, rule = REFUSED_PROPERTIES[case]
    problem = await _post(shop, "/v1/events", _event(text))
    assert problem["status"] == 422
    assert problem["type"] == ProblemType.VALIDATION_ERROR
    errors = problem["errors"]
    assert isinstance(errors, list)
    assert [(e["loc"], e["type"]) for e in errors] == [(["body", "properties", "price"], rule)]
    assert await _timeline_size(shop, "hostile") == 0


async def test_a_lone_surrogate_in_a_key_is_refused_and_named_safely(shop: ShopForTest) -> None:
    problem = await _post(shop, "/v1/events", _event('{"\\udfff": 1}'))
    assert problem["status"] == 422
    [error] = problem["errors"]  # type: ignore[misc]
    assert error["type"] == "string_surrogate"
    assert error["loc"] == ["body", "properties", "\\udfff"]


async def test_a_lone_surrogate_in_traits_is_refused(shop: ShopForTest) -> None:
    body = b'{"anonymous_id": "hostile", "traits": {"nickname": "\\ud800"}}'
    problem = await _post(shop, "/v1/identity/identify", body)
    assert problem["status"] == 422
    assert [e["loc"] for e in problem["errors"]] == [["body", "traits", "nickname"]]  # type: ignore[union-attr]


async def test_the_largest_safe_integer_and_ordinary_unicode_are_taken(shop: ShopForTest) -> None:
    body = _event(f'{{"price": {2**53 - 1}, "name": "Zapatos \\u00e1 \\ud83d\\udc5f"}}')
    response = await shop.request("POST", "/v1/events", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert await _timeline_size(shop, "hostile") == 1


async def test_invalid_utf8_is_malformed_json(shop: ShopForTest) -> None:
    body = _event('{"name": "X"}').replace(b"X", b"\xff")
    problem = await _post(shop, "/v1/events", body)
    assert problem["status"] == 400
    assert problem["type"] == ProblemType.MALFORMED_JSON


async def test_a_gzip_body_without_its_header_is_malformed_json(shop: ShopForTest) -> None:
    problem = await _post(shop, "/v1/events", gzip.compress(_event("{}")))
    assert problem["status"] == 400
    assert problem["type"] == ProblemType.MALFORMED_JSON


async def test_a_compressed_body_is_an_unsupported_media_type(shop: ShopForTest) -> None:
    problem = await _post(
        shop, "/v1/events", gzip.compress(_event("{}")), **{"Content-Encoding": "gzip"}
    )
    assert problem["status"] == 415
    assert problem["type"] == ProblemType.UNSUPPORTED_MEDIA_TYPE
    assert await _timeline_size(shop, "hostile") == 0


async def test_nesting_beyond_any_stack_is_refused(shop: ShopForTest) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    problem = await _post(shop, "/v1/events", _event(deep))
    assert problem["status"] in {400, 422}
    assert problem["type"] in {ProblemType.VALIDATION_ERROR, ProblemType.MALFORMED_JSON}


async def test_a_batch_rejects_only_the_event_that_breaks_the_policy(shop: ShopForTest) -> None:
    good = {"anonymous_id": "hostile", "name": "product_viewed"}
    bad = [
        '{"anonymous_id": "hostile", "name": "x", "properties": {"p": NaN}}',
        '{"anonymous_id": "hostile", "name": "x", "properties": {"p": ' + "9" * 500 + "}}",
        '{"anonymous_id": "hostile", "name": "x", "properties": {"p": 1, "p": 2}}',
        '{"anonymous_id": "hostile", "name": "x", "properties": {"p": "\\udfff"}}',
    ]
    body = '{"events": [' + ", ".join([json.dumps(good), *bad, json.dumps(good)]) + "]}"
    response = await shop.request("POST", "/v1/events/batch", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["accepted"] == 2
    assert [(r["index"], r["type"]) for r in result["rejected"]] == [
        (n, ProblemType.INVALID_EVENT) for n in (1, 2, 3, 4)
    ]
    assert await _timeline_size(shop, "hostile") == 2


async def test_a_batch_whose_envelope_breaks_the_policy_is_refused(shop: ShopForTest) -> None:
    body = b'{"events": [{"anonymous_id": "hostile", "name": "x"}], "events": []}'
    problem = await _post(shop, "/v1/events/batch", body)
    assert problem["status"] == 422
    assert await _timeline_size(shop, "hostile") == 0
