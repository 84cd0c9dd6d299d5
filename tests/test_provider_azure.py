"""The Azure OpenAI adapter: deployment URLs, `api-key`, `api-version`, and OpenAI's answers."""

from __future__ import annotations

import dataclasses
import functools
import json
import types

import openai
import pytest
import responses
from responses import matchers

from app.config import ConfigError, ModelConfig, RetryConfig
from app.providers import CallContext
from app.providers.azure import AzureProvider
from app.upstream import UpstreamPool
from tests.conftest import TOKEN
from tests.stub_upstream import Reply

RESOURCE = "https://my-resource.openai.azure.com"
CHAT_URL = f"{RESOURCE}/openai/deployments/gpt4o-prod/chat/completions"
KEY = "0123456789abcdef0123456789abcdef"
VERSION = {"api-version": "2024-10-21"}
CHAT = {"model": "azure-gpt", "messages": [{"role": "user", "content": "hello"}]}
USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}
FILTERS = {
    "hate": {"filtered": False, "severity": "safe"},
    "self_harm": {"filtered": False, "severity": "safe"},
    "sexual": {"filtered": False, "severity": "safe"},
    "violence": {"filtered": False, "severity": "safe"},
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


def completion(
    content: str | None = "hi there",
    finish: str = "stop",
    tool_calls: list | None = None,
    usage: dict | None = None,
) -> dict:
    """An Azure OpenAI chat completion, content-filter annotations included."""
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-azure-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-2024-08-06",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERS}],
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": finish,
                "logprobs": None,
                "content_filter_results": FILTERS,
            }
        ],
        "usage": usage or USAGE,
        "system_fingerprint": "fp_azure",
    }


def azure_model(base_url: str = RESOURCE, name: str = "azure-gpt", **extra) -> dict:
    return {
        "name": name,
        "provider": "azure",
        "base_url": base_url,
        "token": KEY,
        "model": "gpt4o-prod",
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
            azure_model(headers={"X-Title": "my-app"}),
            {
                "name": "azure/gpt-4o-mini",
                "provider": "azure",
                "base_url": "https://other.openai.azure.com/openai/",
                "token": KEY,
            },
            {
                "name": "azure-go",
                "provider": "azure",
                "url": "https://go.openai.azure.com/openai/deployments/go-dep/chat/completions"
                "?api-version=2024-02-01",
                "token": KEY,
            },
            {
                "name": "azure-go-bare",
                "provider": "azure",
                "url": "https://go.openai.azure.com/openai/deployments/bare-dep/chat/completions",
                "token": KEY,
            },
        ],
    )


def sent_body(call: int = 0) -> dict:
    return json.loads(responses.calls[call].request.body)


# --- requests and answers -------------------------------------------------------------------


@responses.activate(assert_all_requests_are_fired=True)
def test_request_goes_to_the_deployment_with_api_key(client):
    responses.post(
        CHAT_URL,
        json=completion("Hi!"),
        match=[
            matchers.query_param_matcher(VERSION),
            matchers.header_matcher(
                {
                    "api-key": KEY,
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-9",
                    "X-Title": "my-app",
                }
            ),
            matchers.json_params_matcher(
                {
                    "model": "gpt4o-prod",
                    "messages": [{"role": "user", "content": "hello"}],
                    "temperature": 0.2,
                    "seed": 7,
                }
            ),
        ],
    )
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "temperature": 0.2, "seed": 7},
        headers={"X-Request-ID": "req-9"},
    )
    assert response.status_code == 200
    answer = response.json
    assert answer["id"] == "chatcmpl-azure-1"
    assert answer["object"] == "chat.completion"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "Hi!"}
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == USAGE

    sent = responses.calls[0].request
    assert "Authorization" not in sent.headers
    assert KEY not in sent.url
    assert TOKEN not in json.dumps(dict(sent.headers))


