"""The generated `/openapi.json` says what the proxy enforces: request bodies as `app.schemas`
validates them, OpenAPI 3.1 nulls, and each surface's errors.

tests/test_fuzz.py sends generated requests to the real app; these tables pin, body by body, that
the document and the validation accept and refuse the same bodies.
"""

from __future__ import annotations

import jsonschema_rs
import pytest
from marshmallow import Schema

from app import schemas
from app.errors import InvalidRequestError
from app.openapi import REQUESTS, ROUTED_ERRORS, TOKEN_SECURITY, build_openapi
from app.schemas import MAX_EMBEDDING_INPUTS, MAX_MODEL_NAME, MAX_PROMPT_CHARS

DOCUMENT = build_openapi("/")
COMPONENTS = DOCUMENT["components"]


def documented_accepts(component: str, body: dict) -> bool:
    # The components at the root, so `#/components/schemas/...` references resolve.
    schema = {"$ref": f"#/components/schemas/{component}", "components": COMPONENTS}
    return jsonschema_rs.validator_for(schema).is_valid(body)


def validation_accepts(schema: Schema, body: dict) -> bool:
    try:
        schemas.validate_body(schema, body)
    except InvalidRequestError:
        return False
    return True


def raw_image_accepts(body: dict) -> bool:
    # /image also wants the description in `prompt` or `inputs`, as the view checks.
    return validation_accepts(schemas.GO_IMAGE, body) and bool(
        body.get("prompt") or body.get("inputs")
    )


