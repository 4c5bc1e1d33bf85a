"""The POS return station: the web page store staff use to scan a return code and take goods back.

A small FastAPI app rendering HTML on the server, so it can be mounted in the reference server
(`/pos`) or in a shop's own POS backend. It talks to the sync server through the SDK with the
till's `pos` key: in a POS backend with a `data_dir`, the SDK verifies codes from cached keys and
queues redemptions when the network is gone, and the page says so (pending, then confirmed).

The clerk's path: scan (from any page: a scanner types into whatever field has the focus, and a
scan typed into a units box opens the new code) → the order → the review (lines, prices, refund
total; the till transaction id is made here) → confirm → the receipt. Every page works with the
keyboard alone and without JavaScript; one small script adds a progress note while the server
is slow and the Print button.

Security: every page needs a till session (a sign-in with a pos-channel key, or the scan of a
one-time enrolment code); the session cookie is HttpOnly and SameSite=Strict; every form post
carries a CSRF token; posts from anyone not signed in are refused before their body is read,
and bodies are bounded (gate.py); Jinja2 autoescapes all HTML; a strict Content-Security-Policy
allows nothing but this origin's stylesheet, script and images.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import re
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Request
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import Scope

import omnisdk
from omnisdk.core import tokens
from omnisdk.models import ReturnStatus
from omnisdk.resources.returns import redeem_request
from server_stub.pos import orders, scans
from server_stub.pos.enrolment import Enrolments, is_enrolment_code
from server_stub.pos.gate import Gate
from server_stub.pos.language import LANGUAGES, Words, negotiate
from server_stub.pos.photos import UnreadablePhoto, read_return_code
from server_stub.pos.tills import Receipt, Review, TillSession, TillSessions
from server_stub.telemetry import NO_TELEMETRY

HERE = Path(__file__).parent
COOKIE = "omnisdk_till"
# A till is a shop's device at a counter: it stays signed in for 30 days (across restarts of
# the station, whose data_dir keeps the session) unless the shop revokes its key first.
SESSION_SECONDS = 30 * 86_400
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # no ".", no ".."


@dataclass(frozen=True)
class Store:
    """How a store's tills speak: its name on receipts, its language and its time zone."""

    name: str = ""
    language: str | None = None  # None: each browser's own (Accept-Language)
    time_zone: str = "UTC"


@dataclass
class StationConfig:
    """Where the station's SDK clients go (a server URL, or an in-process ASGI transport) and
    how its stores speak."""

    server_url: str = "http://omnisdk.local"
    transport: httpx.AsyncBaseTransport | None = None
    data_dir: Path | None = None  # offline verification, queued redemptions, kept sessions
    offline_cap: float = 250.0
    # Interactive: a clerk is waiting. No retry (each write is idempotent, the clerk or the
    # background sender tries again), and a short wait before the till works offline.
    retry_policy: omnisdk.RetryPolicy = field(
        default_factory=lambda: omnisdk.RetryPolicy(max_retries=0)
    )
    timeout: float = 3.0
    sync_interval: float = 15.0  # how often pending returns are sent in the background
    shop_name: str = ""
    stores: Mapping[str, Store] = field(default_factory=dict)
    photo_max_bytes: int = 10 * 1024 * 1024
    session_seconds: float = SESSION_SECONDS


