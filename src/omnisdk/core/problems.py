"""The stable `type` URIs of the server's problem+json errors (RFC 9457).

Defined once here so the server that emits them and the SDK that maps them to exceptions
cannot disagree. A URI never changes meaning once published; new kinds get new URIs.
"""

from __future__ import annotations

from enum import StrEnum

PROBLEM_BASE = "https://omnisdk.dev/problems/"
PROBLEM_CONTENT_TYPE = "application/problem+json"


class ProblemType(StrEnum):
    """Every kind of error the server can answer with, and the HTTP status it goes with."""

    AUTHENTICATION_REQUIRED = PROBLEM_BASE + "authentication-required"
    INVALID_API_KEY = PROBLEM_BASE + "invalid-api-key"
    INSUFFICIENT_SCOPE = PROBLEM_BASE + "insufficient-scope"
    NOT_FOUND = PROBLEM_BASE + "not-found"
    METHOD_NOT_ALLOWED = PROBLEM_BASE + "method-not-allowed"
    MALFORMED_JSON = PROBLEM_BASE + "malformed-json"
    MALFORMED_REQUEST = PROBLEM_BASE + "malformed-request"
    UNSUPPORTED_MEDIA_TYPE = PROBLEM_BASE + "unsupported-media-type"
    VALIDATION_ERROR = PROBLEM_BASE + "validation-error"
    PAYLOAD_TOO_LARGE = PROBLEM_BASE + "payload-too-large"
    CONFLICT = PROBLEM_BASE + "conflict"
    IDENTITY_CONFLICT = PROBLEM_BASE + "identity-conflict"
    INVALID_IDENTIFIER = PROBLEM_BASE + "invalid-identifier"
    INVALID_EVENT = PROBLEM_BASE + "invalid-event"
    RETURN_CODE_INVALID = PROBLEM_BASE + "return-code-invalid"
    RETURN_REVOKED = PROBLEM_BASE + "return-revoked"
    ALREADY_RETURNED = PROBLEM_BASE + "already-returned"
    INVALID_CART_OPERATION = PROBLEM_BASE + "invalid-cart-operation"
    VERSION_CONFLICT = PROBLEM_BASE + "version-conflict"
    PRECONDITION_REQUIRED = PROBLEM_BASE + "precondition-required"
    IDEMPOTENCY_KEY_REUSED = PROBLEM_BASE + "idempotency-key-reused"
    INVALID_IDEMPOTENCY_KEY = PROBLEM_BASE + "invalid-idempotency-key"
    UNKNOWN_PURPOSE = PROBLEM_BASE + "unknown-purpose"
    INVALID_CONSENT_TRANSITION = PROBLEM_BASE + "invalid-consent-transition"
    CONFIRMATION_TOKEN_INVALID = PROBLEM_BASE + "confirmation-token-invalid"
    INVALID_RULESET = PROBLEM_BASE + "invalid-ruleset"
    CHANGE_FEED_RESYNC = PROBLEM_BASE + "change-feed-resync"
    RATE_LIMITED = PROBLEM_BASE + "rate-limited"
    REQUEST_HEADERS_TOO_LARGE = PROBLEM_BASE + "request-headers-too-large"
    REQUEST_TIMEOUT = PROBLEM_BASE + "request-timeout"
    SERVICE_UNAVAILABLE = PROBLEM_BASE + "service-unavailable"
    INTERNAL_ERROR = PROBLEM_BASE + "internal-error"
    ANALYTICS_UNAVAILABLE = PROBLEM_BASE + "analytics-unavailable"
    ANNOTATION_FORBIDDEN = PROBLEM_BASE + "annotation-forbidden"
    INVALID_SEGMENT = PROBLEM_BASE + "invalid-segment"

    @property
    def slug(self) -> str:
        return self.value.removeprefix(PROBLEM_BASE)

    @property
    def status(self) -> int:
        return _STATUS[self]

    @property
    def default_title(self) -> str:
        return _TITLE[self]


