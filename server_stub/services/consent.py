"""The consent ledger on the server (rules in omnisdk.core.consent).

Decisions are appended, never changed; the state is computed from them on every read. A
decision follows its customer through a merge (the row's `customer_id`) and keeps the customer
it was recorded for (`origin_customer_id`), which is what the merge rule and a split need.
Every recorded decision publishes the new state on the customer's change feed, in the same
transaction, so every channel's cache learns of a withdrawal as soon as it commits.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, NamedTuple

from sqlalchemy import Row, bindparam, func, insert, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import consent as rules
from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    Confirmation,
    ConsentDecisionIn,
    ConsentDecisionView,
    ConsentHistory,
    ConsentState,
    PurposeStateView,
    RecordConsentResult,
)
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import changes, segment_hook
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.prepared import ID_IN, Prepared, id_list
from server_stub.storage.tables import consent_decisions

CONFIRMATION_CONTEXT = b"omnisdk consent confirmation v1"
MAX_QUEUED_AGE = timedelta(days=30)


def confirmation_key(context: TenantContext) -> bytes:
    return hmac.new(context.secret, CONFIRMATION_CONTEXT, hashlib.sha256).digest()


def _rule(row: Any) -> rules.Decision:
    """The rule's view of a stored decision (a row, or the values about to be inserted)."""
    return rules.Decision(
        at=row.recorded_at.timestamp(),
        purpose=row.purpose,
        status=rules.Status(row.status),
        scope=rules.ConsentScope(row.scope),
        device_id=row.device_id,
        notice_version=row.notice_version,
        channel=row.channel,
        decision_id=row.id,
        origin=row.origin_customer_id,
    )


def view(row: Any) -> ConsentDecisionView:
    return ConsentDecisionView(
        id=row.id,
        purpose=row.purpose,
        status=rules.Status(row.status),
        scope=rules.ConsentScope(row.scope),
        device_id=row.device_id,
        channel=Channel(row.channel),
        source=row.source,
        method=row.method,
        notice_id=row.notice_id,
        notice_version=row.notice_version,
        notice_sha256=row.notice_sha256,
        client_time=row.client_time,
        recorded_at=row.recorded_at,
        confirms=row.confirms,
    )


async def ledger(
    conn: AsyncConnection, tenant_id: str, customer_ids: Iterable[str], purpose: str | None = None
) -> list[Row[Any]]:
    query = select(consent_decisions).where(
        consent_decisions.c.tenant_id == tenant_id,
        consent_decisions.c.customer_id.in_(set(customer_ids)),
    )
    if purpose is not None:
        query = query.where(consent_decisions.c.purpose == purpose)
    return list(await conn.execute(query.order_by(consent_decisions.c.recorded_at)))


def state_view(
    context: TenantContext,
    customer_id: str,
    decisions: Iterable[rules.Decision],
    device_id: str | None,
) -> ConsentState:
    current = rules.state(decisions, device_id, skew=context.settings.consent.skew_seconds)
    return ConsentState(
        customer_id=customer_id,
        device_id=device_id,
        purposes={
            purpose: PurposeStateView(
                granted=s.granted,
                status=s.status,
                decided_at=datetime.fromtimestamp(s.decided_at, UTC) if s.decided_at else None,
                reprompt=s.reprompt,
            )
            for purpose, s in current.items()
        },
        consent_mode=rules.consent_mode(current),  # type: ignore[arg-type]
    )


async def read_state(
    conn: AsyncConnection, context: TenantContext, customer_id: str, device_id: str | None
) -> ConsentState:
    rows = await ledger(conn, context.tenant_id, [customer_id])
    return state_view(context, customer_id, [_rule(row) for row in rows], device_id)


async def history(conn: AsyncConnection, tenant_id: str, customer_id: str) -> ConsentHistory:
    rows = await ledger(conn, tenant_id, [customer_id])
    return ConsentHistory(customer_id=customer_id, items=[view(row) for row in rows])


def _standing_of_scope(
    ledger_rows: list[rules.Decision],
    purpose: str,
    scope: rules.ConsentScope,
    device_id: str | None,
    skew: float,
) -> rules.PurposeState | None:
    same = [
        d
        for d in ledger_rows
        if d.purpose == purpose
        and d.scope is scope
        and (scope is rules.ConsentScope.PERSON or d.device_id == device_id)
    ]
    if not same:
        return None
    return rules.state(same, device_id, skew=skew).get(purpose)


def _problem(error: rules.ConsentError) -> Problem:
    if error.kind == "unknown-purpose":
        return Problem(ProblemType.UNKNOWN_PURPOSE, str(error))
    return Problem(ProblemType.INVALID_CONSENT_TRANSITION, str(error))


