"""The Gemini adapter: what goes upstream to generateContent, and how Gemini's answers come back."""

from __future__ import annotations

import json

import openai
import pytest
import responses
from responses import matchers

from app.providers.google import SKIP_SIGNATURE, api_root
from tests.conftest import TOKEN
from tests.stub_upstream import Reply

UPSTREAM = "https://gemini.example.test/v1beta"
KEY = "AIzaSyUpstreamSecretKey0123456789"
GENERATE = f"{UPSTREAM}/models/gemini-2.5-flash:generateContent"
CHAT = {"model": "gemini-test", "messages": [{"role": "user", "content": "hello"}]}
USAGE = {"promptTokenCount": 4, "candidatesTokenCount": 3, "totalTokenCount": 7}


def answer(parts: list[dict], finish: str | None = "STOP", **extra) -> dict:
    """A GenerateContentResponse with one candidate."""
    candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {
        "candidates": [candidate],
        "usageMetadata": USAGE,
        "modelVersion": "gemini-2.5-flash",
        "responseId": "resp-1",
        **extra,
    }


def sent(call_index: int = 0) -> dict:
    return json.loads(responses.calls[call_index].request.body)


@pytest.fixture
def client(provider_client):
    return provider_client(
        [
            {
                "name": "gemini-test",
                "provider": "google",
                "base_url": UPSTREAM,
                "token": KEY,
                "model": "gemini-2.5-flash",
                "headers": {"X-Title": "my-app"},
            },
            {"name": "gemini/gemini-2.0-flash", "provider": "gemini", "token": KEY},
            {
                "name": "gemini-1.5-flash",
                "provider": "google",
                "url": "https://go.example.test/v1beta/models",
                "token": KEY,
            },
            {
                "name": "gemini-compat-root",
                "provider": "google",
                "base_url": "https://compat.example.test/v1beta/openai/",
                "token": KEY,
                "model": "models/gemini-2.5-pro",
            },
            {
                "name": "gemini-fb",
                "provider": "google",
                "base_url": UPSTREAM,
                "token": KEY,
                "model": "first",
                "priority": 1,
            },
            {
                "name": "gemini-fb",
                "provider": "google",
                "base_url": UPSTREAM,
                "token": KEY,
                "model": "second",
                "priority": 2,
            },
        ]
    )


# --- requests and answers -------------------------------------------------------------------


@responses.activate(assert_all_requests_are_fired=True)
def test_plain_text(client):
    responses.post(
        GENERATE,
        json=answer([{"text": "hi "}, {"text": "there"}]),
        match=[
            matchers.header_matcher(
                {
                    "x-goog-api-key": KEY,
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-7",
                    "X-Title": "my-app",
                }
            ),
            matchers.json_params_matcher(
                {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}
            ),
        ],
    )
    response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "req-7"})
    assert response.status_code == 200
    body = response.json
    assert body["object"] == "chat.completion"
    assert body["id"] == "chatcmpl-resp-1"
    assert body["model"] == "gemini-2.5-flash"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hi there"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    request = responses.calls[0].request
    # The key travels only in its header: not in the URL, not as a bearer token.
    assert request.url == GENERATE
    assert "Authorization" not in request.headers
    assert TOKEN not in json.dumps(dict(request.headers))


@responses.activate(assert_all_requests_are_fired=True)
def test_system_prompt_and_generation_config(client):
    responses.post(GENERATE, json=answer([{"text": "{}"}]))
    client.post(
        "/v1/chat/completions",
        json={
            "model": "gemini-test",
            "messages": [
                {"role": "system", "content": "Be terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in JSON."}]},
                {"role": "user", "content": "hello"},
            ],
            "temperature": 0.2,
            "top_p": 0.9,
            "max_tokens": 50,
            "stop": "END",
            "n": 1,
            "presence_penalty": 0.5,
            "seed": 7,
            "response_format": {"type": "json_object"},
            # Nothing in Gemini takes these: they are dropped.
            "logit_bias": {"1": 2},
            "user": "u-1",
            "parallel_tool_calls": True,
        },
    )
    assert sent() == {
        "systemInstruction": {"parts": [{"text": "Be terse."}, {"text": "Answer in JSON."}]},
        "contents": [{"role": "user", "parts": [{"text": "hello"}]}],
        "generationConfig": {
            "temperature": 0.2,
            "topP": 0.9,
            "maxOutputTokens": 50,
            "stopSequences": ["END"],
            "candidateCount": 1,
            "presencePenalty": 0.5,
            "seed": 7,
            "responseMimeType": "application/json",
        },
    }


