"""The OpenAPI 3.1 document describing the proxy's endpoints, served at `/openapi.json`.

Request bodies describe what `app.schemas` checks and no more: fields they do not name pass
through untouched, so the document claims nothing the proxy does not enforce.
"""

from __future__ import annotations

from app.schemas import (
    MAX_EMBEDDING_INPUTS,
    MAX_MESSAGES,
    MAX_MODEL_NAME,
    MAX_PROMPT_CHARS,
    ROLES,
)
from app.version import __version__

OPENAPI_VERSION = "3.1.0"
OPENAI, ANTHROPIC = "OpenAI", "Anthropic"
OPENAI_ERROR = "#/components/schemas/OpenAIError"
ANTHROPIC_ERROR = "#/components/schemas/AnthropicError"
# Every client-token scheme; any one of them is enough (the official SDKs each use one).
TOKEN_SECURITY = [{"bearer": []}, {"x-api-key": []}, {"api-key": []}, {"x-goog-api-key": []}]

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
ROUTED_ERRORS = (400, 401, 403, 404, 413, 429, 502, 503, 504)


def _nullable(schema: dict) -> dict:
    """The schema, also allowing JSON null (marshmallow's `allow_none=True`)."""
    kind = schema["type"]
    kinds = kind if isinstance(kind, list) else [kind]
    if "enum" in schema:
        schema = {**schema, "enum": [*schema["enum"], None]}
    return {**schema, "type": [*kinds, "null"]}


def _model(required: bool) -> dict:
    schema = {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME}
    if required:
        return {**schema, "description": "A model name, alias or category."}
    return {
        **_nullable(schema),
        "description": "A model name, alias or category; absent or null: the default.",
    }


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _header(description: str, required: bool = False) -> dict:
    return {"description": description, "required": required, "schema": {"type": "string"}}


REQUEST_ID = _header("The request's id (kept from a valid `X-Request-ID`).", required=True)


def _response(description: str, content: dict | None = None, headers: dict | None = None) -> dict:
    response: dict = {
        "description": description,
        "headers": {"x-request-id": REQUEST_ID, **(headers or {})},
    }
    if content is not None:
        response["content"] = content
    return response


def _routed_success(description: str, content: dict) -> dict:
    """A 200 from a routed call: who served it and how many deployments were tried."""
    headers = {
        "x-ai-proxy-model": _header("The configured name of the deployment that answered."),
        "x-ai-proxy-attempts": _header("How many deployments were tried."),
    }
    return _response(description, content, headers)


def _error_responses() -> dict:
    """Reusable error responses of both surfaces (section 6 of the contract)."""
    responses = {}
    for surface, schema in ((OPENAI, OPENAI_ERROR), (ANTHROPIC, ANTHROPIC_ERROR)):
        for status, description in ERROR_DESCRIPTIONS.items():
            headers = {}
            if status == 401:
                headers["WWW-Authenticate"] = _header('`Bearer realm="ai-proxy"`', required=True)
            if status in (429, 503):
                headers["Retry-After"] = _header("Seconds to wait before trying again.")
            responses[f"{surface}{status}"] = _response(
                description, _json({"$ref": schema}), headers
            )
    return responses


def _errors(surface: str, statuses: tuple[int, ...]) -> dict:
    return {
        str(status): {"$ref": f"#/components/responses/{surface}{status}"} for status in statuses
    }


def _operation(
    operation_id: str,
    summary: str,
    tag: str,
    responses: dict,
    *,
    body: str | None = None,
    security: list | None = None,
    parameters: list | None = None,
) -> dict:
    operation: dict = {
        "operationId": operation_id,
        "summary": summary,
        "tags": [tag],
        "responses": responses,
        "security": TOKEN_SECURITY if security is None else security,
    }
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = {"required": True, "content": _json(_ref(body))}
    return operation


def _json_text(schema: dict) -> dict:
    """A string holding a JSON document that `schema` describes."""
    return {"type": "string", "contentMediaType": "application/json", "contentSchema": schema}


def _events(chunk: str) -> dict:
    """An OpenAI stream: each event's data a chunk or an in-band error, then `[DONE]`."""
    data = {
        "anyOf": [{"const": "[DONE]"}, _json_text({"anyOf": [_ref(chunk), _ref("OpenAIError")]})]
    }
    event = {"type": "object", "required": ["data"], "properties": {"data": data}}
    return {"text/event-stream": {"schema": event}}


