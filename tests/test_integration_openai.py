"""The real proxy under gunicorn, in front of a stub upstream, driven by the official openai SDK."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import openai
import pytest
import requests
import yaml

from tests.conftest import TOKEN
from tests.servers import ProxyServer, wait_until
from tests.stub_upstream import Reply, StubUpstream, chat_chunks, chat_completion

UPSTREAM_KEY = "sk-upstream-secret"
MAX_BODY_BYTES = 32 * 1024
# Each deployment that is made to fail has its own name, so no cooldown it earns can touch the
# deployments other tests use.
STUB_MODELS = ("gpt-test", "gpt-fail", "gpt-cut", "gpt-slow")


def stub_model(stub: StubUpstream, name: str, **extra) -> dict:
    return {
        "name": name,
        "provider": "openai",
        "base_url": stub.url + "/v1",
        "token": UPSTREAM_KEY,
        "model": "up-model",
        **extra,
    }


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(stub, tmp_path_factory) -> Iterator[ProxyServer]:
    """One gunicorn for the whole module."""
    config = {
        "auth": {"tokens": [{"name": "team-a", "token": TOKEN}]},
        "server": {"max_body_bytes": MAX_BODY_BYTES},
        "models": [
            {"name": "echo", "provider": "echo", "model_size": "SMALL"},
            {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
            stub_model(stub, "gpt-test", categories=["coding"]),
            *(stub_model(stub, name) for name in STUB_MODELS[1:]),
        ],
        "aliases": {"fast": ["gpt-test", "echo"]},
        "retry": {"max_retries": 0, "base_delay": "10ms"},
        # Tests reuse failing deployments; cooldowns have their own tests.
        "routing": {"cooldown_seconds": 0},
    }
    path = tmp_path_factory.mktemp("proxy") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    server = ProxyServer(path).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_stub(stub) -> Iterator[None]:
    """The module's stub starts every test with no queued replies and no recorded requests."""
    _reset(stub)
    yield
    _reset(stub)


def _reset(stub: StubUpstream) -> None:
    stub.handler = None
    stub.requests.clear()
    stub.stream_closed.clear()
    stub.events_sent = 0
    while not stub.replies.empty():
        stub.replies.get_nowait()


@pytest.fixture(scope="module")
def client(proxy) -> Iterator[openai.OpenAI]:
    sdk = openai.OpenAI(
        base_url=proxy.url + "/v1",
        api_key=TOKEN,
        max_retries=0,
        timeout=20,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    """Raw HTTP for what the SDK hides: exact status, headers and SSE bytes."""
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def auth(extra: dict | None = None) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **(extra or {})}


