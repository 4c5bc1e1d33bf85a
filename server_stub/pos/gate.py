"""The station's door: security headers on every answer, no post from another site, no body
read from anyone not signed in, and no body larger than its route allows.

A post sent by another site's page is refused before anything else, the sign-in and
enrolment forms included: the session cookie is SameSite=Strict and every signed-in form
carries a CSRF token, but a sign-in posted from elsewhere would otherwise put the till under a
key of the attacker's choosing (login CSRF). Browsers say where a post comes from in
`Sec-Fetch-Site` and `Origin` (RFC 6454); a client that sends neither is not a browser page.

A form post from someone without a till session is answered (a redirect to the sign-in page)
before a byte of its body is read, so an unauthenticated upload costs the station nothing; a
body over its limit is refused from its Content-Length, or as soon as a chunked one passes it.
"""

from __future__ import annotations

import html
from collections.abc import Callable

from starlette.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server_stub.pos.language import Words

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
OPEN_POSTS = frozenset({"/login", "/login/enrol", "/enrol"})  # they carry their own credential
FORM_BYTES = 64 * 1024
PHOTO_PATH = "/returns/photo"


class BodyTooLarge(Exception):
    pass


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        signed_in: Callable[[Scope], bool],
        photo_bytes: int,
        form_bytes: int = FORM_BYTES,
        words: Callable[[Scope], Words] = lambda scope: Words("en"),
    ) -> None:
        self.app = app
        self.signed_in = signed_in
        self.words = words
        self.photo_bytes = photo_bytes
        self.form_bytes = form_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = _with_headers(send)
        path = scope["path"].removeprefix(scope.get("root_path", ""))
        if scope["method"] == "POST" and _from_another_site(scope):
            await _cross_site(self.words(scope))(scope, receive, send)
            return
        if scope["method"] == "POST" and path not in OPEN_POSTS and not self.signed_in(scope):
            await RedirectResponse(f"{scope.get('root_path', '')}/login", 303)(scope, receive, send)
            return
        limit = self.photo_bytes if path == PHOTO_PATH else self.form_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit, self.words(scope))(scope, receive, send)
            return
        received = 0

        async def bounded() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        try:
            await self.app(scope, bounded, send)
        except BodyTooLarge:
            await _too_large(limit, self.words(scope))(scope, receive, send)


def _from_another_site(scope: Scope) -> bool:
    headers = dict(scope["headers"])
    fetched_from = headers.get(b"sec-fetch-site")
    if fetched_from is not None:  # every current browser (Fetch Metadata)
        return fetched_from not in (b"same-origin", b"none")
    origin = headers.get(b"origin")
    if origin is None:
        return False
    # A proxy in front may rename the host; it then says the browser's in X-Forwarded-Host
    # (a page of another site cannot set that header on a form post).
    hosts = {headers.get(b"host", b""), headers.get(b"x-forwarded-host", b"")} - {b""}
    # "null": a sandboxed page or one with no-referrer; ours send their origin (same-origin).
    return origin.partition(b"://")[2] not in hosts


def _cross_site(words: Words) -> HTMLResponse:
    text = words(
        "This form was sent from another web site and was refused. Open the return station's "
        "own page and try again."
    )
    return _plain_page(words, words("Refused"), text, 403)


def _too_large(limit: int, words: Words) -> HTMLResponse:
    megabytes = max(1, limit // (1024 * 1024))
    text = words(
        "The file or form is too large (at most %(megabytes)s MB). Go back and try a smaller "
        "photo.",
        megabytes=megabytes,
    )
    response = _plain_page(words, words("Too large"), text, 413)
    response.headers["connection"] = "close"
    return response


def _plain_page(words: Words, title: str, text: str, status_code: int) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="{words.language}"><title>{html.escape(title)}</title>'
        f"<p>{html.escape(text)}</p></html>",
        status_code=status_code,
    )


def _with_headers(send: Send) -> Send:
    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            message["headers"] = [
                *message.get("headers", []),
                (b"content-security-policy", CSP.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"referrer-policy", b"same-origin"),
                (b"cache-control", b"no-store"),
            ]
        await send(message)

    return send_with_headers
