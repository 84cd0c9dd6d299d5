"""The native Anthropic adapter: what goes to /v1/messages, how answers and streams come back."""

from __future__ import annotations

import functools
import json

import openai
import pytest
import responses
from responses import matchers

from tests.conftest import TOKEN
from tests.stub_upstream import Reply

UPSTREAM = "https://anthropic.example.test/v1"
MESSAGES = f"{UPSTREAM}/messages"
KEY = "sk-ant-upstream-secret-key"
CHAT = {"model": "claude", "messages": [{"role": "user", "content": "hello"}]}
USAGE = {"input_tokens": 12, "output_tokens": 5}


def message(content: list[dict], stop_reason: str = "end_turn", usage: dict | None = None):
    """An Anthropic Message as the API answers it."""
    return {
        "id": "msg_01XYZ",
        "type": "message",
        "role": "assistant",
        "model": "claude-up-1",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage or USAGE,
    }


def text(value: str) -> dict:
    return {"type": "text", "text": value}


def anthropic_model(base_url: str, name: str = "claude", **extra) -> dict:
    return {
        "name": name,
        "provider": "anthropic",
        "base_url": base_url,
        "token": KEY,
        "model": "claude-up-1",
        **extra,
    }


@pytest.fixture
def make_client(provider_client):
    """Provider clients whose failed deployments are tried again at once (no cooldown)."""
    return functools.partial(provider_client, routing={"cooldown_seconds": 0})


@pytest.fixture
def client(make_client):
    return make_client(
        [
            anthropic_model(UPSTREAM, headers={"anthropic-beta": "test-beta"}),
            {"name": "claude-default", "provider": "anthropic", "token": KEY},
            {
                "name": "claude-go",
                "provider": "anthropic",
                "url": "https://gw.example.test/anthropic/v1/messages",
                "token": KEY,
            },
        ],
    )


def sent_body(call: int = 0) -> dict:
    return json.loads(responses.calls[call].request.body)


# --- requests and answers -------------------------------------------------------------------


@responses.activate(assert_all_requests_are_fired=True)
def test_plain_text_request_and_answer(client):
    responses.post(
        MESSAGES,
        json=message([text("Hi "), text("there")]),
        match=[
            matchers.header_matcher(
                {
                    "x-api-key": KEY,
                    "anthropic-version": "2023-06-01",
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-7",
                    "anthropic-beta": "test-beta",
                }
            ),
            matchers.json_params_matcher(
                {
                    "model": "claude-up-1",
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 4096,
                }
            ),
        ],
    )
    response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "req-7"})
    assert response.status_code == 200
    answer = response.json
    assert answer["object"] == "chat.completion"
    assert answer["id"] == "msg_01XYZ"
    assert answer["model"] == "claude-up-1"
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi there"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    sent = responses.calls[0].request
    assert "Authorization" not in sent.headers
    assert KEY not in sent.url
    assert TOKEN not in json.dumps(dict(sent.headers)) + sent.body.decode()


