"""Every error the server answers is problem+json (RFC 9457) with a stable `type`.

Domain code raises `Problem`; the handlers here turn it, and everything FastAPI or Starlette
raise, into the same shape. No personal data is echoed back: validation errors name the
field and the rule, never the value that was sent.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from server_stub.observability import current_request_id

log = logging.getLogger("omnisdk.server")


class Problem(Exception):
    """Raise to answer with a problem of `type`; `extra` members go into the body."""

    def __init__(
        self,
        type: ProblemType,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail)
        self.type = type
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(
    type: ProblemType,
    detail: str,
    *,
    instance: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": type.value,
        "title": type.default_title,
        "status": type.status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    request_id = current_request_id()
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    return JSONResponse(
        body, status_code=type.status, headers=headers, media_type=PROBLEM_CONTENT_TYPE
    )


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.type, exc.detail, instance=request.url.path, headers=exc.headers, **exc.extra
    )


def _field_errors(errors: Any) -> list[dict[str, Any]]:
    return [
        {
            "loc": [str(part) for part in error.get("loc", ())],
            "msg": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in errors
    ]


async def _on_validation(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    path = request.url.path
    if any(error.get("type") == "json_invalid" for error in errors):
        position = next(e["loc"][-1] for e in errors if e.get("type") == "json_invalid")
        return problem_response(
            ProblemType.MALFORMED_JSON,
            f"the body could not be parsed as JSON (at character {position})",
            instance=path,
        )
    content_type = request.headers.get("content-type", "")
    if request.method in {"POST", "PUT", "PATCH"} and "json" not in content_type:
        body_errors = [e for e in errors if e.get("loc", ("",))[0] == "body"]
        if body_errors:
            return problem_response(
                ProblemType.UNSUPPORTED_MEDIA_TYPE,
                "send the body as JSON with `Content-Type: application/json`",
                instance=path,
            )
    return problem_response(
        ProblemType.VALIDATION_ERROR,
        "the request has invalid fields; see `errors`",
        instance=path,
        errors=_field_errors(errors),
    )


_HTTP_STATUS_TYPES = {
    400: ProblemType.MALFORMED_JSON,  # FastAPI's "error parsing the body" (invalid UTF-8, say)
    401: ProblemType.AUTHENTICATION_REQUIRED,
    404: ProblemType.NOT_FOUND,
    405: ProblemType.METHOD_NOT_ALLOWED,
    413: ProblemType.PAYLOAD_TOO_LARGE,
    415: ProblemType.UNSUPPORTED_MEDIA_TYPE,
}


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    type = _HTTP_STATUS_TYPES.get(exc.status_code)
    if type is None:
        type = ProblemType.VALIDATION_ERROR if exc.status_code < 500 else ProblemType.INTERNAL_ERROR
    detail = exc.detail if isinstance(exc.detail, str) else type.default_title
    if type is ProblemType.NOT_FOUND and detail == "Not Found":
        detail = f"there is no resource at {request.url.path}"
    headers = dict(exc.headers) if exc.headers else {}
    allowed = allowed_methods(request) if exc.status_code == 405 else None
    if allowed:
        # Starlette names the methods of the first route it tried; a path served by several
        # routes (GET and POST /v1/sessions/{id}) allows all of theirs (RFC 9110 section 10.2.1).
        headers["Allow"] = ", ".join(allowed)
    return problem_response(type, detail, instance=request.url.path, headers=headers or None)


def allowed_methods(request: Request) -> list[str] | None:
    """The methods the API documents at the request's path (None: a path it does not
    document). A path one operation names literally (/v1/consent/confirmations) is that
    operation's, not also a template's (/v1/consent/{customer_id})."""
    paths: dict[str, Any] = request.app.openapi().get("paths", {})
    path = request.url.path
    operations = paths.get(path)
    if operations is None:
        operations = next(
            (ops for template, ops in paths.items() if _template(template).fullmatch(path)),
            None,
        )
    return sorted(method.upper() for method in operations) if operations else None


def _template(path: str) -> re.Pattern[str]:
    parts = re.split(r"\{[^/{}]+\}", path)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    # A bug. Log the exception type and where, never its message (it may carry data).
    # The route template, never the raw path: a path may hold a customer id or an order ref.
    route = request.scope.get("route")
    log.error(
        "unhandled error",
        extra={"error_type": type(exc).__name__, "route": getattr(route, "path", "(no route)")},
        exc_info=False,
    )
    return problem_response(
        ProblemType.INTERNAL_ERROR,
        "the server failed; nothing was changed. Report the request id.",
        instance=request.url.path,
    )


# What nginx logs for a request its client abandoned: no answer reaches anyone.
CLIENT_CLOSED_REQUEST = 499


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    # The client went away before its request was read (its body cut short by a bad chunk,
    # the connection closed): no failure of the server, so neither logged as one nor counted
    # as a 5xx (anyone could raise the error rate at will); nothing was changed.
    route = request.scope.get("route")
    log.info(
        "the client went away before its request was read",
        extra={"route": getattr(route, "path", "(no route)")},
    )
    return Response(status_code=CLIENT_CLOSED_REQUEST)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _on_client_gone)
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
