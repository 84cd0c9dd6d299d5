"""The native Cloudflare Workers AI adapter: what goes to /ai/run/{model}, and what comes back."""

from __future__ import annotations

import json

import openai
import pytest
import responses
from responses import matchers

from app.config import ModelConfig
from app.providers import check_models
from app.providers.cloudflare import CloudflareProvider
from tests.conftest import TOKEN
from tests.stub_upstream import Reply

ACCOUNT = "https://api.cloudflare.com/client/v4/accounts/acc123/ai"
MODEL = "@cf/meta/llama-3.1-8b-instruct"
RUN = f"{ACCOUNT}/run/{MODEL}"
KEY = "cf-upstream-secret-token"
USER = [{"role": "user", "content": "hello"}]
CHAT = {"model": f"cloudflare/{MODEL}", "messages": USER}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    },
    {"type": "function", "function": {"name": "get_time"}},
]
# The OpenAI tool shape, which every function-calling model's input schema accepts; the older
# schemas require a description and `type` and `properties`.
CF_TOOLS = [
    TOOLS[0],
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "",
            "parameters": {"type": "object", "properties": {}},
        },
    },
]


def envelope(result: object, success: bool = True, errors: list | None = None) -> dict:
    return {"result": result, "success": success, "errors": errors or [], "messages": []}


def native(response: object = "Hello there", tool_calls: list | None = None, usage=None) -> dict:
    result: dict = {"response": response}
    if tool_calls is not None:
        result["tool_calls"] = tool_calls
    result["usage"] = usage or {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    return envelope(result)


def data(payload: object) -> str:
    return "data: " + (payload if isinstance(payload, str) else json.dumps(payload))


def native_events(words: list[str]) -> list[str]:
    """The documented native stream: `response` tokens, a final usage event, then [DONE]."""
    return [
        *(data({"response": word, "p": "abcdefgh"}) for word in words),
        data(
            {
                "response": "",
                "usage": {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 0},
            }
        ),
        data("[DONE]"),
    ]


@pytest.fixture
def client(provider_client):
    return provider_client(
        [
            {
                "name": f"cloudflare/{MODEL}",
                "provider": "cloudflare",
                "base_url": ACCOUNT,
                "token": KEY,
                "headers": {"cf-aig-skip-cache": "true"},
                "http_client_config": {"timeout_seconds": 8, "connect_timeout_seconds": 2},
            },
            {
                "name": "go-style",
                "provider": "cloudflare",
                "url": f"{ACCOUNT}/run/@cf/meta/llama-3.3-70b-instruct-fp8-fast",
                "token": KEY,
            },
            {"name": "cf-pair", "provider": "cloudflare", "base_url": ACCOUNT, "token": KEY},
            {
                "name": "cf-pair",
                "provider": "cloudflare",
                "base_url": "https://api.cloudflare.com/client/v4/accounts/other/ai",
                "token": KEY,
            },
        ]
    )


# --- config ----------------------------------------------------------------------------------


def test_check_wants_the_account_url():
    problems = CloudflareProvider.check(ModelConfig(name="cf", provider="cloudflare"), None)
    assert len(problems) == 1
    assert problems[0].startswith("base_url: required")
    assert "/client/v4/accounts/<ACCOUNT_ID>/ai" in problems[0]
    with_url = ModelConfig(name="cf", provider="cloudflare", url=RUN)
    assert check_models((with_url,)) == []
    assert check_models((ModelConfig(name="cf", provider="cloudflare", index=3),))[0].startswith(
        "models[3].base_url:"
    )


# --- requests and whole answers --------------------------------------------------------------


@responses.activate(assert_all_requests_are_fired=True)
def test_plain_text_request_and_answer(client):
    responses.post(
        RUN,
        json=native(),
        match=[
            matchers.header_matcher(
                {
                    "Authorization": f"Bearer {KEY}",
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-cf-1",
                    "cf-aig-skip-cache": "true",
                }
            ),
            matchers.json_params_matcher({"messages": USER}),
        ],
    )
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "logit_bias": {"1": 2}, "user": "u", "n": 1, "stop": ["x"]},
        headers={"X-Request-ID": "req-cf-1"},
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
    assert answer["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    sent = responses.calls[0].request
    assert KEY not in sent.url
    assert TOKEN not in json.dumps(dict(sent.headers)) and TOKEN not in sent.body.decode()
    assert sent.req_kwargs["timeout"] == (2.0, 8.0)


@responses.activate(assert_all_requests_are_fired=True)
def test_system_prompt_history_and_parameters(client):
    expected = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "system", "content": "Answer in English."},
            {"role": "user", "content": "My name is Ann."},
            {"role": "assistant", "content": "Hi Ann."},
            {"role": "user", "content": "What is\nmy name?"},
        ],
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.8,
        "seed": 5,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    }
    responses.post(
        RUN, json=native({"name": "Ann"}), match=[matchers.json_params_matcher(expected)]
    )
    body = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "My name is Ann."},
            {"role": "assistant", "content": "Hi Ann."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is"},
                    {"type": "text", "text": "my name?"},
                ],
            },
        ],
        "max_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.8,
        "seed": 5,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "person",
                "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    # JSON mode can hand back the parsed object; clients get it as JSON text.
    assert json.loads(response.json["choices"][0]["message"]["content"]) == {"name": "Ann"}