def lower_headers(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def sse_data(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    payloads = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        lines = [line[5:].lstrip() for line in block.split("\n") if line.startswith("data:")]
        if lines:
            payloads.append("\n".join(lines))
    return payloads


USER = [{"role": "user", "content": "hello there world"}]


# --- models ---------------------------------------------------------------------------------


def test_models_list_has_names_aliases_and_categories(client):
    models = list(client.models.list())
    ids = {m.id for m in models}
    assert {"echo", "echo-large", *STUB_MODELS} <= ids
    assert "fast" in ids
    assert {"SMALL", "BIG"} <= ids
    assert "CODING" in {i.upper() for i in ids}
    for model in models:
        assert model.object == "model"
        assert isinstance(model.created, int)
        assert isinstance(model.owned_by, str) and model.owned_by


def test_retrieve_one_model(client):
    model = client.models.retrieve("gpt-test")
    assert model.id == "gpt-test"
    assert model.object == "model"
    assert model.owned_by


def test_retrieve_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.status_code == 404
    assert caught.value.code == "model_not_found"


# --- chat, not streamed ---------------------------------------------------------------------


def test_chat_through_openai_deployment(client, stub):
    stub.queue(Reply(body=chat_completion("hi from upstream")))
    answer = client.chat.completions.create(
        model="gpt-test",
        messages=USER,
        extra_body={"custom_field": {"nested": [1, 2]}, "top_k": 7},
    )
    assert answer.choices[0].message.content == "hi from upstream"
    assert answer.usage.total_tokens == 7

    assert len(stub.requests) == 1
    sent = stub.requests[0]
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    headers = lower_headers(sent.headers)
    assert headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert TOKEN not in json.dumps(sent.headers)
    assert TOKEN.encode() not in sent.body
    assert headers.get("x-request-id")
    body = sent.json()
    assert body["model"] == "up-model"
    assert body["messages"] == USER
    assert body["custom_field"] == {"nested": [1, 2]}
    assert body["top_k"] == 7


def test_echo_model_needs_no_upstream(client, stub):
    answer = client.chat.completions.create(model="echo", messages=USER)
    assert answer.choices[0].message.content == "hello there world"
    assert answer.choices[0].finish_reason == "stop"
    assert stub.requests == []


def test_routing_headers_and_request_id(client, stub):
    stub.queue(Reply(body=chat_completion()))
    raw = client.chat.completions.with_raw_response.create(
        model="gpt-test", messages=USER, extra_headers={"X-Request-ID": "client-req_1.a:b"}
    )
    assert raw.headers["x-request-id"] == "client-req_1.a:b"
    assert raw.headers["x-ai-proxy-model"] == "gpt-test"
    assert raw.headers["x-ai-proxy-attempts"] == "1"
    assert raw.parse().choices[0].message.content == "hi there"
    # The same id goes upstream, so one request can be followed across both logs.
    assert lower_headers(stub.requests[0].headers)["x-request-id"] == "client-req_1.a:b"


def test_category_header_names_the_member(client):
    raw = client.chat.completions.with_raw_response.create(model="small", messages=USER)
    assert raw.headers["x-ai-proxy-model"] == "echo"
    assert raw.headers["x-ai-proxy-attempts"] == "1"


def test_invalid_request_id_is_replaced(http, proxy):
    bad = "has spaces and / slashes"
    response = http.get(proxy.url + "/v1/models", headers=auth({"X-Request-ID": bad}))
    assert response.status_code == 200
    made = response.headers["x-request-id"]
    assert made and made != bad
    too_long = "a" * 129
    response = http.get(proxy.url + "/v1/models", headers=auth({"X-Request-ID": too_long}))
    assert response.headers["x-request-id"] != too_long


# --- chat, streamed -------------------------------------------------------------------------


def test_stream_collects_text_without_usage(client, stub):
    stub.queue(Reply(events=chat_chunks(["Hello", "streaming", "world"])))
    chunks = list(client.chat.completions.create(model="gpt-test", messages=USER, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello streaming world"
    # The client did not ask for usage: no usage chunk, no chunk without choices.
    assert all(c.usage is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = stub.requests[0].json()
    assert sent["stream"] is True
    assert sent["model"] == "up-model"


def test_stream_with_include_usage_ends_with_usage_chunk(client, stub):
    stub.queue(Reply(events=chat_chunks(["one", "two", "three", "four"])))
    chunks = list(
        client.chat.completions.create(
            model="gpt-test",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "one two three four"
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 4
    assert last.usage.total_tokens == 7
    assert all(c.usage is None for c in chunks[:-1])


def test_echo_streams_word_by_word(client):
    chunks = list(client.chat.completions.create(model="echo", messages=USER, stream=True))
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert pieces == ["hello", " there", " world"]


def test_stream_headers(http, proxy, stub):
    stub.queue(Reply(events=chat_chunks(["a", "b"])))
    response = http.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-test", "messages": USER, "stream": True},
        headers=auth({"X-Request-ID": "stream-1"}),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["x-request-id"] == "stream-1"
    assert response.headers["x-ai-proxy-model"] == "gpt-test"
    assert response.headers["x-ai-proxy-attempts"] == "1"
    events = sse_data(response.text)
    assert events[-1] == "[DONE]"


def test_stream_cut_by_upstream_ends_with_in_band_error(http, proxy, stub):
    words = [f"w{i}" for i in range(10)]
    stub.queue(Reply(events=chat_chunks(words), cut_after=3))
    response = http.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-cut", "messages": USER, "stream": True},
        headers=auth(),
        timeout=10,
    )
    assert response.status_code == 200
    events = sse_data(response.text)
    assert "[DONE]" not in events
    chunks = [json.loads(e) for e in events]
    # What arrived before the cut is relayed, then one error event ends the stream.
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:3]] == ["w0", " w1"]
    error = chunks[-1]["error"]
    assert set(error) >= {"message", "type", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert str(stub.port) not in error["message"]
    assert all("error" not in c for c in chunks[:-1])


def test_stream_cut_by_upstream_raises_in_sdk(client, stub):
    stub.queue(Reply(events=chat_chunks([f"w{i}" for i in range(10)]), cut_after=3))
    stream = client.chat.completions.create(model="gpt-cut", messages=USER, stream=True)
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


def test_client_disconnect_closes_upstream_stream(proxy, stub):
    words = [f"w{i}" for i in range(300)]
    stub.queue(Reply(events=chat_chunks(words), delay=0.03))
    body = json.dumps({"model": "gpt-slow", "messages": USER, "stream": True}).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    try:
        sock.sendall(request)
        received = b""
        while received.count(b"data:") < 3:
            data = sock.recv(65536)
            assert data, "the proxy closed the stream early"
            received += data
        assert received.startswith(b"HTTP/1.1 200")
    finally:
        sock.close()
    assert stub.stream_closed.wait(5), "the upstream stream was still open 5s after the client left"
    assert stub.events_sent < len(words)
    # The proxy keeps serving.
    assert requests.get(proxy.url + "/healthz", timeout=5).status_code == 200


# --- errors as clients see them ------------------------------------------------------------


def test_wrong_token_is_401(proxy):
    bad = openai.OpenAI(
        base_url=proxy.url + "/v1",
        api_key="sk-wrong",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False),
    )
    with bad, pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="echo", messages=USER)
    err = caught.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.type == "authentication_error"
    assert err.response.headers["WWW-Authenticate"].startswith("Bearer")
    assert err.response.headers["Content-Type"].startswith("application/json")


def test_missing_token_is_401_json(http, proxy):
    response = http.get(proxy.url + "/v1/models")
    assert response.status_code == 401
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_unknown_model_is_404(client, stub):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=USER)
    err = caught.value
    assert err.status_code == 404
    assert err.code == "model_not_found"
    assert err.type == "invalid_request_error"
    assert stub.requests == []


def test_unknown_path_is_404_json(http, proxy):
    response = http.get(proxy.url + "/v1/no-such-endpoint", headers=auth())
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_wrong_method_is_405_with_allow(http, proxy):
    response = http.get(proxy.url + "/v1/chat/completions", headers=auth())
    assert response.status_code == 405
    assert response.headers["Content-Type"].startswith("application/json")
    assert "POST" in response.headers["Allow"]
    error = response.json()["error"]
    assert error["code"] == "method_not_allowed"
    assert error["type"] == "invalid_request_error"


def test_body_over_limit_is_413_json(http, proxy, stub):
    big = [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1000)}]
    response = http.post(
        proxy.url + "/v1/chat/completions",
        json={"model": "gpt-test", "messages": big},
        headers=auth(),
        timeout=10,
    )
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "request_too_large"
    assert error["type"] == "invalid_request_error"
    assert stub.requests == []


