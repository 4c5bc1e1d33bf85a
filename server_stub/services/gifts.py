"""Gift or self per order line: corrections by staff or by the customer (issue 19).

The label comes with the order (the shop's flag, or `omnisdk.core.gifts.classify` where the
shop knows sizes and shipping); a correction sets it for good (confidence 1.0), is audited
and re-evaluates her segments (buyer type).
"""

from __future__ import annotations

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.problems import ProblemType
from server_stub.errors import Problem
from server_stub.services import audit, segment_hook
from server_stub.storage.tables import order_lines, orders


async def correct(
    conn: AsyncConnection,
    tenant_id: str,
    reference: str,
    line_no: int,
    gift: bool,
    *,
    by: str,
    actor_key_id: str | None,
) -> tuple[str | None, str]:
    """Set the line's label; (the order's customer, its id)."""
    order = (
        await conn.execute(
            select(orders.c.id, orders.c.customer_id).where(
                orders.c.tenant_id == tenant_id, orders.c.reference == reference
            )
        )
    ).first()
    if order is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no order {reference!r}")
    line = and_(
        order_lines.c.tenant_id == tenant_id,
        order_lines.c.order_id == order.id,
        order_lines.c.line_no == line_no,
    )
    if (await conn.execute(select(order_lines.c.line_no).where(line))).first() is None:
        raise Problem(ProblemType.NOT_FOUND, f"order {reference!r} has no line {line_no}")
    # Already so (a retried correction, or the same one made at once elsewhere, which this
    # UPDATE waits for and then finds done): nothing changes and nothing is audited twice.
    confidence = order_lines.c.gift_confidence
    differs = or_(order_lines.c.gift != gift, confidence.is_(None), confidence != 1.0)
    corrected = await conn.execute(
        update(order_lines)
        .where(line, differs)
        .values(gift=gift, gift_confidence=1.0)
        .returning(order_lines.c.line_no)
    )
    if corrected.first() is None:
        return order.customer_id, order.id
    label = "gift" if gift else "self"
    detail = f"order {reference} line {line_no}: {label} (corrected by {by})"
    await audit.record(conn, tenant_id, actor_key_id, "order.gift_corrected", order.id, detail)
    if order.customer_id:
        await segment_hook.profile_changed(conn, tenant_id, [order.customer_id])
    return order.customer_id, order.id
