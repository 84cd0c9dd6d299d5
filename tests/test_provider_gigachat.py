"""The GigaChat adapter: OAuth access tokens, requests and answers, functions, streams."""

from __future__ import annotations

import base64
import dataclasses
import functools
import json
import time
import types
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import parse_qs

import openai
import pytest
import responses
from responses import matchers

from app.config import ConfigError, ModelConfig, RetryConfig
from app.providers import CallContext
from app.providers.gigachat import DEFAULT_AUTH_URL, GigaChatProvider
from app.upstream import UpstreamPool
from tests.conftest import TOKEN
from tests.servers import wait_until
from tests.stub_upstream import Reply

UPSTREAM = "https://giga.example.test/api/v1"
CHAT_URL = f"{UPSTREAM}/chat/completions"
KEY = "Y2xpZW50LWlkOmNsaWVudC1zZWNyZXQtdmFsdWU="  # an authorization key (Base64)
CHAT = {"model": "giga", "messages": [{"role": "user", "content": "hello"}]}
USAGE = {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
WEATHER_FUNCTION = WEATHER_TOOL["function"]


def oauth(token: str = "access-1", lifetime: float = 1800) -> dict:
    """The OAuth answer: `expires_at` is in milliseconds since the epoch."""
    return {"access_token": token, "expires_at": int((time.time() + lifetime) * 1000)}


def completion(
    content: str = "hi there",
    finish: str = "stop",
    function_call: dict | None = None,
    usage: dict | None = None,
) -> dict:
    """A GigaChat chat answer as the API sends it (no id; `created` in seconds)."""
    message: dict = {"role": "assistant", "content": content}
    if function_call:
        message["function_call"] = function_call
        message["functions_state_id"] = "77d3fb14-457a-46ba-937e-8d856156d003"
    return {
        "choices": [{"message": message, "index": 0, "finish_reason": finish}],
        "created": 1700000000,
        "model": "GigaChat-Pro:1.0.26.20",
        "object": "chat.completion",
        "usage": usage or USAGE,
    }


def giga_model(base_url: str | None = UPSTREAM, name: str = "giga", **extra) -> dict:
    model = {"name": name, "provider": "gigachat", "token": KEY, "model": "GigaChat-Pro"}
    if base_url:
        model["base_url"] = base_url
    return {**model, **extra}


@pytest.fixture
def make_client(provider_client):
    """Provider clients whose failed deployments are tried again at once (no cooldown)."""
    return functools.partial(provider_client, routing={"cooldown_seconds": 0})


@pytest.fixture
def client(make_client):
    return make_client(
        [
            giga_model(headers={"X-Client-ID": "my-app"}),
            giga_model(base_url=None, name="giga-default"),
            {
                "name": "giga-go",
                "provider": "gigachat",
                "url": "https://gw.example.test/gigachat/api/v1/chat/completions",
                "token": "client-id:client-secret",
            },
        ],
    )


def oauth_calls() -> list:
    return [c for c in responses.calls if c.request.url == DEFAULT_AUTH_URL]


def chat_calls() -> list:
    return [c for c in responses.calls if c.request.url != DEFAULT_AUTH_URL]


def sent_body(index: int = 0) -> dict:
    return json.loads(chat_calls()[index].request.body)


# --- OAuth ----------------------------------------------------------------------------------


@responses.activate(assert_all_requests_are_fired=True)
def test_oauth_request_then_chat_with_the_access_token(client):
    responses.post(
        DEFAULT_AUTH_URL,
        json=oauth("access-1"),
        match=[
            matchers.header_matcher(
                {
                    "Authorization": f"Basic {KEY}",
                    "Content-Type": "application/x-www-form-urlencoded",
                    "Accept": "application/json",
                }
            ),
        ],
    )
    responses.post(
        CHAT_URL,
        json=completion("Hi!"),
        match=[
            matchers.header_matcher(
                {
                    "Authorization": "Bearer access-1",
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-42",
                    "X-Client-ID": "my-app",
                }
            ),
            matchers.json_params_matcher(
                {"model": "GigaChat-Pro", "messages": [{"role": "user", "content": "hello"}]}
            ),
        ],
    )
    response = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "req-42"})
    assert response.status_code == 200
    answer = response.json
    assert answer["object"] == "chat.completion"
    assert answer["id"].startswith("chatcmpl-")
    assert answer["model"] == "GigaChat-Pro:1.0.26.20"
    assert answer["created"] == 1700000000
    assert answer["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Hi!"},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ]
    assert answer["usage"] == USAGE

    oauth_request = oauth_calls()[0].request
    assert parse_qs(oauth_request.body.decode()) == {"scope": ["GIGACHAT_API_PERS"]}
    rquid = oauth_request.headers["RqUID"]
    assert uuid.UUID(rquid).version == 4
    # The client's token never goes upstream; the authorization key only to the OAuth service.
    chat_request = chat_calls()[0].request
    assert TOKEN not in json.dumps(dict(chat_request.headers))
    assert KEY not in json.dumps(dict(chat_request.headers))


