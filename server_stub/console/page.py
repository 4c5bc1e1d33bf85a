"""What the console shows of one customer: every department's single customer view."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.identifiers import IdentifierKey, IdentifierType
from omnisdk.models import (
    Annotation,
    ConsentDecisionView,
    ConsentState,
    EventView,
    Merge,
    OrderView,
    Profile,
)
from server_stub.services import (
    consent,
    identity,
    notes,
    orders,
    preferences,
    profile,
    returns,
    segments,
)
from server_stub.services.tenant_context import TenantContext
from server_stub.storage.tables import annotation_revisions, annotations_table, events, identifiers

TIMELINE = 50
ORDERS = 100
UA_EVENTS = 200


@dataclass(frozen=True)
class Device:
    label: str  # "Phone (iPhone, Safari)"
    identifier: str
    channel: str | None
    first_seen: datetime
    last_seen: datetime | None
    user_agent: str | None


@dataclass(frozen=True)
class TimelineItem:
    at: datetime
    channel: str
    what: str
    detail: str
    kind: str  # "event" | "note"


@dataclass
class CustomerPage:
    profile: Profile
    devices: list[Device]
    timeline: list[TimelineItem]
    next_cursor: str | None
    orders: list[OrderView]
    consent: ConsentState
    consent_history: list[ConsentDecisionView]
    notes: list[Annotation]
    merges: list[Merge]
    declared: preferences.Declaration | None
    segment_names: list[str]
    return_codes: dict[str, datetime]  # order reference: until when its code can be used
    filters: dict[str, str] = field(default_factory=dict)


_FAMILIES = (
    ("iPhone", "iPhone"),
    ("iPad", "iPad"),
    ("Android", "Android"),
    ("Windows", "Windows"),
    ("Macintosh", "Mac"),
    ("Linux", "Linux"),
)
_BROWSERS = (
    ("Edg/", "Edge"),
    ("Firefox/", "Firefox"),
    ("Chrome/", "Chrome"),
    ("Safari/", "Safari"),
)


def user_agent_family(agent: str | None) -> str | None:
    """A readable family of a User-Agent string ("iPhone, Safari"), or None."""
    if not agent:
        return None
    system = next((name for mark, name in _FAMILIES if mark in agent), None)
    browser = next((name for mark, name in _BROWSERS if mark in agent), None)
    found = ", ".join(part for part in (system, browser) if part)
    return found or re.sub(r"[^\w .-]", "", agent)[:40]


def _device_kind(family: str | None, channel: str | None) -> str:
    if family and any(p in family for p in ("iPhone", "Android")):
        return "Phone"
    if family and "iPad" in family:
        return "Tablet"
    if family and any(p in family for p in ("Windows", "Mac", "Linux")):
        return "Computer"
    return {"app": "App", "pos": "Till", "web": "Browser"}.get(channel or "", "Device")


async def _devices(conn: AsyncConnection, tenant_id: str, live: str) -> list[Device]:
    """Her anonymous ids (browsers, apps) with what her events say about them: the channel
    and user agent of the latest event naming the device (`properties.device_id` or
    `properties.anonymous_id`), else of her channel's latest event."""
    rows = list(
        await conn.execute(
            select(identifiers.c.value, identifiers.c.linked_at).where(
                identifiers.c.tenant_id == tenant_id,
                identifiers.c.customer_id == live,
                identifiers.c.type == IdentifierType.ANONYMOUS.value,
            )
        )
    )
    recent = list(
        await conn.execute(
            select(events.c.channel, events.c.properties, events.c.occurred_at)
            .where(events.c.tenant_id == tenant_id, events.c.customer_id == live)
            .order_by(events.c.occurred_at.desc())
            .limit(UA_EVENTS)
        )
    )
    devices = []
    for row in rows:
        mine = [
            e
            for e in recent
            if isinstance(e.properties, dict)
            and row.value in (e.properties.get("device_id"), e.properties.get("anonymous_id"))
        ]
        latest = mine[0] if mine else None
        agent = latest.properties.get("user_agent") if latest else None
        family = user_agent_family(agent if isinstance(agent, str) else None)
        channel = latest.channel if latest else None
        kind = _device_kind(family, channel)
        label = f"{kind} ({family})" if family else kind
        devices.append(
            Device(
                label,
                IdentifierKey(IdentifierType.ANONYMOUS, row.value).masked().split(":", 1)[1],
                channel,
                min([row.linked_at, *(e.occurred_at for e in mine)]),
                latest.occurred_at if latest else None,
                family,
            )
        )
    return sorted(devices, key=lambda d: d.first_seen)