@responses.activate(assert_all_requests_are_fired=True)
def test_system_prompt_and_parameters(client):
    responses.post(
        MESSAGES,
        json=message([text("ok")]),
        match=[
            matchers.json_params_matcher(
                {
                    "model": "claude-up-1",
                    "system": "Be brief.\n\nAnswer in French.",
                    "messages": [{"role": "user", "content": "hello"}],
                    "max_tokens": 300,
                    "temperature": 0.2,
                    "top_p": 0.9,
                    "top_k": 40,
                    "stop_sequences": ["END"],
                    "metadata": {"user_id": "user-123"},
                }
            )
        ],
    )
    body = {
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in French."}]},
            {"role": "user", "content": "hello"},
        ],
        "max_completion_tokens": 300,
        "max_tokens": 999,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": "END",
        "user": "user-123",
        # OpenAI-only fields Anthropic cannot take are dropped.
        "logit_bias": {"50256": -100},
        "presence_penalty": 0.5,
        "seed": 7,
        "logprobs": False,
        "n": 1,
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@responses.activate(assert_all_requests_are_fired=True)
def test_multi_turn_history_alternates_with_images(client):
    responses.post(
        MESSAGES,
        json=message([text("a cat")]),
        match=[
            matchers.json_params_matcher(
                {
                    "model": "claude-up-1",
                    "max_tokens": 50,
                    "stop_sequences": ["x", "y"],
                    "messages": [
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "Hello! How can I help?"},
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "What is this?"},
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "base64",
                                        "media_type": "image/png",
                                        "data": "iVBORw0KGgo=",
                                    },
                                },
                                {
                                    "type": "image",
                                    "source": {
                                        "type": "url",
                                        "url": "https://img.example.test/cat.jpg",
                                    },
                                },
                                {"type": "text", "text": "And be precise."},
                            ],
                        },
                    ],
                }
            )
        ],
    )
    body = {
        "model": "claude",
        "max_tokens": 50,
        "stop": ["x", "y"],
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image_url",
                        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
                    },
                    {
                        "type": "image_url",
                        "image_url": {"url": "https://img.example.test/cat.jpg", "detail": "low"},
                    },
                ],
            },
            # Two user turns in a row become one: Anthropic wants roles to alternate.
            {"role": "user", "content": "And be precise."},
        ],
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "a cat"


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
        "strict": True,
    },
}
ANTHROPIC_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": WEATHER_TOOL["function"]["parameters"],
}


@pytest.mark.parametrize(
    ("tool_choice", "parallel", "expected"),
    [
        ("auto", None, {"type": "auto"}),
        ("required", None, {"type": "any"}),
        ("none", None, {"type": "none"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            None,
            {"type": "tool", "name": "get_weather"},
        ),
        ("required", False, {"type": "any", "disable_parallel_tool_use": True}),
        (None, False, {"type": "auto", "disable_parallel_tool_use": True}),
        (None, None, None),
    ],
)
@responses.activate(assert_all_requests_are_fired=True)
def test_tools_and_tool_choice(client, tool_choice, parallel, expected):
    tool_use = {
        "type": "tool_use",
        "id": "toolu_01A",
        "name": "get_weather",
        "input": {"city": "Paris", "units": {"temp": "C"}},
    }
    responses.post(MESSAGES, json=message([tool_use], stop_reason="tool_use"))
    body = {**CHAT, "tools": [WEATHER_TOOL]}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if parallel is not None:
        body["parallel_tool_calls"] = parallel
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200

    sent = sent_body()
    assert sent["tools"] == [ANTHROPIC_TOOL]
    assert sent.get("tool_choice") == expected
    assert "parallel_tool_calls" not in sent
    choice = response.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["id"] == "toolu_01A"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris", "units": {"temp": "C"}}


@responses.activate(assert_all_requests_are_fired=True)
def test_text_and_several_tool_calls_in_one_answer(client):
    blocks = [
        text("Checking both."),
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Oslo"}},
        {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {}},
    ]
    responses.post(MESSAGES, json=message(blocks, stop_reason="tool_use"))
    response = client.post("/v1/chat/completions", json={**CHAT, "tools": [WEATHER_TOOL]})
    message_out = response.json["choices"][0]["message"]
    assert message_out["content"] == "Checking both."
    assert [c["id"] for c in message_out["tool_calls"]] == ["toolu_1", "toolu_2"]
    assert [c["function"]["arguments"] for c in message_out["tool_calls"]] == [
        '{"city": "Oslo"}',
        "{}",
    ]


@responses.activate(assert_all_requests_are_fired=True)
def test_tool_results_in_history(client):
    responses.post(
        MESSAGES,
        json=message([text("Sunny in Paris, rainy in Oslo.")]),
        match=[
            matchers.json_params_matcher(
                {
                    "model": "claude-up-1",
                    "max_tokens": 4096,
                    "tools": [ANTHROPIC_TOOL],
                    "messages": [
                        {"role": "user", "content": "Weather in Paris and Oslo?"},
                        {
                            "role": "assistant",
                            "content": [
                                {"type": "text", "text": "Let me check."},
                                {
                                    "type": "tool_use",
                                    "id": "toolu_1",
                                    "name": "get_weather",
                                    "input": {"city": "Paris"},
                                },
                                {
                                    "type": "tool_use",
                                    "id": "toolu_2",
                                    "name": "get_weather",
                                    "input": {"city": "Oslo"},
                                },
                            ],
                        },
                        {
                            "role": "user",
                            "content": [
                                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "22C"},
                                {
                                    "type": "tool_result",
                                    "tool_use_id": "toolu_2",
                                    "content": [{"type": "text", "text": "9C, rain"}],
                                },
                                {"type": "text", "text": "Summarise."},
                            ],
                        },
                    ],
                }
            )
        ],
    )
    body = {
        "model": "claude",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {
                        "id": "toolu_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "toolu_2",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_1", "content": "22C"},
            {
                "role": "tool",
                "tool_call_id": "toolu_2",
                "content": [{"type": "text", "text": "9C, rain"}],
            },
            {"role": "user", "content": "Summarise."},
        ],
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
    ],
)
@responses.activate
def test_stop_reasons_map(client, stop_reason, finish_reason):
    responses.post(MESSAGES, json=message([text("x")], stop_reason=stop_reason))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["choices"][0]["finish_reason"] == finish_reason