def create_station(config: StationConfig | None = None) -> FastAPI:
    """The return station as an ASGI app; mount it where staff reach it (e.g. at /pos)."""
    config = config or StationConfig()

    def new_client(api_key: str, folder: Path | None) -> omnisdk.AsyncClient:
        http = httpx.AsyncClient(transport=config.transport, timeout=config.timeout)
        return StationClient(
            config.server_url,
            api_key,
            channel="pos",
            http_client=http,
            data_dir=folder,
            offline_cap=config.offline_cap,
            retry_policy=config.retry_policy,
            timeout=config.timeout,
        )

    tills = TillSessions(config.data_dir, new_client)

    @asynccontextmanager
    async def lifespan(station: FastAPI) -> AsyncIterator[None]:
        yield
        await close_station(station)

    # Traced, if at all, by the app it is mounted in (server_stub/telemetry.py).
    app = FastAPI(
        docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan, telemetry=NO_TELEMETRY
    )
    app.state.tills = tills
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    enrolments = Enrolments(folder=config.data_dir / "enrolments" if config.data_dir else None)
    station = Station(config, tills, enrolments)
    station.route(app)
    app.add_exception_handler(StarletteHTTPException, station.http_error)

    def signed_in(scope: Scope) -> bool:
        return tills.get(_cookie(scope)) is not None

    def words(scope: Scope) -> Words:
        session = tills.get(_cookie(scope))
        accepted = dict(scope["headers"]).get(b"accept-language", b"").decode("latin-1")
        store = config.stores.get(session.store_id if session else "", Store())
        return Words(negotiate(store.language, accepted), store.time_zone)

    app.add_middleware(Gate, signed_in=signed_in, photo_bytes=config.photo_max_bytes, words=words)
    return app


class StationClient(omnisdk.AsyncClient):
    """An SDK client over an httpx client the station made for it (its transport and
    timeout): the SDK leaves a client it was given open, so this one closes it too."""

    def __init__(
        self, base_url: str, api_key: str, *, http_client: httpx.AsyncClient, **options: Any
    ) -> None:
        super().__init__(base_url, api_key, http_client=http_client, **options)
        self._station_http = http_client

    async def aclose(self) -> None:
        try:
            await super().aclose()
        finally:
            await self._station_http.aclose()


async def close_station(station: FastAPI) -> None:
    """Close the tills' SDK clients and stop their background sending.

    Run by the station's own lifespan when it is the served app; a host that mounts it must
    call this from its lifespan, since Starlette does not run a mounted app's lifespan.
    Closing twice is harmless.
    """
    tills: TillSessions = station.state.tills
    await tills.close()


