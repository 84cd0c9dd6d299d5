"""What the proxy answers, as `/openapi.json` describes it: bodies, stream events, headers.

The bodies are marshmallow schemas for the document only (app/openapi.py renders them with
apispec): answers are built as plain dicts or relayed from upstreams, never loaded or dumped with
these. Each class name is its component name. An answer may carry fields not named here (an
upstream's `system_fingerprint` ...), hence INCLUDE, which apispec renders as
`additionalProperties: true`.
"""

from __future__ import annotations

from marshmallow import INCLUDE, Schema, fields, validate


class _Answer(Schema):
    class Meta:
        unknown = INCLUDE


def _const(value: str) -> fields.String:
    return fields.String(required=True, validate=validate.Equal(value))


def _nullable_string() -> fields.String:
    return fields.String(allow_none=True)


class OpenAIErrorDetail(_Answer):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class OpenAIError(_Answer):
    error = fields.Nested(OpenAIErrorDetail, required=True)


class AnthropicErrorDetail(_Answer):
    type = fields.String(required=True)
    message = fields.String(required=True)


class AnthropicError(_Answer):
    type = _const("error")
    error = fields.Nested(AnthropicErrorDetail, required=True)


class Usage(_Answer):
    prompt_tokens = fields.Integer()
    completion_tokens = fields.Integer()
    total_tokens = fields.Integer()


class _Created(_Answer):
    """The fields every OpenAI completion and chunk starts with."""

    id = fields.String()
    object = fields.String()
    created = fields.Integer()
    model = fields.String()


class AssistantMessage(_Answer):
    role = fields.String()
    content = _nullable_string()
    tool_calls = fields.List(fields.Dict())


class ChatChoice(_Answer):
    index = fields.Integer()
    message = fields.Nested(AssistantMessage)
    finish_reason = _nullable_string()


class ChatCompletion(_Created):
    choices = fields.List(fields.Nested(ChatChoice), required=True)
    usage = fields.Nested(Usage)


class ChunkChoice(_Answer):
    index = fields.Integer()
    delta = fields.Dict()
    finish_reason = _nullable_string()


class ChatCompletionChunk(_Created):
    choices = fields.List(
        fields.Nested(ChunkChoice),
        required=True,
        metadata={"description": "Empty in the usage chunk (`stream_options.include_usage`)."},
    )
    usage = fields.Nested(Usage, allow_none=True)


class TextChoice(_Answer):
    text = fields.String()
    index = fields.Integer()
    finish_reason = _nullable_string()


class Completion(_Created):
    choices = fields.List(fields.Nested(TextChoice), required=True)
    usage = fields.Nested(Usage)


class CompletionChunk(_Answer):
    choices = fields.List(fields.Nested(TextChoice), required=True)
    usage = fields.Nested(Usage, allow_none=True)


class Embedding(_Answer):
    object = fields.String()
    index = fields.Integer()
    embedding = fields.Raw(metadata={"type": ["array", "string"], "items": {"type": "number"}})


class EmbeddingList(_Answer):
    object = fields.String()
    data = fields.List(fields.Nested(Embedding), required=True)
    model = fields.String()
    usage = fields.Nested(Usage)


class Image(_Answer):
    url = fields.String()
    b64_json = fields.String()
    revised_prompt = fields.String()


class ImageList(_Answer):
    created = fields.Integer(required=True)
    data = fields.List(
        fields.Nested(Image),
        required=True,
        metadata={
            "description": "Each image: `url` (an upstream URL or a data: URL) or `b64_json`."
        },
    )


class ContentBlock(_Answer):
    type = fields.String(required=True)


class MessageUsage(_Answer):
    input_tokens = fields.Integer()
    output_tokens = fields.Integer()


class Message(_Answer):
    id = fields.String(required=True)
    type = _const("message")
    role = _const("assistant")
    model = fields.String(required=True)
    content = fields.List(fields.Nested(ContentBlock), required=True)
    stop_reason = fields.String(required=True, allow_none=True)
    stop_sequence = _nullable_string()
    usage = fields.Nested(MessageUsage, required=True)


class ResponseUsage(_Answer):
    input_tokens = fields.Integer()
    output_tokens = fields.Integer()
    total_tokens = fields.Integer()


class OutputItem(_Answer):
    type = fields.String(
        required=True, metadata={"description": "`message` (output_text) or `function_call`."}
    )


class Response(_Answer):
    """An OpenAI Responses API response object."""

    id = fields.String(required=True)
    object = _const("response")
    created_at = fields.Float(required=True)
    status = fields.String(required=True)
    model = fields.String(required=True)
    output = fields.List(fields.Nested(OutputItem), required=True)
    error = fields.Dict(allow_none=True)
    incomplete_details = fields.Dict(allow_none=True)
    usage = fields.Nested(ResponseUsage, allow_none=True)


class ResponseDeleted(_Answer):
    id = fields.String(required=True)
    object = _const("response.deleted")
    deleted = fields.Boolean(required=True)