@responses.activate
def test_every_oauth_request_has_a_fresh_rquid(make_client):
    client = make_client([giga_model(), giga_model(name="other")])
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json=completion())
    for model in ("giga", "other"):
        client.post("/v1/chat/completions", json={**CHAT, "model": model})
    ids = [c.request.headers["RqUID"] for c in oauth_calls()]
    assert len(ids) == 2 and ids[0] != ids[1]


@responses.activate
def test_go_style_client_id_and_secret_are_encoded_and_url_used(client):
    encoded = base64.b64encode(b"client-id:client-secret").decode()
    responses.post(
        DEFAULT_AUTH_URL,
        json=oauth(),
        match=[matchers.header_matcher({"Authorization": f"Basic {encoded}"})],
    )
    responses.post(
        "https://gw.example.test/gigachat/api/v1/chat/completions",
        json=completion(),
        match=[matchers.json_params_matcher({"model": "giga-go"}, strict_match=False)],
    )
    assert client.post("/v1/chat/completions", json={**CHAT, "model": "giga-go"}).status_code == 200


@responses.activate
def test_default_base_url(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(
        "https://gigachat.devices.sberbank.ru/api/v1/chat/completions", json=completion("x")
    )
    response = client.post("/v1/chat/completions", json={**CHAT, "model": "giga-default"})
    assert response.json["choices"][0]["message"]["content"] == "x"


@responses.activate
def test_access_token_is_cached_across_chats(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-1"))
    responses.post(CHAT_URL, json=completion())
    for _ in range(3):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert len(oauth_calls()) == 1
    assert all(c.request.headers["Authorization"] == "Bearer access-1" for c in chat_calls())


@responses.activate
def test_token_near_expiry_is_renewed(client):
    # Both tokens expire within the 60 s margin, so each chat fetches a new one.
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-1", lifetime=30))
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-2", lifetime=30))
    responses.post(CHAT_URL, json=completion())
    client.post("/v1/chat/completions", json=CHAT)
    client.post("/v1/chat/completions", json=CHAT)
    assert len(oauth_calls()) == 2
    assert [c.request.headers["Authorization"] for c in chat_calls()] == [
        "Bearer access-1",
        "Bearer access-2",
    ]


@responses.activate
def test_concurrent_requests_share_one_token_fetch():
    arrived = []

    def slow_oauth(request):
        # The first fetch answers only once every thread has asked for a token.
        assert wait_until(lambda: len(arrived) == 8)
        return 200, {}, json.dumps(oauth("shared"))

    def ask(_):
        arrived.append(1)
        return provider.access_token(ctx)

    responses.add_callback(responses.POST, DEFAULT_AUTH_URL, callback=slow_oauth)
    provider = GigaChatProvider(stand_in_model(), UpstreamPool(RetryConfig(max_retries=0), 8))
    ctx = CallContext(request_id="r1")
    with ThreadPoolExecutor(max_workers=8) as executor:
        tokens = list(executor.map(ask, range(8)))
    assert tokens == ["shared"] * 8
    assert len(oauth_calls()) == 1


@responses.activate
def test_401_renews_the_token_once_and_retries(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-1"))
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-2"))
    responses.post(CHAT_URL, json={"status": 401, "message": "Unauthorized"}, status=401)
    responses.post(CHAT_URL, json=completion("after refresh"))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "after refresh"
    assert [c.request.headers["Authorization"] for c in chat_calls()] == [
        "Bearer access-1",
        "Bearer access-2",
    ]
    # The renewed token is the cached one from then on.
    client.post("/v1/chat/completions", json=CHAT)
    assert len(oauth_calls()) == 2


@responses.activate
def test_401_twice_is_502_without_secrets(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-1"))
    responses.post(DEFAULT_AUTH_URL, json=oauth("access-2"))
    responses.post(
        CHAT_URL, json={"status": 401, "message": f"bad token access-1 key {KEY}"}, status=401
    )
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"
    assert len(chat_calls()) == 2  # one retry, not a loop
    text = response.get_data(as_text=True)
    for secret in (KEY, "access-1", "access-2", "giga.example.test"):
        assert secret not in text


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, {"code": 6, "message": f"credentials doesn't match: {KEY}"}),
        (400, {"code": 7, "message": "scope from db not fully includes consumed scope"}),
        (500, {"message": "boom"}),
    ],
)
@responses.activate
def test_failed_oauth_is_502_without_secrets(client, status, body):
    responses.post(DEFAULT_AUTH_URL, json=body, status=status)
    response = client.post("/v1/chat/completions", json=CHAT)
    # Never the client's fault, even when the OAuth service answers 400.
    assert response.status_code == 502
    assert response.json["error"]["type"] == "upstream_error"
    assert chat_calls() == []
    text = response.get_data(as_text=True)
    assert KEY not in text and "ngw.devices" not in text


@responses.activate
def test_oauth_answer_without_a_token_is_502(client):
    responses.post(DEFAULT_AUTH_URL, json={"expires_at": 1})
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 502


def test_model_without_token_is_a_config_error(make_app):
    with pytest.raises(ConfigError) as caught:
        make_app({"models": [{"name": "g", "provider": "gigachat"}]})
    assert any("models[0].token" in p for p in caught.value.problems)


def stand_in_model(**settings) -> types.SimpleNamespace:
    """A model entry with fields ModelConfig may not have yet (scope, auth_url, ca_bundle)."""
    model = ModelConfig(name="giga", provider="gigachat", token=KEY, base_url=UPSTREAM)
    return types.SimpleNamespace(**{**dataclasses.asdict(model), **settings})


@responses.activate
def test_scope_and_auth_url_come_from_the_model_entry():
    responses.post(
        "https://auth.example.test/api/v2/oauth",
        json=oauth(),
        match=[matchers.body_matcher("scope=GIGACHAT_API_CORP")],
    )
    responses.post(CHAT_URL, json=completion("corp"))
    model = stand_in_model(
        scope="GIGACHAT_API_CORP", auth_url="https://auth.example.test/api/v2/oauth"
    )
    provider = GigaChatProvider(model, UpstreamPool(RetryConfig(max_retries=0), 2))
    answer = provider.chat({**CHAT, "model": "GigaChat"}, CallContext(request_id="r1"))
    assert answer["choices"][0]["message"]["content"] == "corp"


@responses.activate
def test_ca_bundle_verifies_both_calls(tmp_path):
    bundle = tmp_path / "russian_trusted_root_ca.pem"
    bundle.write_text("not read by responses")
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json=completion())
    provider = GigaChatProvider(
        stand_in_model(ca_bundle=str(bundle)), UpstreamPool(RetryConfig(max_retries=0), 2)
    )
    provider.chat({**CHAT, "model": "GigaChat"}, CallContext(request_id="r1"))
    assert [c.request.req_kwargs["verify"] for c in responses.calls] == [str(bundle)] * 2