USER = {"role": "user", "content": "hi"}
CHAT = {"messages": [USER]}
MESSAGE = {"model": "m", "max_tokens": 8, "messages": [USER]}
FUNCTION = {"type": "function", "function": {"name": "f"}}
# (component, body): bodies on both sides of each rule the validation enforces.
CASES = {
    "ChatCompletionRequest": [
        CHAT,
        {**CHAT, "model": None},
        {**CHAT, "model": ""},
        {**CHAT, "model": "m" * MAX_MODEL_NAME},
        {**CHAT, "model": "m" * (MAX_MODEL_NAME + 1)},
        {**CHAT, "model": 5},
        {},
        {"messages": []},
        {"messages": "hi"},
        {"messages": ["hi"]},
        {"messages": [{"content": "hi"}]},
        {"messages": [{"role": "robot", "content": "hi"}]},
        # Found by the long fuzz run: an unhashable role was a 500.
        {"messages": [{"role": {}, "content": "hi"}]},
        {"messages": [{"role": ["user"], "content": "hi"}]},
        {"messages": [{"role": "developer", "content": None, "name": "x"}]},
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]},
        {"messages": [{"role": "user", "content": ["hi"]}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [FUNCTION]}]},
        {"messages": [{"role": "assistant", "tool_calls": None}]},
        {"messages": [{"role": "assistant", "tool_calls": "ab"}]},
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {}}]}]},
        {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": 5}}]}]},
        {**CHAT, "stream": True},
        {**CHAT, "stream": None},
        {**CHAT, "stream": "false"},
        {**CHAT, "stream": 0},
        {**CHAT, "stream_options": {"include_usage": True, "other": 1}},
        {**CHAT, "stream_options": {"include_usage": "yes"}},
        {**CHAT, "stream_options": None},
        {**CHAT, "stream_options": "x"},
        {**CHAT, "tools": [FUNCTION]},
        {**CHAT, "tools": [{"function": {"name": "f"}}]},
        {**CHAT, "tools": [{"type": "web_search"}]},
        {**CHAT, "tools": [{"type": None}]},
        {**CHAT, "tools": [{}]},
        {**CHAT, "tools": [{"type": "function"}]},
        {**CHAT, "tools": [{"type": "function", "function": {"name": 5}}]},
        {**CHAT, "tools": ["f"]},
        {**CHAT, "tools": "f"},
        {**CHAT, "tools": None},
        {**CHAT, "tool_choice": "auto"},
        {**CHAT, "tool_choice": "required"},
        {**CHAT, "tool_choice": "any"},
        {**CHAT, "tool_choice": FUNCTION},
        {**CHAT, "tool_choice": {"type": "function"}},
        {**CHAT, "tool_choice": 5},
        {**CHAT, "tool_choice": None},
        {**CHAT, "max_tokens": 1},
        {**CHAT, "max_tokens": 0},
        {**CHAT, "max_tokens": 1.5},
        {**CHAT, "max_tokens": "8"},
        {**CHAT, "max_completion_tokens": 0},
        {**CHAT, "n": 128},
        {**CHAT, "n": 129},
        {**CHAT, "temperature": 2},
        {**CHAT, "temperature": 2.5},
        {**CHAT, "temperature": -0.1},
        {**CHAT, "temperature": True},
        {**CHAT, "temperature": "1"},
        {**CHAT, "top_p": 1},
        {**CHAT, "top_p": 1.5},
        {**CHAT, "unnamed": {"passes": "through"}},
    ],
    "MessagesRequest": [
        MESSAGE,
        {**MESSAGE, "model": None},
        {**MESSAGE, "model": ""},
        {key: value for key, value in MESSAGE.items() if key != "max_tokens"},
        {**MESSAGE, "max_tokens": 0},
        {**MESSAGE, "messages": []},
        {**MESSAGE, "messages": [{"role": "system", "content": "hi"}]},
        {**MESSAGE, "messages": [{"role": "user"}]},
        {**MESSAGE, "messages": [{"role": "user", "content": 5}]},
        {**MESSAGE, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}]}]},
        {**MESSAGE, "messages": [{"role": "user", "content": ["x"]}]},
        {**MESSAGE, "system": "be brief"},
        {**MESSAGE, "system": [{"type": "text", "text": "be brief"}]},
        {**MESSAGE, "system": [{"type": "image", "text": "x"}]},
        {**MESSAGE, "system": [{"type": "text"}]},
        {**MESSAGE, "system": 5},
        {**MESSAGE, "temperature": 1},
        {**MESSAGE, "temperature": 1.5},
        {**MESSAGE, "top_k": 0},
        {**MESSAGE, "top_k": -1},
        {**MESSAGE, "stop_sequences": ["\n"]},
        {**MESSAGE, "stop_sequences": [1]},
        {**MESSAGE, "tools": [{"name": "f", "input_schema": {}}]},
        {**MESSAGE, "tools": [{"name": ""}]},
        {**MESSAGE, "tools": [{}]},
        {**MESSAGE, "tools": "f"},
        {**MESSAGE, "tool_choice": {"type": "auto"}},
        {**MESSAGE, "tool_choice": {"type": "any", "name": 5}},
        {**MESSAGE, "tool_choice": {"type": "tool", "name": "f"}},
        {**MESSAGE, "tool_choice": {"type": "tool"}},
        {**MESSAGE, "tool_choice": {"type": "function"}},
        {**MESSAGE, "tool_choice": {}},
        {**MESSAGE, "tool_choice": "auto"},
        {**MESSAGE, "metadata": {"user_id": "u"}},
        {**MESSAGE, "metadata": "u"},
        {**MESSAGE, "stream": "true"},
    ],
    "CountTokensRequest": [
        {"model": "m", "messages": [USER]},
        {"model": "m", "messages": [USER], "max_tokens": None},
        {"model": "m", "messages": [USER], "max_tokens": 0},
        {"model": "m"},
    ],
    "CompletionRequest": [
        {"model": "m", "prompt": "hi"},
        {"model": "m", "prompt": ""},
        {"model": "m", "prompt": ["a", 1, [1, 2]]},
        {"model": "m", "prompt": []},
        {"model": "m", "prompt": [None]},
        {"model": "m", "prompt": [1.5]},
        {"model": "m", "prompt": [{}]},
        {"model": "m", "prompt": 5},
        {"prompt": "hi"},
        {"model": "m", "prompt": "hi", "stream": 1},
        {"model": "m", "prompt": "hi", "max_tokens": 0},
    ],
    "EmbeddingRequest": [
        {"model": "m", "input": "hi"},
        {"model": "m", "input": ""},
        {"model": "m", "input": ["a", ""]},
        {"model": "m", "input": [1, 2]},
        {"model": "m", "input": [[1], [2, 3]]},
        {"model": "m", "input": [[]]},
        {"model": "m", "input": []},
        {"model": "m", "input": ["a", 1]},
        {"model": "m", "input": [[1, "a"]]},
        {"model": "m", "input": [True]},
        {"model": "m", "input": [None]},
        {"model": "m", "input": ["a"] * MAX_EMBEDDING_INPUTS},
        {"model": "m", "input": ["a"] * (MAX_EMBEDDING_INPUTS + 1)},
        {"model": "m", "input": 5},
        {"model": "m", "input": "hi", "dimensions": 0},
        {"model": "m", "input": "hi", "encoding_format": "base64"},
        {"model": "m", "input": "hi", "encoding_format": "int8"},
        {"model": "m", "input": "hi", "encoding_format": None},
    ],
    "ImageRequest": [
        {"prompt": "a cat"},
        {"prompt": ""},
        {"prompt": "a" * MAX_PROMPT_CHARS},
        {"prompt": "a" * (MAX_PROMPT_CHARS + 1)},
        {"prompt": None},
        {"prompt": "a cat", "n": 10},
        {"prompt": "a cat", "n": 11},
        {"prompt": "a cat", "size": "1024x1024"},
        {"prompt": "a cat", "size": "x" * 33},
        {"prompt": "a cat", "response_format": "b64_json"},
        {"prompt": "a cat", "response_format": "png"},
        {"prompt": "a cat", "response_format": None},
        {"prompt": "a cat", "model": None},
    ],
    "RawImageRequest": [
        {"prompt": "a cat"},
        {"inputs": "a cat"},
        {"prompt": None, "inputs": "a cat"},
        {"prompt": None},
        {},
        {"prompt": ""},
        {"prompt": 5},
        {"inputs": "a cat", "model": "m" * (MAX_MODEL_NAME + 1)},
    ],
    "ResponsesRequest": [
        {"input": "hi"},
        {"input": "hi", "model": None},
        {"input": None},
        {"input": 5},
        {"input": [{"type": "message", "role": "user", "content": "hi"}]},
        {"input": ["hi"]},
        {"input": "hi", "stream": "true"},
        {"input": "hi", "store": False},
        {"input": "hi", "previous_response_id": ""},
        {"input": "hi", "previous_response_id": "resp_1"},
        {"input": "hi", "tools": [{"type": "function", "name": "f"}]},
        {"input": "hi", "tools": [{"type": "function"}]},
        {"input": "hi", "tools": [{"type": "function", "name": ""}]},
        {"input": "hi", "tools": [{"type": "web_search"}]},
        {"input": "hi", "tools": [{"name": "f"}]},
        {"input": "hi", "tool_choice": "auto"},
        {"input": "hi", "tool_choice": "any"},
        {"input": "hi", "tool_choice": {"type": "function", "name": "f"}},
        {"input": "hi", "tool_choice": {"type": "function"}},
        {"input": "hi", "tool_choice": {"type": "web_search_preview"}},
        {"input": "hi", "text": {"format": {"type": "json_object"}}},
        {"input": "hi", "text": {"format": {"type": "json_schema", "schema": {}}}},
        {"input": "hi", "text": {"format": {"type": "json_schema"}}},
        {"input": "hi", "text": {"format": {"type": "xml"}}},
        {"input": "hi", "text": {"verbosity": "low"}},
        {"input": "hi", "metadata": {"k": "v"}},
        {"input": "hi", "metadata": {"k": 5}},
        {"input": "hi", "metadata": {"k" * 65: "v"}},
        {"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}},
        {"input": "hi", "max_output_tokens": 0},
        {"input": "hi", "temperature": 2.5},
        {"input": "hi", "top_p": 0.5},
        {"input": "hi", "parallel_tool_calls": None},
        {"input": "hi", "instructions": 5},
        {"input": "hi", "reasoning": {"effort": "low"}},
    ],
}
GEN = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
CALL = {"functionCall": {"name": "f", "args": {"a": 1}}}
ANSWERED = {"functionResponse": {"name": "f", "response": {"r": 1}}}
CASES["GenerateContentRequest"] = [
    GEN,
    {"contents": [{"parts": [{"text": "hi"}]}]},
    {},
    {"contents": []},
    {"contents": "hi"},
    {"contents": [{"role": "system", "parts": [{"text": "hi"}]}]},
    {"contents": [{"role": "user", "parts": []}]},
    {"contents": [{"role": "user"}]},
    {"contents": [{"role": "user", "parts": [{}]}]},
    {"contents": [{"role": "user", "parts": ["hi"]}]},
    {"contents": [{"role": "user", "parts": [{"text": 5}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "a", "inlineData": {}}]}]},
    {"contents": [{"role": "user", "parts": [{"video": "x"}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "a", "thought": True}]}]},
    {"contents": [{"role": "user", "parts": [{"text": "a", "thought": "yes"}]}]},
    {"contents": [{"role": "model", "parts": [CALL]}]},
    {"contents": [{"role": "model", "parts": [{"functionCall": {"args": {}}}]}]},
    {"contents": [{"role": "model", "parts": [{"functionCall": {"name": "f", "args": []}}]}]},
    {"contents": [{"role": "user", "parts": [ANSWERED]}]},
    {"contents": [{"role": "user", "parts": [{"functionResponse": {"name": "f"}}]}]},
    {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}]},
    {"contents": [{"parts": [{"inlineData": {"mimeType": "image/png"}}]}]},
    {**GEN, "systemInstruction": {"parts": [{"text": "be brief"}]}},
    {**GEN, "systemInstruction": {"parts": []}},
    {**GEN, "systemInstruction": "be brief"},
    {**GEN, "generationConfig": {"temperature": 2, "topP": 1, "topK": 40}},
    {**GEN, "generationConfig": {"temperature": 2.5}},
    {**GEN, "generationConfig": {"temperature": "1"}},
    {**GEN, "generationConfig": {"topP": 1.5}},
    {**GEN, "generationConfig": {"topK": 0}},
    {**GEN, "generationConfig": {"maxOutputTokens": 1}},
    {**GEN, "generationConfig": {"maxOutputTokens": 0}},
    {**GEN, "generationConfig": {"maxOutputTokens": 1.5}},
    {**GEN, "generationConfig": {"candidateCount": 9}},
    {**GEN, "generationConfig": {"stopSequences": ["x"]}},
    {**GEN, "generationConfig": {"stopSequences": [1]}},
    {**GEN, "generationConfig": {"responseMimeType": "application/json"}},
    {**GEN, "generationConfig": {"responseSchema": "x"}},
    {**GEN, "generationConfig": "x"},
    {**GEN, "tools": [{"functionDeclarations": [{"name": "get_weather"}]}]},
    {**GEN, "tools": [{"functionDeclarations": [{"name": "1bad"}]}]},
    {**GEN, "tools": [{"functionDeclarations": [{"name": "a b"}]}]},
    {**GEN, "tools": [{"functionDeclarations": [{}]}]},
    {**GEN, "tools": [{"googleSearch": {}}]},
    {**GEN, "tools": {"functionDeclarations": []}},
    {**GEN, "toolConfig": {"functionCallingConfig": {"mode": "ANY"}}},
    {**GEN, "toolConfig": {"functionCallingConfig": {"mode": "SOMETIMES"}}},
    {**GEN, "toolConfig": {"functionCallingConfig": {"allowedFunctionNames": ["f"]}}},
    {**GEN, "toolConfig": {"functionCallingConfig": {"allowedFunctionNames": "f"}}},
    {**GEN, "unnamed": {"passes": "through"}},
]
CASES["GeminiCountTokensRequest"] = [
    GEN,
    {"generateContentRequest": {**GEN, "model": "models/m"}},
    {},
    {**GEN, "generateContentRequest": GEN},
    {"generateContentRequest": {}},
    {"contents": []},
]
VALIDATES = {name: REQUESTS[name]() for name in CASES}