def _cookie(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, cookie = part.strip().partition("=")
                if key == COOKIE:
                    return cookie
    return ""


@dataclass(frozen=True)
class TillSigningIn:
    tenant_id: str
    client: omnisdk.AsyncClient
    offline: bool  # the network is down; the key signed this till in before


@dataclass(frozen=True)
class ConfirmAgain:
    """A confirm that may or may not have reached the shop (its answer was lost), or that the
    offline limit holds back: the review is shown again, so that pressing Confirm sends the
    same till transaction, which the shop takes at most once."""

    message: str


class SignedOut(Exception):
    """The shop revoked this till's key: the till must be enrolled again."""


class Station:
    """The pages, over the signed-in tills; each route validates and delegates."""

    def __init__(self, config: StationConfig, tills: TillSessions, enrolments: Enrolments):
        self.config = config
        self.tills = tills
        self.enrolments = enrolments
        self.environments = {language: _environment(language) for language in LANGUAGES}

    # -- plumbing ---------------------------------------------------------------------------

    def store(self, store_id: str | None) -> Store:
        return self.config.stores.get(store_id or "", Store())

    def words(self, request: Request, session: TillSession | None) -> Words:
        store = self.store(session.store_id if session else None)
        language = negotiate(store.language, request.headers.get("accept-language", ""))
        return Words(language, store.time_zone)

    def page(
        self,
        request: Request,
        session: TillSession | None,
        name: str,
        status_code: int = 200,
        **context: Any,
    ) -> Response:
        words = self.words(request, session)
        template = self.environments[words.language].get_template(name)
        store = self.store(session.store_id if session else None)
        html = template.render(
            base=request.scope.get("root_path", ""),
            session=session,
            words=words,
            shop_name=self.config.shop_name,
            store_name=store.name,
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def go(self, request: Request, path: str) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}{path}", status_code=303)

    def session_of(self, request: Request) -> TillSession | None:
        return self.tills.get(request.cookies.get(COOKIE, ""))

    async def form(self, request: Request) -> FormData:
        return await request.form(max_files=1, max_fields=120, max_part_size=1024 * 1024)

    def checked(self, request: Request, form: FormData) -> TillSession | None:
        session = self.session_of(request)
        if session is None or not hmac.compare_digest(session.csrf, str(form.get("csrf", ""))):
            return None
        return session

    async def signed_out(self, request: Request) -> Response:
        await self.tills.remove(request.cookies.get(COOKIE, ""))
        words = self.words(request, None)
        error = words("The shop signed this till out (its key was revoked). Enrol it again.")
        response = self.page(request, None, "login.html", 401, error=error)
        response.delete_cookie(COOKIE, path=request.scope.get("root_path", "") or "/")
        return response

    async def http_error(self, request: Request, error: Exception) -> Response:
        """A page in the clerk's words, never FastAPI's JSON: an address that is not a page,
        or a form the browser could not have sent (malformed, too many files or fields)."""
        session = self.session_of(request)
        words = self.words(request, session)
        status_code = getattr(error, "status_code", 400)
        if status_code in (404, 405):
            message = words("There is no such page on the till. Scan a return code.")
        else:
            message = words("The form could not be read. Go back and try again.")
        status_code = status_code if 400 <= status_code < 500 else 400
        if session is None:
            return self.page(request, None, "login.html", status_code, error=message)
        return self.scan_page(request, session, message, status_code)

    # -- routes -----------------------------------------------------------------------------

    def route(self, app: FastAPI) -> None:
        app.add_api_route("/login", self.login_form, methods=["GET"])
        app.add_api_route("/login", self.login, methods=["POST"])
        app.add_api_route("/login/enrol", self.login_by_enrolment, methods=["POST"])
        app.add_api_route("/enrol", self.enrol_form, methods=["GET"])
        app.add_api_route("/enrol", self.enrol, methods=["POST"])
        app.add_api_route("/logout", self.logout, methods=["POST"])
        app.add_api_route("/returns", self.home, methods=["GET"])
        app.add_api_route("/returns/scan", self.scan, methods=["POST"])
        app.add_api_route("/returns/photo", self.photo, methods=["POST"])
        app.add_api_route("/returns/review", self.review, methods=["POST"])
        app.add_api_route("/returns/confirm", self.confirm, methods=["POST"])
        app.add_api_route("/returns/receipt/{transaction}", self.receipt, methods=["GET"])
        app.add_api_route("/returns/sync", self.sync, methods=["POST"])

    async def login_form(self, request: Request) -> Response:
        return self.page(request, None, "login.html")

    async def login(self, request: Request) -> Response:
        form = await self.form(request)
        words = self.words(request, None)
        api_key = str(form.get("api_key", "")).strip()
        store_id = str(form.get("store_id", "")).strip()
        till_id = str(form.get("till_id", "")).strip()
        if not (0 < len(api_key) <= 200) or not _is_id(store_id) or not _is_id(till_id):
            error = words(
                "Fill in the till key, the store and the till (letters, digits, dots, dashes)."
            )
            return self.page(request, None, "login.html", 422, error=error)
        return await self.sign_in(request, api_key, store_id, till_id)

    async def login_by_enrolment(self, request: Request) -> Response:
        """The till scanned an enrolment code: its key is made now, and it is signed in."""
        form = await self.form(request)
        words = self.words(request, None)
        code = str(form.get("code", ""))
        enrolment = self.enrolments.take(code) if is_enrolment_code(code) else None
        if enrolment is None:
            error = words(
                "This is not a valid enrolment code, or it was used or has expired. Ask for a "
                "new one and scan it."
            )
            return self.page(request, None, "login.html", 422, error=error)
        admin = self.admin_client(enrolment.admin_key)
        try:
            name = f"till {enrolment.store_id}/{enrolment.till_id} (enrolment)"
            created = await admin.keys.create("pos", name)
            if created.secret is None:  # a replayed answer never shows a key's secret again
                await admin.keys.revoke(created.key_id)
                raise omnisdk.APIConnectionError("the key's secret was not received")
        except omnisdk.OmnisdkError:
            await admin.aclose()
            self.enrolments.restore(enrolment)  # the network, say: it may be scanned again
            error = words(
                "The shop's server cannot be reached. Sign in again when the network is back."
            )
            return self.page(request, None, "login.html", 503, error=error)
        try:
            response = await self.sign_in(
                request, created.secret, enrolment.store_id, enrolment.till_id
            )
            if response.status_code != 303:  # not signed in: no key is left behind
                with contextlib.suppress(omnisdk.OmnisdkError):
                    await admin.keys.revoke(created.key_id)
                self.enrolments.restore(enrolment)
            return response
        finally:
            await admin.aclose()

    def admin_client(self, admin_key: str) -> omnisdk.AsyncClient:
        return StationClient(
            self.config.server_url,
            admin_key,
            channel="admin",
            http_client=httpx.AsyncClient(
                transport=self.config.transport, timeout=self.config.timeout
            ),
            retry_policy=self.config.retry_policy,
            timeout=self.config.timeout,
        )

    async def sign_in(
        self, request: Request, api_key: str, store_id: str, till_id: str
    ) -> Response:
        words = self.words(request, None)
        till = await self.till_of(api_key, store_id, till_id, words)
        if isinstance(till, tuple):
            return self.page(request, None, "login.html", till[0], error=till[1])
        tenant_id, client, offline = till.tenant_id, till.client, till.offline
        cookie = secrets.token_urlsafe(32)
        seconds = self.config.session_seconds
        session = TillSession(
            api_key,
            store_id,
            till_id,
            secrets.token_urlsafe(32),
            time.time() + seconds,
            tenant_id=tenant_id,
            client=client,
        )
        if offline:  # the key signed this till in before; the shop checks it when it can
            session.went_offline()
        self.tills.add(cookie, session)
        response = self.go(request, "/returns")
        response.set_cookie(
            COOKIE,
            cookie,
            httponly=True,
            samesite="strict",
            max_age=int(seconds),
            path=request.scope.get("root_path", "") or "/",
        )
        return response

    async def till_of(
        self, api_key: str, store_id: str, till_id: str, words: Words
    ) -> TillSigningIn | tuple[int, str]:
        """The shop of a till signing in, its client and whether it signs in offline; or why
        it cannot sign in (status, words for the clerk)."""
        probe = self.tills.new_client(api_key, None)
        try:
            principal = await _principal(probe, words)
        finally:
            await probe.aclose()
        offline = isinstance(principal, tuple) and principal[0] == 503
        if offline:  # a key that signed this till in before may sign it in again
            tenant_id = self.tills.known_tenant(store_id, till_id, api_key)
            if tenant_id is None:
                return 503, words(
                    "The shop's server cannot be reached. Sign in again when the network is back."
                )
        elif isinstance(principal, tuple):
            return principal
        else:
            tenant_id = principal.tenant_id
            self.tills.adopt_legacy_folder(tenant_id, store_id, till_id)
        folder = self.tills.folder(tenant_id, store_id, till_id)
        client = self.tills.new_client(api_key, folder)
        if not offline:
            refusal = await _keys_refusal(client, words)
            if refusal is not None:
                await client.aclose()
                return refusal
            self.tills.remember_key(folder, api_key)
        return TillSigningIn(tenant_id, client, offline)

    async def enrol_form(self, request: Request) -> Response:
        return self.page(request, None, "enrol.html")

    async def enrol(self, request: Request) -> Response:
        """An admin shows a one-time enrolment code; the till's key is made when it is scanned
        (a code never scanned leaves no key behind)."""
        form = await self.form(request)
        words = self.words(request, None)
        admin_key = str(form.get("admin_key", "")).strip()
        store_id = str(form.get("store_id", "")).strip()
        till_id = str(form.get("till_id", "")).strip()
        if not (0 < len(admin_key) <= 200) or not _is_id(store_id) or not _is_id(till_id):
            error = words("Fill in the admin key, the store and the till.")
            return self.page(request, None, "enrol.html", 422, error=error)
        admin = self.admin_client(admin_key)
        try:
            await admin.keys.list()  # only a key that may make till keys may list them
        except omnisdk.AuthenticationError:
            error = words("That admin key is not valid.")
            return self.page(request, None, "enrol.html", 401, error=error)
        except omnisdk.PermissionDeniedError:
            error = words("That key may not make till keys. Use an admin key.")
            return self.page(request, None, "enrol.html", 403, error=error)
        except omnisdk.OmnisdkError:
            error = words(
                "The shop's server cannot be reached. Try again when the network is back."
            )
            return self.page(request, None, "enrol.html", 503, error=error)
        finally:
            await admin.aclose()
        enrolment = self.enrolments.offer(admin_key, store_id, till_id)
        minutes = int(self.enrolments.seconds // 60)
        return self.page(request, None, "enrolment.html", enrolment=enrolment, minutes=minutes)

    async def logout(self, request: Request) -> Response:
        form = await self.form(request)
        if self.checked(request, form) is not None:
            await self.tills.remove(request.cookies.get(COOKIE, ""))
        return self.go(request, "/login")

    async def home(self, request: Request) -> Response:
        session = self.session_of(request)
        if session is None:
            return self.go(request, "/login")
        return self.scan_page(request, session)

    def scan_page(
        self,
        request: Request,
        session: TillSession,
        error: str | None = None,
        status_code: int = 200,
    ) -> Response:
        assert session.client is not None
        till = session.client.returns.till
        pending = till.pending()  # the till's own file, read at once
        if pending:  # left from before a restart, or taken through another station process
            self.keep_sending(session)
        refused = [
            (letter.payload, _refusal_kind(letter.error)) for letter in till.refused()
        ]  # refunded offline, refused by the shop: for a manager to settle
        return self.page(
            request,
            session,
            "scan.html",
            status_code,
            error=error,
            pending=pending,
            refused=refused,
            scan_focus=True,
        )

    async def scan(self, request: Request) -> Response:
        form = await self.form(request)
        session = self.checked(request, form)
        if session is None:
            return self.go(request, "/login")
        return await self.open_code(request, session, str(form.get("code", "")))

    async def photo(self, request: Request) -> Response:
        form = await self.form(request)
        session = self.checked(request, form)
        if session is None:
            return self.go(request, "/login")
        words = self.words(request, session)
        image = form.get("image")
        data = await image.read() if isinstance(image, UploadFile) else b""
        try:
            token = read_return_code(data)
        except UnreadablePhoto as error:
            return self.scan_page(request, session, words(str(error)), 422)
        return await self.open_code(request, session, token)

    async def open_code(self, request: Request, session: TillSession, text: str) -> Response:
        """The order page of a scanned code, or the reason it cannot be taken back."""
        words = self.words(request, session)
        kind = scans.kind_of(text[: scans.MAX_SCAN_CHARS + 1])
        if kind is not scans.ScanKind.RETURN_CODE or len(text) > scans.MAX_SCAN_CHARS:
            return self.scan_page(request, session, scans.not_a_return_code(words, kind), 422)
        token = text.strip()
        try:
            looked = await self.look_up(session, token, words)
        except SignedOut:
            return await self.signed_out(request)
        if isinstance(looked, str):
            return self.scan_page(request, session, looked, 422)
        verification, status = looked
        return self.order_page(request, session, token, verification, status)

    async def look_up(
        self, session: TillSession, token: str, words: Words
    ) -> tuple[tokens.Verification, ReturnStatus | None] | str:
        """The code's check and, online, its status; or what to tell the clerk instead."""
        assert session.client is not None
        returns = session.client.returns
        if session.known_offline:
            verification = await asyncio.to_thread(returns.till.verify, token)
        else:
            verification = await self.guarded(session, returns.verify(token))
        if not verification.valid:
            return scans.refusal(words, verification, token)
        if session.known_offline:
            return verification, None
        try:
            status = await self.guarded(session, returns.status(token))
        except omnisdk.APIConnectionError:
            return verification, None
        except omnisdk.APIError as error:
            return _status_refusal(words, error, verification, token)
        return verification, status

    async def guarded(self, session: TillSession, call: Any) -> Any:
        """Await an SDK call, noting a lost network (pages then answer from the till for a
        while instead of waiting for it again) and a revoked key."""
        try:
            result = await call
        except omnisdk.APIConnectionError:
            session.went_offline()
            raise
        except omnisdk.AuthenticationError as error:
            raise SignedOut from error
        session.came_online()
        return result

    def order_page(
        self,
        request: Request,
        session: TillSession,
        token: str,
        verification: tokens.Verification,
        status: ReturnStatus | None,
        error: str | None = None,
        typed: Mapping[str, str] | None = None,
    ) -> Response:
        words = self.words(request, session)
        if status is None and self.config.data_dir is None:
            error = words(
                "The shop's server cannot be reached and this till cannot take returns offline."
            )
            return self.scan_page(request, session, error, 422)
        lines = orders.lines_of(verification, status)
        nothing_left = status is not None and all(line.most == 0 for line in lines)
        notice = (
            scans.everything_returned(words, status.redemptions)
            if nothing_left and status
            else None
        )
        offline_possible = self.config.data_dir is not None
        return self.page(
            request,
            session,
            "order.html",
            422 if error else 200,
            token=token,
            claims=verification.claims,
            status=status,
            lines=lines,
            currency=status.currency if status else None,
            error=error,
            notice=notice,
            offline_possible=offline_possible,
            typed=typed or {},
        )

    async def review(self, request: Request) -> Response:
        """The clerk's units and refund method, checked, shown with prices and the total."""
        form = await self.form(request)
        session = self.checked(request, form)
        if session is None:
            return self.go(request, "/login")
        words = self.words(request, session)
        fields = [(key, str(value)) for key, value in form.multi_items()]
        scanned = scans.scan_in_fields(fields)
        if scanned is not None:  # the scanner typed into a box of the form: open that code
            return await self.open_code(request, session, scanned)
        token = str(form.get("token", "")).strip()
        if scans.kind_of(token) is not scans.ScanKind.RETURN_CODE:
            return self.scan_page(request, session, words("Scan the return code again."), 422)
        try:
            looked = await self.look_up(session, token, words)
        except SignedOut:
            return await self.signed_out(request)
        if isinstance(looked, str):
            return self.scan_page(request, session, looked, 422)
        verification, status = looked
        typed = {k: str(v) for k, v in form.items() if k.startswith("qty-") or k == "amount"}
        typed["refund_method"] = str(form.get("refund_method", ""))
        draft = orders.draft(words, form, verification, status, session.till_id)
        if isinstance(draft, str):
            return self.order_page(request, session, token, verification, status, draft, typed)
        session.work.keep_review(draft)
        return self.page(request, session, "review.html", review=draft, scan_focus=True)

    async def confirm(self, request: Request) -> Response:
        """Take the reviewed return back, once: a repeated confirm shows the same receipt."""
        form = await self.form(request)
        session = self.checked(request, form)
        if session is None:
            return self.go(request, "/login")
        words = self.words(request, session)
        transaction = str(form.get("transaction", ""))
        async with session.confirming:
            if session.work.receipt(transaction) is not None:
                return self.go(request, f"/returns/receipt/{transaction}")
            review = session.work.review(transaction)
            if review is None:
                error = words("This return was not reviewed on this till. Scan the code again.")
                return self.scan_page(request, session, error, 422)
            try:
                outcome = await self.take_back(session, review, words)
            except SignedOut:
                return await self.signed_out(request)
            if isinstance(outcome, ConfirmAgain):
                return self.page(
                    request, session, "review.html", 503, review=review, error=outcome.message
                )
            if isinstance(outcome, str):
                return await self.order_again(request, session, review, outcome)
            session.work.keep_receipt(outcome)
        if outcome.redemption.status == "pending":
            self.keep_sending(session)
        return self.go(request, f"/returns/receipt/{transaction}")

    async def take_back(
        self, session: TillSession, review: Review, words: Words
    ) -> Receipt | ConfirmAgain | str:
        assert session.client is not None
        returns = session.client.returns
        queue = self.config.data_dir is not None and review.refund is not None
        sent = False  # whether the shop may have taken it, its answer lost on the way
        try:
            if queue and session.known_offline:  # do not wait for a network known to be gone
                request = redeem_request(
                    review.token,
                    review.units,
                    review.transaction,
                    session.store_id,
                    review.refund_method,  # type: ignore[arg-type]
                )
                redemption = await asyncio.to_thread(returns.till.queue, request, review.refund)
            else:
                sent = True
                redemption = await self.guarded(
                    session,
                    returns.redeem(
                        review.token,
                        review.units,
                        review.transaction,
                        session.store_id,
                        review.refund_method,  # type: ignore[arg-type]
                        queue_if_offline=queue,
                        value=review.refund,
                    ),
                )
        except omnisdk.ReturnRefused as error:
            verification = error.verification
            if isinstance(verification, tokens.Verification):
                return scans.refusal(words, verification, review.token)
            return words(
                "This return cannot be taken offline: units of it are already waiting to be sent."
            )
        except (omnisdk.APIConnectionError, omnisdk.OfflineLimitReached) as error:
            if sent:  # the answer, not the request, may be what was lost
                return ConfirmAgain(
                    words(
                        "The shop's answer did not arrive, so this return may already be "
                        "recorded. Give no refund yet: press Confirm again when the network is "
                        "back. It is never refunded twice."
                    )
                )
            if isinstance(error, omnisdk.OfflineLimitReached):  # nothing sent: back to the order
                return words(
                    "This refund would take the till over its limit of %(cap)s for refunds "
                    "taken offline. Change the amount, wait for the network, or ask a manager.",
                    cap=words.money(self.config.offline_cap, review.currency),
                )
            return words(
                "The shop's server cannot be reached and this till cannot take returns offline."
            )
        except omnisdk.ConflictError as error:
            return _redeem_conflict(words, error, review)
        except omnisdk.APIError as error:
            return _problem_words(words, error)
        return Receipt(review, redemption)

    async def order_again(
        self, request: Request, session: TillSession, review: Review, error: str
    ) -> Response:
        words = self.words(request, session)
        try:
            looked = await self.look_up(session, review.token, words)
        except SignedOut:
            return await self.signed_out(request)
        if isinstance(looked, str):
            return self.scan_page(request, session, looked, 422)
        verification, status = looked
        return self.order_page(request, session, review.token, verification, status, error)

    async def receipt(self, request: Request, transaction: str) -> Response:
        session = self.session_of(request)
        if session is None:
            return self.go(request, "/login")
        receipt = session.work.receipt(transaction)
        if receipt is None:
            words = self.words(request, session)
            return self.scan_page(
                request, session, words("There is no such receipt on this till."), 404
            )
        return self.page(request, session, "receipt.html", receipt=receipt, scan_focus=True)

    async def sync(self, request: Request) -> Response:
        """Send the waiting returns now (the clerk asked), then show where the clerk was."""
        form = await self.form(request)
        session = self.checked(request, form)
        if session is None:
            return self.go(request, "/login")
        try:
            await self.send_pending(session)
        except SignedOut:
            return await self.signed_out(request)
        back = str(form.get("back", ""))
        if session.work.receipt(back) is not None:
            return self.go(request, f"/returns/receipt/{back}")
        return self.go(request, "/returns")

    async def send_pending(self, session: TillSession) -> None:
        """One round of sending queued returns; confirmed ones update their receipts."""
        assert session.client is not None
        if not await session.client.returns.pending():
            return
        try:
            outcome = await self.guarded(session, session.client.returns.sync_pending())
        except omnisdk.APIConnectionError:
            return
        if outcome["left"] and not outcome["confirmed"]:
            session.went_offline()
        repriced = {r.till_transaction_id: r for r in outcome["repriced"]}
        for redemption in outcome["confirmed"]:
            receipt = session.work.receipt(redemption.till_transaction_id)
            if receipt is not None:
                confirmed = redemption.model_copy(update={"value": receipt.review.refund})
                receipt.redemption = confirmed
                receipt.repriced = repriced.get(redemption.till_transaction_id)
                session.work.keep_receipt(receipt)
        if outcome["refused"]:  # their receipts said PENDING, and nothing else ever would
            self.mark_refused(session)

    def mark_refused(self, session: TillSession) -> None:
        """Mark the receipts of returns the shop refused when they were sent (dead letters of
        the till's queue): the refund already went out, so the clerk must tell a manager."""
        assert session.client is not None
        for letter in session.client.returns.till.refused():
            transaction = str(letter.payload.get("request", {}).get("till_transaction_id", ""))
            receipt = session.work.receipt(transaction)
            if receipt is None or receipt.refused is not None:
                continue
            receipt.refused = _refusal_kind(letter.error)
            session.work.keep_receipt(receipt)

    def keep_sending(self, session: TillSession) -> None:
        """Send this till's queued returns in the background until none are left: pages never
        wait for a network that may be gone."""
        if session.syncing is not None and not session.syncing.done():
            return

        async def loop() -> None:
            assert session.client is not None
            while await session.client.returns.pending():
                await asyncio.sleep(self.config.sync_interval)
                try:
                    await self.send_pending(session)
                except SignedOut:
                    return

        session.syncing = asyncio.create_task(loop())


def _environment(language: str) -> Environment:
    from server_stub.pos.language import translations

    environment = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True),
        extensions=["jinja2.ext.i18n"],
    )
    environment.install_gettext_translations(translations(language), newstyle=True)  # type: ignore[attr-defined]
    return environment


