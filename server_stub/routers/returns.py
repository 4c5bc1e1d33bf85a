"""Returns: issue signed return codes, publish the keys that verify them, redeem at a till."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query, Request
from pydantic import ConfigDict, Field
from starlette.responses import Response

from omnisdk import qr
from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import (
    IssuedReturn,
    IssueReturnRequest,
    PublishedKeys,
    RedeemRequest,
    Redemption,
    ReturnStatus,
    WireModel,
)
from server_stub import qr_images
from server_stub.auth import needs, principal_of
from server_stub.errors import Problem
from server_stub.routers.dependencies import Connection, Context
from server_stub.routing import ApiRoute
from server_stub.runtime import runtime_of
from server_stub.services import audit, returns, signing_keys

router = APIRouter(prefix="/v1/returns", tags=["returns"], route_class=ApiRoute)
MAX_CACHED_IMAGES = 2048


class TokenBody(WireModel):
    """A return code to look up."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"token": "RT1:6BFOXN*TS0BI$ZD4N9:9S6RCVN5+O30K3"}]}
    )

    token: str = Field(
        description="A return code as scanned: `RT1:` followed by Base45 text.",
        min_length=4,
        max_length=2000,
    )


@router.post(
    "",
    status_code=201,
    summary="Register an order's returnable lines and issue a signed return code",
    openapi_extra=needs(Scope.RETURNS_ISSUE),
)
async def issue(
    body: IssueReturnRequest, request: Request, conn: Connection, context: Context
) -> IssuedReturn:
    return await returns.issue(conn, context, runtime_of(request).signing_keys, body)


@router.get(
    "/keys",
    summary="The public keys that verify this shop's return codes (cache them for offline use)",
    openapi_extra=needs(Scope.RETURNS_VERIFY),
)
async def published_keys(request: Request, conn: Connection) -> PublishedKeys:
    return await signing_keys.published(conn, principal_of(request).tenant_id)


@router.post(
    "/keys/rotate",
    summary="Start signing with a new key; the current one verifies until its grace ends",
    openapi_extra=needs(Scope.KEYS_MANAGE),
)
async def rotate_key(request: Request, conn: Connection) -> PublishedKeys:
    runtime = runtime_of(request)
    principal = principal_of(request)
    grace = runtime.settings.return_key_grace_days
    key = await runtime.signing_keys.rotate(conn, principal.tenant_id, timedelta(days=grace))
    await audit.record(
        conn, principal.tenant_id, principal.key_id, "signing_key.rotate", key.kid.hex()
    )
    return await signing_keys.published(conn, principal.tenant_id)


@router.post(
    "/keys/{kid}/retire",
    summary="Retire a signing key now (it leaked): its codes stop verifying",
    openapi_extra=needs(Scope.KEYS_MANAGE),
)
async def retire_key(kid: str, request: Request, conn: Connection) -> PublishedKeys:
    principal = principal_of(request)
    if not await runtime_of(request).signing_keys.retire(conn, principal.tenant_id, kid):
        raise Problem(ProblemType.NOT_FOUND, f"this tenant has no active signing key {kid!r}")
    await audit.record(conn, principal.tenant_id, principal.key_id, "signing_key.retire", kid)
    return await signing_keys.published(conn, principal.tenant_id)


@router.post(
    "/status",
    summary="Verify a scanned code: the lines with what remains, and what was returned where",
    openapi_extra=needs(Scope.RETURNS_REDEEM, read_only=True),
)
async def status(body: TokenBody, request: Request, conn: Connection) -> ReturnStatus:
    return await returns.status(conn, principal_of(request).tenant_id, body.token)


@router.post(
    "/redeem",
    summary="Take back units of a code's lines (each unit once; idempotent per till transaction)",
    openapi_extra=needs(Scope.RETURNS_REDEEM),
)
async def redeem(body: RedeemRequest, conn: Connection, context: Context) -> Redemption:
    return await returns.redeem(conn, context, body)


@router.post(
    "/{token_id}/revoke",
    summary="Withdraw a return code",
    openapi_extra=needs(Scope.RETURNS_REVOKE),
)
async def revoke_token(token_id: str, request: Request, conn: Connection) -> dict[str, str]:
    principal = principal_of(request)
    if await returns.revoke_token(conn, principal.tenant_id, token_id):  # audited once
        await audit.record(
            conn, principal.tenant_id, principal.key_id, "return.revoke_code", token_id
        )
    return {"token_id": token_id, "status": "revoked"}


@router.post(
    "/orders/{order_ref}/revoke",
    summary="Withdraw every return code of an order",
    openapi_extra=needs(Scope.RETURNS_REVOKE),
)
async def revoke_order(order_ref: str, request: Request, conn: Connection) -> dict[str, str]:
    principal = principal_of(request)
    if await returns.revoke_order(conn, principal.tenant_id, order_ref):  # audited once
        await audit.record(
            conn, principal.tenant_id, principal.key_id, "return.revoke_order", order_ref
        )
    return {"order_ref": order_ref, "status": "revoked"}


Medium = Annotated[qr.Medium, Query(description="screen: error correction M; print: Q")]


async def _image(
    request: Request, conn: Connection, token_id: str, medium: qr.Medium, kind: str
) -> Response:
    runtime = runtime_of(request)
    tenant_id = principal_of(request).tenant_id
    cache_key = (tenant_id, token_id, medium, kind)
    image = runtime.qr_images.get(cache_key)
    if image is None:
        token = await returns.token_text(conn, tenant_id, token_id)
        try:
            image = qr_images.png(token, medium) if kind == "png" else qr_images.svg(token, medium)
        except qr_images.CodeTooLarge:
            # Only codes issued before the size limit (tokens.MAX_SCANNABLE_CHARS) get here.
            raise Problem(
                ProblemType.VALIDATION_ERROR,
                f"return code {token_id} is too large to draw as a QR image: revoke it and "
                "issue the order again in parts",
            ) from None
        if len(runtime.qr_images) >= MAX_CACHED_IMAGES:
            runtime.qr_images.pop(next(iter(runtime.qr_images)))
        runtime.qr_images[cache_key] = image
    media_type = "image/png" if kind == "png" else "image/svg+xml"
    return Response(
        image, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"}
    )


@router.get(
    "/{token_id}/qr.png",
    summary="The return code as a PNG QR image",
    response_class=Response,
    openapi_extra=needs(Scope.RETURNS_ISSUE),
)
async def qr_png(
    token_id: str, request: Request, conn: Connection, medium: Medium = qr.Medium.SCREEN
) -> Response:
    return await _image(request, conn, token_id, medium, "png")


@router.get(
    "/{token_id}/qr.svg",
    summary="The return code as an SVG QR image",
    response_class=Response,
    openapi_extra=needs(Scope.RETURNS_ISSUE),
)
async def qr_svg(
    token_id: str, request: Request, conn: Connection, medium: Medium = qr.Medium.SCREEN
) -> Response:
    return await _image(request, conn, token_id, medium, "svg")