def _anthropic_events() -> dict:
    """An Anthropic stream: named events whose data carries the same `type` (`error` too)."""
    data = _json_text(
        {"type": "object", "required": ["type"], "properties": {"type": {"type": "string"}}}
    )
    event = {
        "type": "object",
        "required": ["event", "data"],
        "properties": {"event": {"type": "string"}, "data": data},
    }
    return {"text/event-stream": {"schema": event}}


def _schemas() -> dict:
    """Component schemas: request bodies as `app.schemas` validates them, then answers."""
    error_detail = {
        "type": "object",
        "required": ["message", "type", "param", "code"],
        "properties": {
            "message": {"type": "string"},
            "type": {"type": "string"},
            "param": {"type": ["string", "null"]},
            "code": {"type": ["string", "null"]},
        },
    }
    usage = {
        "type": "object",
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    }
    chat_message = {
        "type": "object",
        "description": "A chat message; fields other than `role` and `content` pass through.",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": list(ROLES)},
            "content": {
                "type": ["string", "array", "null"],
                "items": {"type": "object", "description": "A content part."},
            },
        },
    }
    anthropic_turn = {
        "type": "object",
        "required": ["role", "content"],
        "properties": {
            "role": {"type": "string", "enum": ["user", "assistant"]},
            "content": {
                "type": ["string", "array"],
                "items": {
                    "type": "object",
                    "description": "A content block: text, image, tool_use, tool_result ...",
                    "required": ["type"],
                    "properties": {"type": {"type": "string"}},
                },
            },
        },
    }
    messages_properties = {
        "model": _model(required=True),
        "max_tokens": {"type": "integer", "minimum": 1},
        "messages": {
            "type": "array",
            "minItems": 1,
            "maxItems": MAX_MESSAGES,
            "items": _ref("AnthropicTurn"),
        },
        "system": {
            "type": ["string", "array", "null"],
            "description": "A string or a list of text blocks.",
        },
        "stream": _nullable({"type": "boolean"}),
        "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
        "top_k": _nullable({"type": "integer", "minimum": 0}),
        "stop_sequences": _nullable({"type": "array", "items": {"type": "string"}}),
        "tools": _nullable({"type": "array", "items": {"type": "object"}}),
        "tool_choice": _nullable({"type": "object"}),
        "metadata": _nullable({"type": "object"}),
    }
    token_ids = {"type": "array", "minItems": 1, "items": {"type": "integer"}}
    return {
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": error_detail},
        },
        "AnthropicError": {
            "type": "object",
            "required": ["type", "error"],
            "properties": {
                "type": {"const": "error"},
                "error": {
                    "type": "object",
                    "required": ["type", "message"],
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
        "ChatMessage": chat_message,
        "ChatCompletionRequest": {
            "type": "object",
            "description": "OpenAI chat; fields not named here (tools, stop ...) pass through.",
            "required": ["messages"],
            "properties": {
                "model": _model(required=False),
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_MESSAGES,
                    "items": _ref("ChatMessage"),
                },
                "stream": _nullable({"type": "boolean"}),
                "stream_options": _nullable(
                    {
                        "type": "object",
                        "properties": {"include_usage": _nullable({"type": "boolean"})},
                    }
                ),
                "max_tokens": _nullable({"type": "integer", "minimum": 1}),
                "max_completion_tokens": _nullable({"type": "integer", "minimum": 1}),
                "n": _nullable({"type": "integer", "minimum": 1, "maximum": 128}),
                "temperature": _nullable({"type": "number", "minimum": 0, "maximum": 2}),
                "top_p": _nullable({"type": "number", "minimum": 0, "maximum": 1}),
            },
        },
        "ChatCompletion": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "index": {"type": "integer"},
                            "message": {
                                "type": "object",
                                "properties": {
                                    "role": {"type": "string"},
                                    "content": {"type": ["string", "null"]},
                                    "tool_calls": {"type": "array", "items": {"type": "object"}},
                                },
                            },
                            "finish_reason": {"type": ["string", "null"]},
                        },
                    },
                },
                "usage": usage,
            },
        },
        "ChatCompletionChunk": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "description": "Empty in the usage chunk (`stream_options.include_usage`).",
                    "items": {
                        "type": "object",
                        "properties": {
                            "index": {"type": "integer"},
                            "delta": {"type": "object"},
                            "finish_reason": {"type": ["string", "null"]},
                        },
                    },
                },
                "usage": {"anyOf": [usage, {"type": "null"}]},
            },
        },
        "CompletionRequest": {
            "type": "object",
            "description": "OpenAI legacy completions; other fields pass through.",
            "required": ["model", "prompt"],
            "properties": {
                "model": _model(required=True),
                "prompt": {
                    "anyOf": [
                        {"type": "string"},
                        {
                            "type": "array",
                            "minItems": 1,
                            "items": {"type": ["string", "integer", "array"]},
                        },
                    ]
                },
                "stream": _nullable({"type": "boolean"}),
                "max_tokens": _nullable({"type": "integer", "minimum": 1}),
            },
        },
        "Completion": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "text": {"type": "string"},
                            "index": {"type": "integer"},
                            "finish_reason": {"type": ["string", "null"]},
                        },
                    },
                },
                "usage": usage,
            },
        },
        "CompletionChunk": {
            "type": "object",
            "required": ["choices"],
            "properties": {
                "choices": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "text": {"type": "string"},
                            "index": {"type": "integer"},
                            "finish_reason": {"type": ["string", "null"]},
                        },
                    },
                },
                "usage": {"anyOf": [usage, {"type": "null"}]},
            },
        },
        "EmbeddingRequest": {
            "type": "object",
            "required": ["model", "input"],
            "properties": {
                "model": _model(required=True),
                "input": {
                    "description": "A string, or strings, token ids or lists of token ids.",
                    "anyOf": [
                        {"type": "string", "minLength": 1},
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_EMBEDDING_INPUTS,
                            "items": {"type": "string"},
                        },
                        {**token_ids, "maxItems": MAX_EMBEDDING_INPUTS},
                        {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": MAX_EMBEDDING_INPUTS,
                            "items": token_ids,
                        },
                    ],
                },
                "dimensions": _nullable({"type": "integer", "minimum": 1}),
                "encoding_format": _nullable({"type": "string", "enum": ["float", "base64"]}),
            },
        },
        "EmbeddingList": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "object": {"type": "string"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "object": {"type": "string"},
                            "index": {"type": "integer"},
                            "embedding": {
                                "type": ["array", "string"],
                                "items": {"type": "number"},
                            },
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": usage,
            },
        },
        "ImageRequest": {
            "type": "object",
            "required": ["prompt"],
            "properties": {
                "model": _model(required=False),
                "prompt": {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS},
                "n": _nullable({"type": "integer", "minimum": 1, "maximum": 10}),
                "size": _nullable({"type": "string", "maxLength": 32}),
                "response_format": _nullable({"type": "string", "enum": ["url", "b64_json"]}),
            },
        },
        "ImageList": {
            "type": "object",
            "required": ["created", "data"],
            "properties": {
                "created": {"type": "integer"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "description": "`url` (an upstream URL or a data: URL) or `b64_json`.",
                        "properties": {
                            "url": {"type": "string"},
                            "b64_json": {"type": "string"},
                            "revised_prompt": {"type": "string"},
                        },
                    },
                },
            },
        },
        "RawImageRequest": {
            "type": "object",
            "description": "Go ai-proxy `/image`: the description as `prompt` (or `inputs`).",
            "properties": {
                "model": _model(required=False),
                "prompt": _nullable(
                    {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
                ),
                "inputs": _nullable(
                    {"type": "string", "minLength": 1, "maxLength": MAX_PROMPT_CHARS}
                ),
            },
            "anyOf": [
                {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}},
                {"required": ["inputs"], "properties": {"inputs": {"type": "string"}}},
            ],
        },
        "AnthropicTurn": anthropic_turn,
        "MessagesRequest": {
            "type": "object",
            "description": "Anthropic Messages; other fields pass through to Anthropic upstreams.",
            "required": ["model", "max_tokens", "messages"],
            "properties": messages_properties,
        },
        "CountTokensRequest": {
            "type": "object",
            "description": "A Messages body; `max_tokens` may be left out.",
            "required": ["model", "messages"],
            "properties": messages_properties,
        },
        "Message": {
            "type": "object",
            "required": ["id", "type", "role", "content", "model", "stop_reason", "usage"],
            "properties": {
                "id": {"type": "string"},
                "type": {"const": "message"},
                "role": {"const": "assistant"},
                "model": {"type": "string"},
                "content": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type"],
                        "properties": {"type": {"type": "string"}},
                    },
                },
                "stop_reason": {"type": ["string", "null"]},
                "stop_sequence": {"type": ["string", "null"]},
                "usage": {
                    "type": "object",
                    "properties": {
                        "input_tokens": {"type": "integer"},
                        "output_tokens": {"type": "integer"},
                    },
                },
            },
        },
        "TokenCount": {
            "type": "object",
            "required": ["input_tokens"],
            "properties": {"input_tokens": {"type": "integer"}},
        },
        "Model": {
            "type": "object",
            "required": ["id", "object", "created", "owned_by"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Model")},
            },
        },
        "Health": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"const": "ok"}},
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "description": "Each check (config, models, rate_limit_storage) with `ok`.",
                    "additionalProperties": {
                        "type": "object",
                        "required": ["ok"],
                        "properties": {"ok": {"type": "boolean"}},
                    },
                },
            },
        },
        "Version": {
            "type": "object",
            "required": ["name", "version"],
            "properties": {"name": {"const": "ai-proxy"}, "version": {"type": "string"}},
        },
        "AdminStatus": {
            "type": "object",
            "required": ["deployments", "tokens", "requests_in_flight"],
            "properties": {
                "deployments": {"type": "array", "items": {"type": "object"}},
                "tokens": {"type": "array", "items": {"type": "object"}},
                "requests_in_flight": {"type": "integer"},
            },
        },
    }


