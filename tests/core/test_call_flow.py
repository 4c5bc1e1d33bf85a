"""The SDK's sans-I/O call flow: what it sends, when it retries, what it raises.

The flow is a generator; these tests play the network's part by answering each request it
yields, which is exactly what the sync and async shells do with httpx.
"""

from __future__ import annotations

from typing import Any

import pytest

import omnisdk
from omnisdk._base import Answer, BaseClient, Call, PreparedRequest, RetryPolicy, Sleep
from omnisdk.core.problems import ProblemType
from omnisdk.errors import APIConnectionError

OK = Answer(200, {"content-type": "application/json"}, b'{"ok": true}')


def problem(status: int, type: ProblemType | None = None, **headers: str) -> Answer:
    body = f'{{"type": "{(type or ProblemType.CONFLICT).value}", "detail": "d"}}'.encode()
    return Answer(status, {"x-request-id": "rid-1", **headers}, body)


def run(outcomes: list[Answer | Exception], call: Call[Any] | None = None, **options: Any):  # type: ignore[no-untyped-def]
    """Drive the flow with scripted outcomes; return (result or error, requests, sleeps)."""
    client = BaseClient("http://shop.test", "osk_web_x", channel="web", **options)
    flow = client.flow(call or Call("POST", "/v1/system/ping", lambda d: d, json={"a": 1}))
    requests: list[PreparedRequest] = []
    sleeps: list[float] = []
    script = iter(outcomes)
    step = next(flow)
    try:
        while True:
            if isinstance(step, Sleep):
                sleeps.append(step.seconds)
                step = flow.send(None)
            else:
                requests.append(step)
                step = flow.send(next(script))
    except StopIteration as done:
        return done.value, requests, sleeps
    except omnisdk.OmnisdkError as error:
        return error, requests, sleeps


def test_mutating_call_carries_one_idempotency_key_across_retries() -> None:
    result, requests, sleeps = run([problem(503), problem(502), OK])
    assert result == {"ok": True}
    keys = {r.headers["Idempotency-Key"] for r in requests}
    assert len(requests) == 3 and len(keys) == 1
    assert len(sleeps) == 2


def test_read_call_has_no_idempotency_key() -> None:
    _, requests, _ = run([OK], Call("GET", "/v1/system/whoami", lambda d: d))
    assert "Idempotency-Key" not in requests[0].headers


def test_caller_supplied_idempotency_key_is_used() -> None:
    _, requests, _ = run([OK], Call("POST", "/p", lambda d: d, json={}, idempotency_key="order-7"))
    assert requests[0].headers["Idempotency-Key"] == "order-7"


def test_connection_errors_are_retried() -> None:
    result, requests, _ = run([APIConnectionError("refused"), OK])
    assert result == {"ok": True} and len(requests) == 2


def test_client_errors_are_not_retried() -> None:
    for status in (400, 401, 403, 404, 409, 422):
        error, requests, sleeps = run([problem(status), OK])
        assert isinstance(error, omnisdk.APIError), status
        assert len(requests) == 1 and sleeps == []


def test_retries_stop_after_the_limit_and_raise_the_last_error() -> None:
    error, requests, _ = run([problem(503)] * 10, max_retries=2)
    assert isinstance(error, omnisdk.ServerError)
    assert len(requests) == 3


def test_retry_after_is_honoured() -> None:
    _, _, sleeps = run([problem(429, ProblemType.RATE_LIMITED, **{"retry-after": "2"}), OK])
    assert sleeps == [2.0]


def test_backoff_grows_exponentially_within_jitter_bounds() -> None:
    policy = RetryPolicy(initial_delay=0.5, max_delay=4.0, jitter=lambda: 1.0)
    assert [policy.delay(n, None) for n in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    low = RetryPolicy(initial_delay=0.5, max_delay=4.0, jitter=lambda: 0.0)
    assert low.delay(2, None) == 1.0


@pytest.mark.parametrize(
    ("status", "problem_type", "expected"),
    [
        (400, ProblemType.MALFORMED_JSON, omnisdk.ValidationError),
        (401, ProblemType.INVALID_API_KEY, omnisdk.AuthenticationError),
        (403, ProblemType.INSUFFICIENT_SCOPE, omnisdk.PermissionDeniedError),
        (404, ProblemType.NOT_FOUND, omnisdk.NotFoundError),
        (409, ProblemType.CONFLICT, omnisdk.ConflictError),
        (409, ProblemType.IDEMPOTENCY_KEY_REUSED, omnisdk.IdempotencyError),
        (413, ProblemType.PAYLOAD_TOO_LARGE, omnisdk.ValidationError),
        (422, ProblemType.VALIDATION_ERROR, omnisdk.ValidationError),
        (429, ProblemType.RATE_LIMITED, omnisdk.RateLimitedError),
        (500, ProblemType.INTERNAL_ERROR, omnisdk.ServerError),
    ],
)
def test_errors_are_typed_and_carry_the_problem(
    status: int, problem_type: ProblemType, expected: type[omnisdk.APIError]
) -> None:
    error, _, _ = run([problem(status, problem_type)], max_retries=0)
    assert type(error) is expected
    assert error.status_code == status
    assert error.type == problem_type.value
    assert error.request_id == "rid-1"
    assert "rid-1" in str(error)


def test_error_body_that_is_not_json_still_gives_a_typed_error() -> None:
    error, _, _ = run([Answer(502, {}, b"<html>bad gateway</html>")], max_retries=0)
    assert isinstance(error, omnisdk.ServerError)
    assert error.status_code == 502


def test_api_key_never_appears_in_the_client_repr() -> None:
    client = BaseClient("http://shop.test", "osk_web_0123456789abcdef_SECRETSECRET", channel="web")
    assert "SECRET" not in repr(client)


def test_bad_configuration_is_refused_early() -> None:
    with pytest.raises(ValueError, match="api_key"):
        BaseClient("http://shop.test", " ")
    with pytest.raises(ValueError, match="base_url"):
        BaseClient("shop.test", "osk_x")
    with pytest.raises(ValueError):
        BaseClient("http://shop.test", "osk_x", channel="kiosk")


def test_every_problem_type_is_documented() -> None:
    from pathlib import Path

    page = (Path(__file__).resolve().parents[2] / "docs" / "errors.md").read_text()
    for problem_type in ProblemType:
        assert f"`{problem_type.slug}`" in page, problem_type.slug


def test_every_standard_event_is_documented() -> None:
    from pathlib import Path

    from omnisdk.core.events import STANDARD_EVENTS

    page = (Path(__file__).resolve().parents[2] / "docs" / "events.md").read_text()
    for name, properties in STANDARD_EVENTS.items():
        assert f"`{name}`" in page
        for prop in properties:
            assert f"`{prop}`" in page
