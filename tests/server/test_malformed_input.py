"""Malformed input that used to answer 500 (on SQLite, PostgreSQL or both) is a 4xx problem,
and stores nothing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import select

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from server_stub.sse import LARGEST_POSITION, resume_position
from server_stub.storage.tables import events
from tests.server.conftest import Harness, ShopForTest


async def _customer(shop: ShopForTest, anonymous_id: str = "laptop") -> str:
    answer = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": anonymous_id}
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["customer_id"])


def _assert_problem(response: Any, status: int, type: ProblemType) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    assert response.json()["type"] == type


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/customers/cus_%00/profile"),
        ("GET", "/v1/customers/cus_%00/timeline"),
        ("POST", "/v1/customers/cus_%00/annotations"),
        ("GET", "/v1/carts/cus_%00"),
        ("GET", "/v1/consent/cus_%00"),
        ("POST", "/v1/returns/ret%00/revoke"),
        ("DELETE", "/v1/keys/key_%00"),
    ],
)
async def test_a_nul_in_a_path_parameter_is_422(shop: ShopForTest, method: str, path: str) -> None:
    body = {"department": "service", "author": "K", "text": "t"} if "annotations" in path else None
    response = await shop.request(method, path, json=body)
    _assert_problem(response, 422, ProblemType.VALIDATION_ERROR)
    assert response.json()["errors"][0]["loc"][0] == "path"


async def test_a_nul_in_a_query_parameter_is_422(shop: ShopForTest) -> None:
    amy = await _customer(shop)
    response = await shop.request("GET", f"/v1/customers/{amy}/timeline?cursor=a%00b")
    _assert_problem(response, 422, ProblemType.VALIDATION_ERROR)
    assert response.json()["errors"] == [
        {"loc": ["query", "cursor"], "msg": "a NUL character is not allowed", "type": "string_nul"}
    ]


@pytest.mark.parametrize("field", ["text", "author"], ids=["annotation text", "annotation author"])
async def test_a_nul_in_an_annotation_is_422_and_stores_nothing(
    shop: ShopForTest, field: str
) -> None:
    amy = await _customer(shop)
    note = {"department": "service", "author": "Kim", "text": "called", field: "a\x00b"}
    response = await shop.request("POST", f"/v1/customers/{amy}/annotations", json=note)
    _assert_problem(response, 422, ProblemType.VALIDATION_ERROR)
    profile = (await shop.request("GET", f"/v1/customers/{amy}/profile")).json()
    assert profile["annotations"] == []


async def test_a_nul_in_a_sku_is_422_and_stores_nothing(shop: ShopForTest) -> None:
    amy = await _customer(shop)
    op = {"op_id": "laptop:1", "type": "add", "line": {"sku": "TR\x002"}, "delta": 1}
    response = await shop.request("POST", f"/v1/carts/{amy}/ops", "web", json={"ops": [op]})
    _assert_problem(response, 422, ProblemType.VALIDATION_ERROR)
    cart = (await shop.request("GET", f"/v1/carts/{amy}", "web")).json()
    assert cart["lines"] == []


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "cursor",
    [
        _cursor("2026-01-01T00:00:00|1"),  # no time zone
        _cursor("2026-01-01T00:00:00+00:00|99999999999999999999"),  # beyond BIGINT
        _cursor("2026-01-01T00:00:00+00:00|" + "9" * 5000),  # beyond int()
        _cursor("0001-01-01T00:00:00+14:00|1"),  # before the calendar in UTC
        _cursor("9999-12-31T23:59:59-14:00|1"),  # after it
        _cursor("2026-01-01T00:00:00+00:00|-1"),
        _cursor("2026-01-01T00:00:00+00:00|\u0661"),  # a non-ASCII digit
        _cursor("nothing"),
        "%%%",
    ],
)
async def test_a_forged_timeline_cursor_is_422(shop: ShopForTest, cursor: str) -> None:
    amy = await _customer(shop)
    response = await shop.request("GET", f"/v1/customers/{amy}/timeline", params={"cursor": cursor})
    _assert_problem(response, 422, ProblemType.VALIDATION_ERROR)


@pytest.mark.parametrize(
    ("last_event_id", "beyond"),
    [("\u00b2", False), ("\u0663", False), ("9" * 5000, True), ("12x", False)],
    ids=["superscript two", "arabic three", "5000 digits", "not a number"],
)
async def test_an_odd_last_event_id_resumes_at_the_newest_or_resyncs(
    server: Harness, shop: ShopForTest, last_event_id: str, beyond: bool
) -> None:
    # (Headers arrive as latin-1: "²" is one byte, and a digit to str.isdigit.)
    async with server.database.transaction(write=False) as conn:
        position = await resume_position(conn, shop.id, last_event_id)
    assert position == (LARGEST_POSITION if beyond else 0)


@pytest.mark.parametrize(
    "client_time",
    ["2026-01-01T10:00:00", "0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"],
    ids=["naive", "before the calendar", "after the calendar"],
)
async def test_a_consent_time_without_zone_or_beyond_the_calendar_is_422(
    shop: ShopForTest, client_time: str
) -> None:
    amy = await _customer(shop)
    decision = {"purpose": "analytics", "status": "granted", "client_time": client_time}
    for queued in (False, True):
        response = await shop.request(
            "POST",
            f"/v1/consent/{amy}",
            "web",
            json={"decisions": [{**decision, "queued": queued}]},
        )
        _assert_problem(response, 422, ProblemType.VALIDATION_ERROR)
    history = (await shop.request("GET", f"/v1/consent/{amy}/history", "web")).json()
    assert history["items"] == []


async def test_a_phone_number_in_other_digits_is_the_same_customer(shop: ShopForTest) -> None:
    ascii_digits = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "a1", "phone": "+4915112345678"}
    )
    arabic_indic = await shop.request(
        "POST", "/v1/identity/identify", json={"anonymous_id": "a2", "phone": "+٤٩١٥١١٢٣٤٥٦٧٨"}
    )
    assert ascii_digits.status_code == arabic_indic.status_code == 200
    assert arabic_indic.json()["customer_id"] == ascii_digits.json()["customer_id"]


@pytest.mark.parametrize(
    "options",
    [{"a=b": "c"}, {"a;b": "c"}, {"a|b": "c"}, {"": "x"}, {"size": "38;40"}, {"size": "38|40"}],
)
async def test_inventory_options_that_would_make_another_item_key_are_422(
    shop: ShopForTest, options: dict[str, str]
) -> None:
    # They used to pass the model and fail in line_key: a 500.
    level = {"sku": "TR2", "options": options, "location": "online", "quantity": 3}
    answer = await shop.request("POST", "/v1/inventory", json={"levels": [level]})
    _assert_problem(answer, 422, ProblemType.VALIDATION_ERROR)
    # Nothing was stored: the item does not exist.
    read = await shop.request("GET", "/v1/inventory", params={"item": "TR2"})
    assert read.status_code == 200, read.text
    assert read.json()["items"][0]["online"] == 0


@pytest.mark.parametrize("key", ["|", "TR2|", "TR2|size", "TR2|b=1;a=2", "x" * 65, "TR2|=3"])
async def test_an_inventory_read_of_no_item_key_is_422(shop: ShopForTest, key: str) -> None:
    for answer in (
        await shop.request("GET", "/v1/inventory", params={"item": key}),
        await shop.request("POST", "/v1/inventory/lookup", json={"items": ["TR2", key]}),
    ):
        _assert_problem(answer, 422, ProblemType.VALIDATION_ERROR)
    fine = await shop.request("GET", "/v1/inventory", params={"item": ["TR2", "TR2|a=2;b=1"]})
    assert fine.status_code == 200, fine.text


async def test_an_order_whose_total_outgrows_the_money_column_is_422_and_stores_nothing(
    shop: ShopForTest,
) -> None:
    """Each price is bounded, their sum was not: a 500 on PostgreSQL (numeric overflow), and
    on SQLite a total stored that PostgreSQL could not hold."""
    line = {"sku": "TR2", "quantity": 9999, "unit_price": 999_999_999_999}
    sale = {"reference": "BIG-1", "currency": "EUR", "lines": [line]}
    answer = await shop.request("POST", "/v1/orders", "web", json=sale)
    _assert_problem(answer, 422, ProblemType.VALIDATION_ERROR)
    assert "more than an order may hold" in answer.json()["detail"]
    assert (await shop.request("GET", "/v1/orders/BIG-1")).status_code == 404


async def test_a_return_line_priced_beyond_any_amount_is_422(shop: ShopForTest) -> None:
    """1e308 a unit was issued a code that no till could then redeem (a 500 computing it)."""
    line = {"line_id": "1", "sku": "TR2", "quantity": 999, "unit_price": 1e308}
    body = {"order_ref": "HO-1", "lines": [line], "currency": "EUR"}
    answer = await shop.request("POST", "/v1/returns", "web", json=body)
    _assert_problem(answer, 422, ProblemType.VALIDATION_ERROR)


async def test_an_event_time_with_an_offset_past_15_59_is_stored_in_utc(
    server: Harness, shop: ShopForTest
) -> None:
    """PostgreSQL's parser refuses offsets past ±15:59: the whole batch was a 500 there, and
    SQLite stored it. Both store the instant in UTC now, and the batch's other event too."""
    at = datetime.now(UTC) - timedelta(days=1)
    far = at.astimezone(timezone(timedelta(hours=23, minutes=59))).isoformat()
    batch = {
        "events": [
            {"name": "product_viewed", "anonymous_id": "a", "event_id": "near"},
            {"name": "product_viewed", "anonymous_id": "a", "event_id": "far", "timestamp": far},
        ]
    }
    answer = await shop.request("POST", "/v1/events/batch", "web", json=batch)
    assert answer.status_code == 200, answer.text
    assert answer.json()["accepted"] == 2
    async with server.database.transaction(write=False) as conn:
        stored = (
            await conn.execute(
                select(events.c.occurred_at).where(
                    events.c.tenant_id == shop.id, events.c.event_id == "far"
                )
            )
        ).scalar_one()
    assert stored == at


async def test_a_cart_checked_out_beyond_the_money_column_is_422(shop: ShopForTest) -> None:
    """The bound on an order's total held for recorded orders only: a cart placed as an
    order summed its lines unbounded (a 500 on PostgreSQL)."""
    customer = await _customer(shop, "big-cart")
    ops = [
        {
            "op_id": f"big-cart:{n}",
            "type": "add",
            "line": {"sku": f"GOLD-{n}"},
            "attributes": {"unit_price": 999_999_999.0, "currency": "EUR"},
            "delta": 999,
        }
        for n in (1, 2)
    ]
    added = await shop.request("POST", f"/v1/carts/{customer}/ops", "web", json={"ops": ops})
    assert added.status_code == 200, added.text
    placed = await shop.request(
        "POST",
        f"/v1/carts/{customer}/mark-ordered",
        "web",
        json={"order_ref": "BIG-CART"},
        headers={"If-Match": f'"{added.json()["version"]}"'},
    )
    _assert_problem(placed, 422, ProblemType.VALIDATION_ERROR)
    cart = (await shop.request("GET", f"/v1/carts/{customer}", "web")).json()
    assert (cart["version"], len(cart["lines"])) == (added.json()["version"], 2)  # as it was
