"""The Anthropic Messages surface: `/v1/messages` (streamed or not) and token counting, routed
to any provider: passed through to Anthropic deployments, translated for every other one."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import replace

from flask import Blueprint, Response, request

from app.blueprints.common import (
    Tally,
    admit,
    authenticate,
    bounded,
    call_context,
    json_response,
    note_outcome,
    read_json_body,
    relay,
    routing_headers,
    settle_usage,
)
from app.errors import ANTHROPIC, NoAvailableModelError, UpstreamError
from app.messages import EventWriter, estimate_input_tokens, to_chat_request, to_message
from app.providers import PrimedStream, Provider
from app.routing import Candidate
from app.schemas import COUNT_TOKENS, MESSAGES, validate_body
from app.streaming import SSE_HEADERS, encode_event
from app.think import strip_answer, strip_stream

bp = Blueprint("ai_proxy_anthropic", __name__)

NATIVE, CANONICAL = "native", "canonical"


@bp.before_request
def require_token():
    authenticate()


@bp.post("/v1/messages")
def create_message():
    body, size = read_json_body()
    body = validate_body(MESSAGES, body)
    state, token, resolution, quota_headers = admit(body["model"], size)
    ctx = replace(
        call_context(resolution.identifier),
        anthropic_beta=request.headers.get("anthropic-beta", "")[:1000] or None,
    )
    warnings: list[str] = []
    canonical = to_chat_request(body, warnings)
    input_estimate = estimate_input_tokens(body)
    stream = bool(body.get("stream"))

    def call(candidate: Candidate):
        provider = candidate.provider
        if provider.native_messages:
            native = {**body, "model": candidate.upstream_model}
            if stream:
                opened = provider.open_messages_stream(native, ctx)
                return NATIVE, PrimedStream(opened, provider.label)
            return NATIVE, provider.messages(native, ctx)
        request = {**canonical, "model": candidate.upstream_model}
        if stream:
            opened = provider.open_chat_stream(request, ctx)
            return CANONICAL, PrimedStream(opened, provider.label)
        return CANONICAL, provider.chat(request, ctx)

    outcome = state.router.run(resolution, call, ctx.deadline)
    note_outcome(outcome, ANTHROPIC, stream=stream)
    mode, result = outcome.result
    outcome.result = result
    headers = {**routing_headers(outcome), **quota_headers}
    if mode == CANONICAL and warnings:
        headers["x-ai-proxy-warning"] = header_safe("; ".join(dict.fromkeys(warnings)))
    settle = settle_usage(token, outcome.candidate, canonical)
    strip = outcome.candidate.provider.model.strip_think

    if stream:
        limit = state.config.routing.stream_timeout_seconds
        items = bounded(result, time.monotonic() + limit)
        tally = Tally()
        if mode == NATIVE:
            events = native_events(items, tally)
        else:
            chunks = strip_stream(items) if strip else items
            prompt_tokens = result.prompt_tokens or input_estimate
            events = canonical_events(chunks, body["model"], prompt_tokens, tally)
        return Response(
            relay(outcome, events, tally, ANTHROPIC, settle),
            mimetype="text/event-stream",
            headers={**SSE_HEADERS, **headers},
        )

    outcome.finish()
    if mode == NATIVE:
        message = result
        usage = message.get("usage")
        text = "".join(
            b.get("text", "")
            for b in message.get("content") or []
            if isinstance(b, dict) and b.get("type") == "text"
        )
    else:
        if strip:
            result = strip_answer(result)
        message = to_message(result, body["model"], input_estimate)
        usage, text = result.get("usage"), ""
    response = json_response(message, headers=headers)
    response.call_on_close(lambda: settle(usage or message.get("usage"), text))
    return response


def header_safe(text: str, limit: int = 1000) -> str:
    """Client-supplied names inside a header: ASCII only, no control characters, bounded."""
    ascii_text = text.encode("ascii", "backslashreplace").decode("ascii")
    return re.sub(r"[\x00-\x1f\x7f]", "?", ascii_text)[:limit]


def native_events(items, tally: Tally) -> Iterator[bytes]:
    """Anthropic's own events, relayed as they come; usage noted for charging."""
    usage: dict = {}
    for kind, data in items:
        if kind == "message_start":
            usage.update((data.get("message") or {}).get("usage") or {})
        elif kind == "message_delta":
            usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
        elif kind == "content_block_delta":
            text = (data.get("delta") or {}).get("text")
            if isinstance(text, str):
                tally.texts.append(text)
        tally.usage = usage
        yield encode_event(kind, data)


def canonical_events(chunks, model: str, input_estimate: int, tally: Tally) -> Iterator[bytes]:
    """Anthropic events for canonical chunks: message_start first, message_stop last."""
    writer = EventWriter(model, input_estimate)
    yield writer.start()
    for chunk in chunks:
        if chunk.get("usage"):
            tally.usage = chunk["usage"]
        yield from writer.feed(chunk)
    tally.texts = writer.text
    if writer.finish is None:
        # An upstream that stopped without saying why was cut off: never a clean end.
        raise UpstreamError("The upstream stream ended before its answer was complete.")
    yield from writer.finish_events()


@bp.post("/v1/messages/count_tokens")
def count_message_tokens():
    """The provider's own count where it has one (an upstream call, so under the client's and
    the deployment's quotas like any other), else an estimate."""
    body, size = read_json_body()
    body = validate_body(COUNT_TOKENS, body)
    state, _token, resolution, quota_headers = admit(body["model"], size)
    counting = tuple(c for c in resolution.candidates if counts_upstream(c.provider))
    if counting:
        ctx = call_context(resolution.identifier)
        try:
            outcome = state.router.run(
                replace(resolution, candidates=counting),
                lambda c: c.provider.count_tokens({**body, "model": c.upstream_model}, ctx),
                ctx.deadline,
            )
        except (UpstreamError, NoAvailableModelError):
            pass  # a count is an estimate at worst; no reason to fail the request
        else:
            outcome.finish()
            if isinstance(outcome.result, int):
                return json_response(
                    {"input_tokens": outcome.result},
                    headers={**routing_headers(outcome), **quota_headers},
                )
    return json_response({"input_tokens": estimate_input_tokens(body)}, headers=quota_headers)


def counts_upstream(provider: Provider) -> bool:
    """Whether a deployment counts tokens with an upstream call (else the proxy estimates)."""
    return type(provider).count_tokens is not Provider.count_tokens
