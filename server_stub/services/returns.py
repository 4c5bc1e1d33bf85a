"""Returns: register an order's returnable lines, issue signed codes, redeem exactly once.

Exactly once per unit: a redemption raises a line's returned count with a conditional UPDATE
(`returned + n <= quantity`), after locking the order's row, so two tills racing for the last
unit cannot both get it, on PostgreSQL or SQLite. A till transaction id is redeemed at most
once: repeating it answers the first redemption again.
"""

from __future__ import annotations

import os
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import tokens
from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    EventIn,
    IssuedReturn,
    IssueReturnRequest,
    RedeemRequest,
    Redemption,
    ReturnedLine,
    ReturnLineStatus,
    ReturnStatus,
)
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import alerts, audit, events, identity, messages, named_locks, orders
from server_stub.services.signing_keys import SigningKey, SigningKeys, verification_keys
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import (
    orders as order_records,
)
from server_stub.storage.tables import (
    redemptions,
    return_lines,
    return_orders,
    return_tokens,
)

# A return code with its order (revoked with it, registered for its customer).
OF_ITS_ORDER = (return_orders.c.tenant_id == return_tokens.c.tenant_id) & (
    return_orders.c.order_ref == return_tokens.c.order_ref
)


def _qr_paths(token_id: str) -> tuple[str, str]:
    return f"/v1/returns/{token_id}/qr.png", f"/v1/returns/{token_id}/qr.svg"


async def _order(
    conn: AsyncConnection, tenant_id: str, order_ref: str, lock: bool = False
) -> Row[Any] | None:
    query = select(return_orders).where(
        return_orders.c.tenant_id == tenant_id, return_orders.c.order_ref == order_ref
    )
    if lock:  # its name first: an order not registered yet has no row to lock
        await named_locks.take(conn, tenant_id, "return_order", order_ref)
        query = query.with_for_update()
    return (await conn.execute(query)).first()


async def _lines(conn: AsyncConnection, tenant_id: str, order_ref: str) -> list[Row[Any]]:
    rows = await conn.execute(
        select(return_lines)
        .where(return_lines.c.tenant_id == tenant_id, return_lines.c.order_ref == order_ref)
        .order_by(return_lines.c.line_id)
    )
    return list(rows)


async def _register_order(
    conn: AsyncConnection, tenant_id: str, request: IssueReturnRequest, now: datetime
) -> list[Row[Any]]:
    ids = [line.line_id for line in request.lines]
    if len(set(ids)) != len(ids):
        raise Problem(ProblemType.VALIDATION_ERROR, "each line of an order needs its own line_id")
    existing = await _order(conn, tenant_id, request.order_ref, lock=True)
    if existing is None:
        await conn.execute(
            insert(return_orders).values(
                tenant_id=tenant_id,
                order_ref=request.order_ref,
                customer_id=request.customer_id,
                currency=request.currency,
                created_at=now,
            )
        )
        await conn.execute(
            insert(return_lines),
            [
                {
                    "tenant_id": tenant_id,
                    "order_ref": request.order_ref,
                    "line_id": line.line_id,
                    "sku": line.sku,
                    "name": line.name,
                    "quantity": line.quantity,
                    "returned": 0,
                    "unit_price": line.unit_price,
                }
                for line in request.lines
            ],
        )
        return await _lines(conn, tenant_id, request.order_ref)
    if existing.revoked_at is not None:
        raise Problem(
            ProblemType.RETURN_REVOKED, f"returns of order {request.order_ref} are revoked"
        )
    lines = await _lines(conn, tenant_id, request.order_ref)
    known = {(row.line_id, row.sku, row.quantity) for row in lines}
    if known != {(line.line_id, line.sku, line.quantity) for line in request.lines}:
        raise Problem(
            ProblemType.CONFLICT,
            f"order {request.order_ref} is registered with other lines; an order's lines "
            "cannot change once a return code exists",
        )
    return lines