@responses.activate(assert_all_requests_are_fired=True)
def test_deployment_from_the_name_and_go_style_urls(client):
    responses.post(
        "https://other.openai.azure.com/openai/deployments/gpt-4o-mini/chat/completions",
        json=completion("a"),
        match=[matchers.query_param_matcher(VERSION)],
    )
    responses.post(
        "https://go.openai.azure.com/openai/deployments/go-dep/chat/completions",
        json=completion("b"),
        match=[matchers.query_param_matcher({"api-version": "2024-02-01"})],
    )
    responses.post(
        "https://go.openai.azure.com/openai/deployments/bare-dep/chat/completions",
        json=completion("c"),
        match=[matchers.query_param_matcher(VERSION)],
    )
    for model, text in (("azure/gpt-4o-mini", "a"), ("azure-go", "b"), ("azure-go-bare", "c")):
        response = client.post("/v1/chat/completions", json={**CHAT, "model": model})
        assert response.json["choices"][0]["message"]["content"] == text


@responses.activate
def test_api_version_comes_from_the_model_entry():
    responses.post(
        CHAT_URL,
        json=completion(),
        match=[matchers.query_param_matcher({"api-version": "2025-01-01-preview"})],
    )
    config = dataclasses.asdict(
        ModelConfig(name="az", provider="azure", base_url=RESOURCE, token=KEY)
    )
    model = types.SimpleNamespace(**{**config, "api_version": "2025-01-01-preview"})
    provider = AzureProvider(model, UpstreamPool(RetryConfig(max_retries=0), 2))
    answer = provider.chat({**CHAT, "model": "gpt4o-prod"}, CallContext(request_id="r1"))
    assert answer["choices"][0]["message"]["content"] == "hi there"


def test_base_url_is_required(make_app):
    with pytest.raises(ConfigError) as caught:
        make_app({"models": [{"name": "az", "provider": "azure", "token": "k"}]})
    assert any(p.startswith("models[0].base_url: required") for p in caught.value.problems)


@responses.activate
def test_system_history_tools_and_results_pass_unchanged(client):
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
    ]
    responses.post(CHAT_URL, json=completion(None, finish="tool_calls", tool_calls=calls))
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather?"}]},
        {"role": "assistant", "content": None, "tool_calls": calls},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 18}'},
        {"role": "user", "content": "And tomorrow?"},
    ]
    body = {
        **CHAT,
        "messages": messages,
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": False,
    }
    response = client.post("/v1/chat/completions", json=body)
    assert sent_body() == {**body, "model": "gpt4o-prod"}
    choice = response.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["tool_calls"] == calls
    assert json.loads(choice["message"]["tool_calls"][0]["function"]["arguments"]) == {
        "city": "Oslo"
    }


@pytest.mark.parametrize("finish", ["stop", "length", "content_filter", "tool_calls"])
@responses.activate
def test_finish_reasons_are_relayed(client, finish):
    responses.post(CHAT_URL, json=completion("x", finish=finish))
    assert client.post("/v1/chat/completions", json=CHAT).json["choices"][0]["finish_reason"] == (
        finish
    )


