"""Tracing with the OpenTelemetry SDK's in-memory exporter: spans, GenAI attributes, traceparent."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from app import tracing
from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply, chat_completion

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

_exporter = InMemorySpanExporter()
_tracers: list = []


@pytest.fixture
def spans(monkeypatch):
    # The SDK allows one global provider per process: set it up once, and switch tracing on
    # only for the tests that use this fixture.
    if not _tracers:
        tracing.setup_tracing({}, exporter=_exporter)
        _tracers.append(tracing._tracer)
        tracing._tracer = None
    monkeypatch.setattr(tracing, "_tracer", _tracers[0])
    _exporter.clear()
    yield _exporter


def test_off_without_configuration():
    assert tracing.setup_tracing({}) is False
    headers: dict = {}
    with tracing.attempt_span("chat", "openai", "m", "m#0") as span:
        tracing.inject(headers)
    assert span is None and headers == {}


def test_request_and_attempt_spans(spans, make_app, upstream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="gpt", priority=1, model="first"),
                openai_model(upstream, name="gpt", priority=2, model="second"),
            ],
            "retry": {"max_retries": 0},
        }
    )
    upstream.queue(Reply(status=503, body={}), Reply(body=chat_completion()))
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {TOKEN}", "traceparent": TRACEPARENT},
    )
    response.get_data()
    response.close()
    finished = {span.name: span for span in spans.get_finished_spans()}
    request_span = finished["POST /v1/chat/completions"]
    failed, succeeded = (s for s in spans.get_finished_spans() if s.name.startswith("chat "))
    assert format(request_span.context.trace_id, "032x") == TRACE_ID
    assert request_span.attributes["http.response.status_code"] == 200
    assert request_span.attributes["gen_ai.usage.input_tokens"] == 5
    assert succeeded.parent.span_id == request_span.context.span_id
    assert succeeded.attributes["gen_ai.request.model"] == "second"
    assert succeeded.attributes["gen_ai.provider.name"] == "openai"
    assert failed.attributes["error.type"] == "upstream_error"
    # Each attempt passed its own span upstream as the W3C traceparent.
    sent = [r.headers["traceparent"] for r in upstream.requests]
    assert all(TRACE_ID in value for value in sent)
    assert format(succeeded.context.span_id, "016x") in sent[1]


def test_a_deployment_judged_out_at_the_quota_door_says_so(spans, make_app, upstream, redis_server):
    """With Redis quotas the first deployment's attempt begins before the quota answer is
    read: one without room of its own is then not tried, and its span says so."""
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="gpt", priority=1, model="first", tokens_per_minute=10),
                openai_model(upstream, name="gpt", priority=2, model="second"),
            ],
            "rate_limits": {"storage": redis_server.url},
            "retry": {"max_retries": 0},
        }
    )
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    response.get_data()
    response.close()
    assert response.status_code == 200
    assert [r.json()["model"] for r in upstream.requests] == ["second"]
    attempts = [s for s in spans.get_finished_spans() if s.name.startswith("chat ")]
    untried = [s for s in attempts if "ai_proxy.not_tried" in s.attributes]
    assert [s.attributes["gen_ai.request.model"] for s in untried] == ["first"]
    assert untried[0].attributes["ai_proxy.not_tried"] == "out of quota"
    assert "error.type" not in untried[0].attributes