async def record(
    conn: AsyncConnection,
    context: TenantContext,
    customer_id: str,
    decisions: list[ConsentDecisionIn],
    channel: Channel,
    *,
    confirms: str | None = None,
) -> RecordConsentResult:
    """Append `decisions` for the (live) customer, in order; all or nothing."""
    settings = context.settings.consent
    tenant_id = context.tenant_id
    rows = await ledger(conn, tenant_id, [customer_id])
    known = [_rule(row) for row in rows]
    last = max((row.recorded_at for row in rows), default=None)
    now = utcnow()
    values: list[dict[str, Any]] = []
    confirmations: list[Confirmation] = []
    for decision in decisions:
        try:
            rules.check_purpose(decision.purpose, settings.purposes)
            if (decision.scope is rules.ConsentScope.DEVICE) != (decision.device_id is not None):
                raise Problem(
                    ProblemType.VALIDATION_ERROR,
                    "device_id is required for device scope and only for it",
                )
            if decision.queued and decision.client_time is not None:
                # Decided offline earlier: it takes its place in time, not at its arrival.
                at = min(max(decision.client_time, now - MAX_QUEUED_AGE), now)
                before = [d for d in known if d.at < at.timestamp()]
            else:
                # Strictly increasing per customer, so "the latest decision" is never a tie.
                at = now if last is None or now > last else last + timedelta(microseconds=1)
                last = at
                before = known
            current = _standing_of_scope(
                before, decision.purpose, decision.scope, decision.device_id, settings.skew_seconds
            )
            rules.check_transition(current, decision.status)
        except rules.ConsentError as error:
            raise _problem(error) from error
        status = decision.status
        if (
            status is rules.Status.GRANTED
            and confirms is None
            and decision.purpose in (settings.double_opt_in)
        ):
            status = rules.Status.PENDING
        decision_id = new_id("cns", 10)
        notice = decision.notice
        values.append(
            {
                "tenant_id": tenant_id,
                "id": decision_id,
                "customer_id": customer_id,
                "origin_customer_id": customer_id,
                "purpose": decision.purpose,
                "status": status.value,
                "scope": decision.scope.value,
                "device_id": decision.device_id,
                "channel": channel.value,
                "source": decision.source,
                "method": decision.method,
                "notice_id": notice.id if notice else None,
                "notice_version": notice.version if notice else 0,
                "notice_sha256": notice.text_sha256 if notice else None,
                "client_time": decision.client_time,
                "recorded_at": at,
                "confirms": confirms,
            }
        )
        known.append(_rule(SimpleNamespace(**values[-1])))
        if status is rules.Status.PENDING:
            expires = at + timedelta(hours=settings.confirmation_ttl_hours)
            token = rules.issue_confirmation(
                confirmation_key(context),
                {"t": tenant_id, "d": decision_id, "exp": int(expires.timestamp())},
            )
            confirmations.append(
                Confirmation(
                    purpose=decision.purpose,
                    decision_id=decision_id,
                    token=token,
                    expires_at=expires,
                )
            )
    await conn.execute(insert(consent_decisions), values)
    state = state_view(context, customer_id, known, None)
    await publish(conn, tenant_id, customer_id, state)
    return RecordConsentResult(
        state=state,
        recorded=[view(SimpleNamespace(**value)) for value in values],
        confirmations=confirmations,
    )


async def publish(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    state: ConsentState | None,
    also: Iterable[str] = (),
) -> None:
    """Tell every channel the customer's consent changed (`also`: ids merged into it)."""
    payload: dict[str, Any] = {"customer_id": customer_id, "merged_ids": sorted(also)}
    if state is not None:
        payload["state"] = state.model_dump(mode="json")
    await changes.publish(conn, tenant_id, customer_id, "consent", payload)
    if customer_id:  # consent is part of the profile segments test (issue 19)
        await segment_hook.profile_changed(conn, tenant_id, [customer_id])