@responses.activate
def test_usage_counts_cached_prompt_tokens(client):
    usage = {
        "input_tokens": 10,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 20,
        "output_tokens": 7,
    }
    responses.post(MESSAGES, json=message([text("x")], usage=usage))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["usage"] == {
        "prompt_tokens": 130,
        "completion_tokens": 7,
        "total_tokens": 137,
        "prompt_tokens_details": {"cached_tokens": 100},
    }


@responses.activate(assert_all_requests_are_fired=True)
def test_default_and_go_style_urls(client):
    responses.post("https://api.anthropic.com/v1/messages", json=message([text("a")]))
    responses.post("https://gw.example.test/anthropic/v1/messages", json=message([text("b")]))
    for model, expected in (("claude-default", "a"), ("claude-go", "b")):
        response = client.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert response.json["choices"][0]["message"]["content"] == expected
    # With no `model:` the upstream id is the configured name.
    assert sent_body(0)["model"] == "claude-default"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "n": 2}, "n"),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "assistant",
                        "tool_calls": [
                            {
                                "id": "t",
                                "type": "function",
                                "function": {"name": "f", "arguments": "{not json"},
                            }
                        ],
                    }
                ],
            },
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}
                ],
            },
            "messages[0].content[0].type",
        ),
        (
            {
                **CHAT,
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}],
                    }
                ],
            },
            "messages[0].content[0]",
        ),
    ],
)
@responses.activate
def test_requests_anthropic_cannot_take_are_400(client, body, param):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json["error"]["type"] == "invalid_request_error"
    assert response.json["error"]["param"] == param
    assert len(responses.calls) == 0


# --- errors ---------------------------------------------------------------------------------


