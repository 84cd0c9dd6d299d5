"""The fault matrix: each upstream failure, streamed and not, with a healthy fallback behind it."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply, chat_chunks, chat_completion

MESSAGES = [{"role": "user", "content": "hello"}]

FAULTS = {
    "500": Reply(status=500, body={"error": {"message": "internal"}}),
    "503": Reply(status=503, body={"error": "unavailable"}),
    "529 overloaded": Reply(status=529, body={"error": {"type": "overloaded_error"}}),
    "429 long Retry-After": Reply(status=429, body={}, headers={"Retry-After": "120"}),
    "401 proxy key refused": Reply(status=401, body={"error": {"message": "bad key"}}),
    "connection reset": Reply(reset=True),
    "invalid JSON": Reply(raw=b"<html>oops</html>"),
    "silence past the read timeout": Reply(body=chat_completion(), hang=1.0),
}


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def client(make_app, upstream, clock):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(
                    upstream,
                    name="gpt",
                    priority=1,
                    model="primary",
                    http_client_config={"timeout_seconds": 0.4},
                ),
                openai_model(upstream, name="gpt", priority=2, model="backup"),
            ],
            "retry": {"max_retries": 0, "base_delay": "10ms", "max_delay": "1s"},
            "routing": {"cooldown_seconds": 60},
        }
    )
    app.extensions["ai_proxy"].router.cooldowns.backend.clock = clock
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def connections_in_use(app) -> int:
    """Upstream connections checked out of the proxy's pools and not given back."""
    return app.extensions["ai_proxy"].pool.connections()["in_use"]


@pytest.fixture(autouse=True)
def no_leaked_connections(request):
    yield
    client = request.node.funcargs.get("client")
    if client is not None:
        assert connections_in_use(client.application) == 0


def called(upstream) -> list[str]:
    return [r.json()["model"] for r in upstream.requests]


def chat(client, stream: bool):
    body = {"model": "gpt", "messages": MESSAGES, "stream": stream}
    response = client.post("/v1/chat/completions", json=body)
    response.get_data()  # read to the end, as a real client does, so the stream finishes
    return response