def test_body_over_limit_as_the_sdk_sees_it(client):
    big = [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1000)}]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="echo", messages=big)
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"


def test_bad_json_is_400(http, proxy):
    response = http.post(
        proxy.url + "/v1/chat/completions",
        data=b'{"model": "echo", "messages": [',
        headers=auth({"Content-Type": "application/json"}),
        timeout=10,
    )
    assert response.status_code == 400
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"


def test_upstream_500_is_502_without_upstream_details(client, stub):
    leak = f"boom at {stub.url}/v1/chat/completions with key {UPSTREAM_KEY}"
    stub.queue(Reply(status=500, body={"error": {"message": leak, "type": "server_error"}}))
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="gpt-fail", messages=USER)
    err = caught.value
    assert err.status_code == 502
    assert err.response.headers["Content-Type"].startswith("application/json")
    assert err.type == "upstream_error"
    assert err.code == "upstream_error"
    message = err.body["message"]
    assert message
    assert str(stub.port) not in message
    assert "127.0.0.1" not in message
    assert UPSTREAM_KEY not in message
    assert str(stub.port) not in err.response.text
    assert len(stub.requests) == 1


def test_every_api_response_has_safety_headers(http, proxy):
    for response in (
        http.get(proxy.url + "/v1/models", headers=auth()),
        http.get(proxy.url + "/v1/models"),
    ):
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["x-request-id"]


def test_proxy_logs_hold_no_secrets(proxy, client, stub):
    answered = "POST /v1/chat/completions 200"
    before = proxy.logs().count(answered)
    stub.queue(Reply(body=chat_completion()))
    client.chat.completions.create(model="gpt-test", messages=USER)
    # Written as the answer finishes, just after the client has it.
    assert wait_until(lambda: proxy.logs().count(answered) > before)
    logs = proxy.logs()
    assert TOKEN not in logs
    assert UPSTREAM_KEY not in logs
