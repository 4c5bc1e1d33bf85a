"""FastAPI's native OpenTelemetry instrumentation, as the server uses it (OMNISDK_OPENTELEMETRY).

Off (the default), nothing: no request pays the instrumentation's checks, and the apps mounted
inside the server (the till's page, the console) are off too. FastAPI instruments an app
unless told not to, and an app mounted in one that is not instrumented would trace itself.

On, requests are traced and measured through the process's global providers, keeping the
promise the server's own logs keep (docs/server.md): no raw path and no query string in any
span (they hold customer ids; `http.route` names the request by its template), and no
OpenTelemetry log records (a validation failure's record holds the request's input).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from fastapi.telemetry import TelemetryConfig
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind
from opentelemetry.util.types import Attributes

NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

# Span attributes never recorded: what the access log leaves out for the same reason.
RAW_REQUEST_ATTRIBUTES = frozenset({"url.path", "url.query", "url.full"})


def telemetry_config(enabled: bool) -> TelemetryConfig:
    """The `telemetry` argument of the server's FastAPI app."""
    if not enabled:
        return NO_TELEMETRY
    return {"tracer_provider": _WithoutRawRequests(), "logs": False}


def _kept(attributes: Attributes) -> Attributes:
    if not attributes:
        return attributes
    return {k: v for k, v in attributes.items() if k not in RAW_REQUEST_ATTRIBUTES}


class _WithoutRawRequests(trace.TracerProvider):
    """The global tracer provider (whichever is set, when it is asked), with the raw request
    attributes left out of every span started through it."""

    def get_tracer(
        self,
        instrumenting_module_name: str,
        instrumenting_library_version: str | None = None,
        schema_url: str | None = None,
        attributes: Attributes | None = None,
    ) -> trace.Tracer:
        tracer = trace.get_tracer_provider().get_tracer(
            instrumenting_module_name, instrumenting_library_version, schema_url, attributes
        )
        return _Tracer(tracer)


class _Tracer(trace.Tracer):
    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> Span:
        return self._tracer.start_span(
            name,
            context,
            kind,
            _kept(attributes),
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    @contextmanager
    def start_as_current_span(  # type: ignore[override]
        self,
        name: str,
        context: Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[Span]:
        # What the SDK's own tracer does: start the span (through start_span above), make it
        # current for the block.
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        with trace.use_span(span, end_on_exit, record_exception, set_status_on_exception):
            yield span