@responses.activate
def test_usage_details_are_relayed(client):
    usage = {**USAGE, "prompt_tokens_details": {"cached_tokens": 4}}
    responses.post(CHAT_URL, json=completion(usage=usage))
    assert client.post("/v1/chat/completions", json=CHAT).json["usage"] == usage


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_status", "upstream_body", "status", "code", "message"),
    [
        (
            400,
            {
                "error": {
                    "code": "content_filter",
                    "message": "The response was filtered due to the prompt triggering "
                    "Azure OpenAI's content management policy.",
                    "param": "prompt",
                    "status": 400,
                }
            },
            400,
            "content_filter",
            "content management policy",
        ),
        (
            404,
            {"error": {"code": "DeploymentNotFound", "message": "The deployment does not exist"}},
            404,
            "DeploymentNotFound",
            "does not exist",
        ),
        (
            401,
            {"error": {"code": "401", "message": f"Access denied: invalid key {KEY}"}},
            502,
            "upstream_error",
            None,
        ),
        (
            429,
            {"error": {"code": "429", "message": "Requests to the deployment exceeded rate"}},
            502,
            "upstream_error",
            None,
        ),
        (500, {"error": {"message": f"boom at {CHAT_URL}"}}, 502, "upstream_error", None),
    ],
)
@responses.activate
def test_upstream_errors_map(client, upstream_status, upstream_body, status, code, message):
    responses.post(CHAT_URL, json=upstream_body, status=upstream_status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    error = response.json["error"]
    assert error["code"] == code
    if message:
        assert message in error["message"]
    text = response.get_data(as_text=True)
    assert KEY not in text and "my-resource" not in text


@pytest.mark.parametrize("status", [429, 500, 503])
@responses.activate
def test_retryable_failures_fall_back_then_502(make_client, status):
    backup = "https://backup.openai.azure.com"
    client = make_client([azure_model(priority=1), azure_model(backup, priority=2)])
    responses.post(CHAT_URL, json={"error": {"message": "busy"}}, status=status)
    backup_url = f"{backup}/openai/deployments/gpt4o-prod/chat/completions"
    responses.post(backup_url, json={"error": {"message": "busy"}}, status=status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert [c.request.url.split("?")[0] for c in responses.calls] == [CHAT_URL, backup_url]


@responses.activate
def test_failure_falls_back_to_the_next_deployment(make_client):
    backup = "https://backup.openai.azure.com"
    client = make_client([azure_model(priority=1), azure_model(backup, priority=2)])
    responses.post(CHAT_URL, json={"error": {"message": "busy"}}, status=429)
    responses.post(
        f"{backup}/openai/deployments/gpt4o-prod/chat/completions", json=completion("backup")
    )
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["choices"][0]["message"]["content"] == "backup"
    assert response.headers["x-ai-proxy-attempts"] == "2"


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"no": "choices"}', b"[]"])
@responses.activate
def test_garbage_answer_is_502(client, body):
    responses.post(CHAT_URL, body=body, status=200)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 502


# --- streaming ------------------------------------------------------------------------------


def chunk(delta: dict | None, finish: str | None = None, **extra) -> str:
    """One Azure stream event (`data:` chunk) with its content-filter annotations."""
    choices = []
    if delta is not None:
        choices = [
            {
                "index": 0,
                "delta": delta,
                "finish_reason": finish,
                "logprobs": None,
                "content_filter_results": {} if finish else FILTERS,
            }
        ]
    data = {
        "id": "chatcmpl-azure-s",
        "object": "chat.completion.chunk",
        "created": 1700000001,
        "model": "gpt-4o-2024-08-06",
        "system_fingerprint": "fp_azure",
        "choices": choices,
        **extra,
    }
    return "data: " + json.dumps(data)


# Azure opens a stream with the prompt's filter results and no choices.
PROMPT_FILTER = "data: " + json.dumps(
    {
        "choices": [],
        "created": 0,
        "id": "",
        "model": "",
        "object": "",
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTERS}],
    }
)


def text_events(words: list[str], finish: str = "stop") -> list[str]:
    events = [PROMPT_FILTER, chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": word}) for word in words]
    events += [chunk({}, finish), chunk(None, usage=USAGE), "data: [DONE]"]
    return events


def events_of(response) -> list[str]:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    return [block.removeprefix("data: ") for block in text.strip().split("\n\n")]


def chunks_of(response) -> list[dict]:
    data = events_of(response)
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.fixture
def stream_client(make_client, upstream):
    return make_client(
        [
            azure_model(upstream.url, priority=1),
            azure_model(upstream.url, priority=2, model="backup-dep"),
        ],
    )


STREAM = {**CHAT, "stream": True}


def test_stream_text_chunks_without_filter_only_chunks(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["Hello", " from", " Azure"])))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert all(c["choices"] for c in chunks)  # no prompt-filter chunk, no usage chunk
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == "Hello from Azure"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"

    sent = upstream.requests[0]
    assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["api-key"] == KEY
    assert headers["accept"] == "text/event-stream"
    assert "authorization" not in headers
    assert sent.json() == {
        "model": "gpt4o-prod",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize("finish", ["length", "content_filter"])
def test_stream_finish_reasons(stream_client, upstream, finish):
    upstream.queue(Reply(events=text_events(["a"], finish=finish)))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert chunks[-1]["choices"][0]["finish_reason"] == finish


def test_stream_usage_chunk_with_include_usage(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["one", " two"])))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == USAGE