# --- requests -------------------------------------------------------------------------------


@responses.activate
def test_system_prompt_history_and_parameters(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(
        CHAT_URL,
        json=completion(),
        match=[
            matchers.json_params_matcher(
                {
                    "model": "GigaChat-Pro",
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "Hello!"},
                        {"role": "system", "content": "Answer in English."},
                        {"role": "user", "content": "part one part two"},
                    ],
                    "temperature": 0.3,
                    "top_p": 0.9,
                    "max_tokens": 50,
                    "repetition_penalty": 1.1,
                }
            )
        ],
    )
    body = {
        "model": "giga",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "developer", "content": "Answer in English."},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "part one"},
                    {"type": "image_url", "image_url": {"url": "https://img.example/x.png"}},
                    {"type": "text", "text": "part two"},
                ],
            },
        ],
        "temperature": 0.3,
        "top_p": 0.9,
        "max_completion_tokens": 50,
        "repetition_penalty": 1.1,
        # Fields GigaChat has no use for are dropped.
        "stop": ["\n\n"],
        "presence_penalty": 0.5,
        "logit_bias": {"1": 2},
        "user": "u-1",
        "parallel_tool_calls": True,
    }
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize(
    ("tool_choice", "expected"),
    [
        (None, None),
        ("auto", "auto"),
        ("none", "none"),
        ("required", {"name": "get_weather"}),
        ({"type": "function", "function": {"name": "get_weather"}}, {"name": "get_weather"}),
    ],
)
@responses.activate
def test_tools_and_tool_choice_become_functions(client, tool_choice, expected):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(
        CHAT_URL,
        json=completion(
            "",
            finish="function_call",
            function_call={"name": "get_weather", "arguments": {"city": "Москва"}},
        ),
    )
    body = {**CHAT, "tools": [WEATHER_TOOL, {"type": "function", "function": {"name": "now"}}]}
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    if tool_choice == "required":
        body["tools"] = [WEATHER_TOOL]
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200

    sent = sent_body()
    assert "tools" not in sent and "tool_choice" not in sent
    functions = [WEATHER_FUNCTION]
    if tool_choice != "required":
        functions.append({"name": "now", "parameters": {"type": "object", "properties": {}}})
    assert sent["functions"] == functions
    assert sent.get("function_call") == expected

    choice = response.json["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    (call,) = choice["message"]["tool_calls"]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Москва"}


