"""The native Cohere v2 Chat adapter: what goes to /v2/chat, and how answers and streams return."""

from __future__ import annotations

import json

import openai
import pytest
import responses
from responses import matchers

from tests.conftest import TOKEN
from tests.stub_upstream import Reply

COHERE = "https://api.cohere.com/v2/chat"
KEY = "co-upstream-secret-key"
MODEL = "command-r-plus-08-2024"
USER = [{"role": "user", "content": "hello"}]
CHAT = {"model": "cohere/command-r-plus-08-2024", "messages": USER}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]
COHERE_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {
        "type": "function",
        "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
    },
]


def cohere_answer(
    text: str | None = "Hello there",
    finish: str = "COMPLETE",
    tool_calls: list | None = None,
    usage: dict | None = None,
) -> dict:
    message: dict = {"role": "assistant"}
    if text is not None:
        message["content"] = [{"type": "text", "text": text}]
    if tool_calls:
        message["tool_plan"] = "I will look that up."
        message["tool_calls"] = tool_calls
    return {
        "id": "c14c80c3-18eb-4519-9460-6c92edd8cfb4",
        "finish_reason": finish,
        "message": message,
        "usage": usage
        or {
            "billed_units": {"input_tokens": 5, "output_tokens": 2},
            "tokens": {"input_tokens": 71, "output_tokens": 3},
        },
    }


def event(kind: str, **fields) -> str:
    """One Cohere v2 SSE event as the API writes it: a named event with a typed JSON body."""
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}"


def text_events(words: list[str], finish: str = "COMPLETE") -> list[str]:
    return [
        event(
            "message-start",
            id="msg-1",
            delta={"message": {"role": "assistant", "content": [], "tool_plan": ""}},
        ),
        event(
            "content-start",
            index=0,
            delta={"message": {"content": {"type": "text", "text": ""}}},
        ),
        *(
            event("content-delta", index=0, delta={"message": {"content": {"text": word}}})
            for word in words
        ),
        event("content-end", index=0),
        event(
            "message-end",
            delta={
                "finish_reason": finish,
                "usage": {
                    "billed_units": {"input_tokens": 3, "output_tokens": len(words)},
                    "tokens": {"input_tokens": 60, "output_tokens": len(words)},
                },
            },
        ),
    ]


def tool_events() -> list[str]:
    """The documented tool-calling stream: a plan, then two calls with fragmented arguments."""

    def call_start(index: int, call_id: str) -> str:
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": "get_weather", "arguments": ""},
        }
        return event("tool-call-start", index=index, delta={"message": {"tool_calls": call}})

    def call_delta(index: int, fragment: str) -> str:
        return event(
            "tool-call-delta",
            index=index,
            delta={"message": {"tool_calls": {"function": {"arguments": fragment}}}},
        )

    return [
        event("message-start", id="msg-2", delta={"message": {"role": "assistant"}}),
        event("tool-plan-delta", delta={"message": {"tool_plan": "I will"}}),
        event("tool-plan-delta", delta={"message": {"tool_plan": " check."}}),
        call_start(0, "get_weather_p1t92w7gfgq7"),
        call_delta(0, '{\n    "'),
        call_delta(0, 'city": "Ma'),
        call_delta(0, 'drid"\n}'),
        event("tool-call-end", index=0),
        call_start(1, "get_weather_ay6nmvjgp9vn"),
        call_delta(1, '{"city": "Brasilia"}'),
        event("tool-call-end", index=1),
        event(
            "message-end",
            delta={
                "finish_reason": "TOOL_CALL",
                "usage": {"tokens": {"input_tokens": 913, "output_tokens": 83}},
            },
        ),
    ]


@pytest.fixture
def client(provider_client):
    return provider_client(
        [
            {
                "name": "cohere/command-r-plus-08-2024",
                "provider": "cohere",
                "token": KEY,
                "headers": {"X-Client-Name": "my-app"},
                "http_client_config": {"timeout_seconds": 9, "connect_timeout_seconds": 3},
            },
            # Two deployments of one name, to see fallback between them.
            {"name": "co-pair", "provider": "cohere", "token": KEY, "model": MODEL},
            {
                "name": "co-pair",
                "provider": "cohere",
                "base_url": "https://eu.cohere.test",
                "token": KEY,
                "model": MODEL,
            },
            {
                "name": "go-style",
                "provider": "cohere",
                "url": "https://api.cohere.ai/compatibility/v1/chat/completions",
                "token": KEY,
                "model": MODEL,
            },
        ]
    )


# --- requests and whole answers --------------------------------------------------------------