@responses.activate(assert_all_requests_are_fired=True)
def test_tools_and_a_native_tool_call(client):
    responses.post(
        RUN,
        # The native shape: no id, arguments as an object.
        json=native(None, tool_calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}]),
        match=[
            matchers.json_params_matcher(
                {"messages": USER, "tools": CF_TOOLS, "tool_choice": "required"}
            )
        ],
    )
    body = {**CHAT, "tools": TOOLS, "tool_choice": "required"}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    choice = response.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    (call,) = message["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert isinstance(call["function"]["arguments"], str)
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize(
    ("tool_choice", "sent"),
    [
        ("auto", {"tools": CF_TOOLS, "tool_choice": "auto"}),
        ("none", {"tools": CF_TOOLS, "tool_choice": "none"}),
        (None, {"tools": CF_TOOLS}),
        (
            {"type": "function", "function": {"name": "get_time"}},
            {"tools": CF_TOOLS[1:], "tool_choice": "required"},
        ),
    ],
)
@responses.activate(assert_all_requests_are_fired=True)
def test_tool_choice_mapping(client, tool_choice, sent):
    responses.post(
        RUN, json=native(), match=[matchers.json_params_matcher({"messages": USER, **sent})]
    )
    body = {**CHAT, "tools": TOOLS}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
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
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "call_1"},
    ]
    responses.post(
        RUN,
        json=native("It is 21 degrees."),
        match=[matchers.json_params_matcher({"messages": expected, "tools": CF_TOOLS})],
    )
    history = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    response = client.post(
        "/v1/chat/completions", json={**CHAT, "messages": history, "tools": TOOLS}
    )
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "It is 21 degrees."


def openai_shaped(content: str | None, finish: str | None, tool_calls: list | None = None):
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return envelope(
        {
            "id": "chatcmpl-cf",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            ],
            "usage": {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
        }
    )


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (native(), "stop"),
        (native(None, tool_calls=[{"name": "get_time", "arguments": {}}]), "tool_calls"),
        ({**native(), "result": {**native()["result"], "finish_reason": "length"}}, "length"),
        (openai_shaped("Hi", "stop"), "stop"),
        (openai_shaped("Hi", "length"), "length"),
        (openai_shaped("Hi", "model_length"), "length"),
        (openai_shaped("Hi", "content_filter"), "content_filter"),
        (
            openai_shaped(
                None,
                "tool_calls",
                [
                    {
                        "id": "chatcmpl-tool-1",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                    }
                ],
            ),
            "tool_calls",
        ),
    ],
)
@responses.activate
def test_finish_reasons(client, answer, reason):
    responses.post(RUN, json=answer)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json["choices"][0]["finish_reason"] == reason