def anthropic_error(kind: str, text: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": text}, "request_id": "req_011"}


@pytest.mark.parametrize(
    ("upstream_status", "upstream_body", "status", "message"),
    [
        (
            400,
            anthropic_error("invalid_request_error", "max_tokens: must be at most 64000"),
            400,
            "max_tokens: must be at most 64000",
        ),
        (404, anthropic_error("not_found_error", "model: claude-nope"), 404, "model: claude-nope"),
        (401, anthropic_error("authentication_error", f"invalid x-api-key {KEY}"), 502, None),
        (403, anthropic_error("permission_error", "no access"), 502, None),
        (429, anthropic_error("rate_limit_error", "Number of requests exceeded"), 502, None),
        (500, anthropic_error("api_error", "Internal server error"), 502, None),
        (529, anthropic_error("overloaded_error", "Overloaded"), 502, None),
    ],
)
@responses.activate
def test_upstream_errors_map(client, upstream_status, upstream_body, status, message):
    responses.post(MESSAGES, json=upstream_body, status=upstream_status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.json["error"]
    if message:
        assert error["message"] == message
        assert error["type"] == "invalid_request_error"
    else:
        assert error["type"] == "upstream_error"
    text_out = response.get_data(as_text=True)
    for secret in (KEY, "anthropic.example.test"):
        assert secret not in text_out


@pytest.mark.parametrize("status", [429, 500, 529])
@responses.activate
def test_retryable_failures_fall_back_to_the_next_deployment(make_client, status):
    backup = "https://backup.example.test/v1"
    client = make_client(
        [anthropic_model(UPSTREAM, priority=1), anthropic_model(backup, priority=2)],
    )
    responses.post(MESSAGES, json=anthropic_error("overloaded_error", "Overloaded"), status=status)
    responses.post(f"{backup}/messages", json=message([text("from backup")]))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "from backup"
    assert response.headers["x-ai-proxy-attempts"] == "2"


@responses.activate
def test_client_error_does_not_fall_back(make_client):
    backup = "https://backup.example.test/v1"
    client = make_client(
        [anthropic_model(UPSTREAM, priority=1), anthropic_model(backup, priority=2)],
    )
    responses.post(
        MESSAGES,
        json=anthropic_error("invalid_request_error", "prompt is too long: 210000 tokens"),
        status=400,
    )
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 400
    assert "prompt is too long" in response.json["error"]["message"]
    assert len(responses.calls) == 1


@pytest.mark.parametrize("body", [b"<html>oops</html>", b'{"type": "message"}', b"[]"])
@responses.activate
def test_garbage_answer_is_502(client, body):
    responses.post(MESSAGES, body=body, status=200)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "upstream_error"


# --- streaming ------------------------------------------------------------------------------


def sse(kind: str, **data) -> str:
    """One Anthropic stream event as the API writes it."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}"


def message_start(input_tokens: int = 25) -> str:
    return sse(
        "message_start",
        message={
            "id": "msg_stream_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-up-1",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    )


def text_events(words: list[str], stop_reason: str = "end_turn") -> list[str]:
    events = [
        message_start(),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("ping"),
    ]
    events += [
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": word})
        for word in words
    ]
    events += [
        sse("content_block_stop", index=0),
        sse(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": 15},
        ),
        sse("message_stop"),
    ]
    return events


def tool_events() -> list[str]:
    """Text, then two tool_use blocks whose input arrives as JSON fragments."""
    return [
        message_start(),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "Checking."}),
        sse("content_block_stop", index=0),
        sse(
            "content_block_start",
            index=1,
            content_block={"type": "tool_use", "id": "toolu_A", "name": "get_weather", "input": {}},
        ),
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": ""}),
        sse(
            "content_block_delta",
            index=1,
            delta={"type": "input_json_delta", "partial_json": '{"city": "Pa'},
        ),
        sse(
            "content_block_delta",
            index=1,
            delta={"type": "input_json_delta", "partial_json": 'ris"}'},
        ),
        sse("content_block_stop", index=1),
        sse(
            "content_block_start",
            index=2,
            content_block={"type": "tool_use", "id": "toolu_B", "name": "get_weather", "input": {}},
        ),
        sse(
            "content_block_delta",
            index=2,
            delta={"type": "input_json_delta", "partial_json": '{"city":'},
        ),
        sse(
            "content_block_delta",
            index=2,
            delta={"type": "input_json_delta", "partial_json": ' "Oslo"}'},
        ),
        sse("content_block_stop", index=2),
        sse(
            "message_delta",
            delta={"stop_reason": "tool_use", "stop_sequence": None},
            usage={"output_tokens": 40},
        ),
        sse("message_stop"),
    ]


def events(response) -> list[str]:
    text_out = response.get_data(as_text=True)
    assert text_out.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text_out.strip().split("\n\n")]


def chunks_of(response) -> list[dict]:
    data = events(response)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.fixture
def stream_client(make_client, upstream):
    return make_client(
        [
            anthropic_model(upstream.url + "/v1", priority=1),
            anthropic_model(upstream.url + "/v1", priority=2, model="claude-backup"),
        ],
    )


STREAM = {**CHAT, "stream": True}


def test_stream_text_chunks(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["Hello", " streaming", " world"])))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["id"] == "msg_stream_1" and c["model"] == "claude-up-1" for c in chunks)
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks[1:-1]]
    assert pieces == ["Hello", " streaming", " world"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The client did not ask for usage: there is no usage chunk.
    assert all(c["choices"] and "usage" not in c for c in chunks)

    sent = upstream.requests[0]
    assert sent.path == "/v1/messages"
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["x-api-key"] == KEY
    assert headers["anthropic-version"] == "2023-06-01"
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers
    assert sent.json() == {
        "model": "claude-up-1",
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 4096,
        "stream": True,
    }


@pytest.mark.parametrize(
    ("stop_reason", "finish_reason"),
    [("max_tokens", "length"), ("stop_sequence", "stop"), ("refusal", "content_filter")],
)
def test_stream_finish_reasons(stream_client, upstream, stop_reason, finish_reason):
    upstream.queue(Reply(events=text_events(["a"], stop_reason=stop_reason)))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert chunks[-1]["choices"][0]["finish_reason"] == finish_reason


def test_stream_usage_chunk_with_include_usage(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["one", " two"])))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40}


def test_stream_tool_call_arguments_arrive_in_fragments(stream_client, upstream):
    upstream.queue(Reply(events=tool_events()))
    body = {**STREAM, "tools": [WEATHER_TOOL], "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert upstream.requests[0].json()["tools"] == [ANTHROPIC_TOOL]

    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Checking."
    calls = [call for d in deltas for call in d.get("tool_calls", [])]
    starts = [c for c in calls if "id" in c]
    assert starts == [
        {
            "index": 0,
            "id": "toolu_A",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
        {
            "index": 1,
            "id": "toolu_B",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        },
    ]
    fragments = [c for c in calls if "id" not in c]
    assert [f["function"]["arguments"] for f in fragments if f["index"] == 0] == [
        '{"city": "Pa',
        'ris"}',
    ]
    arguments = {
        i: "".join(c["function"]["arguments"] for c in calls if c["index"] == i) for i in (0, 1)
    }
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"city": "Paris"},
        1: {"city": "Oslo"},
    }
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
    assert finish[-1] == "tool_calls"
    assert chunks[-1]["usage"]["completion_tokens"] == 40


def test_stream_error_event_mid_stream_is_in_band(stream_client, upstream):
    broken = text_events(["partial", " answer"])[:5] + [
        sse("error", error={"type": "overloaded_error", "message": "Overloaded"})
    ]
    upstream.queue(Reply(events=broken))
    data = events(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["type"] == "upstream_error"
    assert "Overloaded" in error["message"]
    assert str(upstream.port) not in data[-1]
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]]
    assert contents == ["", "partial", " answer"]
    # Bytes had reached the client: no second deployment was spliced in.
    assert len(upstream.requests) == 1


def test_stream_error_before_any_content_falls_back(stream_client, upstream):
    overloaded = [
        message_start(),
        sse("error", error={"type": "overloaded_error", "message": "Overloaded"}),
    ]
    upstream.queue(Reply(events=overloaded), Reply(events=text_events(["from", " backup"])))
    response = stream_client.post("/v1/chat/completions", json=STREAM)
    assert response.headers["x-ai-proxy-attempts"] == "2"
    text_out = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks_of(response))
    assert text_out == "from backup"
    assert upstream.requests[1].json()["model"] == "claude-backup"


def test_stream_529_before_the_stream_falls_back(stream_client, upstream):
    upstream.queue(
        Reply(status=529, body={"type": "error", "error": {"type": "overloaded_error"}}),
        Reply(events=text_events(["ok"])),
    )
    response = stream_client.post("/v1/chat/completions", json=STREAM)
    assert response.status_code == 200
    assert response.headers["x-ai-proxy-attempts"] == "2"


@pytest.mark.parametrize(
    "tail",
    [
        ["event: content_block_delta\ndata: {not json"],  # garbage
        [],  # the stream ends with no message_stop
    ],
)
def test_broken_stream_ends_with_an_in_band_error(stream_client, upstream, tail):
    upstream.queue(Reply(events=text_events(["one", " two"])[:4] + tail))
    data = events(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"


def test_upstream_that_ignores_stream_still_streams(stream_client, upstream):
    upstream.queue(Reply(body=message([text("whole answer")])))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "whole answer"}
    assert chunks[1]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 17


# --- the real proxy under gunicorn, driven by the openai SDK --------------------------------


def test_openai_sdk_through_gunicorn_to_anthropic(proxy_factory, upstream):
    proxy = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [anthropic_model(upstream.url + "/v1")],
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
        tool_use = {"type": "tool_use", "id": "toolu_X", "name": "get_weather", "input": {"c": 1}}
        upstream.queue(Reply(body=message([text("Let me look."), tool_use], "tool_use")))
        answer = sdk.chat.completions.create(
            model="claude",
            messages=[{"role": "system", "content": "Be brief."}, *CHAT["messages"]],
            tools=[WEATHER_TOOL],
            tool_choice="required",
            max_tokens=64,
        )
        choice = answer.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.content == "Let me look."
        assert choice.message.tool_calls[0].id == "toolu_X"
        assert json.loads(choice.message.tool_calls[0].function.arguments) == {"c": 1}
        assert answer.usage.total_tokens == 17

        sent = upstream.requests[0]
        assert sent.path == "/v1/messages"
        headers = {k.lower(): v for k, v in sent.headers.items()}
        assert headers["x-api-key"] == KEY
        assert headers["anthropic-version"] == "2023-06-01"
        assert "authorization" not in headers
        assert TOKEN.encode() not in sent.body
        body = sent.json()
        assert body["system"] == "Be brief."
        assert body["max_tokens"] == 64
        assert body["tool_choice"] == {"type": "any"}

        upstream.queue(Reply(events=text_events(["Hello", " from", " Claude"])))
        chunks = list(
            sdk.chat.completions.create(
                model="claude",
                messages=CHAT["messages"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
            "Hello from Claude"
        )
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].choices == []
        assert chunks[-1].usage.prompt_tokens == 25
        assert chunks[-1].usage.completion_tokens == 15

        upstream.queue(Reply(events=tool_events(), delay=0.01))
        stream = sdk.chat.completions.create(
            model="claude", messages=CHAT["messages"], tools=[WEATHER_TOOL], stream=True
        )
        arguments: dict[int, str] = {}
        finish = None
        for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or []:
                arguments[call.index] = arguments.get(call.index, "") + call.function.arguments
            finish = chunk.choices[0].finish_reason or finish
        assert {i: json.loads(a) for i, a in arguments.items()} == {
            0: {"city": "Paris"},
            1: {"city": "Oslo"},
        }
        assert finish == "tool_calls"

        upstream.queue(
            Reply(
                events=text_events(["partial"])[:4]
                + [sse("error", error={"type": "overloaded_error", "message": "Overloaded"})]
            )
        )
        broken = sdk.chat.completions.create(model="claude", messages=CHAT["messages"], stream=True)
        with pytest.raises(openai.APIError):
            for _ in broken:
                pass
    logs = proxy.logs()
    assert KEY not in logs


def test_finished_streams_reuse_the_upstream_connection(stream_client, upstream):
    """message_stop ends the stream; the rest of the body is read so the connection is pooled."""
    for word in ("one", "two"):
        upstream.queue(Reply(events=text_events([word])))
        assert chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    ports = {r.headers["X-Client-Port"] for r in upstream.requests}
    assert len(upstream.requests) == 2 and len(ports) == 1
