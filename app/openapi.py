"""The OpenAPI 3.1 document served at `/openapi.json`, generated with apispec.

Request bodies are the marshmallow schemas that validate them (`app.schemas`), so the document
says what the proxy enforces and no more: fields they do not name pass through
(`additionalProperties: true`). Answers are documentation-only schemas (`app.answers`);
the paths are a table below. tests/test_fuzz.py runs schemathesis on the document against the
real app: the guard that the two agree.
"""

from __future__ import annotations

import copy
import functools
from typing import NamedTuple

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin

from . import answers, gemini_schemas, schemas
from .answers import (
    CACHE_DELETED,
    CHAT,
    COUNT,
    DELETED_RESPONSE,
    DOCUMENT,
    EMBEDDINGS,
    GEMINI_COUNT,
    GEMINI_MODEL,
    GEMINI_MODELS,
    GENERATED,
    GENERATED_STREAM,
    HEALTH,
    IMAGES,
    INPUT_ITEMS,
    MESSAGE,
    METRICS,
    MODEL,
    MODELS,
    PING,
    RAW_IMAGE,
    READY,
    RESPONSE,
    STATUS,
    STORED_RESPONSE,
    TEXT,
    VERSION,
)
from .version import __version__

OPENAPI_VERSION = "3.1.0"
OPENAI, ANTHROPIC, GEMINI = "OpenAI", "Anthropic", "Gemini"
# Every client-token scheme; any one of them is enough (the official SDKs each use one).
TOKEN_SECURITY = [{"bearer": []}, {"x-api-key": []}, {"api-key": []}, {"x-goog-api-key": []}]
SDKS = {"x-api-key": "Anthropic", "api-key": "Azure OpenAI", "x-goog-api-key": "Google GenAI"}
SECURITY_SCHEMES = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>` (OpenAI SDKs).",
    },
    **{
        name: {"type": "apiKey", "in": "header", "name": name, "description": f"{sdk} SDKs."}
        for name, sdk in SDKS.items()
    },
}
DESCRIPTION = (
    "OpenAI- and Anthropic-compatible gateway in front of many LLM providers. Errors are JSON: "
    "`{error: {message, type, param, code}}` on the OpenAI surfaces, `{type: error, error: "
    "{type, message}}` on `/v1/messages`. With no client token configured, loopback callers "
    "need none."
)
TAGS = {
    "openai": "The OpenAI-compatible surface.",
    "anthropic": "The Anthropic Messages surface.",
    "responses": "The OpenAI Responses API surface, and its stored responses.",
    "go": "Go ai-proxy compatibility.",
    "health": "Probes and this document; no token.",
    "ops": "Operator endpoints.",
    "gemini": "The Gemini API surface (also under `/v1`, the google-genai SDK's default).",
}
# Gemini's clients may also send the token as `?key=`.
GEMINI_SECURITY = [*TOKEN_SECURITY, {"key": []}]
ALT = {
    "name": "alt",
    "in": "query",
    "required": False,
    "description": "`sse`: server-sent events; otherwise one JSON array written as it grows.",
    "schema": {"type": "string"},
}
ROUTED_ERRORS = (400, 401, 403, 404, 413, 429, 502, 503, 504)
# Unversioned paths (Go ai-proxy and OpenAI-style base URLs) -> their operationIds' suffix.
TWINS = {"/models": "Go", "/models/{model_id}": "Go", "/chat/completions": "Go"}
TWINS |= dict.fromkeys(("/completions", "/embeddings", "/images/generations"), "Unversioned")
# Request bodies: component name -> the schema that validates them. Nested schemas come first,
# so they keep these names rather than the ones apispec would derive.
REQUESTS = {
    "ChatMessage": schemas.ChatMessageSchema,
    "AnthropicTurn": schemas.AnthropicMessageSchema,
    "ChatCompletionRequest": schemas.ChatCompletionSchema,
    "CompletionRequest": schemas.CompletionsSchema,
    "EmbeddingRequest": schemas.EmbeddingsSchema,
    "ImageRequest": schemas.ImagesSchema,
    "RawImageRequest": schemas.GoImageSchema,
    "MessagesRequest": schemas.MessagesSchema,
    "CountTokensRequest": schemas.CountTokensSchema,
    "ResponsesRequest": schemas.ResponsesSchema,
    "GeminiContent": gemini_schemas.ContentSchema,
    "GeminiSystemInstruction": gemini_schemas.SystemInstructionSchema,
    "GeminiGenerationConfig": gemini_schemas.GenerationConfigSchema,
    "GeminiFunctionDeclaration": gemini_schemas.FunctionDeclarationSchema,
    "GeminiTool": gemini_schemas.ToolSchema,
    "GeminiFunctionCallingConfig": gemini_schemas.FunctionCallingConfigSchema,
    "GeminiToolConfig": gemini_schemas.ToolConfigSchema,
    "GeminiInnerRequest": gemini_schemas.NamedGenerateContentSchema,
    "GenerateContentRequest": gemini_schemas.GenerateContentSchema,
    "GeminiCountTokensRequest": gemini_schemas.GeminiCountTokensSchema,
}
# What marshmallow cannot say of a whole body: `/image` needs `prompt` or `inputs`.
EXTRA = {
    "RawImageRequest": {
        "anyOf": [
            {"required": [name], "properties": {name: {"type": "string"}}}
            for name in ("prompt", "inputs")
        ]
    },
    "GeminiCountTokensRequest": gemini_schemas.COUNT_EXTRA,
}