def _paths() -> dict:
    chat = _operation(
        "createChatCompletion",
        "OpenAI chat completion, streamed (`stream: true`) or not, from any provider.",
        "openai",
        {
            "200": _routed_success(
                "The completion, or its server-sent events ending with `data: [DONE]`.",
                {**_json(_ref("ChatCompletion")), **_events("ChatCompletionChunk")},
            ),
            **_errors(OPENAI, ROUTED_ERRORS),
        },
        body="ChatCompletionRequest",
    )
    completion = _operation(
        "createCompletion",
        "OpenAI legacy text completion.",
        "openai",
        {
            "200": _routed_success(
                "The completion, or its events.",
                {**_json(_ref("Completion")), **_events("CompletionChunk")},
            ),
            **_errors(OPENAI, ROUTED_ERRORS),
        },
        body="CompletionRequest",
    )
    embedding = _operation(
        "createEmbedding",
        "OpenAI embeddings.",
        "openai",
        {
            "200": _routed_success("The embeddings.", _json(_ref("EmbeddingList"))),
            **_errors(OPENAI, ROUTED_ERRORS),
        },
        body="EmbeddingRequest",
    )
    image = _operation(
        "createImage",
        "OpenAI image generation (`url` or `b64_json`).",
        "openai",
        {
            "200": _routed_success("The images.", _json(_ref("ImageList"))),
            **_errors(OPENAI, ROUTED_ERRORS),
        },
        body="ImageRequest",
    )
    models = _operation(
        "listModels",
        "Every model, alias and category the token may use.",
        "openai",
        {
            "200": _response("The model list.", _json(_ref("ModelList"))),
            **_errors(OPENAI, (401,)),
        },
    )
    model_id = {
        "name": "model_id",
        "in": "path",
        "required": True,
        "description": "A model id; it may hold slashes (`openrouter/x/y`).",
        "schema": {"type": "string", "minLength": 1},
    }
    model = _operation(
        "retrieveModel",
        "One model, alias or category.",
        "openai",
        {
            "200": _response("The model.", _json(_ref("Model"))),
            **_errors(OPENAI, (401, 404)),
        },
        parameters=[model_id],
    )

    def alias(operation: dict, suffix: str) -> dict:
        return {**operation, "operationId": operation["operationId"] + suffix}

    return {
        "/ping": {
            "get": _operation(
                "ping",
                "Go ai-proxy liveness: plain-text OK.",
                "health",
                {"200": _response("OK", {"text/plain": {"schema": {"const": "OK"}}})},
                security=[],
            )
        },
        "/healthz": {
            "get": _operation(
                "getHealth",
                "Liveness.",
                "health",
                {"200": _response("Alive.", _json(_ref("Health")))},
                security=[],
            )
        },
        "/readyz": {
            "get": _operation(
                "getReadiness",
                "Readiness: config, models and rate-limit storage.",
                "health",
                {
                    "200": _response("Ready.", _json(_ref("Readiness"))),
                    "503": _response("Not ready.", _json(_ref("Readiness"))),
                },
                security=[],
            )
        },
        "/version": {
            "get": _operation(
                "getVersion",
                "The proxy's name and version.",
                "health",
                {"200": _response("The version.", _json(_ref("Version")))},
                security=[],
            )
        },
        "/openapi.json": {
            "get": _operation(
                "getOpenAPI",
                "This document.",
                "health",
                {"200": _response("The OpenAPI document.", _json({"type": "object"}))},
                security=[],
            )
        },
        "/v1/models": {"get": models},
        "/models": {"get": alias(models, "Go")},
        "/v1/models/{model_id}": {"get": model},
        "/models/{model_id}": {"get": alias(model, "Go")},
        "/v1/chat/completions": {"post": chat},
        "/chat/completions": {"post": alias(chat, "Go")},
        "/v1/completions": {"post": completion},
        "/completions": {"post": alias(completion, "Unversioned")},
        "/v1/embeddings": {"post": embedding},
        "/embeddings": {"post": alias(embedding, "Unversioned")},
        "/v1/images/generations": {"post": image},
        "/images/generations": {"post": alias(image, "Unversioned")},
        "/image": {
            "post": _operation(
                "createRawImage",
                "Go ai-proxy: an image for a prompt, as raw bytes with their real type.",
                "go",
                {
                    "200": _routed_success(
                        "The image bytes.",
                        {"image/*": {"schema": {"type": "string", "format": "binary"}}},
                    ),
                    **_errors(OPENAI, ROUTED_ERRORS),
                },
                body="RawImageRequest",
            )
        },
        "/v1/messages": {
            "post": _operation(
                "createMessage",
                "Anthropic Messages, streamed or not, from any provider.",
                "anthropic",
                {
                    "200": _routed_success(
                        "The message, or its events (message_start ... message_stop).",
                        {**_json(_ref("Message")), **_anthropic_events()},
                    ),
                    **_errors(ANTHROPIC, ROUTED_ERRORS),
                },
                body="MessagesRequest",
            )
        },
        "/v1/messages/count_tokens": {
            "post": _operation(
                "countMessageTokens",
                "Anthropic token count (an estimate where the provider has none).",
                "anthropic",
                {
                    "200": _response("The count.", _json(_ref("TokenCount"))),
                    **_errors(ANTHROPIC, (400, 401, 403, 404, 413)),
                },
                body="CountTokensRequest",
            )
        },
        "/metrics": {
            "get": _operation(
                "getMetrics",
                "Prometheus metrics; with `server.metrics_token` set, it is wanted as a token.",
                "ops",
                {
                    "200": _response(
                        "Prometheus text format.", {"text/plain": {"schema": {"type": "string"}}}
                    ),
                    **_errors(OPENAI, (401,)),
                },
                security=[{}, *TOKEN_SECURITY],
            )
        },
        "/admin/status": {
            "get": _operation(
                "getStatus",
                "Each deployment's state, quota left and requests in flight (`admin_token`).",
                "ops",
                {
                    "200": _response("The status.", _json(_ref("AdminStatus"))),
                    "401": _errors(OPENAI, (401,))["401"],
                    "403": _response(
                        "A client token, not the admin one (`admin_only`).",
                        _json({"$ref": OPENAI_ERROR}),
                    ),
                    "404": _response(
                        "No `admin_token` is configured.", _json({"$ref": OPENAI_ERROR})
                    ),
                },
            )
        },
    }


