"""The OpenAI-compatible surface: chat and legacy completions (streamed or not), embeddings,
images, and the model list."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from flask import request

from ..blueprints.common import api_blueprint, json_response, proxy_state, request_state
from ..blueprints.listing import (
    find_model,
    gemini_model,
    gemini_model_list,
    usable_models,
    wants_gemini,
)
from ..blueprints.pipeline import (
    Answer,
    Call,
    Endpoint,
    Opened,
    Tally,
    answers_asked,
    output_cap,
    primed,
    serve,
)
from ..cache import ChatForm, CompletionForm, EmbeddingForm
from ..kinds import Kind
from ..providers import CallContext
from ..routing import Candidate
from ..schemas import CHAT_COMPLETION, COMPLETIONS, EMBEDDINGS, IMAGES
from ..streaming import DONE, encode_chunk
from ..think import strip_answer, strip_stream

bp = api_blueprint("ai_proxy_openai", __name__)


class ChatCompletions(Endpoint):
    name = "create_chat_completion"
    paths = ("/v1/chat/completions", "/chat/completions")
    schema = CHAT_COMPLETION
    cache_form = ChatForm()

    def read(self, body: dict, size: int) -> Call:
        return Call(
            body,
            body.get("model"),
            size,
            stream=bool(body.get("stream")),
            include_usage=wants_usage(body),
            prompt=body,
            max_output=output_cap(body, "max_completion_tokens", "max_tokens"),
            answers=answers_asked(body),
        )

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        answer = candidate.provider.chat(candidate.ask(call.body), ctx)
        if candidate.provider.model.strip_think:
            answer = strip_answer(answer)
        return Answer(answer, answer.get("usage"), _answer_text(answer))

    def open(self, call: Call, candidate: Candidate, ctx: CallContext) -> Opened:
        stream = candidate.provider.open_chat_stream(candidate.ask(call.body), ctx)
        strip = candidate.provider.model.strip_think
        return Opened(
            primed(candidate, stream),
            lambda chunks, tally: chat_events(
                strip_stream(chunks) if strip else chunks, call.include_usage, tally
            ),
        )


class Completions(Endpoint):
    """The legacy text completions: OpenAI-compatible upstreams only."""

    name = "create_completion"
    paths = ("/v1/completions", "/completions")
    schema = COMPLETIONS
    cache_form = CompletionForm()

    def read(self, body: dict, size: int) -> Call:
        prompt = body["prompt"]
        # Several prompts (strings, or lists of token ids) each get their own answers.
        prompts = len(prompt) if isinstance(prompt, list) and not _token_ids(prompt) else 1
        cap = output_cap(body, "max_tokens", copies=("n", "best_of"))
        return Call(
            body,
            body["model"],
            size,
            stream=bool(body.get("stream")),
            include_usage=wants_usage(body),
            prompt={"prompt": prompt},
            max_output=None if cap is None else cap * max(1, prompts),
            answers=answers_asked(body, ("n", "best_of")) * max(1, prompts),
        )

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        answer = candidate.provider.complete(candidate.ask(call.body), ctx)
        text = "".join(str(c.get("text") or "") for c in answer.get("choices") or [])
        return Answer(answer, answer.get("usage"), text)

    def open(self, call: Call, candidate: Candidate, ctx: CallContext) -> Opened:
        stream = candidate.provider.open_completion_stream(candidate.ask(call.body), ctx)
        return Opened(
            primed(candidate, stream),
            lambda chunks, tally: chat_events(chunks, call.include_usage, tally),
        )


def _token_ids(prompt: list) -> bool:
    """Whether a list prompt is one prompt as token ids (not several prompts)."""
    return any(isinstance(item, int) and not isinstance(item, bool) for item in prompt)


class Embeddings(Endpoint):
    name = "create_embedding"
    paths = ("/v1/embeddings", "/embeddings")
    schema = EMBEDDINGS
    kind = Kind.EMBEDDING
    cache_form = EmbeddingForm()

    def read(self, body: dict, size: int) -> Call:
        # Embeddings answer no tokens: only the input is reserved.
        text = body.get("input")
        if isinstance(text, list):
            text = " ".join(item for item in text if isinstance(item, str))
        prompt = {"messages": [{"role": "user", "content": text if isinstance(text, str) else ""}]}
        return Call(body, body["model"], size, prompt=prompt, max_output=0)

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        answer = candidate.provider.embed(candidate.ask(call.body), ctx)
        return Answer(answer, answer.get("usage"))


class Images(Endpoint):
    name = "create_image"
    paths = ("/v1/images/generations", "/images/generations")
    schema = IMAGES
    kind = Kind.IMAGE
    charged = False

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        data = candidate.provider.images(candidate.ask(call.body), ctx)
        return Answer({"created": int(time.time()), "data": data})


serve(bp, ChatCompletions(), Completions(), Embeddings(), Images())


def wants_usage(body: dict) -> bool:
    """Whether a streaming client asked for the usage chunk (`stream_options.include_usage`)."""
    options = body.get("stream_options")
    return bool(isinstance(options, dict) and options.get("include_usage"))


def _answer_text(answer: dict) -> str:
    parts = []
    for choice in answer.get("choices") or []:
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            parts.append(message["content"])
    return "".join(parts)


def chat_events(chunks: Iterable[dict], include_usage: bool, tally: Tally) -> Iterator[bytes]:
    """OpenAI stream events for canonical chunks, ending with [DONE]."""
    for chunk in chunks:
        if chunk.get("usage"):
            tally.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            # A chat delta's content, or a legacy completion's text.
            content = (choice.get("delta") or {}).get("content", choice.get("text"))
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
    """Every name, alias and category the token may use (see `listing.usable_models`); in
    Gemini's shape for a Gemini client, whose SDK asks this path."""
    models = usable_models(request_state().token)
    if wants_gemini(request.headers):
        return json_response(gemini_model_list(models, request.args))
    created = int(proxy_state().started)
    data = [_model_object(m.id, m.owned_by, created) for m in models]
    return json_response({"object": "list", "data": data})


@bp.get("/v1/models/<path:model_id>")
@bp.get("/models/<path:model_id>")
def get_model(model_id: str):
    model = find_model(request_state().token, model_id)
    if wants_gemini(request.headers):
        return json_response(gemini_model(model))
    return json_response(_model_object(model.id, model.owned_by, int(proxy_state().started)))