@responses.activate
def test_json_schema_and_max_completion_tokens(client):
    responses.post(GENERATE, json=answer([{"text": '{"a": 1}'}]))
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "additionalProperties": False,
    }
    client.post(
        "/v1/chat/completions",
        json={
            **CHAT,
            "max_completion_tokens": 20,
            "max_tokens": 99,
            "stop": ["x", "y"],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "thing", "schema": schema, "strict": True},
            },
        },
    )
    assert sent()["generationConfig"] == {
        "maxOutputTokens": 20,
        "stopSequences": ["x", "y"],
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }


@responses.activate
def test_multi_turn_history_with_images(client):
    responses.post(GENERATE, json=answer([{"text": "a cat"}]))
    client.post(
        "/v1/chat/completions",
        json={
            "model": "gemini-test",
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "hello!"},
                {"role": "user", "content": "look at these"},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is it?"},
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                        {"type": "image_url", "image_url": {"url": "https://img.test/cat.webp"}},
                        {"type": "image_url", "image_url": {"url": "https://img.test/photo"}},
                    ],
                },
            ],
        },
    )
    assert sent()["contents"] == [
        {"role": "user", "parts": [{"text": "hi"}]},
        {"role": "model", "parts": [{"text": "hello!"}]},
        {
            "role": "user",
            "parts": [
                {"text": "look at these"},
                {"text": "what is it?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBOR"}},
                {"fileData": {"mimeType": "image/webp", "fileUri": "https://img.test/cat.webp"}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://img.test/photo"}},
            ],
        },
    ]


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


@responses.activate
def test_tools_and_the_model_calling_them(client):
    responses.post(
        GENERATE,
        json=answer(
            [
                {"text": "Checking."},
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "sig-1",
                },
                {"functionCall": {"id": "fc-2", "name": "get_weather", "args": {"city": "Rome"}}},
            ]
        ),
    )
    response = client.post(
        "/v1/chat/completions",
        json={
            **CHAT,
            "tools": [WEATHER_TOOL, {"type": "web_search"}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        },
    )
    body = sent()
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": WEATHER_TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    assert body["toolConfig"] == {
        "functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}
    }
    choice = response.json["choices"][0]
    # Gemini says STOP after calling functions; OpenAI clients expect tool_calls.
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Checking."
    first, second = message["tool_calls"]
    assert first["id"].startswith("call_") and first["type"] == "function"
    assert first["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert first["extra_content"] == {"google": {"thought_signature": "sig-1"}}
    assert second["id"] == "fc-2"
    assert json.loads(second["function"]["arguments"]) == {"city": "Rome"}
    assert "extra_content" not in second


@pytest.mark.parametrize(
    ("tool_choice", "mode"), [("auto", "AUTO"), ("required", "ANY"), ("none", "NONE")]
)
@responses.activate
def test_tool_choice_modes(client, tool_choice, mode):
    responses.post(GENERATE, json=answer([{"text": "ok"}]))
    client.post(
        "/v1/chat/completions", json={**CHAT, "tools": [WEATHER_TOOL], "tool_choice": tool_choice}
    )
    assert sent()["toolConfig"] == {"functionCallingConfig": {"mode": mode}}


@responses.activate
def test_tool_results_in_history(client):
    responses.post(GENERATE, json=answer([{"text": "Sunny in Paris, rain in Rome."}]))
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gemini-test",
            "tools": [WEATHER_TOOL],
            "messages": [
                {"role": "user", "content": "weather?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                            "extra_content": {"google": {"thought_signature": "sig-a"}},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"city":"Rome"}'},
                        },
                    ],
                },
                {"role": "tool", "tool_call_id": "call_a", "content": '{"temp": 21}'},
                {"role": "tool", "tool_call_id": "call_b", "content": "rain"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "id": "call_c",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "call_c", "content": "[1, 2]"},
            ],
        },
    )
    assert response.status_code == 200
    assert sent()["contents"] == [
        {"role": "user", "parts": [{"text": "weather?"}]},
        {
            "role": "model",
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {"city": "Paris"}},
                    "thoughtSignature": "sig-a",
                },
                {"functionCall": {"name": "lookup", "args": {"city": "Rome"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "lookup", "response": {"content": "rain"}}},
            ],
        },
        {
            "role": "model",
            # A step replayed without its signature gets the documented stand-in, not a 400.
            "parts": [
                {
                    "functionCall": {"name": "get_weather", "args": {}},
                    "thoughtSignature": SKIP_SIGNATURE,
                }
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"content": "[1, 2]"}}}
            ],
        },
    ]