@responses.activate
def test_openai_shaped_answer_on_the_run_endpoint(client):
    calls = [
        {
            "id": "chatcmpl-tool-1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
        }
    ]
    responses.post(RUN, json=openai_shaped(None, "tool_calls", calls))
    answer = client.post("/v1/chat/completions", json=CHAT).json
    assert answer["id"] == "chatcmpl-cf"
    assert answer["usage"] == {"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24}
    (call,) = answer["choices"][0]["message"]["tool_calls"]
    assert call == {
        "id": "chatcmpl-tool-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }


@responses.activate
def test_missing_usage_is_estimated(client):
    responses.post(RUN, json=envelope({"response": "Hello there"}))
    usage = client.post("/v1/chat/completions", json=CHAT).json["usage"]
    assert usage == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}


@responses.activate(assert_all_requests_are_fired=True)
def test_go_style_run_url_is_used_as_is(client):
    responses.post(
        f"{ACCOUNT}/run/@cf/meta/llama-3.3-70b-instruct-fp8-fast",
        json=native(),
        match=[matchers.header_matcher({"Authorization": f"Bearer {KEY}"})],
    )
    assert (
        client.post("/v1/chat/completions", json={**CHAT, "model": "go-style"}).status_code == 200
    )


@pytest.mark.parametrize(
    "body",
    [
        b"<html>bad gateway</html>",
        b'{"result": null, "success": true, "errors": []}',
        b'{"no": "result"}',
        b"[]",
    ],
)
@responses.activate
def test_garbage_answer_is_502(client, body):
    responses.post(RUN, body=body, status=200)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "upstream_error"


# --- errors ----------------------------------------------------------------------------------


@responses.activate
def test_success_false_is_502_with_the_first_error(client):
    failed = envelope(
        None,
        success=False,
        errors=[
            {"code": 3040, "message": f"Capacity exceeded, see https://x.test/?t={KEY}"},
            {"code": 1, "message": "second"},
        ],
    )
    responses.post(RUN, json=failed)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    message = response.json["error"]["message"]
    assert "Capacity exceeded" in message
    assert "second" not in message
    assert KEY not in message and "x.test" not in message


CF_400 = envelope(None, success=False, errors=[{"code": 5006, "message": "AiError: Bad input"}])


@responses.activate
def test_upstream_400_is_400(client):
    responses.post(f"{ACCOUNT}/run/cf-pair", json=CF_400, status=400)
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "cf-pair"})
    assert response.status_code == 400
    assert response.json["error"]["type"] == "invalid_request_error"
    # A client error does not fall back to the other deployment.
    assert len(responses.calls) == 1


@responses.activate
def test_upstream_400_carries_cloudflare_message(client):
    responses.post(RUN, json=CF_400, status=400)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert "AiError: Bad input" in response.json["error"]["message"]


@pytest.mark.parametrize("status", [429, 500, 503])
@responses.activate
def test_retryable_failures_fall_back_then_502(client, status):
    for account in ("acc123", "other"):
        responses.post(
            f"https://api.cloudflare.com/client/v4/accounts/{account}/ai/run/cf-pair",
            json=envelope(None, False, [{"code": 3040, "message": "Capacity exceeded"}]),
            status=status,
        )
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "cf-pair"})
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert len(responses.calls) == 2