@pytest.mark.parametrize(
    ("component", "body"),
    [(name, body) for name, bodies in CASES.items() for body in bodies],
    ids=[f"{name}-{i}" for name, bodies in CASES.items() for i in range(len(bodies))],
)
def test_the_document_accepts_a_body_exactly_when_the_validation_does(component, body):
    if component == "RawImageRequest":
        expected = raw_image_accepts(body)
    else:
        expected = validation_accepts(VALIDATES[component], body)
    assert documented_accepts(component, body) == expected


def test_both_sides_of_each_case_are_covered():
    # A table whose bodies were all accepted (or all refused) would pin nothing.
    for name, bodies in CASES.items():
        accepted = {documented_accepts(name, body) for body in bodies}
        assert accepted == {True, False}, name


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def test_nulls_are_written_the_openapi_31_way():
    # 3.0's `nullable: true` means nothing in 3.1: a null must be a type of its own.
    assert not [node for node in walk(DOCUMENT) if isinstance(node, dict) and "nullable" in node]
    assert not [node for node in walk(DOCUMENT) if isinstance(node, dict) and "x-nullable" in node]
    for name, schema in REQUESTS.items():
        properties = COMPONENTS["schemas"][name]["properties"]
        for field_name, field in schema().fields.items():
            if field.allow_none:
                rendered = properties[field_name]
                kinds = rendered.get("type", [])
                assert "null" in kinds or {"type": "null"} in rendered.get("anyOf", []), (
                    name,
                    field_name,
                    rendered,
                )