@responses.activate
def test_tool_arguments_that_are_not_an_object_are_a_400(client):
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "gemini-test",
            "messages": [
                {"role": "user", "content": "x"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{"}}
                    ],
                },
            ],
        },
    )
    assert response.status_code == 400
    assert response.json["error"]["param"] == "messages[1].tool_calls[0].function.arguments"
    assert len(responses.calls) == 0


@pytest.mark.parametrize(
    ("gemini", "openai_reason"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        # Answers that did not end well: never a complete `stop` (nor stored by the cache).
        ("OTHER", "other"),
        ("MALFORMED_FUNCTION_CALL", "malformed_function_call"),
        ("UNEXPECTED_TOOL_CALL", "unexpected_tool_call"),
        ("SOMETHING_NEW", "other"),  # a reason this version does not know
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        ("", "stop"),
        (None, "stop"),
    ],
)
@responses.activate
def test_finish_reasons(client, gemini, openai_reason):
    responses.post(GENERATE, json=answer([{"text": "partial"}], finish=gemini))
    choice = client.post("/v1/chat/completions", json=CHAT).json["choices"][0]
    assert choice["finish_reason"] == openai_reason


@pytest.mark.parametrize(
    ("path", "body", "ended_badly"),
    [
        ("/v1/chat/completions", CHAT, lambda a: a["choices"][0]["finish_reason"] != "stop"),
        (
            "/v1/messages",
            {**CHAT, "max_tokens": 50},
            lambda a: a["stop_reason"] == "malformed_function_call",
        ),
        (
            "/v1/responses",
            {"model": "gemini-test", "input": "hello", "store": False},
            lambda a: a["status"] == "incomplete",
        ),
    ],
)
@responses.activate
def test_a_failed_gemini_answer_is_never_cached_as_complete(
    provider_client, path, body, ended_badly
):
    """MALFORMED_FUNCTION_CALL is a failed answer: passed on as such on every surface, and
    not stored (an identical request reaches the upstream again, where a retry may succeed)."""
    responses.post(GENERATE, json=answer([{"text": ""}], finish="MALFORMED_FUNCTION_CALL"))
    model = {
        "name": "gemini-test",
        "provider": "google",
        "base_url": UPSTREAM,
        "token": KEY,
        "model": "gemini-2.5-flash",
    }
    client = provider_client([model], cache={"enabled": True})
    first = client.post(path, json=body)
    assert first.status_code == 200, first.get_data(as_text=True)
    assert ended_badly(first.json), first.json
    second = client.post(path, json=body)
    assert second.headers["x-ai-proxy-cache"] == "miss"
    assert len(responses.calls) == 2


@responses.activate
def test_blocked_prompt_is_an_empty_filtered_answer(client):
    responses.post(
        GENERATE,
        json={
            "promptFeedback": {"blockReason": "SAFETY"},
            "usageMetadata": {"promptTokenCount": 5, "totalTokenCount": 5},
        },
    )
    body = client.post("/v1/chat/completions", json=CHAT).json
    assert body["choices"][0]["message"] == {"role": "assistant", "content": ""}
    assert body["choices"][0]["finish_reason"] == "content_filter"
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 0, "total_tokens": 5}


@responses.activate
def test_thoughts_are_not_answer_text_but_count_as_completion(client):
    responses.post(
        GENERATE,
        json={
            **answer([{"text": "pondering...", "thought": True}, {"text": "42"}]),
            "usageMetadata": {
                "promptTokenCount": 10,
                "cachedContentTokenCount": 4,
                "candidatesTokenCount": 2,
                "thoughtsTokenCount": 30,
                "totalTokenCount": 42,
            },
        },
    )
    body = client.post("/v1/chat/completions", json=CHAT).json
    assert body["choices"][0]["message"]["content"] == "42"
    assert body["usage"] == {
        "prompt_tokens": 10,
        "completion_tokens": 32,
        "total_tokens": 42,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 30},
    }