class ResponseItemList(_Answer):
    """A page of a stored response's input items."""

    object = _const("list")
    data = fields.List(fields.Dict(), required=True)
    first_id = fields.String(required=True, allow_none=True)
    last_id = fields.String(required=True, allow_none=True)
    has_more = fields.Boolean(required=True)


class TokenCount(_Answer):
    input_tokens = fields.Integer(required=True)


class Model(_Answer):
    id = fields.String(required=True)
    object = _const("model")
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)


class ModelList(_Answer):
    object = _const("list")
    data = fields.List(fields.Nested(Model), required=True)


class GeminiErrorDetail(_Answer):
    code = fields.Integer(required=True)
    message = fields.String(required=True)
    status = fields.String(required=True)


class GeminiError(_Answer):
    error = fields.Nested(GeminiErrorDetail, required=True)


class GeminiCandidate(_Answer):
    content = fields.Dict(metadata={"description": "`role: model` and its `parts`."})
    finishReason = fields.String()
    index = fields.Integer()


class GenerateContentResponse(_Answer):
    candidates = fields.List(fields.Nested(GeminiCandidate))
    usageMetadata = fields.Dict()
    modelVersion = fields.String()
    responseId = fields.String()


class GeminiTokenCount(_Answer):
    totalTokens = fields.Integer(required=True)


class GeminiModel(_Answer):
    name = fields.String(required=True, metadata={"description": "`models/<id>`."})
    displayName = fields.String()
    supportedGenerationMethods = fields.List(fields.String())


class GeminiModelList(_Answer):
    models = fields.List(fields.Nested(GeminiModel), required=True)
    nextPageToken = fields.String()


class Health(_Answer):
    status = _const("ok")


class Check(_Answer):
    ok = fields.Boolean(required=True)


class Readiness(_Answer):
    status = fields.String(required=True, validate=validate.OneOf(("ready", "not_ready")))
    checks = fields.Dict(
        values=fields.Nested(Check),
        required=True,
        metadata={"description": "Each check (config, models, rate_limit_storage) with `ok`."},
    )


class Version(_Answer):
    name = _const("ai-proxy")
    version = fields.String(required=True)


class AdminStatus(_Answer):
    deployments = fields.List(fields.Dict(), required=True)
    tokens = fields.List(fields.Dict(), required=True)
    requests_in_flight = fields.Integer(required=True)
    activity = fields.Dict(
        metadata={
            "description": "Every worker's numbers for the status page: last errors, cost "
            "today per token and model, cache hit rate (each deployment has its own `activity`)."
        }
    )


class CacheDeleted(_Answer):
    deleted = fields.Boolean(required=True)
    model = fields.String(allow_none=True, required=True)
    storage = fields.String(required=True)


def documented() -> list[type[Schema]]:
    """Every answer body, in the order declared (the `_` bases describe none on their own)."""
    return [
        value
        for name, value in globals().items()
        if isinstance(value, type) and issubclass(value, _Answer) and not name.startswith("_")
    ]


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict | str) -> dict:
    """A JSON body: a component's name or a schema."""
    return {"application/json": {"schema": ref(schema) if isinstance(schema, str) else schema}}


def _header(description: str, required: bool = False) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string"}}


REQUEST_ID = _header("The request's id (kept from a valid `X-Request-ID`).", required=True)
ROUTED_HEADERS = {
    "x-ai-proxy-model": _header("The configured name of the deployment that answered."),
    "x-ai-proxy-attempts": _header("How many deployments were tried."),
}


def _answer(description: str, content: dict, headers: dict | None = None) -> dict:
    return {
        "description": description,
        "headers": {"x-request-id": REQUEST_ID, **(headers or {})},
        "content": content,
    }


def _routed(description: str, content: dict) -> dict:
    """A 200 from a routed call: who served it and how many deployments were tried."""
    return _answer(description, content, ROUTED_HEADERS)


def _json_text(schema: dict) -> dict:
    """A string holding a JSON document that `schema` describes."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _events(chunk: str) -> dict:
    """An OpenAI stream: each event's data a chunk or an in-band error, then `[DONE]`."""
    data = {"anyOf": [{"const": "[DONE]"}, _json_text({"anyOf": [ref(chunk), ref("OpenAIError")]})]}
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {"text/event-stream": {"schema": event}}