def build_openapi(server_url: str = "/") -> dict:
    """The OpenAPI document; `server_url` is where the proxy is mounted (a path, no host)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "ai-proxy",
            "version": __version__,
            "description": (
                "OpenAI- and Anthropic-compatible gateway in front of many LLM providers. "
                "Errors are JSON: `{error: {message, type, param, code}}` on the OpenAI "
                "surfaces, `{type: error, error: {type, message}}` on `/v1/messages`. With no "
                "client token configured, loopback callers need none."
            ),
        },
        "servers": [{"url": server_url or "/"}],
        "tags": [
            {"name": "openai", "description": "The OpenAI-compatible surface."},
            {"name": "anthropic", "description": "The Anthropic Messages surface."},
            {"name": "go", "description": "Go ai-proxy compatibility."},
            {"name": "health", "description": "Probes and this document; no token."},
            {"name": "ops", "description": "Operator endpoints."},
        ],
        "security": TOKEN_SECURITY,
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "`Authorization: Bearer <token>` (OpenAI SDKs).",
                },
                "x-api-key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-api-key",
                    "description": "Anthropic SDKs.",
                },
                "api-key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "api-key",
                    "description": "Azure OpenAI SDKs.",
                },
                "x-goog-api-key": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "x-goog-api-key",
                    "description": "Google GenAI SDKs.",
                },
            },
            "schemas": _schemas(),
            "responses": _error_responses(),
        },
    }
