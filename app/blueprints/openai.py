"""The OpenAI-compatible surface: chat completions (streamed or not) and the model list."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from flask import Blueprint, Response, g

from app.auth import model_allowed
from app.blueprints.common import (
    Tally,
    admit,
    authenticate,
    authorise_model,
    bounded,
    call_context,
    image_entry,
    json_response,
    note_outcome,
    proxy_state,
    read_json_body,
    relay,
    routing_headers,
    settle_usage,
)
from app.errors import (
    OPENAI,
    ModelNotFoundError,
)
from app.providers import PrimedStream
from app.routing import Candidate, Outcome
from app.schemas import CHAT_COMPLETION, COMPLETIONS, EMBEDDINGS, IMAGES, validate_body
from app.streaming import DONE, SSE_HEADERS, encode_chunk
from app.think import strip_answer, strip_stream

logger = logging.getLogger(__name__)

bp = Blueprint("ai_proxy_openai", __name__)

GLOB_CHARS = "*?["


@bp.before_request
def require_token():
    authenticate()


@bp.post("/v1/chat/completions")
@bp.post("/chat/completions")
def create_chat_completion():
    body, size = read_json_body()
    body = validate_body(CHAT_COMPLETION, body)
    state, token, resolution, quota_headers = admit(body.get("model"), size)
    ctx = call_context(resolution.identifier)

    if body.get("stream"):
        outcome = state.router.run(
            resolution,
            lambda c: PrimedStream(
                c.provider.open_chat_stream(_upstream_body(body, c), ctx), c.provider.label
            ),
            ctx.deadline,
        )
        return stream_response(
            outcome, body, settle_usage(token, outcome.candidate, body), quota_headers
        )

    outcome = state.router.run(
        resolution, lambda c: c.provider.chat(_upstream_body(body, c), ctx), ctx.deadline
    )
    outcome.finish()
    note_outcome(outcome, OPENAI, stream=False)
    answer = outcome.result
    if outcome.candidate.provider.model.strip_think:
        answer = strip_answer(answer)
    response = json_response(answer, headers={**routing_headers(outcome), **quota_headers})
    # Charged once the answer is on its way, so quota storage adds nothing to its latency.
    settle = settle_usage(token, outcome.candidate, body)
    response.call_on_close(lambda: settle(answer.get("usage"), _answer_text(answer)))
    return response


def stream_response(outcome: Outcome, body: dict, settle, quota_headers: dict) -> Response:
    """An opened OpenAI-style stream (chat or legacy completion) relayed to the client."""
    note_outcome(outcome, OPENAI, stream=True)
    options = body.get("stream_options")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    limit = proxy_state().config.routing.stream_timeout_seconds
    chunks = bounded(outcome.result, time.monotonic() + limit)
    if outcome.candidate.provider.model.strip_think:
        chunks = strip_stream(chunks)
    tally = Tally()
    return Response(
        relay(outcome, chat_events(chunks, include_usage, tally), tally, OPENAI, settle),
        mimetype="text/event-stream",
        headers={**SSE_HEADERS, **routing_headers(outcome), **quota_headers},
    )


def _upstream_body(body: dict, candidate: Candidate) -> dict:
    return {**body, "model": candidate.upstream_model}


def _answer_text(answer: dict) -> str:
    parts = []
    for choice in answer.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


def chat_events(chunks, include_usage: bool, tally: Tally) -> Iterator[bytes]:
    """OpenAI stream events for canonical chunks, ending with [DONE]."""
    for chunk in chunks:
        if chunk.get("usage"):
            tally.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                tally.texts.append(content)
        if "usage" in chunk and not include_usage:
            # The proxy asked upstream for usage; the client did not, so it gets none.
            if not chunk.get("choices"):
                continue
            chunk = {key: value for key, value in chunk.items() if key != "usage"}
        yield encode_chunk(chunk)
    yield DONE


def _model_object(model_id: str, owned_by: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


@bp.get("/v1/models")
@bp.get("/models")
def list_models():
    """Every name, alias and category the token may use, and the ids its allow-list names that
    a wildcard deployment serves (`openrouter/deepseek/deepseek-chat` through `openrouter/*`).

    A glob in the allow-list (`openrouter/meta-llama/*`) names no model, so it adds nothing.
    """
    state = proxy_state()
    token = g.ai_proxy_token
    created = int(state.started)
    listed: dict[str, dict] = {}
    for model_id, owned_by, is_category in state.router.public_models():
        if model_allowed(token, model_id, is_category):
            listed.setdefault(model_id, _model_object(model_id, owned_by, created))
    for pattern in token.models:
        if pattern in listed or any(ch in pattern for ch in GLOB_CHARS):
            continue
        owner = state.router.wildcard_owner(pattern)
        if owner is not None:
            listed[pattern] = _model_object(pattern, owner, created)
    return json_response({"object": "list", "data": list(listed.values())})


@bp.get("/v1/models/<path:model_id>")
@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    state = proxy_state()
    # The allow-list first: a model outside it is refused whether or not it exists.
    authorise_model(g.ai_proxy_token, model_id)
    for public_id, owned_by, is_category in state.router.public_models():
        matches = public_id.upper() == model_id.upper() if is_category else public_id == model_id
        if matches:
            return json_response(_model_object(public_id, owned_by, int(state.started)))
    owner = state.router.wildcard_owner(model_id)
    if owner is not None:
        return json_response(_model_object(model_id, owner, int(state.started)))
    raise ModelNotFoundError(f"The model {model_id!r} does not exist.", param="model")


@bp.post("/v1/embeddings")
@bp.post("/embeddings")
def create_embedding():
    body, size = read_json_body()
    body = validate_body(EMBEDDINGS, body)
    state, token, resolution, quota_headers = admit(body["model"], size, kind="embedding")
    ctx = call_context(resolution.identifier)
    outcome = state.router.run(
        resolution,
        lambda c: c.provider.embed({**body, "model": c.upstream_model}, ctx),
        ctx.deadline,
    )
    outcome.finish()
    note_outcome(outcome, OPENAI, stream=False)
    answer = outcome.result
    response = json_response(answer, headers={**routing_headers(outcome), **quota_headers})
    settle = settle_usage(token, outcome.candidate, {"messages": []})
    response.call_on_close(lambda: settle(answer.get("usage"), ""))
    return response


@bp.post("/v1/images/generations")
@bp.post("/images/generations")
def create_image():
    body, size = read_json_body()
    body = validate_body(IMAGES, body)
    state, _token, resolution, quota_headers = admit(body.get("model"), size, kind="image")
    ctx = call_context(resolution.identifier)
    outcome = state.router.run(
        resolution,
        lambda c: (c, c.provider.generate_image({**body, "model": c.upstream_model}, ctx)),
        ctx.deadline,
    )
    outcome.finish()
    note_outcome(outcome, OPENAI, stream=False)
    candidate, entries = outcome.result
    wanted = body.get("response_format") or "url"
    data = [image_entry(entry, wanted, candidate, ctx) for entry in entries]
    return json_response(
        {"created": int(time.time()), "data": data},
        headers={**routing_headers(outcome), **quota_headers},
    )


@bp.post("/v1/completions")
@bp.post("/completions")
def create_completion():
    body, size = read_json_body()
    body = validate_body(COMPLETIONS, body)
    state, token, resolution, quota_headers = admit(body["model"], size)
    ctx = call_context(resolution.identifier)
    prompt = body["prompt"] if isinstance(body["prompt"], str) else ""
    settle_body = {"messages": [{"role": "user", "content": prompt}]}
    if body.get("stream"):
        outcome = state.router.run(
            resolution,
            lambda c: PrimedStream(
                c.provider.open_completion_stream({**body, "model": c.upstream_model}, ctx),
                c.provider.label,
            ),
            ctx.deadline,
        )
        settle = settle_usage(token, outcome.candidate, settle_body)
        return stream_response(outcome, body, settle, quota_headers)
    outcome = state.router.run(
        resolution,
        lambda c: c.provider.complete({**body, "model": c.upstream_model}, ctx),
        ctx.deadline,
    )
    outcome.finish()
    note_outcome(outcome, OPENAI, stream=False)
    answer = outcome.result
    response = json_response(answer, headers={**routing_headers(outcome), **quota_headers})
    text = "".join(str(c.get("text") or "") for c in answer.get("choices") or [])
    settle = settle_usage(token, outcome.candidate, settle_body)
    response.call_on_close(lambda: settle(answer.get("usage"), text))
    return response
