"""`ApiRoute`: every /v1 route authenticates, runs in one transaction, and honours
`Idempotency-Key`.

The transaction opens lazily, on the first use of the connection, so a request that touches
no table takes no database lock. It commits when the endpoint returns and rolls back when it
raises: a failed request leaves nothing half-written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.responses import Response

from omnisdk.core import strict_json
from omnisdk.core.channels import Scope
from omnisdk.core.problems import ProblemType
from omnisdk.models import Principal
from server_stub.auth import (
    ITEMS_JUDGED_ALONE_EXTENSION,
    OWN_IDEMPOTENCY_EXTENSION,
    READ_ONLY_EXTENSION,
    REPLAY_REDACTS_EXTENSION,
    SCOPE_EXTENSION,
    authenticate,
    check_scope,
)
from server_stub.budget import retry_after_header
from server_stub.errors import Problem
from server_stub.runtime import Runtime, runtime_of
from server_stub.services import idempotency
from server_stub.services.changes import AFTER_COMMIT
from server_stub.storage.database import TRANSACTION_ATTEMPTS, Database, lost_a_lock_race

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
IDEMPOTENCY_HEADER = "idempotency-key"
REPLAY_HEADER = "Idempotent-Replayed"
Endpoint = Callable[[Request], Coroutine[Any, Any, Response]]


class UnitOfWork:
    """The request's transaction, begun on first use."""

    def __init__(
        self, database: Database, *, write: bool, on_commit: Callable[[str], None] | None = None
    ) -> None:
        self._database = database
        self._write = write
        self._on_commit = on_commit
        # Made on first use too: a request that never touches the database (a no-op write,
        # a rejected body) neither builds nor unwinds one.
        self._stack: AsyncExitStack | None = None
        self._connection: AsyncConnection | None = None

    async def connection(self) -> AsyncConnection:
        if self._connection is None:
            transaction = self._database.transaction(write=self._write)
            self._stack = AsyncExitStack()
            self._connection = await self._stack.enter_async_context(transaction)
        return self._connection

    async def __aenter__(self) -> UnitOfWork:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # Topics of changes made in this transaction: announced only once it has committed.
        topics: set[str] = set()
        if self._connection is not None:
            topics = self._connection.info.pop(AFTER_COMMIT, set())
        if self._stack is not None:
            await self._stack.__aexit__(exc_type, exc, tb)
        if exc_type is None and self._on_commit is not None:
            for topic in topics:
                self._on_commit(topic)


async def connection(request: Request) -> AsyncConnection:
    """Dependency: the connection of the request's transaction."""
    unit: UnitOfWork = request.state.unit
    return await unit.connection()