@responses.activate
def test_legacy_functions_pass_as_they_are(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json=completion())
    body = {**CHAT, "functions": [WEATHER_FUNCTION], "function_call": {"name": "get_weather"}}
    client.post("/v1/chat/completions", json=body)
    sent = sent_body()
    assert sent["functions"] == [WEATHER_FUNCTION]
    assert sent["function_call"] == {"name": "get_weather"}


@responses.activate
def test_tool_results_in_history(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json=completion("Sunny in both."))
    body = {
        "model": "giga",
        "tools": [WEATHER_TOOL],
        "messages": [
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_A",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_B",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                    },
                ],
            },
            {"role": "tool", "tool_call_id": "call_A", "content": '{"temp": 21}'},
            {"role": "tool", "tool_call_id": "call_B", "content": "sunny, 18 C"},
            {"role": "user", "content": "Thanks"},
        ],
    }
    response = client.post("/v1/chat/completions", json=body)
    assert response.json["choices"][0]["message"]["content"] == "Sunny in both."
    # One function call per assistant message, each just before its result; results are JSON.
    assert sent_body()["messages"] == [
        {"role": "user", "content": "Weather in Paris and Oslo?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "function_call": {"name": "get_weather", "arguments": {"city": "Paris"}},
        },
        {"role": "function", "name": "get_weather", "content": '{"temp": 21}'},
        {
            "role": "assistant",
            "content": "",
            "function_call": {"name": "get_weather", "arguments": {"city": "Oslo"}},
        },
        {"role": "function", "name": "get_weather", "content": '{"result": "sunny, 18 C"}'},
        {"role": "user", "content": "Thanks"},
    ]


