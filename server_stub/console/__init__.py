"""The customer-service console: one view of the customer for every department (issue 19).

Served by the reference server at `/console` (like the POS station at `/pos`): server-rendered
HTML (Jinja2, autoescaped), no script and nothing from another origin, so it works with the
keyboard alone and behind the strictest Content-Security-Policy. Staff sign in with their own
console key (`omnisdk-server staff add`), whose department and role decide which notes they
see and may change (services/notes.py). The session cookie is HttpOnly and SameSite=Strict,
every form carries a CSRF token, and a post from another site is refused (Sec-Fetch-Site,
Origin). Every change goes through the same services as the API, so it is audited and on the
customer's change feed alike.

The console reads the database directly (no HTTP hop): its pages are server time only.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response

from omnisdk.core.identifiers import IdentifierType, InvalidIdentifier
from omnisdk.core.preferences import PreferredChannel
from omnisdk.models import AnnotationDeletion, AnnotationEdit, AnnotationIn
from server_stub.console import page as pages
from server_stub.console import sessions, words
from server_stub.console.sessions import ConsoleSession
from server_stub.errors import Problem
from server_stub.pos.gate import CSP, _from_another_site
from server_stub.runtime import Runtime
from server_stub.services import identity, notes, orders, preferences, returns
from server_stub.services.staff import Role
from server_stub.storage.tables import (
    annotations_table,
    merges,
    moved_from,
    return_orders,
    return_tokens,
)
from server_stub.telemetry import NO_TELEMETRY

HERE = Path(__file__).parent
COOKIE = "omnisdk_console"
FORM_FIELDS = 20


def create_console(runtime: Callable[[], Runtime]) -> FastAPI:
    """The console as an ASGI app over the server's runtime (read when a request comes)."""
    # Traced, if at all, by the server app it is mounted in (server_stub/telemetry.py).
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, telemetry=NO_TELEMETRY)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    Console(runtime).route(app)
    return app


def _environment() -> Environment:
    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True)
    )
    environment.globals.update(
        kinds=words.KIND_LABELS,
        visibilities=words.VISIBILITY_LABELS,
        search_kinds=words.SEARCH_KINDS,
        channels=[c.value for c in PreferredChannel],
    )
    environment.filters["when"] = _when
    environment.filters["money"] = lambda v: f"{v:,.2f}"
    return environment


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "—"