def stream_text(response) -> tuple[str, list[str]]:
    blocks = response.get_data(as_text=True).strip().split("\n\n")
    data = [b.removeprefix("data: ") for b in blocks]
    text = "".join(
        c["choices"][0]["delta"].get("content") or ""
        for c in map(json.loads, data[:-1])
        if c.get("choices")
    )
    return text, data


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("fault", list(FAULTS))
def test_fault_falls_back_then_cools_down(client, upstream, clock, fault, stream):
    good = (
        Reply(events=chat_chunks(["from", "backup"], model="backup"))
        if stream
        else Reply(body=chat_completion("from backup", model="backup"))
    )
    upstream.queue(FAULTS[fault], good)
    response = chat(client, stream)
    assert response.status_code == 200
    assert response.headers["x-ai-proxy-attempts"] == "2"
    if stream:
        text, data = stream_text(response)
        assert text == "from backup" and data[-1] == "[DONE]"
    else:
        assert response.json["choices"][0]["message"]["content"] == "from backup"
    assert called(upstream) == ["primary", "backup"]

    # The primary cools down: the next request goes straight to the backup.
    upstream.queue(good)
    assert chat(client, stream).status_code == 200
    assert called(upstream)[2:] == ["backup"]

    # Once the cooldown (or the Retry-After) has passed, one request probes the primary again.
    clock.now += 121
    upstream.queue(
        Reply(events=chat_chunks(["primary", "back"]))
        if stream
        else Reply(body=chat_completion("primary back"))
    )
    response = chat(client, stream)
    assert response.headers["x-ai-proxy-attempts"] == "1"
    assert called(upstream)[3:] == ["primary"]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_flaky_then_fine_retries_the_same_deployment(make_app, upstream, stream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [openai_model(upstream, name="gpt", model="only")],
            "retry": {"max_retries": 2, "base_delay": "10ms"},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    good = Reply(events=chat_chunks(["fine"])) if stream else Reply(body=chat_completion("fine"))
    upstream.queue(Reply(status=502, body={}), Reply(status=503, body={}), good)
    response = chat(client, stream)
    assert response.status_code == 200
    assert response.headers["x-ai-proxy-attempts"] == "1"
    assert called(upstream) == ["only", "only", "only"]


def test_stream_cut_after_first_bytes_is_not_spliced(client, upstream):
    upstream.queue(Reply(events=chat_chunks(["one", "two", "three"]), cut_after=3))
    response = chat(client, True)
    text, data = stream_text(response)
    assert text == "one two"
    assert json.loads(data[-1])["error"]["code"] == "upstream_error"
    assert called(upstream) == ["primary"]
    # A mid-stream failure counts against the deployment too.
    upstream.queue(Reply(body=chat_completion("backup")))
    assert chat(client, False).json["choices"][0]["message"]["content"] == "backup"
    assert called(upstream)[1:] == ["backup"]


def test_empty_stream_before_first_byte_falls_back(client, upstream):
    upstream.queue(Reply(events=["data: [DONE]"]), Reply(events=chat_chunks(["ok"])))
    text, data = stream_text(chat(client, True))
    assert text == "ok" and data[-1] == "[DONE]"
    assert called(upstream) == ["primary", "backup"]


def test_everything_cooling_down_is_503_with_retry_after(client, upstream, clock):
    upstream.handler = lambda record: Reply(status=500, body={})
    first = chat(client, False)
    assert first.status_code == 502
    second = chat(client, False)
    assert second.status_code == 503
    assert second.json["error"]["code"] == "no_available_model"
    assert second.json["error"]["type"] == "service_unavailable"
    assert 59 <= int(second.headers["Retry-After"]) <= 60
    assert len(upstream.requests) == 2
    clock.now += 30
    assert 29 <= int(chat(client, True).headers["Retry-After"]) <= 30


def test_context_length_error_falls_back_only_to_larger_windows(make_app, upstream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="gpt", priority=1, model="small", context_window=8000),
                openai_model(upstream, name="gpt", priority=2, model="same", context_window=8000),
                openai_model(
                    upstream, name="gpt", priority=3, model="large", context_window=128000
                ),
            ],
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    too_long = Reply(
        status=400,
        body={
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "code": "context_length_exceeded",
            }
        },
    )
    upstream.queue(too_long, Reply(body=chat_completion("large enough")))
    response = chat(client, False)
    assert response.status_code == 200
    assert called(upstream) == ["small", "large"]
    # With nothing larger left, the client gets the 400 itself.
    upstream.queue(too_long, too_long)
    response = chat(client, False)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "context_length_exceeded"


def test_deadline_stops_fallback(make_app, upstream):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
            "models": [
                openai_model(upstream, name="gpt", priority=i, model=f"m{i}") for i in range(3)
            ],
            "retry": {"max_retries": 0},
            "routing": {"request_timeout_seconds": 0.5},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    upstream.handler = lambda record: Reply(body=chat_completion(), hang=0.8)
    response = chat(client, False)
    assert response.status_code == 504
    assert response.json["error"]["code"] == "upstream_timeout"
    assert len(upstream.requests) == 1


def test_deeply_nested_json_is_a_400(client):
    response = client.post(
        "/v1/chat/completions",
        data="[" * 100_000 + "]" * 100_000,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize(
    "bad",
    [
        Reply(body={"choices": ["x"]}),
        Reply(body={"choices": []}),
        Reply(events=['data: {"usage": {"prompt_tokens": 1}}', "data: [DONE]"]),
        Reply(events=['data: {"choices": [{"delta": "x"}]}', "data: [DONE]"]),
        Reply(events=['data: {"choices": "zz"}', "data: [DONE]"]),
    ],
    ids=["string-choice", "no-choices", "usage-only", "string-delta", "string-choices"],
)
def test_malformed_answers_fall_back(client, upstream, bad, stream):
    good = Reply(events=chat_chunks(["fine"])) if stream else Reply(body=chat_completion("fine"))
    upstream.queue(bad, good)
    response = chat(client, stream)
    assert response.status_code == 200
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert "fine" in response.get_data(as_text=True)