def _is_id(text: str) -> bool:
    return ID_PATTERN.fullmatch(text) is not None


async def _principal(
    client: omnisdk.AsyncClient, words: Words
) -> omnisdk.models.Principal | tuple[int, str]:
    """Who this key is if it may sign a till in; else why not (status, words for the clerk)."""
    not_a_till = (403, words("This is not a till key. Use the key made for this store's tills."))
    try:
        me = await client.system.whoami()
    except omnisdk.PermissionDeniedError:
        return not_a_till
    except omnisdk.OmnisdkError as error:
        return _sign_in_failure(words, error)
    return me if me.channel is omnisdk.Channel.POS else not_a_till


async def _keys_refusal(client: omnisdk.AsyncClient, words: Words) -> tuple[int, str] | None:
    """The shop's keys, fetched into the till's folder for offline checks; or why not."""
    try:
        await client.returns.keys(refresh=True)
    except omnisdk.OmnisdkError as error:
        return _sign_in_failure(words, error)
    return None


def _sign_in_failure(words: Words, error: omnisdk.OmnisdkError) -> tuple[int, str]:
    if isinstance(error, omnisdk.AuthenticationError):
        return 401, words("That key is not valid. Check it and try again.")
    if isinstance(error, omnisdk.APIConnectionError):
        return 503, words(
            "The shop's server cannot be reached. Sign in again when the network is back."
        )
    return 502, words("The shop's server refused the sign-in. Ask the shop's support.")