@pytest.mark.parametrize(
    ("finish", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("blacklist", "content_filter"),
        ("function_call", "tool_calls"),
    ],
)
@responses.activate
def test_finish_reasons_map(client, finish, expected):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    call = {"name": "now", "arguments": {}} if finish == "function_call" else None
    responses.post(CHAT_URL, json=completion("x", finish=finish, function_call=call))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["choices"][0]["finish_reason"] == expected


@responses.activate
def test_usage_counts_precached_prompt_tokens(client):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    usage = {**USAGE, "precached_prompt_tokens": 8}
    responses.post(CHAT_URL, json=completion(usage=usage))
    assert client.post("/v1/chat/completions", json=CHAT).json["usage"] == {
        **USAGE,
        "prompt_tokens_details": {"cached_tokens": 8},
    }


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("upstream_status", "upstream_body", "status", "message"),
    [
        (400, {"status": 400, "message": "Invalid params: temperature"}, 400, "temperature"),
        (404, {"status": 404, "message": "No such model"}, 404, "No such model"),
        (422, {"status": 422, "message": "Unprocessable"}, 422, "Unprocessable"),
        (413, {"status": 413, "message": "Payload too large"}, 413, "Payload too large"),
        (429, {"status": 429, "message": "Too Many Requests"}, 502, None),
        (500, {"status": 500, "message": f"Internal error at {CHAT_URL}"}, 502, None),
        (503, {"status": 503, "message": "unavailable"}, 502, None),
        (403, {"status": 403, "message": "Forbidden"}, 502, None),
    ],
)
@responses.activate
def test_upstream_errors_map(client, upstream_status, upstream_body, status, message):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json=upstream_body, status=upstream_status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    error = response.json["error"]
    if message:
        assert message in error["message"]
    else:
        assert error["type"] == "upstream_error"
    text = response.get_data(as_text=True)
    assert KEY not in text and "giga.example.test" not in text and "access-1" not in text


@pytest.mark.parametrize("status", [429, 500, 503])
@responses.activate
def test_retryable_failures_fall_back_then_502(make_client, status):
    backup = "https://giga-backup.example.test/api/v1"
    client = make_client([giga_model(priority=1), giga_model(base_url=backup, priority=2)])
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json={"status": status, "message": "busy"}, status=status)
    responses.post(f"{backup}/chat/completions", json={"message": "busy"}, status=status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"
    assert [c.request.url for c in chat_calls()] == [CHAT_URL, f"{backup}/chat/completions"]


@responses.activate
def test_failure_falls_back_to_the_next_deployment(make_client):
    backup = "https://giga-backup.example.test/api/v1"
    client = make_client([giga_model(priority=1), giga_model(base_url=backup, priority=2)])
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, json={"message": "busy"}, status=503)
    responses.post(f"{backup}/chat/completions", json=completion("from backup"))
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.json["choices"][0]["message"]["content"] == "from backup"
    assert response.headers["x-ai-proxy-attempts"] == "2"


@pytest.mark.parametrize("body", [b"<html>502</html>", b'{"no": "choices"}', b"[]"])
@responses.activate
def test_garbage_answer_is_502(client, body):
    responses.post(DEFAULT_AUTH_URL, json=oauth())
    responses.post(CHAT_URL, body=body, status=200)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 502


# --- streaming ------------------------------------------------------------------------------


def event(delta: dict, finish: str | None = None, usage: dict | None = None) -> str:
    """One GigaChat stream event: a `data:` chunk whose object is "chat.completion"."""
    choice: dict = {"delta": delta, "index": 0}
    if finish:
        choice["finish_reason"] = finish
    data: dict = {
        "choices": [choice],
        "created": 1700000000,
        "model": "GigaChat-Pro:1.0.26.20",
        "object": "chat.completion",
    }
    if usage:
        data["usage"] = usage
    return "data: " + json.dumps(data, ensure_ascii=False)