@pytest.mark.parametrize("status", [401, 403])
@responses.activate
def test_refused_key_is_502_without_the_key(client, status):
    refused = envelope(None, False, [{"code": 10000, "message": f"Authentication error {KEY}"}])
    responses.post(RUN, json=refused, status=status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    text = response.get_data(as_text=True)
    assert KEY not in text
    assert "acc123" not in text and "api.cloudflare.com" not in text


# --- streams ---------------------------------------------------------------------------------


def sse_payloads(response) -> list[str]:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


def chunks_of(response) -> list[dict]:
    payloads = sse_payloads(response)
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


@pytest.fixture
def stream_client(provider_client, upstream):
    return provider_client(
        [
            {
                "name": "cf",
                "provider": "cloudflare",
                "base_url": upstream.url + "/client/v4/accounts/acc123/ai",
                "token": KEY,
                "model": MODEL,
            }
        ]
    )


STREAM = {"model": "cf", "messages": USER, "stream": True}
USAGE = {"stream_options": {"include_usage": True}}


def test_native_stream_with_usage(stream_client, upstream):
    upstream.queue(Reply(events=native_events(["Hel", "lo", " there"])))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json={**STREAM, **USAGE}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:4]] == ["Hel", "lo", " there"]
    assert chunks[4]["choices"][0]["finish_reason"] == "stop"
    assert chunks[4]["choices"][0]["delta"] == {}
    assert chunks[5]["choices"] == []
    assert chunks[5]["usage"] == {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
    assert len({c["id"] for c in chunks}) == 1
    sent = upstream.requests[0]
    assert sent.path == f"/client/v4/accounts/acc123/ai/run/{MODEL}"
    assert sent.headers["Authorization"] == f"Bearer {KEY}"
    assert sent.json() == {"messages": USER, "stream": True}


def test_stream_without_include_usage_drops_it(stream_client, upstream):
    upstream.queue(Reply(events=native_events(["a", "b"])))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert all(c["choices"] and "usage" not in c for c in chunks)


def test_stream_chunks_are_written_as_events_arrive(stream_client, upstream):
    events = native_events([f" w{i}" for i in range(6)])
    upstream.queue(Reply(events=events, delay=0.05))
    response = stream_client.post("/v1/chat/completions", json=STREAM, buffered=False)
    try:
        for block in response.response:
            if b'"content":" w1"' in block:
                break
        assert upstream.events_sent < len(events)
    finally:
        response.close()


def test_native_stream_tool_call_fragments(stream_client, upstream):
    # Workers AI streams a call's id and name first, then argument pieces, then an empty
    # closing piece (as Cloudflare's own AI SDK provider documents).
    pieces = [
        {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather"}},
        {"index": 0, "function": {"arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Rome"}'}},
        {"id": None, "type": None, "function": {"name": None}},
    ]
    events = [data({"response": "", "tool_calls": [p]}) for p in pieces]
    events += [data({"response": "", "usage": {"prompt_tokens": 30, "completion_tokens": 9}})]
    upstream.queue(Reply(events=[*events, data("[DONE]")]))
    body = {**STREAM, **USAGE, "tools": TOOLS}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "call_abc",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert calls[1:] == [
        {"index": 0, "function": {"arguments": '{"ci'}},
        {"index": 0, "function": {"arguments": 'ty": "Rome"}'}},
    ]
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Rome"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["total_tokens"] == 39
    assert upstream.requests[0].json()["tools"] == CF_TOOLS


def test_native_stream_whole_tool_call(stream_client, upstream):
    whole = {"name": "get_weather", "arguments": {"city": "Lima"}}
    upstream.queue(Reply(events=[data({"response": "", "tool_calls": [whole]}), data("[DONE]")]))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json={**STREAM, "tools": TOOLS}))
    (call,) = chunks[1]["choices"][0]["delta"]["tool_calls"]
    assert call["index"] == 0 and call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Lima"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_shaped_stream_on_the_run_endpoint(stream_client, upstream):
    base = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 1, "model": MODEL}

    def chunk(delta: dict, finish: str | None = None) -> str:
        return data({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    events = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Sure"}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "chatcmpl-tool-9",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": ""},
                    }
                ]
            }
        ),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
        chunk({}, "tool_calls"),
        data({**base, "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5}}),
        data("[DONE]"),
    ]
    upstream.queue(Reply(events=events))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json={**STREAM, **USAGE}))
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == "Sure"
    tool_pieces = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert tool_pieces[0]["id"] == "chatcmpl-tool-9"
    assert tool_pieces[1] == {"index": 0, "function": {"arguments": "{}"}}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}