async def _note_history(
    conn: AsyncConnection, tenant_id: str, live: str, reader: notes.Author
) -> list[TimelineItem]:
    """What happened to the notes she may see, for the timeline."""
    visible = {
        note.annotation_id
        for note in await notes.listed(conn, tenant_id, live, reader, include_deleted=True)
    }
    if not visible:
        return []
    rows = await conn.execute(
        select(annotation_revisions, annotations_table.c.department)
        .join(
            annotations_table,
            (annotations_table.c.tenant_id == annotation_revisions.c.tenant_id)
            & (annotations_table.c.id == annotation_revisions.c.annotation_id),
        )
        .where(
            annotation_revisions.c.tenant_id == tenant_id,
            annotation_revisions.c.annotation_id.in_(visible),
        )
        .order_by(annotation_revisions.c.edited_at.desc())
        .limit(TIMELINE)
    )
    return [
        TimelineItem(
            row.edited_at,
            "console",
            f"note {row.action}",
            f"{row.editor} ({row.editor_department}): {row.reason or row.text}",
            "note",
        )
        for row in rows
    ]


def _event_item(event: EventView) -> TimelineItem:
    shown = {k: v for k, v in event.properties.items() if k not in ("user_agent",)}
    detail = ", ".join(f"{k}={v}" for k, v in list(shown.items())[:6])
    return TimelineItem(event.occurred_at, event.channel.value, event.name, detail, "event")


async def timeline(
    conn: AsyncConnection,
    tenant_id: str,
    live: str,
    reader: notes.Author,
    filters: dict[str, str],
    cursor: str | None,
) -> tuple[list[TimelineItem], str | None]:
    """Her events across channels and her notes' history, newest first, filtered."""
    channel = filters.get("channel", "")
    name = filters.get("name", "")
    if channel or name:
        query = (
            select(events)
            .where(events.c.tenant_id == tenant_id, events.c.customer_id == live)
            .order_by(events.c.occurred_at.desc(), events.c.seq.desc())
            .limit(TIMELINE)
        )
        if channel and channel != "console":
            query = query.where(events.c.channel == channel)
        if name:
            query = query.where(events.c.name.like(f"{name.replace('%', '')}%"))
        items = (
            []
            if channel == "console"
            else [_event_item(profile.event_view(row)) for row in await conn.execute(query)]
        )
        more = None
    else:
        page = await profile.timeline(conn, tenant_id, live, TIMELINE, cursor)
        items, more = [_event_item(e) for e in page.items], page.next_cursor
    if (not channel or channel == "console") and not name and cursor is None:
        items += await _note_history(conn, tenant_id, live, reader)
    items.sort(key=lambda item: item.at, reverse=True)
    return items, more


async def customer_page(
    conn: AsyncConnection,
    context: TenantContext,
    live: str,
    reader: notes.Author,
    filters: dict[str, str],
    cursor: str | None = None,
) -> CustomerPage:
    tenant_id = context.tenant_id
    seen = await profile.get_profile(conn, context, live, reader)
    items, more = await timeline(conn, tenant_id, live, reader, filters, cursor)
    return CustomerPage(
        profile=seen,
        devices=await _devices(conn, tenant_id, live),
        timeline=items,
        next_cursor=more,
        orders=await orders.orders_of(conn, tenant_id, [live], limit=ORDERS),
        consent=await consent.read_state(conn, context, live, None),
        consent_history=(await consent.history(conn, tenant_id, live)).items,
        notes=seen.annotations,  # the profile read them for this reader
        merges=await identity.merges_of(conn, tenant_id, live),
        declared=await preferences.declared(conn, tenant_id, [live]),
        segment_names=seen.segments,
        return_codes={
            ref: code.expires_at
            for ref, code in (await returns.resendable(conn, tenant_id, live)).items()
        },
        filters=filters,
    )


async def counts(conn: AsyncConnection, tenant_id: str) -> dict[str, Any]:
    """Segments with their member counts, for the search page."""
    return {record.name: record.members for record in await segments.listed(conn, tenant_id)}


async def event_count(conn: AsyncConnection, tenant_id: str, live: str) -> int:
    found = await conn.execute(
        select(func.count()).where(events.c.tenant_id == tenant_id, events.c.customer_id == live)
    )
    return int(found.scalar_one())
