"""Annotations (notes): what each department knows about a customer (issue 19).

A note has an author, a department, a kind (note, warning, preference, promise), a visibility
(its own department, all staff, or also the customer in her export), a pin and an expiry.
Edits keep every revision; deletion is soft with a reason. Every change is audited and
published on the customer's change feed (the console's timeline shows them with her events).
Notes follow merges and splits (services/identity.py) and go with an erasure (privacy.py).

Who may change a note (`may_change`): its author, within `EDIT_WINDOW` of writing it; a
`lead` every note of her department; an `admin` every note. A shop backend's key (no staff
member) is the author named in the request, and only for notes written with that same key;
an `admin`-channel key counts as an admin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Row, and_, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from omnisdk.core.channels import Channel
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    Annotation,
    AnnotationDeletion,
    AnnotationEdit,
    AnnotationIn,
    AnnotationKind,
    AnnotationRevision,
    AnnotationVisibility,
    Principal,
)
from server_stub.errors import Problem
from server_stub.ids import new_id, utcnow
from server_stub.services import audit, changes, staff
from server_stub.services.identity import lock_customer
from server_stub.services.staff import Role
from server_stub.storage.tables import annotation_revisions, annotations_table

EDIT_WINDOW = timedelta(hours=24)
MAX_LISTED = 200


@dataclass(frozen=True)
class Author:
    """Who reads or writes: a staff member, or a shop backend naming its author."""

    name: str
    department: str | None  # None: a shop backend that did not say (reads only)
    role: Role | None  # None: a shop backend's key
    key_id: str | None


async def author_of(
    conn: AsyncConnection,
    principal: Principal,
    name: str | None = None,
    department: str | None = None,
) -> Author:
    """The author of a request: its key's staff member, else the name and department it sent
    (an `admin`-channel key acting as an admin)."""
    member = await staff.of_key(conn, principal.tenant_id, principal.key_id)
    if member is not None:
        return Author(member.name, member.department, member.role, member.key_id)
    role = Role.ADMIN if principal.channel is Channel.ADMIN else None
    return Author(name or principal.key_id, department, role, principal.key_id)


# A shop backend's key reads as no department: it sees the notes for all staff. The
# department a request names is who wrote a note, never who may read one (else any web key
# read a department's private notes by naming it).
BACKEND_READER = Author(name="", department=None, role=None, key_id=None)


async def reader_of(conn: AsyncConnection, principal: Principal) -> Author:
    """Who reads notes through this request: its key's staff member, an admin-channel key as
    an admin, else a shop backend (the notes for all staff)."""
    member = await staff.of_key(conn, principal.tenant_id, principal.key_id)
    if member is not None:
        return Author(member.name, member.department, member.role, member.key_id)
    if principal.channel is Channel.ADMIN:
        return Author(principal.key_id, None, Role.ADMIN, principal.key_id)
    return BACKEND_READER


def can_see(row: Any, reader: Author) -> bool:
    if row.visibility != AnnotationVisibility.DEPARTMENT:
        return True
    return reader.role is Role.ADMIN or reader.department == row.department


def may_change(row: Any, actor: Author, now: datetime) -> bool:
    """The permission rule of the module docstring."""
    if not can_see(row, actor):
        return False
    if actor.role is Role.ADMIN:
        return True
    if actor.role is Role.LEAD and actor.department == row.department:
        return True
    own = row.author_key_id is not None and row.author_key_id == actor.key_id
    if actor.role is None:  # a shared backend key: also the same named author
        own = own and row.author == actor.name and row.department == actor.department
    return own and now - row.created_at <= EDIT_WINDOW


def view(row: Row[Any]) -> Annotation:
    return Annotation(
        annotation_id=row.id,
        department=row.department,
        author=row.author,
        text=row.text,
        kind=AnnotationKind(row.kind),
        visibility=AnnotationVisibility(row.visibility),
        pinned=row.pinned,
        expires_at=row.expires_at,
        created_at=row.created_at,
        revision=row.revision,
        updated_at=row.updated_at,
        deleted_at=row.deleted_at,
        delete_reason=row.delete_reason,
    )


async def _revision(
    conn: AsyncConnection, tenant_id: str, row: Any, action: str, editor: Author, reason: str | None
) -> None:
    await conn.execute(
        insert(annotation_revisions).values(
            tenant_id=tenant_id,
            annotation_id=row.id,
            revision=row.revision,
            action=action,
            text=row.text,
            kind=row.kind,
            visibility=row.visibility,
            pinned=row.pinned,
            expires_at=row.expires_at,
            editor=editor.name,
            editor_department=editor.department or "",
            reason=reason,
            edited_at=row.updated_at or row.created_at,
        )
    )


async def _announce(
    conn: AsyncConnection,
    tenant_id: str,
    row: Any,
    action: str,
    actor: Author,
    was_visible: str | None = None,
) -> None:
    """Audit the change and publish it on her feed when the note is, or was until this
    change (`was_visible`, an edit's former visibility), seen beyond its department."""
    detail = f"{action} annotation {row.id} ({row.department}, {row.kind}, rev {row.revision})"
    await audit.record(
        conn, tenant_id, actor.key_id, f"annotation.{action}", row.customer_id, detail
    )
    payload = {
        "annotation_id": row.id,
        "action": action,
        "department": row.department,
        "kind": row.kind,
        "visibility": row.visibility,
        "revision": row.revision,
    }
    # The customer's feed is read by any key of the shop: a note for one department is not
    # announced there (other departments do not even learn that it exists). One narrowed to
    # its department is, once, with only what they knew of it: its readers learn that they no
    # longer see it, not what the narrowing edit changed (its kind, say).
    department_only = AnnotationVisibility.DEPARTMENT.value
    if row.visibility != department_only:
        await changes.publish(conn, tenant_id, row.customer_id, "annotation", payload)
    elif was_visible not in (None, department_only):
        withdrawn = {key: payload[key] for key in ("annotation_id", "action", "department")}
        withdrawn |= {"visibility": department_only, "revision": row.revision}
        await changes.publish(conn, tenant_id, row.customer_id, "annotation", withdrawn)


async def create(
    conn: AsyncConnection, tenant_id: str, customer_id: str, note: AnnotationIn, actor: Author
) -> Annotation:
    live = await lock_customer(conn, tenant_id, customer_id)
    now = utcnow()
    department = actor.department or note.department
    author = actor.name
    values = {
        "tenant_id": tenant_id,
        "id": new_id("ann", 10),
        "customer_id": live,
        "origin_customer_id": live,
        "department": department,
        "author": author,
        "text": note.text,
        "created_at": now,
        "kind": note.kind.value,
        "visibility": note.visibility.value,
        "pinned": note.pinned,
        "expires_at": note.expires_at,
        "author_key_id": actor.key_id,
        "revision": 1,
        "updated_at": None,
        "deleted_at": None,
        "deleted_by": None,
        "delete_reason": None,
    }
    await conn.execute(insert(annotations_table).values(**values))
    row = _Row(values)
    writer = Author(author, department, actor.role, actor.key_id)
    await _revision(conn, tenant_id, row, "created", writer, None)
    await _announce(conn, tenant_id, row, "created", writer)
    return view(row)  # type: ignore[arg-type]


class _Row(dict[str, Any]):
    """A row written here, read like a fetched one."""

    def __getattr__(self, name: str) -> Any:
        return self[name]


async def _locked(conn: AsyncConnection, tenant_id: str, annotation_id: str) -> Row[Any]:
    query = select(annotations_table).where(
        annotations_table.c.tenant_id == tenant_id, annotations_table.c.id == annotation_id
    )
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = (await conn.execute(query)).first()
    if row is None:
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no annotation {annotation_id!r}")
    return row


def _forbidden(row: Any, actor: Author, doing: str) -> Problem:
    if not can_see(row, actor):
        return Problem(ProblemType.NOT_FOUND, f"this tenant has no annotation {row.id!r}")
    return Problem(
        ProblemType.ANNOTATION_FORBIDDEN,
        f"{actor.name} ({actor.role.value if actor.role else 'shop backend'}, "
        f"{actor.department or 'no department'}) may not {doing} this {row.department} note: "
        f"only its author within {int(EDIT_WINDOW.total_seconds() // 3600)} hours, a lead of "
        f"{row.department} or an admin may",
    )


async def edit(
    conn: AsyncConnection, tenant_id: str, annotation_id: str, change: AnnotationEdit, actor: Author
) -> Annotation:
    row = await _locked(conn, tenant_id, annotation_id)
    now = utcnow()
    if row.deleted_at is not None:
        raise Problem(ProblemType.CONFLICT, f"annotation {annotation_id} was deleted")
    if not may_change(row, actor, now):
        raise _forbidden(row, actor, "edit")
    sent = change.model_dump(exclude_unset=True, exclude={"author", "department"})
    updates = {
        key: (value.value if hasattr(value, "value") else value)
        for key, value in sent.items()
        if value is not None or key == "expires_at"
    }
    if all(getattr(row, key) == value for key, value in updates.items()):
        return view(row)  # nothing changes: a retried edit adds no revision
    updates |= {"revision": row.revision + 1, "updated_at": now}
    await conn.execute(
        update(annotations_table)
        .where(annotations_table.c.tenant_id == tenant_id, annotations_table.c.id == annotation_id)
        .values(**updates)
    )
    edited = _Row({**row._asdict(), **updates})
    await _revision(conn, tenant_id, edited, "edited", actor, None)
    await _announce(conn, tenant_id, edited, "edited", actor, was_visible=row.visibility)
    return view(edited)  # type: ignore[arg-type]


async def delete(
    conn: AsyncConnection,
    tenant_id: str,
    annotation_id: str,
    deletion: AnnotationDeletion,
    actor: Author,
) -> Annotation:
    row = await _locked(conn, tenant_id, annotation_id)
    if row.deleted_at is not None:
        return view(row)  # deleting twice: the first deletion stands
    now = utcnow()
    if not may_change(row, actor, now):
        raise _forbidden(row, actor, "delete")
    updates = {
        "revision": row.revision + 1,
        "updated_at": now,
        "deleted_at": now,
        "deleted_by": actor.name,
        "delete_reason": deletion.reason,
    }
    await conn.execute(
        update(annotations_table)
        .where(annotations_table.c.tenant_id == tenant_id, annotations_table.c.id == annotation_id)
        .values(**updates)
    )
    deleted = _Row({**row._asdict(), **updates})
    await _revision(conn, tenant_id, deleted, "deleted", actor, deletion.reason)
    await _announce(conn, tenant_id, deleted, "deleted", actor)
    return view(deleted)  # type: ignore[arg-type]


async def listed(
    conn: AsyncConnection,
    tenant_id: str,
    live: str,
    reader: Author,
    *,
    include_deleted: bool = False,
    now: datetime | None = None,
) -> list[Annotation]:
    """The notes the reader may see: pinned first, then newest first; expired and deleted
    ones left out (deleted ones kept on request, for the console's history)."""
    now = now or utcnow()
    table = annotations_table
    query = (
        select(table)
        .where(
            table.c.tenant_id == tenant_id,
            table.c.customer_id == live,
            or_(table.c.expires_at.is_(None), table.c.expires_at > now),
        )
        .order_by(table.c.pinned.desc(), table.c.created_at.desc(), table.c.id)
        .limit(MAX_LISTED)
    )
    if not include_deleted:
        query = query.where(table.c.deleted_at.is_(None))
    if reader.role is not Role.ADMIN:
        query = query.where(
            or_(
                table.c.visibility != AnnotationVisibility.DEPARTMENT.value,
                and_(
                    table.c.department == (reader.department or ""),
                    func.length(table.c.department) > 0,
                ),
            )
        )
    return [view(row) for row in await conn.execute(query)]


async def revisions(
    conn: AsyncConnection, tenant_id: str, annotation_id: str, reader: Author
) -> list[AnnotationRevision]:
    row = (
        await conn.execute(
            select(annotations_table).where(
                annotations_table.c.tenant_id == tenant_id, annotations_table.c.id == annotation_id
            )
        )
    ).first()
    if row is None or not can_see(row, reader):
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no annotation {annotation_id!r}")
    rows = await conn.execute(
        select(annotation_revisions)
        .where(
            annotation_revisions.c.tenant_id == tenant_id,
            annotation_revisions.c.annotation_id == annotation_id,
        )
        .order_by(annotation_revisions.c.revision)
    )
    return [
        AnnotationRevision(
            revision=r.revision,
            action=r.action,
            text=r.text,
            kind=AnnotationKind(r.kind),
            visibility=AnnotationVisibility(r.visibility),
            pinned=r.pinned,
            expires_at=r.expires_at,
            editor=r.editor,
            editor_department=r.editor_department,
            reason=r.reason,
            edited_at=r.edited_at,
        )
        for r in rows
    ]
