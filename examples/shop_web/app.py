"""A small web shop's landing page, personalised with omnisdk (FastAPI + Jinja2).

    OMNISDK_URL=http://127.0.0.1:8000 OMNISDK_WEB_KEY=osk_web_... \\
        python -m uvicorn --factory examples.shop_web.app:from_environment --port 8080

- `/?qr=billboard-berlin-7` is where the billboard's QR code leads: the page matches the poster.
- `/` is the generic page for a visitor the shop knows nothing about.
- A signed-in customer (here `/login?customer=cus_...`, standing in for the shop's own login)
  who consented to personalisation gets content for her interests and her cart; without that
  consent she gets the generic page, and her profile is not even read.

The SDK decides locally from its cached ruleset, so rendering the page costs no request to the
omnisdk server once the caches are warm. The fragments are escaped HTML from the SDK's templates.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Annotated

from fastapi import Cookie, FastAPI, Header, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markupsafe import Markup

import omnisdk

HERE = Path(__file__).parent
SLOTS = ["landing.hero", "landing.cta", "landing.recommendations"]
VISITOR_COOKIE = "shop_visitor"
CUSTOMER_COOKIE = "shop_customer"


def create_shop(client: omnisdk.Client) -> FastAPI:
    """The shop's web app, using `client` (a web-channel key) for its decisions."""
    app = FastAPI(title="Trail & Co")
    templates = Jinja2Templates(directory=HERE / "templates")
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.get("/", response_class=HTMLResponse)
    def landing(
        request: Request,
        qr: str | None = None,
        utm_source: str | None = None,
        utm_medium: str | None = None,
        utm_campaign: str | None = None,
        visitor: Annotated[str | None, Cookie(alias=VISITOR_COOKIE)] = None,
        customer: Annotated[str | None, Cookie(alias=CUSTOMER_COOKIE)] = None,
        user_agent: Annotated[str, Header()] = "",
        accept_language: Annotated[str, Header()] = "",
    ) -> HTMLResponse:
        visitor = visitor or uuid.uuid4().hex
        utm = {
            k: v
            for k, v in (
                ("utm_source", utm_source),
                ("utm_medium", utm_medium),
                ("utm_campaign", utm_campaign),
            )
            if v
        }
        decision = client.content.decide(
            customer,
            anonymous_id=visitor,
            slots=SLOTS,
            qr=qr,
            utm=utm,
            device="mobile" if "Mobile" in user_agent else "desktop",
            locale=accept_language.split(",")[0] or None,
        )
        signals = (
            client.consent.consent_mode(customer)
            if customer
            else {s: "denied" for s in ("ad_storage", "analytics_storage")}
        )
        response = templates.TemplateResponse(
            request,
            "landing.html",
            {
                "fragments": {slot: Markup(decision.html(slot)) for slot in decision.slots},
                "decision": decision,
                "signals": signals,
                "customer": customer,
            },
        )
        response.set_cookie(VISITOR_COOKIE, visitor, httponly=True, samesite="lax")
        return response

    @app.get("/login")
    def login(customer: str) -> RedirectResponse:
        """Stands in for the shop's own sign-in: remembers who the customer is."""
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(CUSTOMER_COOKIE, customer, httponly=True, samesite="lax")
        return response

    return app


def from_environment() -> FastAPI:
    client = omnisdk.Client(os.environ["OMNISDK_URL"], os.environ["OMNISDK_WEB_KEY"], channel="web")
    return create_shop(client)