MODEL_ID = {
    "name": "model_id",
    "in": "path",
    "required": True,
    "description": "A model id; it may hold slashes (`openrouter/x/y`).",
    "schema": {"type": "string", "minLength": 1},
}
RESPONSE_ID = {
    "name": "response_id",
    "in": "path",
    "required": True,
    "description": "A stored response's id (`resp_...`).",
    "schema": {"type": "string", "minLength": 1},
}

# The query of GET /v1/responses/{response_id}/input_items, as the openai SDK sends it.
INPUT_ITEMS_QUERY = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "description": "Items per page, 1 to 100 (default 20).",
        "schema": {"type": "integer", "minimum": 1, "maximum": 100},
    },
    {
        "name": "order",
        "in": "query",
        "required": False,
        "description": "`asc` or `desc` (default: newest first).",
        "schema": {"enum": ["asc", "desc"]},
    },
    {
        "name": "after",
        "in": "query",
        "required": False,
        "description": "The id of the item the page starts after.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    },
    {
        "name": "include[]",
        "in": "query",
        "required": False,
        "description": "Fields to include (accepted; items are listed as stored).",
        "schema": {"type": "array", "items": {"type": "string"}},
    },
]


class Route(NamedTuple):
    """One operation: a POST when it takes a body (a request component's name), else a GET."""

    path: str
    operation_id: str
    answers: dict
    body: str | None = None
    # Statuses of the surface's reusable error responses (`OpenAI401` ...).
    errors: tuple[int, ...] = ()
    security: list | None = None
    method: str | None = None  # another method than the POST or GET above (`delete`)