@responses.activate(assert_all_requests_are_fired=True)
def test_plain_text_request_and_answer(client):
    responses.post(
        COHERE,
        json=cohere_answer(),
        match=[
            matchers.header_matcher(
                {
                    "Authorization": f"Bearer {KEY}",
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-co-1",
                    "X-Client-Name": "my-app",
                }
            ),
            matchers.json_params_matcher({"model": MODEL, "messages": USER}),
        ],
    )
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "logit_bias": {"1": 2}, "n": 1, "user": "u-1", "parallel_tool_calls": True},
        headers={"X-Request-ID": "req-co-1"},
    )
    assert response.status_code == 200
    answer = response.json
    assert answer["object"] == "chat.completion"
    assert answer["model"] == MODEL
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hello there"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    # `tokens` counts what the model saw; `billed_units` leaves the prompt template out.
    assert answer["usage"] == {"prompt_tokens": 71, "completion_tokens": 3, "total_tokens": 74}
    sent = responses.calls[0].request
    assert TOKEN not in json.dumps(dict(sent.headers)) and TOKEN not in sent.body.decode()
    assert KEY not in sent.url
    assert responses.calls[0].request.req_kwargs["timeout"] == (3.0, 9.0)


@responses.activate(assert_all_requests_are_fired=True)
def test_system_prompt_history_and_parameters(client):
    expected = {
        "model": MODEL,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "My name is Ann."},
            {"role": "assistant", "content": "Hi Ann."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is my name?"},
                    {"type": "image_url", "image_url": {"url": "https://img.test/a.png"}},
                ],
            },
        ],
        "max_tokens": 50,
        "temperature": 0.2,
        "p": 0.9,
        "k": 40,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop_sequences": ["END"],
        "response_format": {"type": "json_object"},
    }
    responses.post(
        COHERE, json=cohere_answer("Ann"), match=[matchers.json_params_matcher(expected)]
    )
    body = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
            {"role": "user", "content": "My name is Ann."},
            {"role": "assistant", "content": "Hi Ann."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is my name?"},
                    {"type": "image_url", "image_url": {"url": "https://img.test/a.png"}},
                ],
            },
        ],
        "max_completion_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "seed": 7,
        "frequency_penalty": 0.1,
        "presence_penalty": 0.2,
        "stop": "END",
        "response_format": {"type": "json_object"},
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "Ann"


@responses.activate(assert_all_requests_are_fired=True)
def test_json_schema_becomes_json_object_with_schema(client):
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    responses.post(
        COHERE,
        json=cohere_answer('{"a": "b"}'),
        match=[
            matchers.json_params_matcher(
                {"response_format": {"type": "json_object", "json_schema": schema}},
                strict_match=False,
            )
        ],
    )
    body = {
        **CHAT,
        "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}},
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@responses.activate(assert_all_requests_are_fired=True)
def test_tools_and_a_tool_call(client):
    calls = [
        {
            "id": "get_weather_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        }
    ]
    responses.post(
        COHERE,
        json=cohere_answer(None, "TOOL_CALL", tool_calls=calls),
        match=[
            matchers.json_params_matcher(
                {"model": MODEL, "messages": USER, "tools": COHERE_TOOLS, "tool_choice": "REQUIRED"}
            )
        ],
    )
    body = {**CHAT, "tools": TOOLS, "tool_choice": "required"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    choice = response.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"] == {"role": "assistant", "content": None, "tool_calls": calls}
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Paris"
    }


@pytest.mark.parametrize(
    ("tool_choice", "sent"),
    [
        ("auto", {"tools": COHERE_TOOLS}),
        ("none", {"tools": COHERE_TOOLS, "tool_choice": "NONE"}),
        # Cohere cannot name the tool: only that tool is offered, and some tool is required.
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"tools": COHERE_TOOLS[1:], "tool_choice": "REQUIRED"},
        ),
    ],
)
@responses.activate(assert_all_requests_are_fired=True)
def test_tool_choice_mapping(client, tool_choice, sent):
    responses.post(
        COHERE,
        json=cohere_answer(),
        match=[matchers.json_params_matcher({"model": MODEL, "messages": USER, **sent})],
    )
    body = {**CHAT, "tools": TOOLS, "tool_choice": tool_choice}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@responses.activate
def test_tool_choice_naming_an_unknown_tool_is_400(client):
    body = {**CHAT, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "x"}}}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert response.json["error"]["param"] == "tool_choice"
    assert len(responses.calls) == 0


@responses.activate(assert_all_requests_are_fired=True)
def test_tool_results_in_the_history(client):
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
    }
    expected = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "tool_calls": [call], "tool_plan": "Let me check."},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    responses.post(
        COHERE,
        json=cohere_answer("It is 21 degrees."),
        match=[
            matchers.json_params_matcher(
                {"model": MODEL, "messages": expected, "tools": COHERE_TOOLS}
            )
        ],
    )
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    response = client.post(
        "/v1/chat/completions", json={**CHAT, "messages": history, "tools": TOOLS}
    )
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "It is 21 degrees."


