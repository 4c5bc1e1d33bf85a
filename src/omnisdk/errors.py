"""The exceptions the SDK raises. Catch precisely; every API error carries the problem details.

OmnisdkError
├── ConfigurationError          a client option is wrong (also a ValueError)
├── ReturnRefused               a return code failed offline checks (`verification` says why)
├── OfflineLimitReached         an offline redemption would exceed the till's value cap
├── OutboxFull                  the outbox is full and its policy says raise (or block timed out)
├── OutboxWriteError            the outbox cannot write to its disk (what returned is retried)
├── APIConnectionError          the server could not be reached (after retries)
│   └── APITimeoutError         ... or did not answer in time
└── APIError                    the server answered with an error (status, problem, request id)
    ├── ValidationError         400, 413, 415, 422: the request is wrong; do not retry it
    │   ├── InvalidRequestError 422 decided by the SDK before sending (also a ValueError):
│   │                       bad arguments, a model or mapping that does not validate
    │   ├── UnknownPurposeError 422: a consent purpose the shop has not declared
    │   └── ConfirmationTokenError  422: a forged, damaged or expired double opt-in token
    ├── AuthenticationError     401: no key, or a key the server does not know
    ├── PermissionDeniedError   403: the key lacks the scope for this operation
    ├── NotFoundError           404: nothing of that id for this tenant
    ├── ConflictError           409: the current state forbids it (carries the problem)
    │   ├── IdempotencyError    409: idempotency key reused with a different request
    │   └── ConsentTransitionError  409: e.g. withdrawing what was never granted
    ├── RateLimitedError        429: slow down (retried automatically first)
    └── ServerError             5xx: the server failed (retried automatically first)
"""

from __future__ import annotations

from typing import Any

from omnisdk.core.problems import ProblemType


class OmnisdkError(Exception):
    """Base of every exception the SDK raises."""


class ConfigurationError(OmnisdkError, ValueError):
    """A client option is missing or wrong (`api_key`, `base_url`, `channel`, an outbox
    option): the message names it and says what it takes."""


class ClientClosedError(OmnisdkError):
    """The client was closed: make a new one (on the same `data_dir` it finds what the closed
    one left undelivered). Also raised by an `AsyncClient` used from a second event loop
    while the first still runs: make one client per loop."""


class ReturnRefused(OmnisdkError):
    """A return cannot be taken: `verification.message` is what to tell the clerk."""

    def __init__(self, message: str, verification: Any = None) -> None:
        super().__init__(message)
        self.verification = verification


class OfflineLimitReached(OmnisdkError):
    """The till is offline and this return would take its queued refunds over the cap."""


class OutboxFull(OmnisdkError):
    """The outbox holds `max_items`, and its policy is "raise" (or "block" timed out, or the
    items that fill it are ones "drop_oldest" never drops: money, consent, carts)."""


class OutboxWriteError(OmnisdkError):
    """The outbox cannot write to its file (disk full, read-only, removed). Items whose `track`
    returned stay in memory and are retried; this call's item was not queued."""


class APIConnectionError(OmnisdkError):
    """The request did not reach the server or no answer came back."""


class APITimeoutError(APIConnectionError):
    """The server did not answer within the client's timeout."""


class APIError(OmnisdkError):
    """The server answered with an error status; `problem` is its RFC 9457 body."""

    def __init__(
        self,
        status_code: int,
        problem: dict[str, Any],
        request_id: str | None = None,
    ) -> None:
        self.status_code = status_code
        self.problem = problem
        self.request_id = request_id
        self.type: str = str(problem.get("type", "about:blank"))
        self.title: str = str(problem.get("title", ""))
        self.detail: str = str(problem.get("detail", ""))
        message = self.detail or self.title or f"HTTP {status_code}"
        suffix = f" (request id {request_id})" if request_id else ""
        super().__init__(f"{message}{suffix}")

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Field-level errors of a validation problem, if the server listed them."""
        errors = self.problem.get("errors")
        return list(errors) if isinstance(errors, list) else []


class ValidationError(APIError):
    """The request is malformed or invalid; retrying it unchanged will fail again."""


class InvalidRequestError(ValidationError, ValueError):
    """Refused by the SDK before anything is sent or queued, with the problem the server would
    have answered (422): fix the input; retrying it unchanged fails again."""

    def __init__(self, problem_type: str, detail: str) -> None:
        super().__init__(422, {"type": problem_type, "title": "Invalid request", "detail": detail})


class UnknownPurposeError(ValidationError):
    """The consent purpose is neither standard nor one of the tenant's own."""


class ConfirmationTokenError(ValidationError):
    """A double opt-in confirmation token that is forged, damaged, expired or superseded."""


class AuthenticationError(APIError):
    """No API key was sent, or the server does not know it (revoked, mistyped)."""


class PermissionDeniedError(APIError):
    """The API key is valid but its channel lacks the scope this operation needs."""


class NotFoundError(APIError):
    """No such resource for this tenant (another tenant's data is indistinguishable)."""


class ConflictError(APIError):
    """The operation conflicts with the current state; `problem` says with what."""


class IdempotencyError(ConflictError):
    """The idempotency key was already used for a different request."""


class ConsentTransitionError(ConflictError):
    """The decision cannot follow the standing one (e.g. withdrawing what was never granted)."""


class RateLimitedError(APIError):
    """Too many requests; `retry_after` is the server's advice in seconds, if it gave one."""

    def __init__(
        self,
        status_code: int,
        problem: dict[str, Any],
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status_code, problem, request_id)
        self.retry_after = retry_after


class ServerError(APIError):
    """The server failed to handle a valid request."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    405: ValidationError,
    409: ConflictError,
    413: ValidationError,
    415: ValidationError,
    422: ValidationError,
    428: ValidationError,
}

_BY_TYPE: dict[str, type[APIError]] = {
    ProblemType.IDEMPOTENCY_KEY_REUSED: IdempotencyError,
    ProblemType.UNKNOWN_PURPOSE: UnknownPurposeError,
    ProblemType.CONFIRMATION_TOKEN_INVALID: ConfirmationTokenError,
    ProblemType.INVALID_CONSENT_TRANSITION: ConsentTransitionError,
}


def error_for(
    status_code: int,
    problem: dict[str, Any],
    request_id: str | None = None,
    retry_after: float | None = None,
) -> APIError:
    """The exception that stands for an error answer of the server."""
    if status_code == 429:
        return RateLimitedError(status_code, problem, request_id, retry_after)
    by_type = _BY_TYPE.get(problem.get("type", ""))
    if by_type is not None and status_code < 500:
        return by_type(status_code, problem, request_id)
    if status_code >= 500:
        return ServerError(status_code, problem, request_id)
    cls = _BY_STATUS.get(status_code, ValidationError if status_code < 500 else ServerError)
    return cls(status_code, problem, request_id)