async def issue(
    conn: AsyncConnection,
    context: TenantContext,
    keys: SigningKeys,
    request: IssueReturnRequest,
) -> IssuedReturn:
    """Register the order (once) and sign a code for what remains returnable."""
    tenant_id = context.tenant_id
    if request.customer_id is not None:
        live = await identity.live_id(conn, tenant_id, request.customer_id)
        if live is None:
            raise Problem(
                ProblemType.NOT_FOUND, f"this tenant has no customer {request.customer_id!r}"
            )
        request = request.model_copy(update={"customer_id": live})
    now = utcnow().replace(microsecond=0)
    lines = await _register_order(conn, tenant_id, request, now)
    remaining = [
        tokens.ReturnLine(row.line_id, row.sku, row.quantity - row.returned)
        for row in lines
        if row.quantity > row.returned
    ]
    if not remaining:
        raise Problem(
            ProblemType.ALREADY_RETURNED, f"everything of order {request.order_ref} was returned"
        )
    key = await keys.active(conn, tenant_id)
    claims = tokens.ReturnClaims(
        issuer=tenant_id,
        issued_at=now,
        expires_at=now + timedelta(days=request.return_window_days),
        token_id=os.urandom(tokens.TOKEN_ID_BYTES),
        order_ref=request.order_ref,
        lines=tuple(remaining),
        refund_methods=tuple(request.refund_methods),
    )
    token = tokens.sign(claims, key.private_key, key.kid)
    if len(token) > tokens.MAX_SCANNABLE_CHARS:
        raise _too_large_to_scan(claims, key, len(token))
    await conn.execute(
        insert(return_tokens).values(
            tenant_id=tenant_id,
            token_id=claims.token_id_hex,
            order_ref=request.order_ref,
            kid=key.kid.hex(),
            token=token,
            issued_at=claims.issued_at,
            expires_at=claims.expires_at,
        )
    )
    png_path, svg_path = _qr_paths(claims.token_id_hex)
    return IssuedReturn(
        token=token,
        token_id=claims.token_id_hex,
        order_ref=request.order_ref,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
        qr_png_path=png_path,
        qr_svg_path=svg_path,
    )


def _too_large_to_scan(claims: tokens.ReturnClaims, key: SigningKey, size: int) -> Problem:
    """The refusal of a code no till could scan, saying how many lines one code can carry."""
    fit = len(claims.lines) - 1
    while fit > 1:
        part = replace(claims, lines=claims.lines[:fit])
        if len(tokens.sign(part, key.private_key, key.kid)) <= tokens.MAX_SCANNABLE_CHARS:
            break
        fit -= 1
    return Problem(
        ProblemType.VALIDATION_ERROR,
        f"order {claims.order_ref} has too many lines for one return code: its code would be "
        f"{size} characters, more than the {tokens.MAX_SCANNABLE_CHARS} a till can scan (QR "
        f"version {tokens.SCANNABLE_QR_VERSION} at error correction Q). Split the order: issue "
        f"codes of at most {fit} lines each, each part under its own order_ref (for example "
        f"{claims.order_ref}-1, {claims.order_ref}-2).",
        code_chars=size,
        max_code_chars=tokens.MAX_SCANNABLE_CHARS,
        lines_per_code=fit,
    )


async def token_text(conn: AsyncConnection, tenant_id: str, token_id: str) -> str:
    row = (
        await conn.execute(
            select(return_tokens.c.token).where(
                return_tokens.c.tenant_id == tenant_id, return_tokens.c.token_id == token_id
            )
        )
    ).first()
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no return code {token_id!r}")
    return str(row.token)


async def verify(conn: AsyncConnection, tenant_id: str, token: str) -> tokens.ReturnClaims:
    """The claims of a token this shop issued and has not revoked, or a clerk-readable problem."""
    outcome = tokens.verify(
        token, await verification_keys(conn, tenant_id), issuer=tenant_id, now=utcnow()
    )
    if not outcome.valid or outcome.claims is None:
        raise Problem(ProblemType.RETURN_CODE_INVALID, outcome.message, reason=outcome.status.value)
    row = (
        await conn.execute(
            select(return_tokens.c.revoked_at, return_orders.c.revoked_at.label("order_revoked"))
            .join(return_orders, OF_ITS_ORDER)
            .where(
                return_tokens.c.tenant_id == tenant_id,
                return_tokens.c.token_id == outcome.claims.token_id_hex,
            )
        )
    ).first()
    if row is None:
        raise Problem(
            ProblemType.RETURN_CODE_INVALID,
            "This return code is not known to the shop.",
            reason="unknown_token",
        )
    revoked = row.revoked_at or row.order_revoked
    if revoked is not None:
        raise Problem(
            ProblemType.RETURN_REVOKED,
            f"The shop withdrew this return code on {revoked:%d %B %Y}. Do not accept the return.",
        )
    return outcome.claims