@pytest.mark.parametrize(
    ("cohere_reason", "reason"),
    [
        ("COMPLETE", "stop"),
        ("STOP_SEQUENCE", "stop"),
        ("MAX_TOKENS", "length"),
        ("TOOL_CALL", "tool_calls"),
        ("complete", "stop"),  # older SDK builds spell them in lower case
    ],
)
@responses.activate
def test_finish_reasons(client, cohere_reason, reason):
    responses.post(COHERE, json=cohere_answer(finish=cohere_reason))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["choices"][0]["finish_reason"] == reason


@pytest.mark.parametrize("cohere_reason", ["ERROR", "TIMEOUT"])
@responses.activate
def test_failed_generation_is_a_retryable_502(client, cohere_reason):
    responses.post(COHERE, json=cohere_answer("partial", finish=cohere_reason))
    responses.post("https://eu.cohere.test/v2/chat", json=cohere_answer("from the other one"))
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "co-pair"})
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "from the other one"
    assert response.headers["x-ai-proxy-attempts"] == "2"


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (
            {"billed_units": {"input_tokens": 37.0, "output_tokens": 28.0}},
            {"prompt_tokens": 37, "completion_tokens": 28, "total_tokens": 65},
        ),
        # No usage at all: estimated from the text, about four characters a token.
        ({}, {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}),
    ],
)
@responses.activate
def test_usage_fallbacks(client, usage, expected):
    answer = cohere_answer("Hello there")
    answer["usage"] = usage
    responses.post(COHERE, json=answer)
    assert client.post("/v1/chat/completions", json=CHAT).json["usage"] == expected


@responses.activate(assert_all_requests_are_fired=True)
def test_go_style_compatibility_url_goes_to_v2_chat(client):
    responses.post("https://api.cohere.ai/v2/chat", json=cohere_answer())
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "go-style"})
    assert response.status_code == 200


@pytest.mark.parametrize("body", [b"<html>bad gateway</html>", b'{"no": "message"}', b"[]"])
@responses.activate
def test_garbage_answer_is_502(client, body):
    responses.post(COHERE, body=body, status=200)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "upstream_error"


# --- errors ----------------------------------------------------------------------------------


@responses.activate
def test_upstream_400_is_400_with_cohere_message(client):
    responses.post(
        COHERE,
        json={"id": "e1", "message": "invalid request: p must be between 0.01 and 0.99"},
        status=400,
    )
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "co-pair"})
    assert response.status_code == 400
    error = response.json["error"]
    assert error["type"] == "invalid_request_error"
    assert "p must be between 0.01 and 0.99" in error["message"]
    # A client error does not fall back to the other deployment.
    assert len(responses.calls) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
@responses.activate
def test_retryable_failures_fall_back_then_502(client, status):
    for url in (COHERE, "https://eu.cohere.test/v2/chat"):
        responses.post(url, json={"message": "busy right now"}, status=status)
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "co-pair"})
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert len(responses.calls) == 2


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_refused_key_is_502_without_the_key(client, status):
    responses.post(COHERE, json={"message": f"invalid api token {KEY}"}, status=status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"
    text = response.get_data(as_text=True)
    assert KEY not in text
    assert "api.cohere.com" not in text


# --- streams ---------------------------------------------------------------------------------


def sse_payloads(response) -> list[str]:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


@pytest.fixture
def stream_client(provider_client, upstream):
    return provider_client(
        [
            {
                "name": "co",
                "provider": "cohere",
                "base_url": upstream.url,
                "token": KEY,
                "model": MODEL,
            }
        ]
    )


STREAM = {"model": "co", "messages": USER, "stream": True}


def test_stream_text_with_usage(stream_client, upstream):
    upstream.queue(Reply(events=[*text_events(["Hello", ",", " world"]), "data: [DONE]"]))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    data = sse_payloads(stream_client.post("/v1/chat/completions", json=body))
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == "msg-1" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    contents = [c["choices"][0]["delta"].get("content") for c in chunks[1:4]]
    assert contents == ["Hello", ",", " world"]
    assert chunks[4]["choices"][0] == {
        "index": 0,
        "delta": {},
        "logprobs": None,
        "finish_reason": "stop",
    }
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 60, "completion_tokens": 3, "total_tokens": 63}
    sent = upstream.requests[0]
    assert sent.path == "/v2/chat"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.headers["Accept"] == "text/event-stream"
    assert sent.json() == {"model": MODEL, "messages": USER, "stream": True}


def test_stream_chunks_are_written_as_events_arrive(stream_client, upstream):
    events = text_events([f" w{i}" for i in range(6)])
    upstream.queue(Reply(events=events, delay=0.05))
    response = stream_client.post("/v1/chat/completions", json=STREAM, buffered=False)
    try:
        for block in response.response:
            if b'"content":" w0"' in block:
                break
        # The first word reached the client while the upstream was still sending.
        assert upstream.events_sent < len(events)
    finally:
        response.close()


