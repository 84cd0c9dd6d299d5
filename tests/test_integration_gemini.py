"""The real proxy under gunicorn, driven by the official google-genai SDK on the Gemini surface,
in front of one stub upstream that answers as OpenAI chat, as Gemini (passed through) and as
Anthropic Messages: text, streams, function calls over two turns, token counts, the model list,
cut streams and in-band upstream errors."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
import yaml
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from tests.conftest import TOKEN
from tests.servers import ProxyServer, wait_until
from tests.stub_upstream import Reply, StubUpstream
from tests.test_integration_anthropic import (
    ANTHROPIC,
    ARGS,
    BACKENDS,
    GOOGLE,
    OPENAI,
    check_upstream_auth,
    deployment,
    gemini_answer,
    gemini_events,
    sse,
)

backends = pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.provider)
SLASHED = "openrouter/deepseek/deepseek-chat"
WEATHER = types.FunctionDeclaration(
    name="get_weather",
    description="Weather forecast for a city",
    parameters_json_schema={
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
)
TOOLS = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
WRONG_KEY = "wrong-key-in-the-url-0123456789"


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(stub, tmp_path_factory) -> Iterator[ProxyServer]:
    models = [deployment(stub, backend, backend.name) for backend in BACKENDS]
    models.append({**deployment(stub, OPENAI, SLASHED), "model": "deepseek-chat"})
    config = {
        "auth": {"tokens": [{"name": "team-g", "token": TOKEN}]},
        "models": models,
        "retry": {"max_retries": 0, "base_delay": "10ms"},
        "routing": {"cooldown_seconds": 0},
    }
    path = tmp_path_factory.mktemp("proxy-gemini") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    server = ProxyServer(path).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_stub(stub) -> Iterator[None]:
    stub.handler = None
    stub.requests.clear()
    while not stub.replies.empty():
        stub.replies.get_nowait()
    yield


@pytest.fixture(scope="module")
def client(proxy) -> genai.Client:
    options = types.HttpOptions(
        base_url=proxy.url, timeout=20_000, retry_options=types.HttpRetryOptions(attempts=1)
    )
    return genai.Client(api_key=TOKEN, http_options=options)


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def upstream_body(stub: StubUpstream) -> dict:
    (record,) = stub.requests
    return record.json()


# --- text, whole and streamed ----------------------------------------------------------------


@backends
def test_text(client, stub, backend):
    stub.queue(backend.text(f"Hello from {backend.provider}"))
    config = types.GenerateContentConfig(system_instruction="Be brief.", max_output_tokens=50)
    answer = client.models.generate_content(model=backend.name, contents="Hi", config=config)
    assert answer.text == f"Hello from {backend.provider}"
    assert answer.candidates[0].finish_reason == types.FinishReason.STOP
    prompt, completion = backend.text_usage
    assert answer.usage_metadata.prompt_token_count == prompt
    assert answer.usage_metadata.candidates_token_count == completion
    (record,) = stub.requests
    check_upstream_auth(record, backend)
    body = record.json()
    if backend is GOOGLE:
        # Passed through as the client wrote it; the model is in the URL.
        assert record.path == backend.path
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Hi"}]}]
        assert body["systemInstruction"]["parts"] == [{"text": "Be brief."}]
        assert body["generationConfig"] == {"maxOutputTokens": 50}
    elif backend is OPENAI:
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
        ]
        assert body["max_tokens"] == 50
    else:
        assert body["system"] == "Be brief."
        assert body["max_tokens"] == 50


@backends
def test_stream(client, stub, backend):
    words = ["Once ", "upon ", "a ", "time"]
    stub.queue(backend.stream(words))
    chunks = list(client.models.generate_content_stream(model=backend.name, contents="Tell"))
    assert "".join(c.text for c in chunks) == "".join(words)
    assert chunks[-1].candidates[0].finish_reason == types.FinishReason.STOP
    prompt, completion = backend.stream_usage
    assert chunks[-1].usage_metadata.prompt_token_count == prompt
    check_upstream_auth(stub.requests[0], backend)
    if backend is GOOGLE:
        assert stub.requests[0].path == backend.stream_path


def test_a_model_id_with_slashes(client, stub):
    stub.queue(OPENAI.text("slashed"))
    answer = client.models.generate_content(model=SLASHED, contents="Hi")
    assert answer.text == "slashed"
    assert upstream_body(stub)["model"] == "deepseek-chat"


# --- function calls over two turns -------------------------------------------------------------


def second_turn(first: types.GenerateContentResponse) -> list[types.Content]:
    call = first.function_calls[0]
    result = types.Part.from_function_response(name=call.name, response={"temperature": 21})
    if call.id:
        result.function_response.id = call.id
    return [
        types.Content(role="user", parts=[types.Part(text="Weather in Paris?")]),
        first.candidates[0].content,
        types.Content(role="user", parts=[result]),
    ]


@backends
def test_function_calls_over_two_turns(client, stub, backend):
    stub.queue(backend.tool(), backend.text("It is 21 degrees."))
    first = client.models.generate_content(
        model=backend.name, contents="Weather in Paris?", config=TOOLS
    )
    (call,) = first.function_calls
    assert call.name == "get_weather"
    assert call.args == ARGS
    assert first.text == "Let me check."
    second = client.models.generate_content(
        model=backend.name, contents=second_turn(first), config=TOOLS
    )
    assert second.text == "It is 21 degrees."
    asked = stub.requests[1].json()
    if backend is GOOGLE:
        parts = [p for c in asked["contents"] for p in c["parts"]]
        assert {"functionCall": {"name": "get_weather", "args": ARGS}} in [
            {"functionCall": {k: v for k, v in p["functionCall"].items() if k != "id"}}
            for p in parts
            if "functionCall" in p
        ]
        assert parts[-1]["functionResponse"]["response"] == {"temperature": 21}
    elif backend is OPENAI:
        assistant, tool = asked["messages"][1], asked["messages"][2]
        assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == ARGS
        assert tool["role"] == "tool"
        assert tool["tool_call_id"] == assistant["tool_calls"][0]["id"]
        assert json.loads(tool["content"]) == {"temperature": 21}
        assert asked["tools"][0]["function"]["name"] == "get_weather"
    else:
        tool_use = asked["messages"][1]["content"][-1]
        assert tool_use["type"] == "tool_use" and tool_use["input"] == ARGS
        result = asked["messages"][2]["content"][0]
        assert result["type"] == "tool_result" and result["tool_use_id"] == tool_use["id"]


@backends
def test_a_streamed_function_call_comes_whole(client, stub, backend):
    stub.queue(backend.tool_stream())
    chunks = list(
        client.models.generate_content_stream(
            model=backend.name, contents="Weather in Paris?", config=TOOLS
        )
    )
    calls = [call for chunk in chunks for call in chunk.function_calls or []]
    assert [(c.name, c.args) for c in calls] == [("get_weather", ARGS)]
    assert "".join(c.text or "" for c in chunks if c.candidates) == "Let me check."


# --- counting and listing ------------------------------------------------------------------------


def test_count_tokens_asks_a_google_deployment(client, stub):
    stub.queue(Reply(body={"totalTokens": 42}))
    counted = client.models.count_tokens(model=GOOGLE.name, contents="How many tokens is this?")
    assert counted.total_tokens == 42
    (record,) = stub.requests
    assert record.path == "/v1beta/models/gemini-up:countTokens"
    check_upstream_auth(record, GOOGLE)


@pytest.mark.parametrize("backend", [OPENAI, ANTHROPIC], ids=lambda b: b.provider)
def test_count_tokens_is_estimated_elsewhere(client, stub, backend):
    counted = client.models.count_tokens(model=backend.name, contents="x" * 40)
    assert counted.total_tokens == 10
    assert stub.requests == []


def test_the_model_list(client):
    names = {model.name for model in client.models.list()}
    assert {f"models/{b.name}" for b in BACKENDS} | {f"models/{SLASHED}"} <= names
    model = client.models.get(model=OPENAI.name)
    assert model.name == f"models/{OPENAI.name}"
    assert "generateContent" in model.supported_actions


def test_the_sdk_pages_through_the_list(client):
    names = [model.name for model in client.models.list(config={"page_size": 2})]
    assert len(names) == len(set(names)) == len(BACKENDS) + 1


def test_the_v1beta_list_pages(http, proxy):
    seen, token = [], None
    while True:
        params = {"pageSize": 2, **({"pageToken": token} if token else {})}
        answer = http.get(
            proxy.url + "/v1beta/models", params=params, headers={"x-goog-api-key": TOKEN}
        ).json()
        seen += [m["name"] for m in answer["models"]]
        token = answer.get("nextPageToken")
        if not token:
            break
    assert len(seen) == len(set(seen)) == len(BACKENDS) + 1


# --- failures ---------------------------------------------------------------------------------


@backends
def test_an_upstream_failure_is_a_google_error(client, stub, backend):
    stub.queue(backend.failure)
    with pytest.raises(genai_errors.ServerError) as caught:
        client.models.generate_content(model=backend.name, contents="Hi")
    assert caught.value.code == 502
    assert caught.value.status == "UNAVAILABLE"


@backends
def test_a_cut_stream_raises_in_the_sdk(client, stub, backend):
    stub.queue(backend.cut)
    texts = []
    with pytest.raises(genai_errors.ServerError) as caught:
        for chunk in client.models.generate_content_stream(model=backend.name, contents="Go"):
            texts.append(chunk.text or "")
            assert chunk.candidates[0].finish_reason is None
    assert texts and "".join(texts).startswith("w0")
    assert caught.value.code == 502


IN_BAND = {
    "openai": [
        "data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": "part"}}]}),
        "data: " + json.dumps({"error": {"message": "overloaded mid-way", "type": "server_error"}}),
    ],
    "google": gemini_events(
        [
            gemini_answer([{"text": "part"}], finish=None, usage=None),
            {"error": {"code": 503, "message": "overloaded mid-way", "status": "UNAVAILABLE"}},
        ]
    ),
    "anthropic": [
        sse(
            "message_start",
            message={
                "id": "m",
                "type": "message",
                "role": "assistant",
                "content": [],
                "model": "c",
                "usage": {"input_tokens": 3, "output_tokens": 0},
            },
        ),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "part"}),
        sse("error", error={"type": "overloaded_error", "message": "overloaded mid-way"}),
    ],
}


@backends
@pytest.mark.parametrize("alt", ["sse", "array"])
def test_an_in_band_upstream_error_ends_the_stream_with_an_error(http, proxy, stub, backend, alt):
    stub.queue(Reply(events=IN_BAND[backend.provider]))
    url = f"{proxy.url}/v1beta/models/{backend.name}:streamGenerateContent"
    answer = http.post(
        url + ("?alt=sse" if alt == "sse" else ""),
        json={"contents": [{"parts": [{"text": "Go"}]}]},
        headers={"x-goog-api-key": TOKEN},
        timeout=20,
    )
    assert answer.status_code == 200
    if alt == "sse":
        assert answer.headers["Content-Type"].startswith("text/event-stream")
        events = [
            json.loads(block[len("data: ") :])
            for block in answer.text.replace("\r\n", "\n").split("\n\n")
            if block.startswith("data: ")
        ]
    else:
        assert answer.headers["Content-Type"].startswith("application/json")
        events = json.loads(answer.text)  # a whole array, closed after the error
    assert events[0]["candidates"][0]["content"]["parts"] == [{"text": "part"}]
    assert all("finishReason" not in c for e in events[:-1] for c in e.get("candidates", []))
    error = events[-1]["error"]
    assert error["code"] == 502 and error["status"] == "UNAVAILABLE"
    assert "overloaded mid-way" in error["message"]
    assert "127.0.0.1" not in error["message"] and "up-secret" not in error["message"]


def test_a_whole_array_stream(http, proxy, stub):
    stub.queue(OPENAI.stream(["a", "b"]))
    answer = http.post(
        f"{proxy.url}/v1beta/models/{OPENAI.name}:streamGenerateContent",
        json={"contents": [{"parts": [{"text": "Go"}]}]},
        headers={"x-goog-api-key": TOKEN},
        timeout=20,
    )
    events = json.loads(answer.text)
    assert (
        "".join(p.get("text", "") for e in events for p in e["candidates"][0]["content"]["parts"])
        == "ab"
    )
    assert events[-1]["candidates"][0]["finishReason"] == "STOP"
    assert events[-1]["usageMetadata"]["totalTokenCount"] == 15


# --- the key in the URL --------------------------------------------------------------------------


def test_the_key_in_the_url_authenticates_and_is_never_logged(http, proxy, stub):
    stub.queue(OPENAI.text("by url key"))
    url = f"{proxy.url}/v1beta/models/{OPENAI.name}:generateContent"
    body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    good = http.post(url, params={"key": TOKEN}, json=body, timeout=20)
    assert good.status_code == 200
    assert good.json()["candidates"][0]["content"]["parts"] == [{"text": "by url key"}]
    assert TOKEN not in stub.requests[0].path
    bad = http.post(url, params={"key": WRONG_KEY}, json=body, timeout=20)
    assert bad.status_code == 401
    assert bad.json()["error"]["status"] == "UNAUTHENTICATED"
    assert WRONG_KEY not in bad.text
    missing = http.post(url, json=body, timeout=20)
    assert missing.status_code == 401
    assert wait_until(lambda: proxy.logs().count("/v1beta/models/") >= 3)
    logs = proxy.logs()
    assert WRONG_KEY not in logs and TOKEN not in logs


def test_the_key_in_the_url_stays_out_of_gunicorns_access_log(proxy_factory, stub):
    # gunicorn's own access log writes the request line, query included, when an operator
    # turns it on: the key in it is scrubbed too.
    server = proxy_factory(
        {
            "auth": {"tokens": [{"name": "team-g", "token": TOKEN}]},
            "models": [{"name": "echo", "provider": "echo"}],
        },
        env={"GUNICORN_CMD_ARGS": "--access-logfile -", "LOG_FORMAT": "text"},
    )
    url = f"{server.url}/v1beta/models/echo:generateContent"
    body = {"contents": [{"parts": [{"text": "Hi"}]}]}
    assert requests.post(url, params={"key": TOKEN}, json=body, timeout=20).status_code == 200
    assert requests.post(url, params={"key": WRONG_KEY}, json=body, timeout=20).status_code == 401
    assert wait_until(lambda: server.logs().count("generateContent") >= 2)
    logs = server.logs()
    assert "key=" in logs  # the access log is on and writes the query
    assert WRONG_KEY not in logs and TOKEN not in logs
