"""The customer's preferred channel: declared (any channel, latest wins) over observed
(engagement per channel from her events). The rule is `omnisdk.core.preferences`.

`preferred_channel` is what message delivery (issue 20) and the profile read; `declare` is the
one write, from the API (`PUT /v1/customers/{id}/preferred-channel`) and the console.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import preferences as rules
from omnisdk.core.preferences import PreferenceSource, PreferredChannel
from server_stub.ids import new_id, utcnow
from server_stub.services import audit, changes, segment_hook
from server_stub.services.identity import lock_customer
from server_stub.storage.tables import events, preference_declarations

# Observed engagement is read from her latest signals only (bounded, whatever her history).
OBSERVED_SIGNALS = 500
OBSERVED_DAYS = 365


@dataclass(frozen=True)
class Declaration:
    channel: PreferredChannel | None  # None: she withdrew her declaration
    declared_via: str
    actor: str
    declared_at: datetime


async def declared(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str]
) -> Declaration | None:
    """Her latest declaration (over all her ids), or None if she never declared one."""
    row = (
        await conn.execute(
            select(preference_declarations)
            .where(
                preference_declarations.c.tenant_id == tenant_id,
                preference_declarations.c.customer_id.in_(list(customer_ids)),
            )
            .order_by(
                preference_declarations.c.declared_at.desc(), preference_declarations.c.id.desc()
            )
            .limit(1)
        )
    ).first()
    if row is None:
        return None
    channel = PreferredChannel(row.channel) if row.channel else None
    return Declaration(channel, row.declared_via, row.actor, row.declared_at)


async def observed(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str], now: datetime | None = None
) -> PreferredChannel | None:
    """Where she engages most, from her latest engagement events."""
    now = now or utcnow()
    rows = await conn.execute(
        select(events.c.name, events.c.channel, events.c.properties, events.c.occurred_at)
        .where(
            events.c.tenant_id == tenant_id,
            events.c.customer_id.in_(list(customer_ids)),
            events.c.name.in_(sorted(rules.ENGAGEMENT_EVENTS)),
            events.c.occurred_at >= now - timedelta(days=OBSERVED_DAYS),
        )
        .order_by(events.c.occurred_at.desc())
        .limit(OBSERVED_SIGNALS)
    )
    signals = [
        rules.Signal(row.name, row.channel, _message_channel(row.properties), row.occurred_at)
        for row in rows
    ]
    return rules.observed_channel(signals, now)


def _message_channel(properties: object) -> str | None:
    value = properties.get("channel") if isinstance(properties, dict) else None
    return value if isinstance(value, str) else None


async def preferred_channel(
    conn: AsyncConnection, tenant_id: str, customer_ids: Sequence[str]
) -> tuple[str | None, str]:
    """(channel, "declared" | "observed" | "none") for one customer, given her ids (her live
    id, and merged ids if the caller has them). Declared wins over observed."""
    declaration = await declared(conn, tenant_id, customer_ids)
    if declaration is not None and declaration.channel is not None:
        return declaration.channel.value, PreferenceSource.DECLARED.value
    seen = await observed(conn, tenant_id, customer_ids)
    channel, source = rules.preferred(None, seen)
    return (channel.value if channel else None), source.value


async def declare(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    channel: PreferredChannel | None,
    *,
    via: str,
    actor: str,
    actor_key_id: str | None,
) -> tuple[str, bool]:
    """Record her declared preference (None withdraws it); (live id, whether it changed).
    Declaring what she already declared records nothing, so a retried request is harmless."""
    live = await lock_customer(conn, tenant_id, customer_id)
    current = await declared(conn, tenant_id, [live])
    if (current.channel if current else None) == channel:
        return live, False
    now = utcnow()
    await conn.execute(
        insert(preference_declarations).values(
            tenant_id=tenant_id,
            id=new_id("prf", 10),
            customer_id=live,
            origin_customer_id=live,
            channel=channel.value if channel else None,
            declared_via=via,
            actor=actor,
            declared_at=now,
        )
    )
    detail = f"preferred channel {channel.value if channel else 'withdrawn'} (via {via})"
    await audit.record(conn, tenant_id, actor_key_id, "preference.declared", live, detail)
    payload = {"preferred_channel": channel.value if channel else None, "via": via}
    await changes.publish(conn, tenant_id, live, "preference", payload)
    await segment_hook.profile_changed(conn, tenant_id, [live])
    return live, True


async def history(conn: AsyncConnection, tenant_id: str, live: str) -> list[Declaration]:
    rows = await conn.execute(
        select(preference_declarations)
        .where(
            preference_declarations.c.tenant_id == tenant_id,
            preference_declarations.c.customer_id == live,
        )
        .order_by(preference_declarations.c.declared_at.desc())
        .limit(50)
    )
    return [
        Declaration(
            PreferredChannel(row.channel) if row.channel else None,
            row.declared_via,
            row.actor,
            row.declared_at,
        )
        for row in rows
    ]