class ApiRoute(APIRoute):
    """A /v1 route: it requires the scope named by `openapi_extra=needs(Scope.X)`."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        extra = kwargs.get("openapi_extra") or {}
        declared = extra.get(SCOPE_EXTENSION)
        if declared is None:
            raise TypeError(f"{path} declares no scope: add openapi_extra=needs(Scope.X)")
        self.required_scope = Scope(declared)
        self.read_only = bool(extra.get(READ_ONLY_EXTENSION))
        self.own_idempotency = bool(extra.get(OWN_IDEMPOTENCY_EXTENSION))
        self.items_judged_alone: str | None = extra.get(ITEMS_JUDGED_ALONE_EXTENSION)
        self.replay_redacts: tuple[str, ...] = tuple(extra.get(REPLAY_REDACTS_EXTENSION, ()))
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Endpoint:
        endpoint = super().get_route_handler()
        required_scope = self.required_scope
        read_only = self.read_only
        own_idempotency = self.own_idempotency
        items_judged_alone = self.items_judged_alone
        replay_redacts = self.replay_redacts

        async def handle(request: Request) -> Response:
            runtime = runtime_of(request)
            principal = await authenticate(request, runtime.database, runtime.key_cache)
            _spend_budget(runtime, principal)
            check_scope(principal, required_scope)
            _check_parameters(request)
            request.state.principal = principal
            if request.method in MUTATING_METHODS:
                await _parse_strictly(request, items_judged_alone)
            write = request.method in MUTATING_METHODS and not read_only
            key = _idempotency_key(request) if write else None  # malformed: 400 on every write
            if own_idempotency:
                key = None
            for attempt in range(TRANSACTION_ATTEMPTS):
                try:
                    if key is not None:
                        return await _idempotent(
                            request, endpoint, runtime, principal, key, replay_redacts
                        )
                    async with UnitOfWork(
                        runtime.database, write=write, on_commit=runtime.changes.wake
                    ) as unit:
                        request.state.unit = unit
                        return await endpoint(request)
                except DBAPIError as error:
                    if attempt + 1 == TRANSACTION_ATTEMPTS or not lost_a_lock_race(error):
                        raise
            raise AssertionError("unreachable")

        return handle


async def _parse_strictly(request: Request, items_judged_alone: str | None) -> None:
    """Parse a JSON body once, under the strict JSON policy (`omnisdk.core.strict_json`),
    before FastAPI does: FastAPI's parser takes NaN, `1e400`, lone surrogates and duplicate
    keys, and answers invalid UTF-8 as a validation error."""
    encoding = request.headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() != "identity":
        raise Problem(
            ProblemType.UNSUPPORTED_MEDIA_TYPE,
            "send the body uncompressed (no Content-Encoding); the server does not decode "
            f"{encoding[:20]!r}",
        )
    content_type = request.headers.get("content-type")
    if content_type is not None and "json" not in content_type.partition(";")[0].lower():
        return  # not JSON: the route's own rule answers (415, or a form's parser)
    body = await request.body()
    if not body:
        return
    try:
        value = strict_json.loads(body)
    except strict_json.MalformedJson as exc:
        raise Problem(ProblemType.MALFORMED_JSON, str(exc)) from None
    except strict_json.StrictJsonError as exc:
        if not _inside_items(exc.violations, items_judged_alone):
            raise _strict_json_problem(exc) from None
        value = exc.value  # each item is judged alone, and refused with its index
    # Starlette's Request.json() returns this cached value: FastAPI validates what we parsed.
    setattr(request, "_json", value)  # noqa: B010


def _inside_items(violations: list[strict_json.Violation], member: str | None) -> bool:
    return member is not None and all(
        len(v.loc) >= 2 and v.loc[0] == member and isinstance(v.loc[1], int) for v in violations
    )


def _strict_json_problem(exc: strict_json.StrictJsonError) -> Problem:
    return Problem(
        ProblemType.VALIDATION_ERROR,
        "the body holds JSON this server does not take; see `errors`",
        errors=[{"loc": ["body", *v.loc], "msg": v.msg, "type": v.type} for v in exc.violations],
    )


def _check_parameters(request: Request) -> None:
    """Path and query parameters hold text both stores can compare: a NUL (`%00`) made
    PostgreSQL fail the query. (A lone surrogate cannot arrive: percent-decoding replaces
    invalid UTF-8.)"""
    if "\x00" not in request.scope["path"] and b"%00" not in request.scope["query_string"]:
        return
    places = [("path", name, value) for name, value in request.path_params.items()]
    places += [("query", name, value) for name, value in request.query_params.multi_items()]
    raise Problem(
        ProblemType.VALIDATION_ERROR,
        "a path or query parameter holds a NUL character",
        errors=[
            {"loc": [where, name], "msg": "a NUL character is not allowed", "type": "string_nul"}
            for where, name, value in places
            if isinstance(value, str) and "\x00" in value
        ],
    )


def _spend_budget(runtime: Runtime, principal: Principal) -> None:
    wait = runtime.budget.spend(principal.key_id)
    if wait is not None:
        raise Problem(
            ProblemType.RATE_LIMITED,
            f"this API key made more than {runtime.settings.rate_limit_per_second:g} requests "
            "a second; wait for Retry-After, then go on",
            headers={"Retry-After": retry_after_header(wait)},
        )


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not key.isprintable() or not key.isascii():
        raise Problem(
            ProblemType.INVALID_IDEMPOTENCY_KEY,
            "Idempotency-Key must be 1 to 255 printable ASCII characters (a UUID is ideal)",
        )
    return key


async def _twin_answer(
    conn: AsyncConnection, tenant_id: str, key: str, ttl: int
) -> idempotency.StoredOutcome | None:
    try:
        found = await idempotency.find(conn, tenant_id, key, ttl)
    except DBAPIError:  # the refusal came of a failed statement: the transaction cannot read
        return None
    return None if found is None or found.expired else found


class _TwinAnswered(Exception):
    """A twin request with the same Idempotency-Key committed its answer meanwhile."""

    def __init__(self, outcome: idempotency.StoredOutcome) -> None:
        super().__init__("answered by a twin request")
        self.outcome = outcome


async def _idempotent(
    request: Request,
    endpoint: Endpoint,
    runtime: Runtime,
    principal: Principal,
    key: str,
    redacts: tuple[str, ...],
) -> Response:
    body = await request.body()
    fingerprint = idempotency.fingerprint(request.method, request.url.path, request.url.query, body)
    ttl = runtime.settings.idempotency_ttl_seconds
    for attempt in range(2):
        try:
            async with UnitOfWork(
                runtime.database, write=True, on_commit=runtime.changes.wake
            ) as unit:
                request.state.unit = unit
                conn = await unit.connection()
                prior = await idempotency.find(conn, principal.tenant_id, key, ttl)
                if prior is not None and not prior.expired:
                    runtime.metrics.idempotent_replays.inc()
                    return _replay(prior, fingerprint)
                try:
                    response = await endpoint(request)
                except Problem as refused:
                    # Refused, maybe because a twin with this key committed while this one
                    # waited for its locks (the customer it erases is gone, the code it redeems
                    # spent): then the twin's answer is this request's, as it would have been
                    # a moment later. Read now, it is seen; this transaction is undone.
                    twin = await _twin_answer(conn, principal.tenant_id, key, ttl)
                    if twin is None:
                        raise
                    raise _TwinAnswered(twin) from refused
                outcome = _outcome(response, fingerprint, redacts)
                if outcome is not None:
                    await idempotency.store(
                        conn, principal.tenant_id, key, outcome, replaces_expired=prior is not None
                    )
                return response
        except _TwinAnswered as answered:
            runtime.metrics.idempotent_replays.inc()
            return _replay(answered.outcome, fingerprint)
        except IntegrityError:
            # A twin request with the same key committed first (PostgreSQL lets both run and
            # stops the second at the unique key): this transaction is undone; replay the twin.
            if attempt:
                raise
    raise AssertionError("unreachable")


def _outcome(
    response: Response, fingerprint: str, redacts: tuple[str, ...]
) -> idempotency.StoredOutcome | None:
    body = getattr(response, "body", None)
    if not 200 <= response.status_code < 300 or not isinstance(body, bytes):
        return None
    if redacts:
        body = _redacted(body, redacts)
    headers = {
        name: response.headers[name]
        for name in idempotency.REPLAYED_HEADERS
        if name in response.headers
    }
    return idempotency.StoredOutcome(fingerprint, response.status_code, headers, body)


def _redacted(body: bytes, paths: tuple[str, ...]) -> bytes:
    """The answer with null at each dotted path (`*` for every item of a list): a secret shown
    once is not kept for 24 hours in the idempotency records."""
    document = json.loads(body)
    for path in paths:
        _null_at(document, path.split("."))
    return json.dumps(document, separators=(",", ":")).encode()


def _null_at(node: Any, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if head == "*" and isinstance(node, list):
        for item in node:
            if rest:
                _null_at(item, rest)
    elif isinstance(node, dict) and head in node:
        if rest:
            _null_at(node[head], rest)
        else:
            node[head] = None


def _replay(prior: idempotency.StoredOutcome, fingerprint: str) -> Response:
    if prior.fingerprint != fingerprint:
        raise Problem(
            ProblemType.IDEMPOTENCY_KEY_REUSED,
            "this Idempotency-Key was already used for a different request; "
            "use a new key for a new request",
        )
    headers = {**prior.headers, REPLAY_HEADER: "true"}
    return Response(prior.body, status_code=prior.status_code, headers=headers)