@pytest.mark.parametrize(
    ("model", "url"),
    [
        (
            "gemini/gemini-2.0-flash",
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:generateContent",
        ),
        (
            "gemini-1.5-flash",
            "https://go.example.test/v1beta/models/gemini-1.5-flash:generateContent",
        ),
        (
            "gemini-compat-root",
            "https://compat.example.test/v1beta/models/gemini-2.5-pro:generateContent",
        ),
    ],
)
@responses.activate(assert_all_requests_are_fired=True)
def test_default_and_go_style_urls(client, model, url):
    responses.post(
        url, json=answer([{"text": "ok"}]), match=[matchers.header_matcher({"x-goog-api-key": KEY})]
    )
    assert client.post("/v1/chat/completions", json={**CHAT, "model": model}).status_code == 200


@pytest.mark.parametrize(
    ("configured", "root"),
    [
        ("https://h.test/v1beta", "https://h.test/v1beta"),
        ("https://h.test/v1beta/", "https://h.test/v1beta"),
        ("https://h.test/v1beta/openai/", "https://h.test/v1beta"),
        ("https://h.test/v1beta/openai/chat/completions", "https://h.test/v1beta"),
        ("https://h.test/v1beta/models", "https://h.test/v1beta"),
        ("https://h.test/v1/models/gemini-pro:generateContent?key=x", "https://h.test/v1"),
    ],
)
def test_api_root(configured, root):
    assert api_root(configured) == root


# --- errors -----------------------------------------------------------------------------------


def google_error(code: int, message: str, status: str, wrapped: bool = False) -> object:
    body = {"error": {"code": code, "message": message, "status": status}}
    return [body] if wrapped else body


@pytest.mark.parametrize(
    ("upstream_status", "upstream_body", "status", "message"),
    [
        (
            400,
            google_error(
                400, "Invalid value at 'generation_config.temperature'", "INVALID_ARGUMENT", True
            ),
            400,
            "Invalid value at 'generation_config.temperature'",
        ),
        (
            404,
            google_error(404, "models/nope is not found for API version v1beta", "NOT_FOUND"),
            404,
            "models/nope is not found for API version v1beta",
        ),
        (429, google_error(429, "Resource has been exhausted", "RESOURCE_EXHAUSTED"), 502, None),
        (500, google_error(500, "Internal error encountered.", "INTERNAL"), 502, None),
        (503, google_error(503, "The model is overloaded.", "UNAVAILABLE"), 502, None),
        (401, google_error(401, "Request had invalid credentials", "UNAUTHENTICATED"), 502, None),
        (403, google_error(403, f"Permission denied on key {KEY}", "PERMISSION_DENIED"), 502, None),
        # Gemini answers a bad key with 400: it is still the proxy's key, not the client's request.
        (
            400,
            google_error(
                400, "API key not valid. Please pass a valid API key.", "INVALID_ARGUMENT", True
            ),
            502,
            None,
        ),
    ],
)
@responses.activate
def test_upstream_errors_map(client, upstream_status, upstream_body, status, message):
    responses.post(GENERATE, json=upstream_body, status=upstream_status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.json["error"]
    if message:
        assert error["message"] == message
        assert error["type"] == "invalid_request_error"
    else:
        assert error["code"] == "upstream_error"
    text = response.get_data(as_text=True)
    for secret in (KEY, "gemini.example.test"):
        assert secret not in text


@pytest.mark.parametrize("status", [429, 500, 503])
@responses.activate
def test_retryable_failure_falls_back_to_the_next_deployment(client, status):
    responses.post(
        f"{UPSTREAM}/models/first:generateContent",
        json=google_error(status, "busy", "UNAVAILABLE"),
        status=status,
    )
    responses.post(f"{UPSTREAM}/models/second:generateContent", json=answer([{"text": "backup"}]))
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "gemini-fb"})
    assert response.status_code == 200
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert response.json["choices"][0]["message"]["content"] == "backup"