def text_events(words: list[str], finish: str = "stop") -> list[str]:
    events = [event({"content": words[0], "role": "assistant"})]
    events += [event({"content": word}) for word in words[1:]]
    events += [event({"content": ""}, finish=finish, usage=USAGE), "data: [DONE]"]
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
def stream_client(make_client, upstream) -> Iterator:
    """Streams come from the real stub; the OAuth call is answered by `responses`."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.post(DEFAULT_AUTH_URL, json=oauth("stream-token"))
        mock.add_passthru(upstream.url)
        yield make_client(
            [
                giga_model(upstream.url + "/api/v1", priority=1),
                giga_model(upstream.url + "/api/v1", priority=2, model="GigaChat-Backup"),
            ],
        )


STREAM = {**CHAT, "stream": True}


def test_stream_text_chunks(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["Giga", "Chat", " спешит"])))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "Giga"}
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks]
    assert "".join(p or "" for p in pieces) == "GigaChat спешит"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # The client did not ask for usage: there is no usage chunk.
    assert all(c["choices"] and "usage" not in c for c in chunks)

    sent = upstream.requests[0]
    assert sent.path == "/api/v1/chat/completions"
    headers = {k.lower(): v for k, v in sent.headers.items()}
    assert headers["authorization"] == "Bearer stream-token"
    assert headers["accept"] == "text/event-stream"
    assert sent.json() == {
        "model": "GigaChat-Pro",
        "messages": [{"role": "user", "content": "hello"}],
        "stream": True,
    }


@pytest.mark.parametrize(
    ("finish", "expected"), [("length", "length"), ("blacklist", "content_filter")]
)
def test_stream_finish_reasons(stream_client, upstream, finish, expected):
    upstream.queue(Reply(events=text_events(["a"], finish=finish)))
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert chunks[-1]["choices"][0]["finish_reason"] == expected


def test_stream_usage_chunk_with_include_usage(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["one", " two"])))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == USAGE
    assert "stream_options" not in upstream.requests[0].json()


def tool_call_parts(chunks: list[dict]) -> list[dict]:
    return [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]


def test_stream_function_call_name_then_arguments(stream_client, upstream):
    upstream.queue(
        Reply(
            events=[
                event(
                    {"role": "assistant", "content": "", "function_call": {"name": "get_weather"}}
                ),
                event(
                    {"function_call": {"arguments": {"city": "Париж"}}},
                    finish="function_call",
                    usage=USAGE,
                ),
                "data: [DONE]",
            ]
        )
    )
    body = {**STREAM, "tools": [WEATHER_TOOL], "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert upstream.requests[0].json()["functions"] == [WEATHER_FUNCTION]

    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    parts = tool_call_parts(chunks)
    start, *fragments = parts
    assert start["index"] == 0 and start["type"] == "function"
    assert start["id"].startswith("call_")
    assert start["function"] == {"name": "get_weather", "arguments": ""}
    assert all("id" not in f and f["index"] == 0 for f in fragments)
    arguments = "".join(f["function"]["arguments"] for f in fragments)
    assert json.loads(arguments) == {"city": "Париж"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == USAGE


def test_stream_whole_function_call_in_one_delta(stream_client, upstream):
    call = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    upstream.queue(
        Reply(
            events=[
                event({"role": "assistant", "content": "", "function_call": call}, "function_call"),
                "data: [DONE]",
            ]
        )
    )
    chunks = chunks_of(
        stream_client.post("/v1/chat/completions", json={**STREAM, "tools": [WEATHER_TOOL]})
    )
    parts = tool_call_parts(chunks)
    assert parts[0]["function"] == {"name": "get_weather", "arguments": ""}
    assert json.loads("".join(p["function"]["arguments"] for p in parts)) == {"city": "Oslo"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    "error_event",
    [
        'data: {"status": 500, "message": "Internal Server Error"}',
        'event: error\ndata: {"status": 500, "message": "Internal Server Error"}',
    ],
)
def test_stream_error_event_mid_stream_is_in_band(stream_client, upstream, error_event):
    upstream.queue(Reply(events=text_events(["partial", " answer"])[:2] + [error_event]))
    data = events_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert "[DONE]" not in data
    error = json.loads(data[-1])["error"]
    assert error["type"] == "upstream_error"
    assert "Internal Server Error" in error["message"]
    assert str(upstream.port) not in data[-1]
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in data[:-1]]
    assert contents == ["partial", " answer"]
    assert len(upstream.requests) == 1


def test_stream_error_before_any_content_falls_back(stream_client, upstream):
    upstream.queue(
        Reply(events=['data: {"status": 503, "message": "overloaded"}']),
        Reply(events=text_events(["from", " backup"])),
    )
    response = stream_client.post("/v1/chat/completions", json=STREAM)
    assert response.headers["x-ai-proxy-attempts"] == "2"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks_of(response))
    assert text == "from backup"
    assert upstream.requests[1].json()["model"] == "GigaChat-Backup"


def test_stream_garbage_is_an_in_band_error(stream_client, upstream):
    upstream.queue(Reply(events=text_events(["one", " two"])[:2] + ["data: {not json"]))
    data = events_of(stream_client.post("/v1/chat/completions", json=STREAM))
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"


def test_stream_401_renews_the_token(make_client, upstream):
    with responses.RequestsMock() as mock:
        mock.post(DEFAULT_AUTH_URL, json=oauth("old"))
        mock.post(DEFAULT_AUTH_URL, json=oauth("new"))
        mock.add_passthru(upstream.url)
        client = make_client([giga_model(upstream.url + "/api/v1")])
        upstream.queue(
            Reply(status=401, body={"status": 401, "message": "Unauthorized"}),
            Reply(events=text_events(["ok"])),
        )
        chunks = chunks_of(client.post("/v1/chat/completions", json=STREAM))
    assert chunks[0]["choices"][0]["delta"]["content"] == "ok"
    auth = [r.headers["Authorization"] for r in upstream.requests]
    assert auth == ["Bearer old", "Bearer new"]


def test_upstream_that_ignores_stream_still_streams(stream_client, upstream):
    upstream.queue(Reply(body=completion("whole answer")))
    body = {**STREAM, "stream_options": {"include_usage": True}}
    chunks = chunks_of(stream_client.post("/v1/chat/completions", json=body))
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "whole answer"}
    assert chunks[0]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["usage"] == USAGE


# --- the real proxy under gunicorn, driven by the openai SDK --------------------------------


def oauth_reply(record) -> Reply:
    assert record.headers["Authorization"] == f"Basic {KEY}"
    assert parse_qs(record.body.decode()) == {"scope": ["GIGACHAT_API_PERS"]}
    return Reply(body=oauth("int-token"))


def test_integration_with_the_openai_sdk(upstream, proxy_factory):
    replies = iter(
        [
            Reply(body=completion("Привет!")),
            Reply(events=text_events(["Hello", " from", " GigaChat"])),
        ]
    )

    def handler(record):
        if record.path.endswith("/oauth"):
            return oauth_reply(record)
        assert record.headers["Authorization"] == "Bearer int-token"
        return next(replies)

    upstream.handler = handler
    proxy = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [
                {**giga_model(upstream.url + "/api/v1"), "auth_url": upstream.url + "/api/v2/oauth"}
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
        answer = sdk.chat.completions.create(model="giga", messages=CHAT["messages"])
        assert answer.choices[0].message.content == "Привет!"
        assert answer.usage.total_tokens == 15

        stream = sdk.chat.completions.create(
            model="giga",
            messages=CHAT["messages"],
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from GigaChat"
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 15
    # One OAuth call served both chats.
    paths = [r.path for r in upstream.requests]
    assert paths == ["/api/v2/oauth", "/api/v1/chat/completions", "/api/v1/chat/completions"]
    logs = proxy.logs()
    assert KEY not in logs and "int-token" not in logs