def _redemption(row: Row[Any]) -> Redemption:
    return Redemption(
        redemption_id=row.id,
        token_id=row.token_id,
        order_ref=row.order_ref,
        till_transaction_id=row.till_transaction_id,
        store_id=row.store_id,
        refund_method=row.refund_method,
        lines=[ReturnedLine(**line) for line in row.lines],
        value=row.value,
        created_at=row.created_at,
    )


async def _history(conn: AsyncConnection, tenant_id: str, order_ref: str) -> list[Redemption]:
    rows = await conn.execute(
        select(redemptions)
        .where(redemptions.c.tenant_id == tenant_id, redemptions.c.order_ref == order_ref)
        .order_by(redemptions.c.created_at)
    )
    return [_redemption(row) for row in rows]


async def status(conn: AsyncConnection, tenant_id: str, token: str) -> ReturnStatus:
    """What the till shows after a scan (the token is verified first)."""
    claims = await verify(conn, tenant_id, token)
    order = await _order(conn, tenant_id, claims.order_ref)
    assert order is not None
    rows = {row.line_id: row for row in await _lines(conn, tenant_id, claims.order_ref)}
    return ReturnStatus(
        token_id=claims.token_id_hex,
        order_ref=claims.order_ref,
        issued_at=claims.issued_at,
        expires_at=claims.expires_at,
        revoked=False,
        refund_methods=list(claims.refund_methods),  # type: ignore[arg-type]
        currency=order.currency,
        lines=[
            ReturnLineStatus(
                line_id=line.line_id,
                sku=line.sku,
                name=rows[line.line_id].name,
                quantity=rows[line.line_id].quantity,
                returned=rows[line.line_id].returned,
                remaining=rows[line.line_id].quantity - rows[line.line_id].returned,
                unit_price=rows[line.line_id].unit_price,
            )
            for line in claims.lines
        ],
        redemptions=await _history(conn, tenant_id, claims.order_ref),
    )


async def redeem(
    conn: AsyncConnection, context: TenantContext, request: RedeemRequest
) -> Redemption:
    """Take back units of lines of a verified, unrevoked code, each unit at most once."""
    tenant_id = context.tenant_id
    claims = await verify(conn, tenant_id, request.token)
    order = await _order(conn, tenant_id, claims.order_ref, lock=True)
    assert order is not None
    earlier = (
        await conn.execute(
            select(redemptions).where(
                redemptions.c.tenant_id == tenant_id,
                redemptions.c.till_transaction_id == request.till_transaction_id,
            )
        )
    ).first()
    wanted = {line.line_id: line.quantity for line in request.lines}
    if earlier is not None:
        same = (
            earlier.token_id == claims.token_id_hex
            and {line["line_id"]: line["quantity"] for line in earlier.lines} == wanted
        )
        if not same:
            raise Problem(
                ProblemType.CONFLICT,
                f"till transaction {request.till_transaction_id} already returned something else",
            )
        return _redemption(earlier)
    _check_request(claims, request, wanted)
    rows = {row.line_id: row for row in await _lines(conn, tenant_id, claims.order_ref)}
    for line_id, quantity in wanted.items():
        result = await conn.execute(
            update(return_lines)
            .where(
                return_lines.c.tenant_id == tenant_id,
                return_lines.c.order_ref == claims.order_ref,
                return_lines.c.line_id == line_id,
                return_lines.c.returned + quantity <= return_lines.c.quantity,
            )
            .values(returned=return_lines.c.returned + quantity)
        )
        if result.rowcount != 1:
            await _refuse_already_returned(
                conn, tenant_id, claims, line_id, rows[line_id], quantity
            )
    value = _value(rows, wanted)
    now = utcnow()
    redemption = Redemption(
        redemption_id=new_id("red", 10),
        token_id=claims.token_id_hex,
        order_ref=claims.order_ref,
        till_transaction_id=request.till_transaction_id,
        store_id=request.store_id,
        refund_method=request.refund_method,
        lines=[ReturnedLine(line_id=i, sku=rows[i].sku, quantity=q) for i, q in wanted.items()],
        value=value,
        created_at=now,
    )
    try:
        await _insert_redemption(conn, tenant_id, redemption)
    except IntegrityError:
        # The same till transaction id, at the same moment, on another order's code: its
        # order lock is not ours, so the unique index is what decides (the loser rolls back).
        raise Problem(
            ProblemType.CONFLICT,
            f"till transaction {request.till_transaction_id} already returned something else",
        ) from None
    # The order record of the same reference, if the shop recorded one, is worth that much less.
    await orders.apply_redemption(
        conn,
        tenant_id,
        claims.order_ref,
        redemption.redemption_id,
        [(line.sku, line.quantity) for line in redemption.lines],
        redemption.value,
    )
    if order.customer_id is not None:
        await _record_event(conn, context, order.customer_id, redemption)
    return redemption


