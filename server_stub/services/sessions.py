"""Session documents on the server (rules in omnisdk.core.session).

Writes to a customer's session are serialised by the customer's lock (identity.lock_customer,
taken before the session row even exists), so two first writes from two devices both
survive; each key is last-writer-wins by (time, channel, value), one winner on every read.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core import session as rules
from omnisdk.core.problems import ProblemType
from omnisdk.models import SessionEntryView, SessionView, SessionWrite
from server_stub.errors import Problem
from server_stub.ids import utcnow
from server_stub.services import changes
from server_stub.storage.tables import sessions


async def _document(
    conn: AsyncConnection, tenant_id: str, customer_id: str, lock: bool = False
) -> rules.Document:
    query = select(sessions.c.document).where(
        sessions.c.tenant_id == tenant_id, sessions.c.customer_id == customer_id
    )
    row = (await conn.execute(query.with_for_update() if lock else query)).first()
    return rules.from_json(row.document) if row else {}


async def _store(
    conn: AsyncConnection, tenant_id: str, customer_id: str, document: rules.Document
) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"document": rules.to_json(document), "updated_at": utcnow()}
    await conn.execute(
        dialect.insert(sessions)
        .values(tenant_id=tenant_id, customer_id=customer_id, **values)
        .on_conflict_do_update(index_elements=["tenant_id", "customer_id"], set_=values)
    )


def view(customer_id: str, document: rules.Document, now: float) -> SessionView:
    return SessionView(
        customer_id=customer_id,
        entries={
            key: SessionEntryView(
                value=entry.value,
                channel=entry.channel,
                written_at=datetime.fromtimestamp(entry.at, UTC),
                expires_at=datetime.fromtimestamp(entry.expires_at, UTC),
            )
            for key, entry in rules.live(document, now).items()
        },
    )


async def read(conn: AsyncConnection, tenant_id: str, customer_id: str) -> SessionView:
    return view(customer_id, await _document(conn, tenant_id, customer_id), utcnow().timestamp())


async def write(
    conn: AsyncConnection,
    tenant_id: str,
    customer_id: str,
    body: SessionWrite,
    channel: str,
    addressed_to: str | None = None,
) -> SessionView:
    """Write to the live customer `customer_id` (locked by the caller); `addressed_to`, the
    id the writer named, if it was merged into it (a split gives those entries back)."""
    now = utcnow().timestamp()
    document = await _document(conn, tenant_id, customer_id, lock=True)
    addressed = addressed_to if addressed_to != customer_id else None
    try:
        document = rules.write(
            rules.prune(document, now), body.entries, channel, now, body.ttl_seconds, addressed
        )
    except rules.SessionError as error:
        raise Problem(ProblemType.VALIDATION_ERROR, str(error)) from error
    await _store(conn, tenant_id, customer_id, document)
    result = view(customer_id, document, now)
    await changes.publish(conn, tenant_id, customer_id, "session", result.model_dump(mode="json"))
    return result


async def merge(
    conn: AsyncConnection, tenant_id: str, survivor_id: str, loser_id: str
) -> dict[str, Any] | None:
    """Merge the loser's session into the survivor's; the loser's document (for a split)."""
    loser = await _document(conn, tenant_id, loser_id)
    if not loser:
        return None
    survivor = await _document(conn, tenant_id, survivor_id, lock=True)
    await _store(conn, tenant_id, survivor_id, rules.merge(survivor, loser))
    await conn.execute(
        sessions.delete().where(
            sessions.c.tenant_id == tenant_id, sessions.c.customer_id == loser_id
        )
    )
    return rules.to_json(loser)


async def split(
    conn: AsyncConnection,
    tenant_id: str,
    survivor_id: str,
    loser_id: str,
    origins: Iterable[str],
    loser: dict[str, Any] | None,
) -> None:
    """Undo a session merge: the loser gets its document back as it was at the merge, plus
    what was written since to its id or to the ids merged into it before (`origins`); the
    survivor keeps what it wrote itself, without the loser's entries nobody wrote over since."""
    at_merge = rules.from_json(loser or {})
    current = await _document(conn, tenant_id, survivor_id, lock=True)
    kept, written_since = rules.hand_back(current, set(origins))
    given = rules.merge(at_merge, written_since)
    mine = {key: entry for key, entry in kept.items() if at_merge.get(key) != entry}
    if mine != current:
        await _store(conn, tenant_id, survivor_id, mine)
        now = utcnow().timestamp()
        changed = view(survivor_id, mine, now).model_dump(mode="json")
        await changes.publish(conn, tenant_id, survivor_id, "session", changed)
    if given:
        await _store(conn, tenant_id, loser_id, given)