class Console:
    def __init__(self, runtime: Callable[[], Runtime]) -> None:
        self.runtime = runtime
        self.environment = _environment()

    # -- plumbing ---------------------------------------------------------------------------

    def page(
        self,
        request: Request,
        session: ConsoleSession | None,
        name: str,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        html = self.environment.get_template(name).render(
            base=request.scope.get("root_path", ""),
            session=session,
            message=request.query_params.get("message", ""),
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def go(self, request: Request, path: str, message: str = "") -> Response:
        suffix = ("&" if "?" in path else "?") + urlencode({"message": message}) if message else ""
        root = request.scope.get("root_path", "")
        return RedirectResponse(f"{root}{path}{suffix}", status_code=303)

    async def session_of(self, request: Request) -> ConsoleSession | None:
        async with self.runtime().database.transaction(write=False) as conn:
            return await sessions.current(conn, request.cookies.get(COOKIE, ""))

    async def form(self, request: Request) -> FormData:
        return await request.form(max_files=0, max_fields=FORM_FIELDS, max_part_size=16 * 1024)

    async def checked(self, request: Request) -> tuple[ConsoleSession | None, FormData]:
        """The session of a signed-in form post, or None (no session, stale form, other site)."""
        if _from_another_site(request.scope):
            return None, FormData()
        session = await self.session_of(request)
        if session is None:
            return None, FormData()
        form = await self.form(request)
        if not hmac.compare_digest(session.csrf, str(form.get("csrf", ""))):
            return None, form
        return session, form

    def author(self, session: ConsoleSession) -> notes.Author:
        member = session.member
        return notes.Author(member.name, member.department, member.role, member.key_id)

    async def http_error(self, request: Request, error: Exception) -> Response:
        status_code = getattr(error, "status_code", 400)
        text = (
            "There is no such page in the console."
            if status_code in (404, 405)
            else ("The browser sent something the console cannot read.")
        )
        return self.page(request, None, "error.html", status_code, error=text)

    async def refused(self, request: Request, error: Exception) -> Response:
        """A service's refusal reached the page (a bad cursor in the address, a customer
        erased meanwhile): the console's error page with its status, never a 500."""
        assert isinstance(error, Problem)
        session = await self.session_of(request)
        return self.page(request, session, "error.html", error.type.status, error=error.detail)

    # -- routes -----------------------------------------------------------------------------

    def route(self, app: FastAPI) -> None:
        app.add_exception_handler(StarletteHTTPException, self.http_error)
        app.add_exception_handler(Problem, self.refused)
        app.get("/")(self.home)
        app.post("/sign-in")(self.sign_in)
        app.post("/sign-out")(self.sign_out)
        app.post("/find")(self.find)
        app.get("/customers/{customer_id}")(self.customer)
        app.post("/customers/{customer_id}/notes")(self.add_note)
        app.post("/customers/{customer_id}/preferred-channel")(self.declare)
        app.post("/customers/{customer_id}/return-code")(self.resend_return_code)
        app.get("/notes/{annotation_id}/edit")(self.edit_form)
        app.post("/notes/{annotation_id}/edit")(self.edit_note)
        app.post("/notes/{annotation_id}/delete")(self.delete_note)
        app.get("/merges/{merge_id}/split")(self.split_form)
        app.post("/merges/{merge_id}/split")(self.split)

    async def home(self, request: Request) -> Response:
        session = await self.session_of(request)
        if session is None:
            return self.page(request, None, "sign_in.html")
        async with self.runtime().database.transaction(write=False) as conn:
            counts = await pages.counts(conn, session.member.tenant_id)
        return self.page(request, session, "find.html", segments=counts)

    async def sign_in(self, request: Request) -> Response:
        if _from_another_site(request.scope):
            return self.page(request, None, "sign_in.html", 403, error=words.BAD_FORM)
        form = await self.form(request)
        async with self.runtime().database.transaction(write=True) as conn:
            opened = await sessions.sign_in(conn, str(form.get("key", "")))
        if opened is None:
            return self.page(request, None, "sign_in.html", 401, error=words.SIGN_IN_REFUSED)
        token, _ = opened
        response = self.go(request, "/")
        response.set_cookie(
            COOKIE,
            token,
            max_age=int(sessions.SESSION_LIFETIME.total_seconds()),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=request.scope.get("root_path", "") or "/",
        )
        return response

    async def sign_out(self, request: Request) -> Response:
        session, _ = await self.checked(request)
        if session is not None:
            async with self.runtime().database.transaction(write=True) as conn:
                await sessions.sign_out(conn, request.cookies.get(COOKIE, ""))
        response = self.page(request, None, "sign_in.html", error=words.SIGNED_OUT)
        response.delete_cookie(COOKIE, path=request.scope.get("root_path", "") or "/")
        return response

    async def find(self, request: Request) -> Response:
        """A form post, never a GET: what is searched for (an e-mail address, a phone number)
        must not stand in an address, kept in the browser's history and proxies' logs."""
        session, form = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.EXPIRED)
        by, q = str(form.get("by", "email")), str(form.get("q", ""))[:320]
        kind = by if by in words.SEARCH_KINDS else "email"
        runtime = self.runtime()
        async with runtime.database.transaction(write=False) as conn:
            try:
                found = await self._lookup(conn, runtime, session, kind, q.strip())
            except InvalidIdentifier as error:
                message = words.BAD_IDENTIFIER.format(
                    kind=words.SEARCH_KINDS[kind], reason=error.reason
                )
                return self.page(request, session, "find.html", 422, error=message, by=kind)
        if found is None:
            message = words.NOT_FOUND.format(kind=words.SEARCH_KINDS[kind])
            return self.page(request, session, "find.html", 404, error=message, by=kind)
        return self.go(request, f"/customers/{quote(found)}")

    async def _lookup(
        self,
        conn: AsyncConnection,
        runtime: Runtime,
        session: ConsoleSession,
        kind: str,
        text: str,
    ) -> str | None:
        tenant_id = session.member.tenant_id
        if not text:
            return None
        if kind in ("email", "phone", "loyalty_card"):
            context = await runtime.tenants.get(conn, tenant_id)
            return await identity.resolve(conn, context, context.key(IdentifierType(kind), text))
        reference = text
        if kind == "return_code":
            token = (
                await conn.execute(
                    select(return_tokens.c.order_ref).where(
                        return_tokens.c.tenant_id == tenant_id, return_tokens.c.token == text
                    )
                )
            ).first()
            if token is None:
                return None
            reference = token.order_ref
        order = await orders.by_reference(conn, tenant_id, reference)
        owner = order.customer_id if order else None
        if owner is None:
            row = (
                await conn.execute(
                    select(return_orders.c.customer_id).where(
                        return_orders.c.tenant_id == tenant_id,
                        return_orders.c.order_ref == reference,
                    )
                )
            ).first()
            owner = row.customer_id if row else None
        return await identity.live_id(conn, tenant_id, owner) if owner else None

    async def customer(self, request: Request, customer_id: str) -> Response:
        session = await self.session_of(request)
        if session is None:
            return self.go(request, "/", words.EXPIRED)
        runtime = self.runtime()
        filters = {
            key: request.query_params.get(key, "")[:64]
            for key in ("channel", "name")
            if request.query_params.get(key)
        }
        cursor = request.query_params.get("cursor")
        async with runtime.database.transaction(write=False) as conn:
            live = await identity.live_id(conn, session.member.tenant_id, customer_id)
            if live is None:
                return self.page(request, session, "error.html", 404, error="No such customer.")
            context = await runtime.tenants.get(conn, session.member.tenant_id)
            view = await pages.customer_page(
                conn, context, live, self.author(session), filters, cursor
            )
        return self.page(request, session, "customer.html", view=view, live=live)

    async def add_note(self, request: Request, customer_id: str) -> Response:
        session, form = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.BAD_FORM)
        try:
            note = AnnotationIn.model_validate(
                {
                    "department": session.member.department,
                    "author": session.member.name,
                    "text": str(form.get("text", "")).strip(),
                    "kind": str(form.get("kind", "note")),
                    "visibility": str(form.get("visibility", "staff")),
                    "pinned": form.get("pinned") == "on",
                }
            )
        except ValueError:
            return self.go(request, f"/customers/{quote(customer_id)}", words.BAD_FORM)
        async with self.runtime().database.transaction(write=True) as conn:
            await notes.create(
                conn, session.member.tenant_id, customer_id, note, self.author(session)
            )
        return self.go(request, f"/customers/{quote(customer_id)}", words.NOTE_ADDED)

    async def _note(self, conn: AsyncConnection, tenant_id: str, annotation_id: str) -> Any:
        return (
            await conn.execute(
                select(annotations_table).where(
                    annotations_table.c.tenant_id == tenant_id,
                    annotations_table.c.id == annotation_id,
                )
            )
        ).first()

    async def edit_form(self, request: Request, annotation_id: str) -> Response:
        session = await self.session_of(request)
        if session is None:
            return self.go(request, "/", words.EXPIRED)
        async with self.runtime().database.transaction(write=False) as conn:
            row = await self._note(conn, session.member.tenant_id, annotation_id)
            if row is None or not notes.can_see(row, self.author(session)):
                return self.page(request, session, "error.html", 404, error="No such note.")
            revisions = await notes.revisions(
                conn, session.member.tenant_id, annotation_id, self.author(session)
            )
        allowed = notes.may_change(row, self.author(session), datetime.now(UTC))
        return self.page(
            request,
            session,
            "note.html",
            note=notes.view(row),
            customer_id=row.customer_id,
            allowed=allowed,
            revisions=revisions,
        )

    async def edit_note(self, request: Request, annotation_id: str) -> Response:
        session, form = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.BAD_FORM)
        try:
            change = AnnotationEdit.model_validate(
                {
                    "text": str(form.get("text", "")).strip(),
                    "kind": str(form.get("kind", "note")),
                    "visibility": str(form.get("visibility", "staff")),
                    "pinned": form.get("pinned") == "on",
                }
            )
        except ValueError:
            return self.go(request, f"/notes/{quote(annotation_id)}/edit", words.BAD_FORM)
        return await self._change(request, session, annotation_id, change, None)

    async def delete_note(self, request: Request, annotation_id: str) -> Response:
        session, form = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.BAD_FORM)
        try:
            deletion = AnnotationDeletion(reason=str(form.get("reason", "")).strip())
        except ValueError:
            message = "Say why the note is deleted (at least 3 characters)."
            return self.go(request, f"/notes/{quote(annotation_id)}/edit", message)
        return await self._change(request, session, annotation_id, None, deletion)

    async def _change(
        self,
        request: Request,
        session: ConsoleSession,
        annotation_id: str,
        change: AnnotationEdit | None,
        deletion: AnnotationDeletion | None,
    ) -> Response:
        tenant_id = session.member.tenant_id
        try:
            async with self.runtime().database.transaction(write=True) as conn:
                if change is not None:
                    done = await notes.edit(
                        conn, tenant_id, annotation_id, change, self.author(session)
                    )
                    message = words.NOTE_EDITED.format(revision=done.revision)
                else:
                    assert deletion is not None
                    done = await notes.delete(
                        conn, tenant_id, annotation_id, deletion, self.author(session)
                    )
                    message = words.NOTE_DELETED.format(reason=deletion.reason)
                row = await self._note(conn, tenant_id, annotation_id)
        except Problem as problem:
            text = words.NOTE_FORBIDDEN.format(detail=problem.detail)
            return self.page(request, session, "error.html", problem.type.status, error=text)
        return self.go(request, f"/customers/{quote(row.customer_id)}", message)

    async def declare(self, request: Request, customer_id: str) -> Response:
        session, form = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.BAD_FORM)
        chosen = str(form.get("channel", ""))
        known = {c.value for c in PreferredChannel}
        channel = PreferredChannel(chosen) if chosen in known else None
        async with self.runtime().database.transaction(write=True) as conn:
            live, _ = await preferences.declare(
                conn,
                session.member.tenant_id,
                customer_id,
                channel,
                via="console",
                actor=session.member.name,
                actor_key_id=session.member.key_id,
            )
        message = (
            words.PREFERENCE_SAVED.format(channel=channel.value)
            if channel
            else words.PREFERENCE_CLEARED
        )
        return self.go(request, f"/customers/{quote(live)}", message)

    async def resend_return_code(self, request: Request, customer_id: str) -> Response:
        session, form = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.BAD_FORM)
        order_ref = str(form.get("order_ref", ""))[:64]
        try:
            async with self.runtime().database.transaction(write=True) as conn:
                live, queued = await returns.resend(
                    conn,
                    session.member.tenant_id,
                    customer_id,
                    order_ref,
                    session.member.name,
                    session.member.key_id,
                )
        except Problem as problem:
            return self.page(
                request, session, "error.html", problem.type.status, error=problem.detail
            )
        message = (words.RETURN_CODE_QUEUED if queued else words.RETURN_CODE_ALREADY).format(
            order=order_ref
        )
        return self.go(request, f"/customers/{quote(live)}", message)

    async def split_form(self, request: Request, merge_id: str) -> Response:
        session = await self.session_of(request)
        if session is None:
            return self.go(request, "/", words.EXPIRED)
        async with self.runtime().database.transaction(write=False) as conn:
            row = (
                await conn.execute(
                    select(merges).where(
                        merges.c.tenant_id == session.member.tenant_id, merges.c.id == merge_id
                    )
                )
            ).first()
            if row is None:
                return self.page(request, session, "error.html", 404, error="No such merge.")
            moves = await _what_moves(conn, session.member.tenant_id, row)
        return self.page(
            request,
            session,
            "split.html",
            merge=identity.merge_view(row),
            moves=moves,
            allowed=session.member.role is Role.ADMIN,
        )

    async def split(self, request: Request, merge_id: str) -> Response:
        session, _ = await self.checked(request)
        if session is None:
            return self.go(request, "/", words.BAD_FORM)
        if session.member.role is not Role.ADMIN:
            return self.page(request, session, "error.html", 403, error=words.SPLIT_REFUSED)
        runtime = self.runtime()
        try:
            async with runtime.database.transaction(write=True) as conn:
                context = await runtime.tenants.get(conn, session.member.tenant_id)
                done = await identity.split(conn, context, merge_id)
                await _audit_split(conn, session, done.merge_id, done.loser_id)
        except Problem as problem:
            return self.page(
                request, session, "error.html", problem.type.status, error=problem.detail
            )
        message = words.SPLIT_DONE.format(loser=done.loser_id)
        return self.go(request, f"/customers/{quote(done.survivor_id)}", message)


