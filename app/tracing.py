"""Optional OpenTelemetry tracing: a span per request and per upstream attempt.

On only when the `otel` extra is installed and OTEL_EXPORTER_OTLP_ENDPOINT is set (or a test
passes an exporter); otherwise every function here returns at once. Attempt spans carry the
GenAI semantic-convention attributes, and the W3C `traceparent` goes upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, MutableMapping
from contextlib import contextmanager

logger = logging.getLogger(__name__)

_tracer = None


def enabled() -> bool:
    return _tracer is not None


def setup_tracing(env: Mapping[str, str], exporter=None) -> bool:
    """Turn tracing on if configured; True when it is on. Safe to call more than once."""
    global _tracer
    if _tracer is not None:
        return True
    if exporter is None and not env.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return False
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    except ImportError:
        logger.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the otel extra is not installed "
            "(pip install 'ai-proxy[otel]'); tracing stays off"
        )
        return False
    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME", "ai-proxy")})
    provider = TracerProvider(resource=resource)
    if exporter is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _tracer = trace.get_tracer("ai-proxy")
    logger.info("tracing on")
    return True


def start_request_span(name: str, headers: Mapping[str, str], attributes: dict):
    """A server span for one client request, continuing the caller's trace if it sent one.

    Returns (span, context token) or None; pass it to `end_request_span`.
    """
    if _tracer is None:
        return None
    from opentelemetry import context, trace
    from opentelemetry.propagate import extract

    parent = extract(headers)
    span = _tracer.start_span(
        name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes
    )
    token = context.attach(trace.set_span_in_context(span, parent))
    return span, token


def detach(handle) -> None:
    """Leave the request span's context (the span itself may end later, with the stream)."""
    if handle is not None:
        from opentelemetry import context

        context.detach(handle[1])


def end_request_span(handle, status: int, attributes: dict) -> None:
    if handle is None:
        return
    from opentelemetry.trace import Status, StatusCode

    span = handle[0]
    span.set_attribute("http.response.status_code", status)
    for key, value in attributes.items():
        if value is not None:
            span.set_attribute(key, value)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    span.end()


@contextmanager
def attempt_span(operation: str, provider: str, model: str, deployment: str):
    """A client span around one upstream attempt; yields the span (or None) for attributes."""
    if _tracer is None:
        yield None
        return
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    attributes = {
        "gen_ai.operation.name": operation,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,
        "gen_ai.request.model": model,
        "ai_proxy.deployment": deployment,
    }
    with _tracer.start_as_current_span(
        f"{operation} {model}",
        kind=trace.SpanKind.CLIENT,
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield span
        except Exception as err:
            span.set_attribute("error.type", getattr(err, "code", None) or type(err).__name__)
            span.set_status(Status(StatusCode.ERROR))
            raise


def inject(headers: MutableMapping[str, str]) -> None:
    """Add `traceparent` (and `tracestate`) for the current span to upstream headers."""
    if _tracer is None:
        return
    from opentelemetry.propagate import inject as otel_inject

    otel_inject(headers)
