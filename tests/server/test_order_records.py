"""The order record and its read helpers, over SQLite and PostgreSQL: exact money, newest
first, keyset streaming, any-channel purchases."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omnisdk.models import RefundLineIn, RefundRequest
from server_stub.errors import Problem
from server_stub.services import identity, orders
from server_stub.services.orders import NewOrder, SaleLine
from tests.server.conftest import Harness, ShopForTest

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def sale(reference: str, customer_id: str | None, at: datetime, *lines: SaleLine) -> NewOrder:
    return NewOrder(
        reference=reference,
        customer_id=customer_id,
        channel="pos" if customer_id is None else "web",
        store_id="warsaw-1" if customer_id is None else None,
        currency="EUR",
        total=sum((line.unit_price * line.quantity for line in lines), Decimal(0)),
        placed_at=at,
        link_method="checkout" if customer_id else "none",
        lines=lines,
    )


async def new_customer(server: Harness, shop: ShopForTest) -> str:
    async with server.database.transaction(write=True) as conn:
        return await identity.create_customer(conn, shop.id, T0)


async def test_money_is_exact_and_orders_come_newest_first(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await new_customer(server, shop)
    cent = SaleLine("SOCK", 3, Decimal("0.10"))
    async with server.database.transaction(write=True) as conn:
        for day in range(3):
            await orders.store(conn, shop.id, sale(f"A-{day}", amy, T0 + timedelta(days=day), cent))
    async with server.database.transaction(write=False) as conn:
        mine = await orders.orders_of(conn, shop.id, [amy])
    assert [order.reference for order in mine] == ["A-2", "A-1", "A-0"]
    assert {order.total for order in mine} == {0.3}  # 3 x 0.10, not 0.30000000000000004
    assert mine[0].lines[0].unit_price == 0.1 and mine[0].net == 0.3


async def test_the_same_reference_is_stored_once_and_other_content_is_refused(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await new_customer(server, shop)
    first = sale("B-1", amy, T0, SaleLine("TR2-38", 1, Decimal("120.00")))
    async with server.database.transaction(write=True) as conn:
        stored, created = await orders.store(conn, shop.id, first)
        again, created_again = await orders.store(conn, shop.id, first)
    assert created and not created_again and again == stored  # as stored, as read back
    other = sale("B-1", amy, T0, SaleLine("TR2-38", 2, Decimal("120.00")))
    answer_conflict = None
    try:
        async with server.database.transaction(write=True) as conn:
            await orders.store(conn, shop.id, other)
    except Exception as error:  # the Problem a router turns into a 409
        answer_conflict = error
    assert answer_conflict is not None and "other content" in str(answer_conflict)


async def test_stream_orders_pages_every_order_once_in_time_order(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await new_customer(server, shop)
    line = SaleLine("TEE", 1, Decimal("9.99"))
    async with server.database.transaction(write=True) as conn:
        for n in range(25):  # several orders share each time: the keyset must not skip them
            await orders.store(conn, shop.id, sale(f"C-{n}", amy if n % 2 else None, T0, line))
        await orders.store(conn, shop.id, sale("C-late", amy, T0 + timedelta(days=40), line))
    async with server.database.transaction(write=False) as conn:
        pages = [
            page
            async for page in orders.stream_orders(
                conn, shop.id, since=T0, until=T0 + timedelta(days=1), batch=7
            )
        ]
    assert [len(page) for page in pages] == [7, 7, 7, 4]
    facts = [fact for page in pages for fact in page]
    assert len({fact.order_id for fact in facts}) == 25
    assert sum(fact.customer_id is None for fact in facts) == 13
    assert {(fact.channel, fact.store_id) for fact in facts if fact.customer_id is None} == {
        ("pos", "warsaw-1")
    }
    assert round(sum(fact.net_value for fact in facts), 2) == 249.75


async def test_bought_since_sees_store_sales_and_only_since_then(
    server: Harness, shop: ShopForTest
) -> None:
    amy = await new_customer(server, shop)
    store_sale = sale("D-1", amy, T0, SaleLine("TR2-38", 1, Decimal("120.00")))
    store_sale = NewOrder(**{**store_sale.__dict__, "channel": "pos", "store_id": "warsaw-1"})
    async with server.database.transaction(write=True) as conn:
        await orders.store(conn, shop.id, store_sale)
    async with server.database.transaction(write=False) as conn:
        assert await orders.bought_since(conn, shop.id, [amy], "TR2-38", T0)
        assert not await orders.bought_since(conn, shop.id, [amy], "TR2-38", T0 + timedelta(1))
        assert not await orders.bought_since(conn, shop.id, [amy], "SOCK", T0)
        assert not await orders.bought_since(conn, "another-shop", [amy], "TR2-38", T0)


GIVE_BACK = st.lists(
    st.one_of(
        st.tuples(st.just("refund"), st.integers(0, 3), st.integers(1, 3), st.none()),
        st.tuples(st.just("amount"), st.just(0), st.just(0), st.integers(1, 9_000)),
        st.tuples(st.just("till"), st.integers(0, 3), st.integers(1, 3), st.none()),
    ),
    max_size=8,
)


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=GIVE_BACK)
async def test_what_is_given_back_never_exceeds_what_was_bought(
    server: Harness, shop: ShopForTest, steps: list[tuple[str, int, int, int | None]]
) -> None:
    """Refunds of lines or amounts and returns at a till, in any order, each sent twice:
    `refunded` is the sum of what was accepted, never more than the total, and no line gives
    back more units than were bought."""
    reference = f"P-{uuid.uuid4().hex[:10]}"
    lines = [SaleLine(f"SKU-{n}", n + 1, Decimal("12.34") * (n + 1)) for n in range(3)]
    accepted = Decimal(0)
    async with server.database.transaction(write=True) as conn:
        stored, _ = await orders.store(conn, shop.id, sale(reference, None, T0, *lines))
    total = Decimal(str(stored.total))
    for number, (kind, line, quantity, cents) in enumerate(steps):
        for _ in range(2):  # a retry changes nothing
            try:
                async with server.database.transaction(write=True) as conn:
                    before = await orders.by_reference(conn, shop.id, reference)
                    assert before is not None
                    if kind == "till":
                        await orders.apply_redemption(
                            conn,
                            shop.id,
                            reference,
                            f"red-{number}",
                            [(f"SKU-{line % 3}", quantity)],
                            None,
                        )
                    else:
                        request = RefundRequest(
                            refund_id=f"rf-{number}",
                            amount=None if cents is None else cents / 100,
                            lines=[]
                            if kind == "amount"
                            else [RefundLineIn(line_no=line % 3 + 1, quantity=quantity)],
                        )
                        await orders.refund(conn, shop.id, reference, request)
                    after = await orders.by_reference(conn, shop.id, reference)
                    assert after is not None
                    accepted += Decimal(str(after.refunded)) - Decimal(str(before.refunded))
            except Problem:
                pass  # refused as a whole: nothing of it stays
    async with server.database.transaction(write=False) as conn:
        final = await orders.by_reference(conn, shop.id, reference)
    assert final is not None
    assert Decimal(str(final.refunded)) == accepted <= total
    assert all(0 <= line.returned_quantity <= line.quantity for line in final.lines)