def test_stream_tool_call_arguments_arrive_in_fragments(stream_client, upstream):
    start = {
        "index": 0,
        "id": "call_Z",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    fragments = ['{"ci', 'ty": "Os', 'lo"}']
    events = [PROMPT_FILTER, chunk({"role": "assistant", "content": None, "tool_calls": [start]})]
    events += [
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": f}}]}) for f in fragments
    ]
    events += [chunk({}, "tool_calls"), chunk(None, usage=USAGE), "data: [DONE]"]
    upstream.queue(Reply(events=events))
    body = {**STREAM, "tools": [WEATHER_TOOL], "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert upstream.requests[0].json()["tools"] == [WEATHER_TOOL]
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0] == start
    assert [c["function"]["arguments"] for c in calls[1:]] == fragments
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Oslo"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == USAGE


def test_stream_error_event_mid_stream_is_in_band(stream_client, upstream):
    error = 'data: {"error": {"code": "server_error", "message": "The server had an error"}}'
    upstream.queue(Reply(events=text_events(["partial", " answer"])[:4] + [error]))
    data = events_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    error_body = json.loads(data[-1])["error"]
    assert error_body["type"] == "upstream_error"
    assert "The server had an error" in error_body["message"]
    assert str(upstream.port) not in data[-1]
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]]
    assert contents == ["", "partial", " answer"]
    assert len(upstream.requests) == 1


def test_stream_error_before_any_content_falls_back(stream_client, upstream):
    upstream.queue(
        Reply(events=[PROMPT_FILTER, 'data: {"error": {"message": "overloaded"}}']),
        Reply(events=text_events(["from", " backup"])),
    )
    response = stream_client.post("/v1/chat/completions", json=STREAM)
    assert response.headers["x-ai-proxy-attempts"] == "2"
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks_of(response))
    assert text == "from backup"
    assert upstream.requests[1].path.startswith("/openai/deployments/backup-dep/")


def test_stream_garbage_is_an_in_band_error(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["one"])[:3] + ["data: {not json"]))
    data = events_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"


def test_upstream_that_ignores_stream_still_streams(stream_client, upstream):
    upstream.queue(Reply(body=completion("whole answer")))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert chunks[0]["choices"][0]["delta"]["content"] == "whole answer"
    assert chunks[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == USAGE


# --- the real proxy under gunicorn, driven by the openai SDK --------------------------------


def test_integration_with_the_openai_sdk(upstream, proxy_factory):
    stub = upstream
    proxy = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [azure_model(stub.url)],
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
        stub.queue(Reply(body=completion("Hello from Azure")))
        answer = sdk.chat.completions.create(model="azure-gpt", messages=CHAT["messages"])
        assert answer.choices[0].message.content == "Hello from Azure"
        assert answer.usage.total_tokens == 12

        stub.queue(Reply(events=text_events(["Streamed", " from", " Azure"])))
        chunks = list(
            sdk.chat.completions.create(
                model="azure-gpt",
                messages=CHAT["messages"],
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Streamed from Azure"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 12
    for sent in stub.requests:
        assert sent.path == "/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21"
        headers = {k.lower(): v for k, v in sent.headers.items()}
        assert headers["api-key"] == KEY
        assert TOKEN not in json.dumps(sent.headers)
    assert KEY not in proxy.logs()