def _status_refusal(
    words: Words, error: omnisdk.APIError, verification: tokens.Verification, token: str
) -> str:
    """The server's refusal of a code that passed the till's own check, in the clerk's words."""
    reason = (error.problem or {}).get("reason")
    if error.type.endswith("/return-revoked"):
        return scans.withdrawn(words)
    if reason == "unknown_token":
        return scans.unknown_to_the_shop(words)
    if reason in {status.value for status in tokens.Status}:
        refused = replace(verification, status=tokens.Status(reason))
        return scans.refusal(words, refused, token)
    return _problem_words(words, error)


def _redeem_conflict(words: Words, error: omnisdk.APIError, review: Review) -> str:
    problem = error.problem or {}
    line_id = problem.get("line_id")
    line = next((line for line in review.lines if line.line_id == line_id), None)
    if line is not None and isinstance(problem.get("remaining"), int):
        return scans.already_returned(
            words, line.label, problem["remaining"], review.units.get(line.line_id, 0), []
        )
    if error.type.endswith("/return-revoked"):
        return scans.withdrawn(words)
    return words("This return was changed meanwhile. Scan the code again.")


def _refusal_kind(error: str) -> str:
    """The last part of the problem type a dead letter's stored problem names."""
    try:
        problem = json.loads(error)
    except ValueError:
        return "refused"
    kind = problem.get("type") if isinstance(problem, dict) else None
    return str(kind).rsplit("/", 1)[-1] if kind else "refused"


def _problem_words(words: Words, error: omnisdk.APIError) -> str:
    if error.status_code >= 500:
        return words("The shop's server has a problem. Try again in a minute.")
    return words("The shop's server refused this return. Scan the code again.")