def test_stream_without_include_usage_has_no_usage_chunk(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["a", "b"], finish="MAX_TOKENS")))
    chunks = [
        json.loads(d)
        for d in sse_payloads(stream_client.post("/v1/chat/completions", json=STREAM))[:-1]
    ]
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_stream_tool_calls_arrive_in_fragments(stream_client, upstream):
    upstream.queue(Reply(events=tool_events()))
    body = {**STREAM, "tools": TOOLS, "stream_options": {"include_usage": True}}
    chunks = [
        json.loads(d)
        for d in sse_payloads(stream_client.post("/v1/chat/completions", json=body))[:-1]
    ]
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    # The tool plan is Cohere's reasoning, not answer text.
    assert not any(d.get("content") for d in deltas)
    pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert pieces[0] == {
        "index": 0,
        "id": "get_weather_p1t92w7gfgq7",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert pieces[1] == {"index": 0, "function": {"arguments": '{\n    "'}}
    first = "".join(p["function"]["arguments"] for p in pieces if p["index"] == 0)
    second = "".join(p["function"]["arguments"] for p in pieces if p["index"] == 1)
    assert json.loads(first) == {"city": "Madrid"}
    assert json.loads(second) == {"city": "Brasilia"}
    assert [p["id"] for p in pieces if "id" in p] == [
        "get_weather_p1t92w7gfgq7",
        "get_weather_ay6nmvjgp9vn",
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 996
    assert upstream.requests[0].json()["tools"] == COHERE_TOOLS


@pytest.mark.parametrize(
    ("tail", "words"),
    [
        (
            [event("message-end", delta={"finish_reason": "ERROR", "error": "model overloaded"})],
            ["model overloaded"],
        ),
        (['event: error\ndata: {"message": "internal failure"}'], ["internal failure"]),
        (["data: {not json"], ["invalid JSON"]),
        ([], ["ended before"]),  # cut after the first words, no message-end
    ],
)
def test_mid_stream_failures_end_with_an_error_event(stream_client, upstream, tail, words):
    upstream.queue(Reply(events=text_events(["one", "two"])[:4] + tail))
    data = sse_payloads(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    assert json.loads(data[1])["choices"][0]["delta"]["content"] == "one"
    error = json.loads(data[-1])["error"]
    assert error["type"] == "upstream_error"
    for word in words:
        assert word in error["message"]
    assert str(upstream.port) not in data[-1]


def test_failure_before_the_first_byte_is_a_502(stream_client, upstream):
    upstream.queue(Reply(status=503, body={"message": "overloaded"}))
    response = stream_client.post("/v1/chat/completions", json=STREAM)
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"


# --- the real proxy, driven by the openai SDK ------------------------------------------------


def test_integration_with_the_openai_sdk(proxy_factory, upstream):
    proxy = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [
                {
                    "name": "cohere/command-a",
                    "provider": "cohere",
                    "base_url": upstream.url,
                    "token": KEY,
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
        upstream.queue(Reply(body=cohere_answer("Bonjour")))
        answer = sdk.chat.completions.create(
            model="cohere/command-a",
            messages=[{"role": "system", "content": "French."}, *USER],
        )
        assert answer.choices[0].message.content == "Bonjour"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage.total_tokens == 74
        sent = upstream.requests[-1]
        assert sent.path == "/v2/chat"
        assert sent.headers["Authorization"] == f"Bearer {KEY}"
        assert sent.headers["X-Request-ID"]
        assert sent.json()["model"] == "command-a"
        assert sent.json()["messages"][0] == {"role": "system", "content": "French."}

        upstream.queue(Reply(events=[*text_events(["Bon", "jour", "!"]), "data: [DONE]"]))
        chunks = list(
            sdk.chat.completions.create(
                model="cohere/command-a",
                messages=USER,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Bonjour!"
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].usage.completion_tokens == 3

        upstream.queue(Reply(events=tool_events()))
        stream = sdk.chat.completions.create(
            model="cohere/command-a", messages=USER, tools=TOOLS, stream=True
        )
        arguments: dict[int, str] = {}
        finish = None
        for chunk in stream:
            for call in chunk.choices[0].delta.tool_calls or ():
                arguments[call.index] = arguments.get(call.index, "") + (
                    call.function.arguments or ""
                )
            finish = chunk.choices[0].finish_reason or finish
        assert {i: json.loads(a) for i, a in arguments.items()} == {
            0: {"city": "Madrid"},
            1: {"city": "Brasilia"},
        }
        assert finish == "tool_calls"
    assert KEY not in proxy.logs()
