"""Helpers the blueprints share: reading the request, authenticating, shaping responses."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from flask import Response, current_app, g, request

from app import metrics
from app.auth import model_allowed, require_model
from app.config import TokenConfig
from app.errors import (
    InvalidJSONError,
    ProxyError,
    UpstreamError,
    UpstreamTimeoutError,
    sse_error_event,
)
from app.images import MAX_IMAGE_BYTES, decode_b64, sniff_type
from app.providers import CallContext
from app.ratelimit import rate_limit_headers
from app.redact import scrub
from app.routing import Candidate, Outcome
from app.state import EXTENSION_KEY, ProxyState
from app.tokens import cost_usd, usage_numbers
from app.upstream import read_bytes

logger = logging.getLogger(__name__)


def proxy_state() -> ProxyState:
    return current_app.extensions[EXTENSION_KEY]


def authenticate() -> TokenConfig:
    """The caller's token, or a 401 (no token configured: loopback callers only)."""
    token = proxy_state().authenticator.authenticate(request.headers, request.remote_addr)
    g.ai_proxy_token = token
    note(token=token.name)
    return token


def note(**fields) -> dict:
    """Add fields to this request's log line (and return the line's record)."""
    record = g.get("ai_proxy_record")
    if record is None:
        record = g.ai_proxy_record = {}
    record.update(fields)
    return record


def note_outcome(outcome: Outcome, surface: str, stream: bool) -> None:
    """Record who answered and how soon the first byte came."""
    first_byte = time.perf_counter() - g.ai_proxy_started
    model = outcome.candidate.provider.model
    note(
        model=model.name,
        provider=model.provider,
        attempts=outcome.attempts,
        stream=stream,
        ttfb_ms=round(first_byte * 1000, 2),
    )
    metrics.FIRST_BYTE_SECONDS.labels(surface, model.name).observe(first_byte)