# Per tag (the Anthropic tag answers errors in Anthropic's shape, health needs no token).
ROUTES = {
    "health": [
        Route("/ping", "ping", PING),
        Route("/healthz", "getHealth", HEALTH),
        Route("/readyz", "getReadiness", READY),
        Route("/version", "getVersion", VERSION),
        Route("/openapi.json", "getOpenAPI", DOCUMENT),
    ],
    "openai": [
        Route("/v1/models", "listModels", MODELS, errors=(401,)),
        Route("/v1/models/{model_id}", "retrieveModel", MODEL, errors=(401, 404)),
        Route("/v1/chat/completions", "createChatCompletion", CHAT, "ChatCompletionRequest"),
        Route("/v1/completions", "createCompletion", TEXT, "CompletionRequest"),
        Route("/v1/embeddings", "createEmbedding", EMBEDDINGS, "EmbeddingRequest"),
        Route("/v1/images/generations", "createImage", IMAGES, "ImageRequest"),
    ],
    "go": [Route("/image", "createRawImage", RAW_IMAGE, "RawImageRequest")],
    "anthropic": [
        Route("/v1/messages", "createMessage", MESSAGE, "MessagesRequest"),
        Route(
            "/v1/messages/count_tokens",
            "countMessageTokens",
            COUNT,
            "CountTokensRequest",
            errors=(400, 401, 403, 404, 413),
        ),
    ],
    "responses": [
        Route("/v1/responses", "createResponse", RESPONSE, "ResponsesRequest"),
        Route(
            "/v1/responses/{response_id}", "retrieveResponse", STORED_RESPONSE, errors=(401, 404)
        ),
        Route(
            "/v1/responses/{response_id}/input_items",
            "listInputItems",
            INPUT_ITEMS,
            errors=(400, 401, 404),
        ),
        Route(
            "/v1/responses/{response_id}",
            "deleteResponse",
            DELETED_RESPONSE,
            errors=(401, 404),
            method="delete",
        ),
    ],
    "gemini": [
        Route("/v1beta/models", "listGeminiModels", GEMINI_MODELS, errors=(401,)),
        Route("/v1beta/models/{model_id}", "getGeminiModel", GEMINI_MODEL, errors=(401, 404)),
        Route(
            "/v1beta/models/{model_id}:generateContent",
            "generateContent",
            GENERATED,
            "GenerateContentRequest",
        ),
        Route(
            "/v1beta/models/{model_id}:streamGenerateContent",
            "streamGenerateContent",
            GENERATED_STREAM,
            "GenerateContentRequest",
        ),
        Route(
            "/v1beta/models/{model_id}:countTokens",
            "countGeminiTokens",
            GEMINI_COUNT,
            "GeminiCountTokensRequest",
            errors=(400, 401, 403, 404, 413),
        ),
    ],
    "ops": [
        Route("/metrics", "getMetrics", METRICS, errors=(401, 429), security=[{}, *TOKEN_SECURITY]),
        Route("/admin/status", "getStatus", STATUS, errors=(401,)),
        Route("/admin/cache", "deleteCache", CACHE_DELETED, errors=(401,), method="delete"),
    ],
}
SUMMARIES = {
    "ping": "Go ai-proxy liveness: plain-text OK.",
    "getHealth": "Liveness.",
    "getReadiness": "Readiness: config, models and rate-limit storage.",
    "getVersion": "The proxy's name and version.",
    "getOpenAPI": "This document.",
    "listModels": "Every model, alias and category the token may use.",
    "retrieveModel": "One model, alias or category.",
    "createChatCompletion": (
        "OpenAI chat completion, streamed (`stream: true`) or not, from any provider."
    ),
    "createCompletion": "OpenAI legacy text completion.",
    "createEmbedding": "OpenAI embeddings.",
    "createImage": "OpenAI image generation (`url` or `b64_json`).",
    "createRawImage": "Go ai-proxy: an image for a prompt, as raw bytes with their real type.",
    "createMessage": "Anthropic Messages, streamed or not, from any provider.",
    "countMessageTokens": "Anthropic token count (an estimate where the provider has none).",
    "createResponse": "OpenAI Responses API, streamed or not, from any provider.",
    "retrieveResponse": "A stored response (only to the token that made it).",
    "deleteResponse": "Delete a stored response (only the token that made it may).",
    "listInputItems": "A stored response's input items, a page at a time (`after`, `limit`).",
    "listGeminiModels": "Every model the token may use, as Gemini lists them.",
    "getGeminiModel": "One model, as Gemini's Model resource.",
    "generateContent": "Gemini generateContent, from any provider.",
    "streamGenerateContent": "Gemini streamGenerateContent (`?alt=sse`, or a JSON array).",
    "countGeminiTokens": "Gemini token count (the provider's own, else an estimate).",
    "getMetrics": "Prometheus metrics; with `server.metrics_token` set, it is wanted as a token.",
    "getStatus": "Each deployment's state, quota left and requests in flight (`admin_token`).",
    "deleteCache": "Empty the response cache, or one model's entries (`?model=`; `admin_token`).",
}