async def _insert_redemption(conn: AsyncConnection, tenant_id: str, redemption: Redemption) -> None:
    await conn.execute(
        insert(redemptions).values(
            tenant_id=tenant_id,
            id=redemption.redemption_id,
            token_id=redemption.token_id,
            order_ref=redemption.order_ref,
            till_transaction_id=redemption.till_transaction_id,
            store_id=redemption.store_id,
            refund_method=redemption.refund_method,
            lines=[line.model_dump() for line in redemption.lines],
            value=redemption.value,
            created_at=redemption.created_at,
        )
    )


def _check_request(
    claims: tokens.ReturnClaims, request: RedeemRequest, wanted: dict[str, int]
) -> None:
    if len(wanted) != len(request.lines):
        raise Problem(ProblemType.VALIDATION_ERROR, "name each line once")
    if request.refund_method not in claims.refund_methods:
        allowed = ", ".join(claims.refund_methods)
        raise Problem(
            ProblemType.VALIDATION_ERROR,
            f"this code allows refunds by {allowed} only, not {request.refund_method}",
        )
    on_token = {line.line_id: line.quantity for line in claims.lines}
    for line_id, quantity in wanted.items():
        if line_id not in on_token:
            raise Problem(
                ProblemType.VALIDATION_ERROR, f"line {line_id} is not on this return code"
            )
        if quantity > on_token[line_id]:
            raise Problem(
                ProblemType.VALIDATION_ERROR,
                f"this code allows at most {on_token[line_id]} of line {line_id}",
            )


async def _refuse_already_returned(
    conn: AsyncConnection,
    tenant_id: str,
    claims: tokens.ReturnClaims,
    line_id: str,
    row: Row[Any],
    quantity: int,
) -> None:
    current = (
        await conn.execute(
            select(return_lines.c.returned, return_lines.c.quantity).where(
                return_lines.c.tenant_id == tenant_id,
                return_lines.c.order_ref == claims.order_ref,
                return_lines.c.line_id == line_id,
            )
        )
    ).one()
    left = current.quantity - current.returned
    history = [
        r
        for r in await _history(conn, tenant_id, claims.order_ref)
        if any(line.line_id == line_id for line in r.lines)
    ]
    where = ""
    if history:
        last = history[-1]
        where = f" Already returned at store {last.store_id} on {last.created_at:%d %B %Y}."
    raise Problem(
        ProblemType.ALREADY_RETURNED,
        f"Only {left} of {row.sku} (line {line_id}) can still be returned, not {quantity}.{where}",
        line_id=line_id,
        remaining=left,
    )


