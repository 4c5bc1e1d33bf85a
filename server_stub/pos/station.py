"""The POS return station: the page store staff use to scan a return code and take goods back.

It is a small FastAPI app of its own, rendering HTML on the server (no JavaScript, no external
assets), so it can be mounted in the reference server (`/pos`) or in a shop's own POS backend.
It talks to the sync server through the SDK with the till's `pos` key: in a POS backend with a
`data_dir`, the SDK verifies codes from cached keys and queues redemptions when the network is
gone, and the page says so (pending, then confirmed).

Security: every page needs a till session (a sign-in with a pos-channel key); the session cookie
is HttpOnly and SameSite=Strict; every form post carries a CSRF token; Jinja2 autoescapes all
HTML; a strict Content-Security-Policy allows nothing but this origin's stylesheet and images.
"""

from __future__ import annotations

import hmac
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import omnisdk
from omnisdk.core.tokens import Verification
from omnisdk.models import Redemption, ReturnStatus
from server_stub.pos.photos import UnreadablePhoto, read_return_code

HERE = Path(__file__).parent
COOKIE = "omnisdk_till"
SESSION_SECONDS = 12 * 3600
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)


@dataclass
class TillSession:
    client: omnisdk.AsyncClient
    store_id: str
    till_id: str
    csrf: str
    expires: float
    receipts: dict[str, Redemption] = field(default_factory=dict)


@dataclass
class StationConfig:
    """Where the station's SDK clients go: a server URL, or an in-process ASGI transport."""

    server_url: str = "http://omnisdk.local"
    transport: httpx.AsyncBaseTransport | None = None
    data_dir: Path | None = None  # enables offline verification and queued redemptions
    offline_cap: float = 250.0
    retry_policy: omnisdk.RetryPolicy = field(
        default_factory=lambda: omnisdk.RetryPolicy(max_retries=1, initial_delay=0.1)
    )
    timeout: float = 5.0