def _operation(tag: str, route: Route) -> dict:
    surface = {"anthropic": ANTHROPIC, "gemini": GEMINI}.get(tag, OPENAI)
    # A routed call can fail every way section 6 of the contract lists.
    errors = route.errors or (ROUTED_ERRORS if route.body else ())
    operation = {
        "operationId": route.operation_id,
        "summary": SUMMARIES[route.operation_id],
        "tags": [tag],
        "responses": {**route.answers, **{str(s): f"{surface}{s}" for s in errors}},
    }
    operation["security"] = route.security
    if route.security is None:
        operation["security"] = [] if tag == "health" else TOKEN_SECURITY
    if route.body:
        operation["requestBody"] = {"required": True, "content": answers.json_content(route.body)}
    if "{model_id}" in route.path:
        operation["parameters"] = [MODEL_ID]
    if "{response_id}" in route.path:
        operation["parameters"] = [RESPONSE_ID]
        if route.operation_id == "listInputItems":
            operation["parameters"] = [RESPONSE_ID, *INPUT_ITEMS_QUERY]
    if tag == "gemini":
        operation["security"] = GEMINI_SECURITY
        if route.operation_id == "streamGenerateContent":
            operation["parameters"] = [MODEL_ID, ALT]
    return operation


def _paths() -> dict[str, dict]:
    """Every path the proxy serves; an unversioned twin runs the same view as its `/v1` path."""
    paths: dict[str, dict] = {}
    for tag, routes in ROUTES.items():
        for route in routes:
            method = route.method or ("post" if route.body else "get")
            paths.setdefault(route.path, {})[method] = _operation(tag, route)
    for twin, suffix in TWINS.items():
        ((method, operation),) = paths["/v1" + twin].items()
        paths[twin] = {method: {**operation, "operationId": operation["operationId"] + suffix}}
    for path in [p for p in paths if p.startswith("/v1beta/models/{model_id}:")]:
        # The google-genai SDK's default API version: the same views under /v1.
        ((method, operation),) = paths[path].items()
        twin = {**operation, "operationId": operation["operationId"] + "V1"}
        paths[path.replace("/v1beta/", "/v1/", 1)] = {method: twin}
    return paths


def _spec() -> APISpec:
    spec = APISpec(
        "ai-proxy",
        __version__,
        OPENAPI_VERSION,
        plugins=[MarshmallowPlugin()],
        info={"description": DESCRIPTION},
        security=TOKEN_SECURITY,
    )
    for name, description in TAGS.items():
        spec.tag({"name": name, "description": description})
    for name, scheme in SECURITY_SCHEMES.items():
        spec.components.security_scheme(name, scheme)
    for name, schema in REQUESTS.items():
        component = {"description": schema.__doc__} if schema.__doc__ else {}
        spec.components.schema(name, {**component, **EXTRA.get(name, {})}, schema=schema)
    for schema in answers.documented():
        # A nested answer is registered, under its class name too, with the first that holds it.
        if schema.__name__ not in spec.components.schemas:
            spec.components.schema(schema.__name__, schema=schema)
    spec.components.security_scheme(
        "key", {"type": "apiKey", "in": "query", "name": "key", "description": "Gemini's `?key=`."}
    )
    for surface in (OPENAI, ANTHROPIC, GEMINI):
        for status, response in answers.error_responses(surface).items():
            spec.components.response(f"{surface}{status}", response)
    for path, operations in _paths().items():
        spec.path(path, operations=operations)
    return spec


@functools.cache
def _document() -> dict:
    return _spec().to_dict()


def build_openapi(server_url: str = "/") -> dict:
    """The OpenAPI document; `server_url` is where the proxy is mounted (a path, no host)."""
    # Built once per process; each caller gets its own copy to change.
    return {**copy.deepcopy(_document()), "servers": [{"url": server_url or "/"}]}