@responses.activate
def test_bad_key_falls_back_too(client):
    responses.post(
        f"{UPSTREAM}/models/first:generateContent",
        json=google_error(400, "API key expired. Please renew the API key.", "INVALID_ARGUMENT"),
        status=400,
    )
    responses.post(f"{UPSTREAM}/models/second:generateContent", json=answer([{"text": "backup"}]))
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "gemini-fb"})
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "backup"


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"{}", b'{"candidates": []}'])
@responses.activate
def test_garbage_from_upstream_is_502(client, body):
    responses.post(GENERATE, body=body, status=200)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "upstream_error"


# --- streaming ------------------------------------------------------------------------------


def sse(payload: object) -> str:
    return "data: " + json.dumps(payload)


def stream_events(response) -> list[str]:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


def stream_chunk(parts: list[dict], finish: str | None = None, usage: dict | None = None) -> str:
    payload = answer(parts, finish=finish)
    if usage is None:
        payload.pop("usageMetadata")
    else:
        payload["usageMetadata"] = usage
    return sse(payload)


@pytest.fixture
def stream_client(provider_client, upstream):
    def model(name: str, upstream_model: str, priority: int = 0) -> dict:
        return {
            "name": name,
            "provider": "gemini",
            "base_url": upstream.url + "/v1beta",
            "token": KEY,
            "model": upstream_model,
            "priority": priority,
        }

    return provider_client(
        [
            model("gemini-test", "gemini-2.5-flash"),
            model("gemini-fb", "first", 1),
            model("gemini-fb", "second", 2),
        ]
    )


STREAM = {**CHAT, "stream": True}


def test_stream_text_and_usage(stream_client, upstream):
    upstream.queue(
        Reply(
            events=[
                stream_chunk([{"text": "Hel"}], usage={"promptTokenCount": 4}),
                stream_chunk([{"text": "thinking", "thought": True}, {"text": "lo"}]),
                stream_chunk([{"text": " world", "thoughtSignature": "abc"}], "STOP", USAGE),
            ]
        )
    )
    body = {**STREAM, "stream_options": {"include_usage": True}}
    data = stream_events(stream_client.post("/v1/chat/completions", json=body))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {"content": " world"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * 4 + ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
    assert {c["id"] for c in chunks} == {"chatcmpl-resp-1"}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)

    request = upstream.requests[0]
    assert request.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    headers = {k.lower(): v for k, v in request.headers.items()}
    assert headers["x-goog-api-key"] == KEY
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers
    assert request.json() == {"contents": [{"role": "user", "parts": [{"text": "hello"}]}]}


def test_stream_without_include_usage_has_no_usage_chunk(stream_client, upstream):
    upstream.queue(Reply(events=[stream_chunk([{"text": "hi"}], "STOP", USAGE)]))
    data = stream_events(stream_client.post("/v1/chat/completions", json=STREAM))
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_tool_calls(stream_client, upstream):
    call_a = {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}
    call_b = {"functionCall": {"name": "get_weather", "args": {"city": "Rome", "days": [1, 2]}}}
    upstream.queue(
        Reply(
            events=[
                stream_chunk([{"text": "Let me check."}]),
                stream_chunk([{**call_a, "thoughtSignature": "sig-1"}]),
                stream_chunk([call_b], "STOP", USAGE),
            ]
        )
    )
    body = {**STREAM, "tools": [WEATHER_TOOL]}
    data = stream_events(stream_client.post("/v1/chat/completions", json=body))
    chunks = [json.loads(d) for d in data[:-1]]
    deltas = [c["choices"][0]["delta"] for c in chunks]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert [c["index"] for c in calls] == [0, 1]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert calls[0]["id"] != calls[1]["id"]
    # Gemini sends each call whole, so each delta holds the full arguments string.
    assert calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert json.loads(calls[1]["function"]["arguments"]) == {"city": "Rome", "days": [1, 2]}
    assert calls[0]["extra_content"] == {"google": {"thought_signature": "sig-1"}}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    assert upstream.requests[0].json()["tools"][0]["functionDeclarations"][0]["name"] == (
        "get_weather"
    )