_STATUS: dict[ProblemType, int] = {
    ProblemType.AUTHENTICATION_REQUIRED: 401,
    ProblemType.INVALID_API_KEY: 401,
    ProblemType.INSUFFICIENT_SCOPE: 403,
    ProblemType.NOT_FOUND: 404,
    ProblemType.METHOD_NOT_ALLOWED: 405,
    ProblemType.MALFORMED_JSON: 400,
    ProblemType.MALFORMED_REQUEST: 400,
    ProblemType.UNSUPPORTED_MEDIA_TYPE: 415,
    ProblemType.VALIDATION_ERROR: 422,
    ProblemType.PAYLOAD_TOO_LARGE: 413,
    ProblemType.CONFLICT: 409,
    ProblemType.IDENTITY_CONFLICT: 409,
    ProblemType.INVALID_IDENTIFIER: 422,
    ProblemType.INVALID_EVENT: 422,
    ProblemType.RETURN_CODE_INVALID: 422,
    ProblemType.RETURN_REVOKED: 409,
    ProblemType.ALREADY_RETURNED: 409,
    ProblemType.INVALID_CART_OPERATION: 422,
    ProblemType.VERSION_CONFLICT: 409,
    ProblemType.PRECONDITION_REQUIRED: 428,
    ProblemType.IDEMPOTENCY_KEY_REUSED: 409,
    ProblemType.INVALID_IDEMPOTENCY_KEY: 400,
    ProblemType.UNKNOWN_PURPOSE: 422,
    ProblemType.INVALID_CONSENT_TRANSITION: 409,
    ProblemType.CONFIRMATION_TOKEN_INVALID: 422,
    ProblemType.INVALID_RULESET: 422,
    ProblemType.CHANGE_FEED_RESYNC: 410,
    ProblemType.RATE_LIMITED: 429,
    ProblemType.REQUEST_HEADERS_TOO_LARGE: 431,
    ProblemType.REQUEST_TIMEOUT: 408,
    ProblemType.SERVICE_UNAVAILABLE: 503,
    ProblemType.INTERNAL_ERROR: 500,
    ProblemType.ANALYTICS_UNAVAILABLE: 501,
    ProblemType.ANNOTATION_FORBIDDEN: 403,
    ProblemType.INVALID_SEGMENT: 422,
}

_TITLE: dict[ProblemType, str] = {
    ProblemType.AUTHENTICATION_REQUIRED: "Authentication required",
    ProblemType.INVALID_API_KEY: "Invalid API key",
    ProblemType.INSUFFICIENT_SCOPE: "The API key lacks the scope this operation needs",
    ProblemType.NOT_FOUND: "Not found",
    ProblemType.METHOD_NOT_ALLOWED: "Method not allowed",
    ProblemType.MALFORMED_JSON: "The request body is not valid JSON",
    ProblemType.MALFORMED_REQUEST: "The request is not valid HTTP",
    ProblemType.UNSUPPORTED_MEDIA_TYPE: "Unsupported media type",
    ProblemType.VALIDATION_ERROR: "The request is not valid",
    ProblemType.PAYLOAD_TOO_LARGE: "The request body is too large",
    ProblemType.CONFLICT: "Conflict with the current state",
    ProblemType.IDENTITY_CONFLICT: "These identifiers belong to different customers for good",
    ProblemType.INVALID_IDENTIFIER: "The identifier cannot identify a customer",
    ProblemType.INVALID_EVENT: "The event breaks an event rule",
    ProblemType.RETURN_CODE_INVALID: "The return code cannot be accepted",
    ProblemType.RETURN_REVOKED: "The shop withdrew this return code",
    ProblemType.ALREADY_RETURNED: "These units were already returned",
    ProblemType.INVALID_CART_OPERATION: "The cart operation breaks a cart rule",
    ProblemType.VERSION_CONFLICT: "The cart changed since the version you sent",
    ProblemType.PRECONDITION_REQUIRED: "This step needs the version you saw (If-Match)",
    ProblemType.IDEMPOTENCY_KEY_REUSED: "Idempotency key reused with a different request",
    ProblemType.INVALID_IDEMPOTENCY_KEY: "Invalid idempotency key",
    ProblemType.UNKNOWN_PURPOSE: "The consent purpose is not one this shop knows",
    ProblemType.INVALID_CONSENT_TRANSITION: "This consent decision cannot follow the current one",
    ProblemType.CONFIRMATION_TOKEN_INVALID: "The opt-in confirmation token cannot be accepted",
    ProblemType.INVALID_RULESET: "The content ruleset is not valid",
    ProblemType.CHANGE_FEED_RESYNC: "The changes after this feed position are no longer kept",
    ProblemType.RATE_LIMITED: "Too many requests",
    ProblemType.REQUEST_HEADERS_TOO_LARGE: "Request header fields too large",
    ProblemType.REQUEST_TIMEOUT: "Request timeout",
    ProblemType.SERVICE_UNAVAILABLE: "Service unavailable",
    ProblemType.INTERNAL_ERROR: "Internal error",
    ProblemType.ANALYTICS_UNAVAILABLE: "This server was installed without its analytics extra",
    ProblemType.ANNOTATION_FORBIDDEN: "Your role may not change or see this annotation",
    ProblemType.INVALID_SEGMENT: "The segment definition is not valid",
}