async def confirm(
    conn: AsyncConnection, context: TenantContext, token: str, channel: Channel
) -> RecordConsentResult:
    """The customer clicked the link of the opt-in e-mail: the pending grant becomes a grant."""
    from server_stub.services.identity import lock_customer

    try:
        claims = rules.read_confirmation(confirmation_key(context), token, utcnow().timestamp())
    except rules.ConfirmationInvalid as error:
        raise Problem(ProblemType.CONFIRMATION_TOKEN_INVALID, str(error)) from error
    if claims.get("t") != context.tenant_id:
        raise Problem(ProblemType.CONFIRMATION_TOKEN_INVALID, "this token is another shop's")
    pending = (
        await conn.execute(
            select(consent_decisions).where(
                consent_decisions.c.tenant_id == context.tenant_id,
                consent_decisions.c.id == str(claims.get("d")),
            )
        )
    ).first()
    if pending is None or pending.status != rules.Status.PENDING.value:
        raise Problem(
            ProblemType.CONFIRMATION_TOKEN_INVALID,
            "the opt-in this token confirms no longer exists",
        )
    # Locked like every write to a customer, so that no merge interleaves (identity.py).
    customer_id = await lock_customer(conn, context.tenant_id, pending.customer_id)
    already = (
        await conn.execute(
            select(func.count()).where(
                consent_decisions.c.tenant_id == context.tenant_id,
                consent_decisions.c.confirms == pending.id,
            )
        )
    ).scalar()
    if already:
        raise Problem(ProblemType.INVALID_CONSENT_TRANSITION, "this opt-in is already confirmed")
    rows = await ledger(conn, context.tenant_id, [customer_id], pending.purpose)
    scope = rules.ConsentScope(pending.scope)
    standing = _standing_of_scope(
        [_rule(row) for row in rows],
        pending.purpose,
        scope,
        pending.device_id,
        context.settings.consent.skew_seconds,
    )
    if standing is None or standing.status is not rules.Status.PENDING:
        raise Problem(
            ProblemType.INVALID_CONSENT_TRANSITION,
            f"a later decision ({standing.status.value if standing and standing.status else '-'})"
            " replaced this opt-in; it can no longer be confirmed",
        )
    decision = ConsentDecisionIn(
        purpose=pending.purpose,
        status=rules.Status.GRANTED,
        scope=scope,
        device_id=pending.device_id,
        source="email_double_opt_in",
        method="double_opt_in",
        notice=(
            {  # type: ignore[arg-type]
                "id": pending.notice_id,
                "version": pending.notice_version,
                "text_sha256": pending.notice_sha256,
            }
            if pending.notice_id
            else None
        ),
    )
    return await record(conn, context, customer_id, [decision], channel, confirms=pending.id)


# --- what other features ask ---------------------------------------------------------------


class _LedgerRow(NamedTuple):
    customer_id: str
    recorded_at: datetime
    purpose: str
    status: str
    scope: str
    device_id: str | None
    notice_version: int
    channel: str
    id: str
    origin_customer_id: str


# The person-scoped analytics decisions of a batch's customers, in one statement whatever
# their number (storage/prepared.py, ID_IN).
_ANALYTICS_LEDGER = {
    dialect: Prepared(
        select(*(consent_decisions.c[name] for name in _LedgerRow._fields))
        .where(
            consent_decisions.c.tenant_id == bindparam("tenant"),
            text(ids.format(column="consent_decisions.customer_id")),
            consent_decisions.c.purpose == "analytics",
            consent_decisions.c.scope == rules.ConsentScope.PERSON.value,
        )
        .order_by(consent_decisions.c.recorded_at)
    )
    for dialect, ids in ID_IN.items()
}


async def analytics_allowed(
    conn: AsyncConnection, context: TenantContext, asked: Iterable[tuple[str, datetime]]
) -> dict[tuple[str, datetime], bool]:
    """Per (live) customer and time: may her behavioural event of that time keep her identity?
    Judged by the ledger as it stood at the event's time (DESIGN: consent), so an event made
    before her analytics grant, or after her withdrawal, stays anonymous however late it
    arrives."""
    wanted = set(asked)
    customer_ids = {customer for customer, _ in wanted}
    rows = await _ANALYTICS_LEDGER[conn.dialect.name].fetchall(
        conn, {"tenant": context.tenant_id, "ids": id_list(conn, customer_ids)}
    )
    by_customer: dict[str, list[rules.Decision]] = {customer: [] for customer in customer_ids}
    for row in map(_LedgerRow._make, rows):
        by_customer[row.customer_id].append(_rule(row))
    opt_in = context.settings.consent.analytics == "opt_in"
    skew = context.settings.consent.skew_seconds
    allowed = {}
    for customer, when in wanted:
        decisions = by_customer[customer]
        if not decisions:  # no decision at any time: the basis alone decides
            allowed[customer, when] = not opt_in
            continue
        current = rules.state_at(decisions, when.timestamp(), skew=skew).get("analytics")
        if opt_in:
            allowed[customer, when] = current is not None and current.granted
        else:
            allowed[customer, when] = current is None or current.status not in (
                rules.Status.DENIED,
                rules.Status.WITHDRAWN,
            )
    return allowed


# --- identity merges and splits ---------------------------------------------------------------


async def merge(conn: AsyncConnection, tenant_id: str, survivor_id: str, loser_id: str) -> bool:
    """The loser's decisions follow it to the survivor (each keeps its origin); True if any."""
    moved = await conn.execute(
        update(consent_decisions)
        .where(
            consent_decisions.c.tenant_id == tenant_id,
            consent_decisions.c.customer_id == loser_id,
        )
        .values(customer_id=survivor_id)
    )
    return bool(moved.rowcount)


async def split(
    conn: AsyncConnection, tenant_id: str, survivor_id: str, loser_id: str, origins: list[str]
) -> None:
    await conn.execute(
        update(consent_decisions)
        .where(
            consent_decisions.c.tenant_id == tenant_id,
            consent_decisions.c.customer_id == survivor_id,
            consent_decisions.c.origin_customer_id.in_(origins),
        )
        .values(customer_id=loser_id)
    )
