"""The order a scan opens, and the review the clerk's form makes of it: pure rules, no I/O.

Lines are shown in the order people count them; the units typed are checked against what is
left (or, offline, what the code allows), the refund method against the code's, and an offline
amount must be more than 0. The till transaction id is made here, with the review, so that a
confirm sent twice is one return.
"""

from __future__ import annotations

import re
import uuid

from babel.numbers import NumberFormatError, parse_decimal
from starlette.datastructures import FormData

from omnisdk.core import tokens
from omnisdk.models import ReturnStatus
from server_stub.pos.language import Words
from server_stub.pos.tills import LineView, Review

MAX_AMOUNT = 1_000_000.0


def natural(line_id: str) -> tuple[tuple[int, int | str], ...]:
    """Line ids in the order people count them: 1, 2, 10 (not 1, 10, 2)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", line_id)
        if part
    )


def lines_of(verification: tokens.Verification, status: ReturnStatus | None) -> list[LineView]:
    assert verification.claims is not None
    known = {line.line_id: line for line in status.lines} if status else {}
    views = []
    for line in verification.claims.lines:
        current = known.get(line.line_id)
        views.append(
            LineView(
                line.line_id,
                line.sku,
                current.name if current else None,
                line.quantity,
                current.remaining if current else None,
                current.unit_price if current else None,
            )
        )
    return sorted(views, key=lambda view: natural(view.line_id))


def draft(
    words: Words,
    form: FormData,
    verification: tokens.Verification,
    status: ReturnStatus | None,
    till_id: str,
) -> Review | str:
    """The review of what the clerk typed, or what to correct."""
    assert verification.claims is not None
    claims = verification.claims
    lines = lines_of(verification, status)
    units: dict[str, int] = {}
    for line in lines:
        typed = str(form.get(f"qty-{line.line_id}", "")).strip() or "0"
        if not (typed.isascii() and typed.isdigit()):
            return words("Type the number of units of %(item)s as a whole number.", item=line.label)
        count = int(typed)
        if count > line.most:
            return words(
                "At most %(most)s of %(item)s can be taken back.", most=line.most, item=line.label
            )
        if count:
            units[line.line_id] = count
    if not units:
        return words("Type how many units to take back (at least one).")
    method = str(form.get("refund_method", ""))
    if method not in claims.refund_methods:
        return words("Choose how the money goes back.")
    amount = None
    if status is None:
        amount = amount_of(str(form.get("amount", "")), words.language)
        if amount is None:
            return words(
                "The till is offline: type the amount you refund, more than 0 (for example 89.00)."
            )
    return Review(
        transaction=f"{till_id}-{uuid.uuid4().hex[:12]}",
        token=str(form.get("token", "")).strip(),
        order_ref=claims.order_ref,
        units=units,
        refund_method=method,
        lines=tuple(lines),
        currency=status.currency if status else None,
        offline_amount=amount,
    )


AMOUNT_CHARACTERS = re.compile(r"[0-9.,\u00a0\u202f ]+")


def amount_of(text: str, language: str = "en") -> float | None:
    """The amount a clerk typed, read the way the store's locale writes money (Babel, strict):
    "1 234,50" in Polish, "1,234.50" in English; None if it is not plainly an amount above 0.

    Strict parsing refuses what a locale would misread ("1,234" is 1234 in English, never
    1.234), and only digits, separators and spaces are taken (no "nan", "1e5" or "-5").
    """
    cleaned = text.strip()
    if not AMOUNT_CHARACTERS.fullmatch(cleaned):
        return None
    # Polish groups thousands with a no-break space; a keyboard types a plain one.
    cleaned = re.sub(r"[ \u202f]", "\u00a0", cleaned)
    try:
        value = float(parse_decimal(cleaned, locale=language, strict=True))
    except NumberFormatError:
        return None
    if value != round(value, 2):  # "1.234" is a misread 1234, never 1.234
        return None
    return value if 0 < value <= MAX_AMOUNT else None