def test_request_bodies_let_unnamed_fields_through():
    for name in REQUESTS:
        assert COMPONENTS["schemas"][name]["additionalProperties"] is True, name


def operations():
    for path, item in DOCUMENT["paths"].items():
        for method, operation in item.items():
            yield path, method, operation


def test_each_surface_documents_its_own_error_shape():
    for path, _method, operation in operations():
        surface = "Anthropic" if path.startswith("/v1/messages") else "OpenAI"
        if path.startswith("/v1beta/") or path.endswith(("Content", ":countTokens")):
            surface = "Gemini"
        for status, response in operation["responses"].items():
            reference = response.get("$ref", "")
            if reference:
                assert reference == f"#/components/responses/{surface}{status}", (path, status)
        if "requestBody" in operation and not path.endswith(("count_tokens", ":countTokens")):
            # A routed call: every failure section 6 of the contract lists.
            assert {str(s) for s in ROUTED_ERRORS} <= set(operation["responses"]), path
    responses = COMPONENTS["responses"]
    for surface in ("OpenAI", "Anthropic", "Gemini"):
        assert responses[f"{surface}401"]["headers"]["WWW-Authenticate"]["required"] is True
        for status in (429, 503):
            assert "Retry-After" in responses[f"{surface}{status}"]["headers"]
        for status in ROUTED_ERRORS:
            schema = responses[f"{surface}{status}"]["content"]["application/json"]["schema"]
            assert schema == {"$ref": f"#/components/schemas/{surface}Error"}


def test_every_token_header_is_a_security_scheme():
    schemes = COMPONENTS["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "`Authorization: Bearer <token>` (OpenAI SDKs).",
    }
    for header in ("x-api-key", "api-key", "x-goog-api-key"):
        assert schemes[header]["type"] == "apiKey"
        assert (schemes[header]["in"], schemes[header]["name"]) == ("header", header)
    assert DOCUMENT["security"] == TOKEN_SECURITY
    open_paths = {p for p, _m, op in operations() if op["security"] == []}
    assert open_paths == {"/ping", "/healthz", "/readyz", "/version", "/openapi.json"}


def test_each_call_gets_its_own_copy_of_the_document():
    first = build_openapi("/a")
    first["paths"].clear()
    first["components"]["schemas"]["ChatCompletionRequest"]["properties"].clear()
    second = build_openapi("/b")
    assert second["servers"] == [{"url": "/b"}]
    assert second["paths"] == DOCUMENT["paths"]
    assert second["components"] == COMPONENTS