class SecurityHeaders:
    """Content-Security-Policy and friends on every answer of the station."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", []),
                    (b"content-security-policy", CSP.encode()),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"cache-control", b"no-store"),
                ]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_station(config: StationConfig | None = None) -> FastAPI:
    """The return station as an ASGI app; mount it where staff reach it (e.g. at /pos)."""
    config = config or StationConfig()
    sessions: dict[str, TillSession] = {}
    templates = Jinja2Templates(directory=HERE / "templates")
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    app.add_middleware(SecurityHeaders)

    def new_client(api_key: str, till_id: str) -> omnisdk.AsyncClient:
        http = httpx.AsyncClient(transport=config.transport, timeout=config.timeout)
        data_dir = config.data_dir / till_id if config.data_dir else None
        return omnisdk.AsyncClient(
            config.server_url,
            api_key,
            channel="pos",
            http_client=http,
            data_dir=data_dir,
            offline_cap=config.offline_cap,
            retry_policy=config.retry_policy,
            timeout=config.timeout,
        )

    def session_of(request: Request) -> TillSession | None:
        session = sessions.get(request.cookies.get(COOKIE, ""))
        if session is None or session.expires < time.time():
            return None
        return session

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        base = request.scope.get("root_path", "")
        return templates.TemplateResponse(
            request, name, {"base": base, **context}, status_code=status_code
        )

    def to_login(request: Request) -> Response:
        return RedirectResponse(f"{request.scope.get('root_path', '')}/login", status_code=303)

    def checked(request: Request, csrf: str) -> TillSession | None:
        session = session_of(request)
        if session is None or not hmac.compare_digest(session.csrf, csrf):
            return None
        return session

    async def scan_page(
        request: Request, session: TillSession, error: str | None = None, code: int = 200
    ) -> Response:
        synced = await _sync(session)
        return page(
            request,
            "scan.html",
            code,
            session=session,
            error=error,
            synced=synced,
            pending=session.client.returns.pending(),
        )

    @app.get("/login")
    async def login_form(request: Request) -> Response:
        return page(request, "login.html")

    @app.post("/login")
    async def login(
        request: Request,
        api_key: str = Form(max_length=200),
        store_id: str = Form(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"),
        till_id: str = Form(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"),
    ) -> Response:
        client = new_client(api_key.strip(), till_id)
        refusal = await _sign_in_refusal(client)
        if refusal is not None:
            await client.aclose()
            return page(request, "login.html", refusal[0], error=refusal[1])
        token = secrets.token_urlsafe(32)
        sessions[token] = TillSession(
            client, store_id, till_id, secrets.token_urlsafe(32), time.time() + SESSION_SECONDS
        )
        response = RedirectResponse(
            f"{request.scope.get('root_path', '')}/returns", status_code=303
        )
        response.set_cookie(
            COOKIE,
            token,
            httponly=True,
            samesite="strict",
            max_age=SESSION_SECONDS,
            path=request.scope.get("root_path", "") or "/",
        )
        return response

    @app.post("/logout")
    async def logout(request: Request, csrf: str = Form("")) -> Response:
        session = checked(request, csrf)
        if session is not None:
            sessions.pop(request.cookies.get(COOKIE, ""), None)
            await session.client.aclose()
        return to_login(request)

    @app.get("/returns")
    async def returns_home(request: Request) -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        return await scan_page(request, session)

    async def show_code(request: Request, session: TillSession, token: str) -> Response:
        verification = await session.client.returns.verify(token)
        if not verification.valid:
            return await scan_page(request, session, verification.message, 422)
        try:
            status: ReturnStatus | None = await session.client.returns.status(token)
        except omnisdk.APIConnectionError:
            status = None
        except omnisdk.APIError as error:
            return await scan_page(request, session, error.detail, 422)
        return page(
            request,
            "order.html",
            session=session,
            token=token.strip(),
            verification=verification,
            status=status,
            lines=_lines(verification, status),
            error=None,
        )

    @app.post("/returns/scan")
    async def scan(
        request: Request, code: str = Form("", max_length=2000), csrf: str = Form("")
    ) -> Response:
        session = checked(request, csrf)
        if session is None:
            return to_login(request)
        if not code.strip():
            return await scan_page(
                request, session, "Nothing was scanned. Scan the code again.", 422
            )
        return await show_code(request, session, code)

    @app.post("/returns/photo")
    async def photo(request: Request, image: UploadFile, csrf: str = Form("")) -> Response:
        session = checked(request, csrf)
        if session is None:
            return to_login(request)
        try:
            token = read_return_code(await image.read())
        except UnreadablePhoto as error:
            return await scan_page(request, session, str(error), 422)
        return await show_code(request, session, token)

    @app.post("/returns/redeem")
    async def redeem(request: Request) -> Response:
        form = await request.form()
        session = checked(request, str(form.get("csrf", "")))
        if session is None:
            return to_login(request)
        token = str(form.get("token", ""))
        units = {
            key.removeprefix("qty-"): int(str(value))
            for key, value in form.items()
            if key.startswith("qty-") and _plain_count(str(value))
        }
        refund_method = str(form.get("refund_method", ""))
        amount = _amount(str(form.get("amount", "")))
        if not units:
            return await _order_again(
                request, session, token, "Choose at least one unit to take back."
            )
        transaction = f"{session.till_id}:{uuid.uuid4().hex[:12]}"
        try:
            redemption = await session.client.returns.redeem(
                token,
                units,
                transaction,
                session.store_id,
                refund_method,  # type: ignore[arg-type]
                queue_if_offline=True,
                value=amount,
            )
        except (omnisdk.ReturnRefused, omnisdk.OfflineLimitReached) as error:
            return await _order_again(request, session, token, str(error))
        except omnisdk.APIConnectionError:
            return await _order_again(
                request,
                session,
                token,
                "The shop's server cannot be reached and this till cannot take returns offline.",
            )
        except omnisdk.APIError as error:
            return await _order_again(request, session, token, error.detail)
        session.receipts[redemption.till_transaction_id] = redemption
        receipt_path = f"/returns/receipt/{redemption.till_transaction_id}"
        return RedirectResponse(request.scope.get("root_path", "") + receipt_path, status_code=303)

    async def _order_again(
        request: Request, session: TillSession, token: str, error: str
    ) -> Response:
        verification = await session.client.returns.verify(token)
        if not verification.valid:
            return await scan_page(request, session, verification.message, 422)
        try:
            status: ReturnStatus | None = await session.client.returns.status(token)
        except omnisdk.OmnisdkError:
            status = None
        return page(
            request,
            "order.html",
            422,
            session=session,
            token=token,
            verification=verification,
            status=status,
            lines=_lines(verification, status),
            error=error,
        )

    @app.get("/returns/receipt/{transaction}")
    async def receipt(request: Request, transaction: str) -> Response:
        session = session_of(request)
        if session is None:
            return to_login(request)
        redemption = session.receipts.get(transaction)
        if redemption is None:
            return await scan_page(request, session, "There is no such receipt on this till.", 404)
        if redemption.status == "pending":
            await _sync(session)
            redemption = session.receipts[transaction]
        return page(request, "receipt.html", session=session, redemption=redemption)

    @app.post("/returns/sync")
    async def sync(request: Request, csrf: str = Form("")) -> Response:
        session = checked(request, csrf)
        if session is None:
            return to_login(request)
        return await scan_page(request, session)

    return app


async def _sign_in_refusal(client: omnisdk.AsyncClient) -> tuple[int, str] | None:
    """Why this key cannot sign a till in (status, words for the clerk), or None if it can."""
    not_a_till = (403, "This is not a till key. Use the key made for this store's tills.")
    try:
        me = await client.system.whoami()
        await client.returns.keys(refresh=True)
    except omnisdk.AuthenticationError:
        return 401, "That key is not valid. Check it and try again."
    except omnisdk.PermissionDeniedError:
        return not_a_till
    except omnisdk.APIConnectionError:
        return 503, "The shop's server cannot be reached. Sign in again when the network is back."
    except omnisdk.APIError as error:
        return 502, f"The shop's server refused the sign-in: {error.detail}"
    return None if me.channel is omnisdk.Channel.POS else not_a_till


async def _sync(session: TillSession) -> list[Redemption]:
    """Send queued redemptions if there are any; mark their receipts confirmed."""
    if not session.client.returns.pending():
        return []
    outcome = await session.client.returns.sync_pending()
    confirmed: list[Redemption] = outcome["confirmed"]
    for redemption in confirmed:
        session.receipts[redemption.till_transaction_id] = redemption
    return confirmed


@dataclass(frozen=True)
class LineView:
    line_id: str
    sku: str
    name: str | None
    on_code: int
    remaining: int | None  # None: offline, unknown
    unit_price: float | None


def _lines(verification: Verification, status: ReturnStatus | None) -> list[LineView]:
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
    return views


def _amount(text: str) -> float | None:
    try:
        value = float(text.replace(",", "."))
    except ValueError:
        return None
    return value if value >= 0 else None


def _plain_count(text: str) -> bool:
    """A quantity typed at the till: 1 to 9999 in ASCII digits (`²` is a digit to Python,
    but not a number int() reads; 10^30 units overflowed the outbox)."""
    return text.isascii() and text.isdigit() and len(text) <= 4 and int(text) > 0