def read_json_body() -> tuple[object, int]:
    """The parsed JSON body and its size in bytes; 413 past the size limit, 400 if not JSON."""
    raw = request.get_data(cache=False)
    if not raw:
        raise InvalidJSONError("The request body is empty; send a JSON object.")
    try:
        return json.loads(raw), len(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise InvalidJSONError(f"The request body is not valid JSON: {err}") from None
    except RecursionError:
        raise InvalidJSONError("The request body is nested too deeply.") from None


def call_context(requested_model: str | None) -> CallContext:
    """The provider's view of this request, with the deadline for its first byte."""
    timeout = proxy_state().config.routing.request_timeout_seconds
    return CallContext(
        request_id=g.ai_proxy_request_id,
        requested_model=requested_model,
        deadline=time.monotonic() + timeout,
    )


def settle_usage(token: TokenConfig, candidate: Candidate, body: dict):
    """A callback charging an answer's tokens and cost once its usage (or text) is known."""
    quotas = proxy_state().quotas
    model = candidate.provider.model
    record = note()

    def settle(usage: object, completion_text: str) -> tuple[int, int]:
        prompt, completion = usage_numbers(usage, body, completion_text)
        cost = cost_usd(model, prompt, completion)
        quotas.charge(token, model.key, prompt + completion, cost)
        record.update(prompt_tokens=prompt, completion_tokens=completion, cost_usd=cost)
        metrics.TOKENS.labels(model.name, token.name, "prompt").inc(prompt)
        metrics.TOKENS.labels(model.name, token.name, "completion").inc(completion)
        if cost:
            metrics.COST.labels(model.name, token.name).inc(cost)
        return prompt, completion

    return settle


def routing_headers(outcome: Outcome) -> dict[str, str]:
    return {
        "x-ai-proxy-model": outcome.candidate.name,
        "x-ai-proxy-attempts": str(outcome.attempts),
    }


def json_response(payload: object, status: int = 200, headers: dict | None = None) -> Response:
    response = Response(json.dumps(payload), status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


class Tally:
    """What a stream delivered, for charging it: the last usage seen and the text sent."""

    def __init__(self) -> None:
        self.usage: object = None
        self.texts: list[str] = []

    def text(self) -> str:
        return "".join(self.texts)


def bounded(items: Iterable, ends_by: float) -> Iterator:
    """Items until the stream's time is up; then an in-band timeout."""
    for item in items:
        yield item
        if time.monotonic() > ends_by:
            raise UpstreamTimeoutError("The stream ran longer than the proxy allows.")


def relay(
    outcome: Outcome,
    events: Iterator[bytes],
    tally: Tally,
    surface: str,
    settle: Callable[[object, str], object],
) -> Iterator[bytes]:
    """Send a stream's events as they come; a failure after the first byte ends in-band.

    Whatever happens, the upstream is closed, routing hears how it ended, and the tokens
    delivered (before a failure or a disconnect too) are charged.
    """
    error: ProxyError | None = None
    metrics.STREAMS_IN_FLIGHT.inc()
    try:
        yield from events
    except ProxyError as err:
        error = err
        logger.warning("stream ended early: %s", scrub(err.message))
        yield sse_error_event(err, surface)
    except Exception:  # noqa: BLE001 - headers are sent; the client still gets an in-band error.
        error = ProxyError()
        logger.exception("stream failed inside the proxy")
        yield sse_error_event(error, surface)
    finally:
        metrics.STREAMS_IN_FLIGHT.dec()
        outcome.result.close()
        outcome.finish(error)
        settle(tally.usage, tally.text())


def admit(identifier: str | None, size: int, kind: str = "chat"):
    """Resolve the model, check the token may use it, count the request: the common start."""
    state = proxy_state()
    token = g.ai_proxy_token
    if identifier is None and kind != "chat":
        resolution = state.router.resolve_kind(kind, lambda name: model_allowed(token, name))
        note(model_requested=resolution.identifier)
    else:
        resolution = state.router.resolve(identifier, size, kind=kind)
        note(model_requested=resolution.identifier)
        require_model(token, resolution.identifier, resolution.is_category)
    quota_headers = rate_limit_headers(state.quotas.admit_client(token))
    return state, token, resolution, quota_headers


def image_bytes(entry: dict, candidate: Candidate, ctx: CallContext) -> bytes:
    """The bytes of an image entry: decoded, or fetched from the URL the upstream gave."""
    provider = candidate.provider
    if entry.get("b64_json"):
        return decode_b64(entry["b64_json"], provider.label)
    url = entry.get("url", "")
    if url.startswith("data:"):
        return decode_b64(url, provider.label)
    if not url.startswith(("https://", "http://")):
        raise UpstreamError(f"{provider.label}: the upstream image URL is not http(s)")
    response = provider.pool.send(
        "GET",
        url,
        label=provider.label,
        headers={"Accept": "image/*"},
        timeout=provider.timeout(ctx),
    )
    return read_bytes(response, provider.label, MAX_IMAGE_BYTES)


def image_entry(entry: dict, wanted: str, candidate: Candidate, ctx: CallContext) -> dict:
    """An image entry in the form the client asked for (`url` or `b64_json`)."""
    extra = {"revised_prompt": entry["revised_prompt"]} if entry.get("revised_prompt") else {}
    if wanted == "b64_json":
        if entry.get("b64_json"):
            return {"b64_json": entry["b64_json"], **extra}
        data = image_bytes(entry, candidate, ctx)
        return {"b64_json": base64.b64encode(data).decode(), **extra}
    if entry.get("url"):
        return {"url": entry["url"], **extra}
    # No place to host the bytes: a data URL is a URL every client can read.
    data = image_bytes(entry, candidate, ctx)
    media = sniff_type(data) or "image/png"
    return {"url": f"data:{media};base64,{base64.b64encode(data).decode()}", **extra}
