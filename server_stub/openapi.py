"""The OpenAPI document as the server really behaves: every error as problem+json, the API key
as the security scheme, the headers that matter (Idempotency-Key, If-Match), the media types
of the streams and images, and an example for every request body.

FastAPI derives paths and schemas from the routes and models; what it cannot know (that every
error body is RFC 9457 problem details, which statuses a route can answer, that `ApiRoute`
checks a bearer key) is added here once, from the same facts the routes run on: the scope
each `ApiRoute` declares (`needs(...)`), its read-only mark, its method, parameters and body.
Descriptions and examples of fields live in the models.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from omnisdk.core.problems import PROBLEM_CONTENT_TYPE, ProblemType
from server_stub.auth import READ_ONLY_EXTENSION, SCOPE_EXTENSION

SECURITY_SCHEME = "apiKey"
MUTATING = {"post", "put", "patch", "delete"}

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "type": "object",
    "description": "An error, as RFC 9457 problem details. `type` is stable: see docs/errors.md.",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {
            "type": "string",
            "format": "uri",
            "description": "The kind of error: a URI listed in docs/errors.md.",
            "examples": [ProblemType.VALIDATION_ERROR.value],
        },
        "title": {"type": "string", "description": "A short summary of the kind of error."},
        "status": {"type": "integer", "description": "The HTTP status code."},
        "detail": {"type": "string", "description": "What went wrong here, and what to do."},
        "instance": {"type": "string", "description": "The request path, where it helps."},
        "request_id": {
            "type": "string",
            "description": "The request's id (also the X-Request-ID header): quote it in support.",
        },
        "errors": {
            "type": "array",
            "description": (
                "For validation errors: each invalid field with its place and reason (an "
                "object), or each problem of a ruleset (a sentence)."
            ),
            "items": {},
        },
    },
    "additionalProperties": True,
}

WHY: dict[int, str] = {
    400: "The body is not JSON, or the Idempotency-Key header is malformed.",
    401: "No API key, or one the server does not know (revoked, mistyped).",
    403: "The API key lacks the scope this operation needs.",
    404: "No such resource for this tenant (another tenant's look the same).",
    409: "A conflict with the current state (the problem's type says which), or an "
    "Idempotency-Key already used for a different request.",
    413: "The body is larger than the server accepts.",
    415: "The body is not sent as application/json.",
    422: "The request is well-formed but invalid; `errors` lists each field.",
    428: "This operation needs If-Match with the version the caller saw.",
}

IDEMPOTENCY_KEY: dict[str, Any] = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes a retried write safe: the first answer is stored for 24 h and replayed to a "
        "retry with the same key and body (with `Idempotent-Replayed: true`); the same key "
        "with another body is answered 409. The SDK sends one with every write."
    ),
    "schema": {"type": "string", "pattern": "^[\\x20-\\x7e]{1,255}$"},
}

STREAM = {
    "text/event-stream": {
        # Each Server-Sent Event (validators such as schemathesis check every one).
        "schema": {
            "type": "object",
            "description": "One event: its feed position, kind and JSON payload.",
            "properties": {
                "id": {"type": "string", "description": "The change's position in the feed."},
                "event": {"type": "string", "description": "The kind: cart, session, …"},
                "data": {"type": "string", "description": "The change, as JSON."},
            },
        },
        "example": 'id: 42\nevent: cart\ndata: {"customer_id": "cus_...", "version": 3}\n\n',
    }
}
MEDIA_TYPES: dict[tuple[str, str], dict[str, Any]] = {
    ("get", "/v1/changes"): STREAM,
    ("get", "/v1/customers/{customer_id}/changes"): STREAM,
    ("get", "/v1/returns/{token_id}/qr.png"): {
        "image/png": {"schema": {"type": "string", "format": "binary"}}
    },
    ("get", "/v1/returns/{token_id}/qr.svg"): {"image/svg+xml": {"schema": {"type": "string"}}},
    ("get", "/metrics"): {"text/plain": {"schema": {"type": "string"}}},
}
# Operations whose If-Match is not optional (the server answers 428 without it).
IF_MATCH_REQUIRED = {("post", "/v1/carts/{customer_id}/mark-ordered")}


def install(app: FastAPI) -> None:
    """Serve the completed document at /openapi.json (built once, on first request)."""
    app.openapi = _builder(app)  # type: ignore[method-assign]


def _builder(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = complete(document)
        return app.openapi_schema

    return openapi


def complete(document: dict[str, Any]) -> Any:
    """The document with security, problem responses, headers, media types and examples. An
    operation of an `ApiRoute` is known by the scope it declares (`x-required-scope`)."""
    document = copy.deepcopy(document)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA
    components["securitySchemes"] = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "osk_<tenant>_<key>_<secret>",
            "description": (
                "An API key of the shop, per channel, made with `omnisdk-server key create`: "
                "`Authorization: Bearer osk_...`. Its scopes decide what it may do."
            ),
        }
    }
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(method, path, operation, schemas)
    return document


def _complete_operation(
    method: str, path: str, operation: dict[str, Any], schemas: dict[str, Any]
) -> None:
    authenticated = SCOPE_EXTENSION in operation
    writes = method in MUTATING and not operation.get(READ_ONLY_EXTENSION, False)
    responses = operation.setdefault("responses", {})
    media = MEDIA_TYPES.get((method, path))
    if media is not None:
        success = next(code for code in responses if code.startswith("2"))
        responses[success]["content"] = media
    _examples_of_body(operation, schemas)
    if not authenticated:
        operation["security"] = []  # public: liveness, readiness, metrics (own token)
        statuses = {401} if path == "/metrics" else set()
        if path == "/readyz":
            responses["503"] = {
                "description": "The database does not answer, or its schema is not migrated.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            }
    else:
        operation["security"] = [{SECURITY_SCHEME: []}]
        statuses = _statuses(method, path, operation, writes)
        if writes:
            _add_parameter(operation, IDEMPOTENCY_KEY)
        if (method, path) in IF_MATCH_REQUIRED:
            _require_if_match(operation)
    for status in sorted(statuses):
        responses[str(status)] = {
            "description": WHY[status],
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }


def _statuses(method: str, path: str, operation: dict[str, Any], writes: bool) -> set[int]:
    """The error statuses this operation can answer with."""
    # 404: a customer, token or key named in the path or the body, or a tenant's resource
    # that does not exist yet (no ruleset published).
    statuses = {401, 403, 404, 422}
    has_body = "requestBody" in operation
    if has_body:
        statuses |= {400, 413, 415}
    if writes:
        statuses |= {400, 409}
    if (method, path) in IF_MATCH_REQUIRED:
        statuses.add(428)
    return statuses


def _add_parameter(operation: dict[str, Any], parameter: dict[str, Any]) -> None:
    parameters = operation.setdefault("parameters", [])
    if not any(p.get("name", "").lower() == parameter["name"].lower() for p in parameters):
        parameters.append(dict(parameter))


def _require_if_match(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if parameter.get("name", "").lower() == "if-match":
            parameter["required"] = True
            parameter["description"] = (
                'The cart version the customer saw, as an entity tag: `"3"` (428 without it, '
                "409 if the cart changed since)."
            )
            parameter["schema"] = {"type": "string", "pattern": '^(W/)?"[0-9]+"$'}
            parameter["example"] = '"3"'


def _examples_of_body(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Show each request body's example (from its model) on the operation, for Try it out."""
    for content in operation.get("requestBody", {}).get("content", {}).values():
        if "example" in content or "examples" in content:
            continue
        schema = _resolve(content.get("schema", {}), schemas)
        examples = schema.get("examples")
        if examples:
            content["example"] = examples[0]


def _resolve(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
        resolved: dict[str, Any] = schemas.get(ref.rsplit("/", 1)[1], {})
        return resolved
    return schema