def _value(rows: dict[str, Row[Any]], wanted: dict[str, int]) -> float | None:
    prices = [rows[i].unit_price for i in wanted]
    if any(price is None for price in prices):
        return None
    return round(sum(float(rows[i].unit_price) * q for i, q in wanted.items()), 2)


async def _record_event(
    conn: AsyncConnection, context: TenantContext, customer_id: str, redemption: Redemption
) -> None:
    event = EventIn(
        name="return_completed",
        event_id=f"return-{redemption.redemption_id}",
        customer_id=customer_id,
        properties={
            "order_id": redemption.order_ref,
            "store_id": redemption.store_id,
            "refund_method": redemption.refund_method,
            "lines": [line.model_dump() for line in redemption.lines],
            **({"value": redemption.value} if redemption.value is not None else {}),
        },
        channel=Channel.POS,
        timestamp=redemption.created_at,
    )
    await events.ingest(conn, context, Channel.POS, [event])


async def revoke_token(conn: AsyncConnection, tenant_id: str, token_id: str) -> bool:
    """Withdraw a return code; whether this call did (False: it was withdrawn already)."""
    result = await conn.execute(
        update(return_tokens)
        .where(
            return_tokens.c.tenant_id == tenant_id,
            return_tokens.c.token_id == token_id,
            return_tokens.c.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    )
    if not result.rowcount:
        await token_text(conn, tenant_id, token_id)  # 404 if unknown; else already revoked
        return False
    return True


async def revoke_order(conn: AsyncConnection, tenant_id: str, order_ref: str) -> bool:
    """Withdraw every return code of an order; whether this call did (False: already so)."""
    if await _order(conn, tenant_id, order_ref) is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no return order {order_ref!r}")
    result = await conn.execute(
        update(return_orders)
        .where(
            return_orders.c.tenant_id == tenant_id,
            return_orders.c.order_ref == order_ref,
            return_orders.c.revoked_at.is_(None),
        )
        .values(revoked_at=utcnow())
    )
    return bool(result.rowcount)


async def resendable(conn: AsyncConnection, tenant_id: str, live: str) -> dict[str, Any]:
    """Her orders' return codes that can still be used, the latest per order reference (her
    orders: her order records, and the return orders registered for her)."""
    now = utcnow()
    hers = or_(
        return_tokens.c.order_ref.in_(
            select(order_records.c.reference).where(
                order_records.c.tenant_id == tenant_id, order_records.c.customer_id == live
            )
        ),
        return_orders.c.customer_id == live,
    )
    rows = await conn.execute(
        select(return_tokens.c.order_ref, return_tokens.c.token_id, return_tokens.c.expires_at)
        .join(return_orders, OF_ITS_ORDER)
        .where(
            return_tokens.c.tenant_id == tenant_id,
            hers,
            return_tokens.c.revoked_at.is_(None),
            return_orders.c.revoked_at.is_(None),
            return_tokens.c.expires_at > now,
        )
        .order_by(return_tokens.c.issued_at)
    )
    return {row.order_ref: row for row in rows}


async def resend(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    order_ref: str,
    actor: str,
    actor_key_id: str | None,
) -> tuple[str, bool]:
    """Send her the return code of one of her orders again, through message delivery;
    audited and on her timeline. (live id, whether a message was queued: False when the same
    was asked within the minute)."""
    live = await identity.lock_customer(conn, tenant_id, customer_id)
    code = (await resendable(conn, tenant_id, live)).get(order_ref)
    if code is None:
        raise Problem(
            ProblemType.NOT_FOUND,
            f"she has no return code for order {order_ref!r} that can still be used "
            "(none issued, expired or revoked): issue a new one",
        )
    now = utcnow()
    message_id = await alerts.return_code(conn, tenant_id, live, order_ref, code.token_id, now)
    if message_id is None:
        return live, False
    detail = f"order {order_ref}, code {code.token_id}, message {message_id}"
    await audit.record(conn, tenant_id, actor_key_id, "return_code.resent", live, detail)
    properties = {"order_id": order_ref, "token_id": code.token_id, "requested_by": actor}
    await messages.timeline_event(
        conn, tenant_id, live, "return_code_resent", message_id, properties, now
    )
    return live, True