def _anthropic_events() -> dict:
    """A stream of named events whose data carries the same `type` (`error` too): Anthropic's,
    and the Responses API's."""
    typed = {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    properties = {"event": {"type": "string"}, "data": _json_text(typed)}
    event = {"type": "object", "required": ["event", "data"], "properties": properties}
    return {"text/event-stream": {"schema": event}}


def _gemini_stream() -> dict:
    """streamGenerateContent: SSE events with `?alt=sse`, else one JSON array; an in-band error
    is the last event or element."""
    element = {"anyOf": [ref("GenerateContentResponse"), ref("GeminiError")]}
    event = {"type": "object", "required": ["data"], "properties": {"data": _json_text(element)}}
    return {
        "application/json": {"schema": {"type": "array", "items": element}},
        "text/event-stream": {"schema": event},
    }


ERROR_DESCRIPTIONS = {
    400: "Invalid JSON (`invalid_json`) or a failed validation (`param` names the field).",
    401: "No or wrong token (`invalid_api_key`).",
    403: "The token may not use that model (`model_not_allowed`).",
    404: "Unknown model (`model_not_found`) or path (`not_found`).",
    413: "The body is over `server.max_body_bytes` (`request_too_large`).",
    429: "The proxy's own quota (`rate_limit_exceeded` or `budget_exceeded`).",
    502: "Every candidate failed (`upstream_error`).",
    503: "Every candidate cooling down or out of quota (`no_available_model`), or the rate-limit "
    "storage down with `on_storage_error: deny` (`rate_limit_storage_unavailable`).",
    504: "The last candidate went silent past its read timeout (`upstream_timeout`).",
}


def error_responses(surface: str) -> dict[int, dict]:
    """The error answers of a surface (`OpenAI`, `Anthropic`) by status, in its error body."""
    responses = {}
    for status, description in ERROR_DESCRIPTIONS.items():
        headers = {}
        if status == 401:
            headers["WWW-Authenticate"] = _header('`Bearer realm="ai-proxy"`', required=True)
        if status in (429, 503):
            headers["Retry-After"] = _header("Seconds to wait before trying again.")
        responses[status] = _answer(description, json_content(f"{surface}Error"), headers)
    return responses


# Each operation's answers other than the reusable errors.
STREAMED = "The completion, or its server-sent events ending with `data: [DONE]`."
CHAT_CONTENT = {**json_content("ChatCompletion"), **_events("ChatCompletionChunk")}
TEXT_CONTENT = {**json_content("Completion"), **_events("CompletionChunk")}
MESSAGE_CONTENT = {**json_content("Message"), **_anthropic_events()}
MESSAGE_EVENTS = "The message, or its events (message_start ... message_stop)."
IMAGE_BYTES = {"image/*": {"schema": {"type": "string", "format": "binary"}}}
PING = {"200": _answer("OK", {"text/plain": {"schema": {"const": "OK"}}})}
HEALTH = {"200": _answer("Alive.", json_content("Health"))}
READY = {
    "200": _answer("Ready.", json_content("Readiness")),
    "503": _answer("Not ready.", json_content("Readiness")),
}
VERSION = {"200": _answer("The version.", json_content("Version"))}
DOCUMENT = {"200": _answer("The OpenAPI document.", json_content({"type": "object"}))}
MODELS = {"200": _answer("The model list.", json_content("ModelList"))}
MODEL = {"200": _answer("The model.", json_content("Model"))}
CHAT = {"200": _routed(STREAMED, CHAT_CONTENT)}
TEXT = {"200": _routed("The completion, or its events.", TEXT_CONTENT)}
EMBEDDINGS = {"200": _routed("The embeddings.", json_content("EmbeddingList"))}
IMAGES = {"200": _routed("The images.", json_content("ImageList"))}
RAW_IMAGE = {"200": _routed("The image bytes.", IMAGE_BYTES)}
MESSAGE = {"200": _routed(MESSAGE_EVENTS, MESSAGE_CONTENT)}
COUNT = {"200": _answer("The count.", json_content("TokenCount"))}
RESPONSE_EVENTS = "The Response, or its events (response.created ... response.completed)."
RESPONSE = {"200": _routed(RESPONSE_EVENTS, {**json_content("Response"), **_anthropic_events()})}
STORED_RESPONSE = {"200": _answer("The stored Response.", json_content("Response"))}
DELETED_RESPONSE = {"200": _answer("It is deleted.", json_content("ResponseDeleted"))}
INPUT_ITEMS = {"200": _answer("A page of its input items.", json_content("ResponseItemList"))}
GENERATED = {"200": _routed("The answer.", json_content("GenerateContentResponse"))}
GENERATED_STREAM = {"200": _routed("The answer's responses as they come.", _gemini_stream())}
GEMINI_COUNT = {"200": _answer("The count.", json_content("GeminiTokenCount"))}
GEMINI_MODELS = {"200": _answer("The model list.", json_content("GeminiModelList"))}
GEMINI_MODEL = {"200": _answer("The model.", json_content("GeminiModel"))}
METRICS = {
    "200": _answer("Prometheus text format.", {"text/plain": {"schema": {"type": "string"}}})
}
STATUS = {
    "200": _answer("The status.", json_content("AdminStatus")),
    "403": _answer(
        "A client token, not the admin one (`admin_only`).", json_content("OpenAIError")
    ),
    "404": _answer("No `admin_token` is configured.", json_content("OpenAIError")),
}
CACHE_DELETED = {
    "200": _answer("The cache (or one model's entries) is emptied.", json_content("CacheDeleted")),
    "400": _answer("`model` is not a model name.", json_content("OpenAIError")),
    "403": _answer(
        "A client token, not the admin one (`admin_only`).", json_content("OpenAIError")
    ),
    "404": _answer(
        "No `admin_token` is configured, or the cache is off (`cache_disabled`).",
        json_content("OpenAIError"),
    ),
    "503": _answer("The cache storage is unavailable.", json_content("OpenAIError")),
}
