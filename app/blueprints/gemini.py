"""The Gemini API surface: `models/<model>:generateContent`, `:streamGenerateContent` (SSE with
`?alt=sse`, else a JSON array that grows), `:countTokens` and the model list, under `/v1beta`
(and `/v1`, the google-genai SDK's default), routed to any provider: passed through to google
deployments, translated for every other one. Its errors are in Google's shape."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

from flask import Blueprint, request

from ..blueprints.common import (
    authenticate,
    json_response,
    note,
    proxy_state,
    request_state,
)
from ..blueprints.listing import (
    GEMINI_METHODS,
    find_model,
    gemini_model,
    gemini_model_list,
    generates,
    usable_models,
)
from ..blueprints.pipeline import (
    Answer,
    Call,
    Endpoint,
    Opened,
    Tally,
    answers_asked,
    dispatch,
    output_cap,
    primed,
)
from ..errors import InvalidRequestError, MethodNotAllowedError, NotFoundError
from ..gemini_answers import (
    ArrayEncoding,
    ChunkWriter,
    SseEncoding,
    canonical_responses,
    canonical_usage,
    native_responses,
    response_text,
    to_response,
)
from ..gemini_api import (
    Translated,
    camel_case,
    estimate_input,
    to_chat,
    warning_header,
)
from ..kinds import Surface
from ..providers import CallContext
from ..routing import Candidate, Resolution
from ..schemas import GEMINI_COUNT_TOKENS, GENERATE_CONTENT
from ..think import strip_answer, strip_stream

bp = Blueprint("ai_proxy_gemini", __name__)
ROOTS = ("/v1beta", "/v1")
MAX_MODEL_ID = 256


@bp.before_request
def require_token() -> None:
    # Google's clients may send the key in the URL (`?key=`); it is never logged or echoed.
    authenticate(request.args.get("key"))


def is_gemini_path(path: str, method: str) -> bool:
    """Whether a request (path under the proxy's prefix) is on the Gemini surface."""
    if path == "/v1beta" or path.startswith("/v1beta/"):
        return True
    # Under /v1 only its methods are: `/v1/models/<id>` is OpenAI's model lookup.
    return (
        method == "POST"
        and path.startswith("/v1/models/")
        and path.rpartition(":")[2] in GEMINI_METHODS
    )


def allowed_methods(path: str) -> str | None:
    """What a Gemini model path takes, where one route serves both kinds (werkzeug's 405
    would list the route's every method): a method (`...:generateContent`) POST, a model GET
    (Gemini's, or OpenAI's lookup under /v1)."""
    if not path.startswith(("/v1beta/models/", "/v1/models/")):
        return None
    if ":" in path and path.rpartition(":")[2] in GEMINI_METHODS:
        return "POST"
    return "GET, HEAD"


class GenerateContent(Endpoint):
    """generateContent and streamGenerateContent for the model named in the path."""

    name = "generate_content"
    paths = ()
    surface = Surface.GEMINI
    schema = GENERATE_CONTENT

    def __init__(self, model: str, stream: bool = False, sse: bool = False) -> None:
        self.model = model
        self.stream = stream
        self.sse = sse

    def normalise(self, body: object) -> object:
        return camel_case(body)

    def read(self, body: dict, size: int) -> Call:
        translated = to_chat(body, self.model, self.stream)
        return Call(
            body,
            self.model,
            size,
            stream=self.stream,
            prompt=translated.canonical,
            prepared=translated,
            # The reservation: maxOutputTokens times candidateCount, as the chat form has them.
            max_output=output_cap(translated.canonical, "max_tokens"),
            answers=answers_asked(translated.canonical),
        )

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        provider, translated = candidate.provider, call.prepared
        if provider.native_gemini:
            answer = provider.generate_content(candidate.upstream_model, call.body, ctx)
            usage = canonical_usage(answer.get("usageMetadata"))
            return Answer(answer, usage, response_text(answer))
        result = provider.chat(candidate.ask(translated.canonical), ctx)
        if provider.model.strip_think:
            result = strip_answer(result)
        answer = to_response(
            result, self.model, translated.input_estimate, translated.include_thoughts
        )
        return Answer(answer, result.get("usage"), response_text(answer), _warned(translated))

    def open(self, call: Call, candidate: Candidate, ctx: CallContext) -> Opened:
        provider, translated = candidate.provider, call.prepared
        encoding = SseEncoding() if self.sse else ArrayEncoding()
        if provider.native_gemini:
            native = provider.open_generate_stream(candidate.upstream_model, call.body, ctx)
            stream = primed(candidate, native)

            def write_native(items, tally: Tally) -> Iterator[bytes]:
                return encoding.write(native_responses(items, tally))

            return Opened(
                stream, write_native, error_event=encoding.error, mimetype=encoding.content_type
            )
        chat = provider.open_chat_stream(candidate.ask(translated.canonical), ctx)
        stream = primed(candidate, chat)
        strip = provider.model.strip_think

        def write(items, tally: Tally) -> Iterator[bytes]:
            chunks = strip_stream(items) if strip else items
            prompt = stream.prompt_tokens or translated.input_estimate
            writer = ChunkWriter(self.model, prompt, translated.include_thoughts)
            return encoding.write(canonical_responses(chunks, writer, tally))

        return Opened(
            stream,
            write,
            _warned(translated),
            error_event=encoding.error,
            mimetype=encoding.content_type,
        )


class CountTokens(Endpoint):
    """The google deployment's own count (an upstream call, under the client's and the
    deployment's quotas like any other), else an estimate."""

    name = "count_tokens"
    paths = ()
    surface = Surface.GEMINI
    schema = GEMINI_COUNT_TOKENS
    charged = False

    def __init__(self, model: str) -> None:
        self.model = model

    def normalise(self, body: object) -> object:
        return camel_case(body)

    def read(self, body: dict, size: int) -> Call:
        return Call(body, self.model, size, prompt={"messages": []})

    def candidates(self, resolution: Resolution) -> Resolution:
        counting = tuple(c for c in resolution.candidates if c.provider.native_gemini)
        return replace(resolution, candidates=counting)

    def answer(self, call: Call, candidate: Candidate, ctx: CallContext) -> Answer:
        counted = candidate.provider.count_gemini_tokens(candidate.upstream_model, call.body, ctx)
        return Answer({"totalTokens": counted})

    def unavailable(self, call: Call) -> Answer:
        # A count is an estimate at worst: no reason to fail the request.
        return Answer({"totalTokens": estimate_input(call.body)})


def split_target(target: str) -> tuple[str, str]:
    """`<model>:<method>` from the path; the model may hold `/` and `:` itself."""
    model, colon, method = target.rpartition(":")
    if not colon or method not in GEMINI_METHODS:
        if not request.path.startswith(proxy_prefix() + "/v1beta/"):
            # `/v1/models/<id>` without a Gemini method is OpenAI's lookup: GET only.
            raise MethodNotAllowedError(
                f"{request.method} is not allowed here; use GET.", headers={"Allow": "GET, HEAD"}
            )
        raise NotFoundError(
            f"Unknown method; POST models/<model>:{{{','.join(GEMINI_METHODS)}}}.", param="method"
        )
    return check_model(model), method


def proxy_prefix() -> str:
    return proxy_state().url_prefix


def check_model(model: str) -> str:
    model = model.removeprefix("models/")
    if not model:
        raise InvalidRequestError("Invalid request: model: missing from the path", param="model")
    if len(model) > MAX_MODEL_ID:
        raise InvalidRequestError(
            f"Invalid request: model: longer than {MAX_MODEL_ID} characters", param="model"
        )
    return model


@bp.post("/v1beta/models/<path:model_id>")
@bp.post("/v1/models/<path:model_id>")
def call_model(model_id: str):
    """The model's method named after the last `:` of the path (`<model>:<method>`)."""
    model, method = split_target(model_id)
    note(gemini_method=method)
    if method == "countTokens":
        return dispatch(CountTokens(model))
    stream = method == "streamGenerateContent"
    return dispatch(GenerateContent(model, stream, sse=request.args.get("alt") == "sse"))


@bp.get("/v1beta/models")
def list_models():
    """The models the token may use, as Gemini lists them (`pageSize`, `pageToken`)."""
    models = [m for m in usable_models(request_state().token) if generates(m)]
    return json_response(gemini_model_list(models, request.args))


@bp.get("/v1beta/models/<path:model_id>")
def get_model(model_id: str):
    """One model, as Gemini's `Model` resource; a method path wants POST."""
    if model_id.rpartition(":")[2] in GEMINI_METHODS and ":" in model_id:
        raise MethodNotAllowedError(
            f"{request.method} is not allowed here; use POST.", headers={"Allow": "POST"}
        )
    model = find_model(request_state().token, check_model(model_id))
    if not generates(model):
        raise NotFoundError(f"models/{model.id} is not a model generateContent can use.")
    return json_response(gemini_model(model))


def _warned(translated: Translated) -> dict[str, str]:
    if not translated.warnings:
        return {}
    return {"x-ai-proxy-warning": warning_header(translated.warnings)}