def test_whole_json_answer_to_a_stream_request_still_streams(stream_client, upstream):
    upstream.queue(Reply(body=native("all at once")))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json={**STREAM, **USAGE}))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "all at once"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"]["total_tokens"] == 15


@pytest.mark.parametrize(
    ("tail", "word"),
    [
        (
            [data({"errors": [{"code": 3040, "message": "Capacity exceeded"}], "success": False})],
            "Capacity exceeded",
        ),
        ([data({"error": "InferenceUpstreamError: overloaded"})], "overloaded"),
        (["data: {not json"], "invalid JSON"),
        ([], "ended before"),  # cut after the first words, no [DONE]
    ],
)
def test_mid_stream_failures_end_with_an_error_event(stream_client, upstream, tail, word):
    upstream.queue(Reply(events=native_events(["one", "two"])[:2] + tail))
    payloads = sse_payloads(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in payloads
    assert json.loads(payloads[1])["choices"][0]["delta"]["content"] == "one"
    error = json.loads(payloads[-1])["error"]
    assert error["type"] == "upstream_error"
    assert word in error["message"]
    assert str(upstream.port) not in payloads[-1]


def test_failure_before_the_first_byte_is_a_502(stream_client, upstream):
    upstream.queue(Reply(status=500, body=envelope(None, False, [{"code": 1, "message": "x"}])))
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
                    "name": f"cloudflare/{MODEL}",
                    "provider": "cloudflare",
                    "base_url": upstream.url + "/client/v4/accounts/acc123/ai",
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
    model = f"cloudflare/{MODEL}"
    with sdk:
        upstream.queue(Reply(body=native("Bonjour")))
        answer = sdk.chat.completions.create(
            model=model, messages=[{"role": "system", "content": "French."}, *USER]
        )
        assert answer.choices[0].message.content == "Bonjour"
        assert answer.choices[0].finish_reason == "stop"
        assert answer.usage.total_tokens == 15
        sent = upstream.requests[-1]
        assert sent.path == f"/client/v4/accounts/acc123/ai/run/{MODEL}"
        assert sent.headers["Authorization"] == f"Bearer {KEY}"
        assert sent.headers["X-Request-ID"]
        assert sent.json()["messages"][0] == {"role": "system", "content": "French."}

        upstream.queue(Reply(events=native_events(["Bon", "jour", "!"])))
        chunks = list(
            sdk.chat.completions.create(
                model=model, messages=USER, stream=True, stream_options={"include_usage": True}
            )
        )
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Bonjour!"
        assert chunks[-2].choices[0].finish_reason == "stop"
        assert chunks[-1].usage.completion_tokens == 3

        pieces = [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_time"}},
            {"index": 0, "function": {"arguments": '{"tz": '}},
            {"index": 0, "function": {"arguments": '"UTC"}'}},
        ]
        upstream.queue(
            Reply(
                events=[
                    *(data({"response": "", "tool_calls": [p]}) for p in pieces),
                    data("[DONE]"),
                ]
            )
        )
        arguments, finish = "", None
        for chunk in sdk.chat.completions.create(
            model=model, messages=USER, tools=TOOLS, stream=True
        ):
            for call in chunk.choices[0].delta.tool_calls or ():
                arguments += call.function.arguments or ""
            finish = chunk.choices[0].finish_reason or finish
        assert json.loads(arguments) == {"tz": "UTC"}
        assert finish == "tool_calls"

        upstream.queue(
            Reply(status=400, body=envelope(None, False, [{"code": 5006, "message": "Bad input"}]))
        )
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(model=model, messages=USER)
    assert KEY not in proxy.logs()