@pytest.mark.parametrize("wrapped", [False, True])
def test_stream_error_event_mid_stream(stream_client, upstream, wrapped):
    error = google_error(500, f"Internal error encountered. key={KEY}", "INTERNAL", wrapped)
    upstream.queue(Reply(events=[stream_chunk([{"text": "partial"}]), sse(error)]))
    data = stream_events(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    assert json.loads(data[1])["choices"][0]["delta"] == {"content": "partial"}
    error = json.loads(data[-1])["error"]
    assert error["code"] == "upstream_error"
    assert "Internal error encountered." in error["message"]
    assert KEY not in data[-1]


@pytest.mark.parametrize(
    "events",
    [
        [stream_chunk([{"text": "ok"}]), "data: {not json"],
        # Ended cleanly but without a finish reason: the answer was cut short.
        [stream_chunk([{"text": "ok"}])],
    ],
)
def test_broken_stream_ends_with_an_in_band_error(stream_client, upstream, events):
    upstream.queue(Reply(events=events))
    data = stream_events(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    assert json.loads(data[-1])["error"]["type"] == "upstream_error"


def test_stream_blocked_prompt(stream_client, upstream):
    upstream.queue(Reply(events=[sse({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}})]))
    data = stream_events(stream_client.post("/v1/chat/completions", json=STREAM))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_stream_failure_before_the_first_byte_falls_back(stream_client, upstream):
    upstream.queue(
        Reply(status=429, body=google_error(429, "quota", "RESOURCE_EXHAUSTED")),
        Reply(events=[stream_chunk([{"text": "from backup"}], "STOP", USAGE)]),
    )
    response = stream_client.post("/v1/chat/completions", json={**STREAM, "model": "gemini-fb"})
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert "from backup" in response.get_data(as_text=True)
    assert upstream.requests[1].path == "/v1beta/models/second:streamGenerateContent?alt=sse"


# --- the real proxy, the official SDK -------------------------------------------------------


def test_integration_through_gunicorn_with_the_openai_sdk(proxy_factory, upstream):
    proxy = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team-a", "token": TOKEN}]},
            "models": [
                {
                    "name": "gemini-live",
                    "provider": "google",
                    "base_url": upstream.url + "/v1beta",
                    "token": KEY,
                    "model": "gemini-2.5-flash",
                }
            ],
            "retry": {"max_retries": 0},
        }
    )
    sdk = openai.OpenAI(
        base_url=proxy.url + "/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=20,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    with sdk:
        upstream.queue(Reply(body=answer([{"text": "Hello from Gemini"}])))
        completion = sdk.chat.completions.create(
            model="gemini-live",
            messages=[{"role": "system", "content": "Be nice."}, {"role": "user", "content": "hi"}],
        )
        assert completion.choices[0].message.content == "Hello from Gemini"
        assert completion.choices[0].finish_reason == "stop"
        assert completion.usage.total_tokens == 7

        upstream.queue(
            Reply(
                body=answer([{"functionCall": {"name": "get_weather", "args": {"city": "Oslo"}}}])
            )
        )
        called = sdk.chat.completions.create(
            model="gemini-live",
            messages=[{"role": "user", "content": "weather in Oslo?"}],
            tools=[WEATHER_TOOL],
        )
        assert called.choices[0].finish_reason == "tool_calls"
        tool_call = called.choices[0].message.tool_calls[0]
        assert json.loads(tool_call.function.arguments) == {"city": "Oslo"}

        upstream.queue(
            Reply(
                events=[
                    stream_chunk([{"text": "Str"}]),
                    stream_chunk([{"text": "eamed"}], "STOP", USAGE),
                ]
            )
        )
        chunks = list(
            sdk.chat.completions.create(
                model="gemini-live",
                messages=[{"role": "user", "content": "stream please"}],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Streamed"
        assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3

        upstream.queue(Reply(status=400, body=google_error(400, "Bad temp", "INVALID_ARGUMENT")))
        with pytest.raises(openai.BadRequestError) as caught:
            sdk.chat.completions.create(
                model="gemini-live", messages=[{"role": "user", "content": "x"}]
            )
        assert caught.value.body["message"] == "Bad temp"

    paths = [r.path for r in upstream.requests]
    assert paths == [
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:generateContent",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        "/v1beta/models/gemini-2.5-flash:generateContent",
    ]
    first = upstream.requests[0]
    assert {k.lower(): v for k, v in first.headers.items()}["x-goog-api-key"] == KEY
    assert first.json()["systemInstruction"] == {"parts": [{"text": "Be nice."}]}
    assert KEY not in proxy.logs()
