"""OMNISDK_OPENTELEMETRY: FastAPI's native OpenTelemetry instrumentation traces requests
through the process's global tracer provider when the operator switches it on, and only then;
no span carries a secret or a personal identifier."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from server_stub.settings import Settings
from server_stub.telemetry import RAW_REQUEST_ATTRIBUTES
from tests.server.conftest import Harness, ShopForTest, start_harness

EMAIL = "amy.telemetry@example.com"


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Spans of this process, as an operator's SDK set up before the server would get them."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider is set once a process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    collected = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(collected))
    yield collected
    collected.shutdown()  # the provider outlives this module: later spans are not kept


async def _sign_in(server: Harness) -> tuple[ShopForTest, str]:
    """A sign-in, her consent read by her id in the path, a refusal, and the pages mounted in
    the server (the till's page, the console): the customer's id."""
    shop = await server.shop()
    answer = await shop.request(
        "POST",
        "/v1/identity/identify",
        "web",
        json={"anonymous_id": "telemetry-device", "email": EMAIL},
    )
    assert answer.status_code == 200, answer.text
    customer_id = str(answer.json()["customer_id"])
    read = await shop.request("GET", f"/v1/consent/{customer_id}?purpose={customer_id}", "web")
    assert read.status_code == 200, read.text
    refused = await shop.request("GET", "/v1/consent/cus_nobody", "web")
    assert refused.status_code == 404
    for page in ("/pos/", "/console/"):
        assert (await server.http.get(page)).status_code < 500
    return shop, customer_id


def _text(span: ReadableSpan) -> str:
    return json.dumps(
        {
            "name": span.name,
            "attributes": dict(span.attributes or {}),
            "events": [
                {"name": event.name, "attributes": dict(event.attributes or {})}
                for event in span.events
            ],
        },
        default=str,
    )


@pytest.fixture
async def traced(migrated_database_url: str) -> AsyncIterator[Harness]:
    async for harness in start_harness(migrated_database_url, opentelemetry=True):
        yield harness


async def test_with_telemetry_on_each_request_is_a_span_by_route_without_personal_data(
    traced: Harness, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    shop, customer_id = await _sign_in(traced)
    spans = exporter.get_finished_spans()
    servers = [span for span in spans if span.kind is trace.SpanKind.SERVER]
    routes = {(span.attributes or {}).get("http.route") for span in servers}
    assert {"/v1/identity/identify", "/v1/consent/{customer_id}"} <= routes
    statuses = {
        (span.attributes or {}).get("http.route"): (span.attributes or {}).get(
            "http.response.status_code"
        )
        for span in servers
    }
    assert statuses["/v1/identity/identify"] == 200
    assert statuses["/v1/consent/{customer_id}"] == 404
    everything = "\n".join(_text(span) for span in spans)
    assert EMAIL not in everything and "telemetry-device" not in everything
    assert customer_id not in everything  # no raw path or query: the route template instead
    assert not any(key in everything for key in shop.keys.values())  # no API key either
    assert not any(RAW_REQUEST_ATTRIBUTES & set(span.attributes or {}) for span in spans)


async def test_with_telemetry_off_by_default_no_request_makes_a_span_not_even_a_mounted_page(
    server: Harness, exporter: InMemorySpanExporter
) -> None:
    exporter.clear()
    await _sign_in(server)
    assert exporter.get_finished_spans() == ()


def test_the_environment_switches_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNISDK_OPENTELEMETRY", "true")
    assert Settings().opentelemetry is True
    monkeypatch.setenv("OMNISDK_OPENTELEMETRY", "false")
    assert Settings().opentelemetry is False