async def _what_moves(conn: AsyncConnection, tenant_id: str, row: Any) -> dict[str, Any]:
    """What a split gives back to the merged-away customer, for the confirmation."""
    from sqlalchemy import func

    from server_stub.storage.tables import events as events_table

    snapshot = row.snapshot or {}
    origins = [row.loser_id, *snapshot.get("absorbed", [])]
    moved_events = (
        await conn.execute(
            select(func.count()).where(
                events_table.c.tenant_id == tenant_id,
                events_table.c.customer_id == row.survivor_id,
                moved_from(events_table, origins),
            )
        )
    ).scalar_one()
    moved_notes = (
        await conn.execute(
            select(func.count()).where(
                annotations_table.c.tenant_id == tenant_id,
                annotations_table.c.customer_id == row.survivor_id,
                moved_from(annotations_table, origins),
            )
        )
    ).scalar_one()
    return {
        "identifiers": [
            f"{item[0]}:{item[1][:8]}…" if item[0] in ("email", "phone") else f"{item[0]}:{item[1]}"
            for item in snapshot.get("loser_identifiers", [])
        ],
        "events": int(moved_events),
        "notes": int(moved_notes),
        "traits": sorted((snapshot.get("loser_traits") or {}).keys()),
        "cart": bool(snapshot.get("loser_cart")),
    }


async def _audit_split(
    conn: AsyncConnection, session: ConsoleSession, merge_id: str, loser: str
) -> None:
    from server_stub.services import audit

    member = session.member
    detail = f"merge {merge_id} split from the console by {member.name} ({member.department})"
    await audit.record(conn, member.tenant_id, member.key_id, "merge.split", loser, detail)
