"""The real proxy under gunicorn, driven by the official anthropic SDK on POST /v1/messages, in
front of one stub upstream that answers as OpenAI chat, as Gemini and as Anthropic Messages."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anthropic
import pytest
import requests
import yaml

from tests.conftest import TOKEN
from tests.servers import ProxyServer
from tests.stub_upstream import Recorded, Reply, StubUpstream

OPENAI_KEY = "sk-up-openai-secret"
GOOGLE_KEY = "goog-up-secret"
ANTHROPIC_KEY = "sk-ant-up-secret"

ARGS = {"city": "Paris", "unit": "celsius", "days": 3, "details": {"wind": True, "hours": [6, 12]}}
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather forecast for a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer"},
            "details": {"type": "object"},
        },
        "required": ["city"],
    },
}
USER = [{"role": "user", "content": "Hello there"}]
IMAGE_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)


# --- the three upstream wire formats ------------------------------------------------------


def openai_answer(content: str | None, tool_calls: list | None = None, usage=(11, 4)) -> dict:
    message: dict = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "up-oa",
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": "tool_calls" if tool_calls else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        },
    }


def openai_events(deltas: list[dict], finish: str, usage=(11, 4)) -> list[str]:
    base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": "up"}

    def chunk(delta: dict, finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return "data: " + json.dumps({**base, "choices": [choice]})

    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk(delta) for delta in deltas]
    events.append(chunk({}, finish))
    usage_chunk = {
        **base,
        "choices": [],
        "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": 0},
    }
    events.append("data: " + json.dumps(usage_chunk))
    events.append("data: [DONE]")
    return events


def openai_text_events(words: list[str], usage=(11, 4)) -> list[str]:
    return openai_events([{"content": w} for w in words], "stop", usage)


def openai_tool_events() -> list[str]:
    text = json.dumps(ARGS)
    cut = [text[:7], text[7:19], text[19:33], text[33:]]
    deltas: list[dict] = [{"content": "Let me "}, {"content": "check."}]
    deltas.append(
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_oa_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        }
    )
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": c}}]} for c in cut]
    return openai_events(deltas, "tool_calls", usage=(30, 12))


def gemini_answer(parts: list[dict], finish: str | None = "STOP", usage=(12, 5)) -> dict:
    candidate: dict = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    answer: dict = {"candidates": [candidate], "modelVersion": "gemini-up", "responseId": "g1"}
    if usage:
        answer["usageMetadata"] = {
            "promptTokenCount": usage[0],
            "candidatesTokenCount": usage[1],
            "totalTokenCount": sum(usage),
        }
    return answer


def gemini_events(payloads: list[dict]) -> list[str]:
    return ["data: " + json.dumps(p) for p in payloads]


def gemini_text_events(words: list[str], usage=(12, 5)) -> list[str]:
    payloads = [gemini_answer([{"text": w}], finish=None, usage=None) for w in words[:-1]]
    payloads.append(gemini_answer([{"text": words[-1]}], usage=usage))
    return gemini_events(payloads)


def gemini_tool_parts() -> list[dict]:
    return [{"functionCall": {"name": "get_weather", "args": ARGS}}]


def anthropic_message(content: list[dict], stop_reason: str = "end_turn", usage=(13, 6)) -> dict:
    return {
        "id": "msg_stub_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-up",
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
    }


def sse(kind: str, **data) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}"


def anthropic_start(input_tokens: int = 25) -> str:
    message = anthropic_message([], usage=(input_tokens, 1))
    message["stop_reason"] = None
    return sse("message_start", message=message)


def anthropic_text_events(words: list[str], usage=(25, 9)) -> list[str]:
    events = [
        anthropic_start(usage[0]),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("ping"),
    ]
    events += [
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": w}) for w in words
    ]
    events += [
        sse("content_block_stop", index=0),
        sse(
            "message_delta",
            delta={"stop_reason": "end_turn", "stop_sequence": None},
            usage={"output_tokens": usage[1]},
        ),
        sse("message_stop"),
    ]
    return events


def anthropic_tool_events() -> list[str]:
    text = json.dumps(ARGS)
    block = {"type": "tool_use", "id": "toolu_stub_1", "name": "get_weather", "input": {}}
    events = [
        anthropic_start(31),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("content_block_delta", index=0, delta={"type": "text_delta", "text": "Let me check."}),
        sse("content_block_stop", index=0),
        sse("content_block_start", index=1, content_block=block),
    ]
    events += [
        sse("content_block_delta", index=1, delta={"type": "input_json_delta", "partial_json": c})
        for c in (text[:9], text[9:30], text[30:])
    ]
    events += [
        sse("content_block_stop", index=1),
        sse(
            "message_delta",
            delta={"stop_reason": "tool_use", "stop_sequence": None},
            usage={"output_tokens": 14},
        ),
        sse("message_stop"),
    ]
    return events


# --- the backends -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backend:
    name: str  # the public model name clients send
    fail: str  # a deployment of the same kind used for failures
    provider: str
    upstream_model: str
    key_header: str
    key_value: str
    path: str  # the non-streamed upstream path
    stream_path: str
    text: Callable[[str], Reply]
    text_usage: tuple[int, int]
    stream: Callable[[list[str]], Reply]
    stream_usage: tuple[int, int]
    tool: Callable[[], Reply]
    tool_stream: Callable[[], Reply]
    failure: Reply
    # A stream that delivers some text and then breaks.
    cut: Reply


OPENAI = Backend(
    name="oa-model",
    fail="oa-fail",
    provider="openai",
    upstream_model="up-oa",
    key_header="authorization",
    key_value=f"Bearer {OPENAI_KEY}",
    path="/v1/chat/completions",
    stream_path="/v1/chat/completions",
    text=lambda text: Reply(body=openai_answer(text)),
    text_usage=(11, 4),
    stream=lambda words: Reply(events=openai_text_events(words)),
    stream_usage=(11, 4),
    tool=lambda: Reply(
        body=openai_answer(
            "Let me check.",
            [
                {
                    "id": "call_oa_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": json.dumps(ARGS)},
                }
            ],
            usage=(30, 12),
        )
    ),
    tool_stream=lambda: Reply(events=openai_tool_events()),
    failure=Reply(
        status=500, body={"error": {"message": "upstream exploded", "type": "server_error"}}
    ),
    cut=Reply(events=openai_text_events([f"w{i}" for i in range(8)]), cut_after=3),
)

GOOGLE = Backend(
    name="gem-model",
    fail="gem-fail",
    provider="google",
    upstream_model="gemini-up",
    key_header="x-goog-api-key",
    key_value=GOOGLE_KEY,
    path="/v1beta/models/gemini-up:generateContent",
    stream_path="/v1beta/models/gemini-up:streamGenerateContent?alt=sse",
    text=lambda text: Reply(body=gemini_answer([{"text": text}])),
    text_usage=(12, 5),
    stream=lambda words: Reply(events=gemini_text_events(words)),
    stream_usage=(12, 5),
    tool=lambda: Reply(body=gemini_answer([{"text": "Let me check."}, *gemini_tool_parts()])),
    tool_stream=lambda: Reply(
        events=gemini_events(
            [
                gemini_answer([{"text": "Let me check."}], finish=None, usage=None),
                gemini_answer(gemini_tool_parts(), usage=(30, 12)),
            ]
        )
    ),
    failure=Reply(
        status=500,
        body={"error": {"code": 500, "message": "upstream exploded", "status": "INTERNAL"}},
    ),
    cut=Reply(events=gemini_text_events([f"w{i}" for i in range(8)]), cut_after=3),
)

ANTHROPIC = Backend(
    name="claude-model",
    fail="claude-fail",
    provider="anthropic",
    upstream_model="claude-up",
    key_header="x-api-key",
    key_value=ANTHROPIC_KEY,
    path="/v1/messages",
    stream_path="/v1/messages",
    text=lambda text: Reply(body=anthropic_message([{"type": "text", "text": text}])),
    text_usage=(13, 6),
    stream=lambda words: Reply(events=anthropic_text_events(words)),
    stream_usage=(25, 9),
    tool=lambda: Reply(
        body=anthropic_message(
            [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_stub_1", "name": "get_weather", "input": ARGS},
            ],
            stop_reason="tool_use",
        )
    ),
    tool_stream=lambda: Reply(events=anthropic_tool_events()),
    failure=Reply(
        status=500,
        body={"type": "error", "error": {"type": "api_error", "message": "upstream exploded"}},
    ),
    cut=Reply(events=anthropic_text_events([f"w{i}" for i in range(8)]), cut_after=5),
)

BACKENDS = [OPENAI, GOOGLE, ANTHROPIC]
backends = pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.provider)
translated = pytest.mark.parametrize("backend", [OPENAI, GOOGLE], ids=lambda b: b.provider)


def deployment(stub: StubUpstream, backend: Backend, name: str) -> dict:
    roots = {"openai": "/v1", "google": "/v1beta", "anthropic": "/v1"}
    keys = {"openai": OPENAI_KEY, "google": GOOGLE_KEY, "anthropic": ANTHROPIC_KEY}
    return {
        "name": name,
        "provider": backend.provider,
        "base_url": stub.url + roots[backend.provider],
        "token": keys[backend.provider],
        "model": backend.upstream_model,
    }


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stub() -> Iterator[StubUpstream]:
    server = StubUpstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def proxy(stub, tmp_path_factory) -> Iterator[ProxyServer]:
    models = []
    for backend in BACKENDS:
        models.append(deployment(stub, backend, backend.name))
        models.append(deployment(stub, backend, backend.fail))
    config = {
        "auth": {"tokens": [{"name": "team-a", "token": TOKEN}]},
        "models": models,
        "retry": {"max_retries": 0, "base_delay": "10ms"},
        "routing": {"cooldown_seconds": 0},
    }
    path = tmp_path_factory.mktemp("proxy-anthropic") / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    server = ProxyServer(path).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def fresh_stub(stub) -> Iterator[None]:
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
def client(proxy) -> Iterator[anthropic.Anthropic]:
    sdk = anthropic.Anthropic(
        base_url=proxy.url,
        api_key=TOKEN,
        max_retries=0,
        timeout=20,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    yield sdk
    sdk.close()


@pytest.fixture(scope="module")
def http() -> Iterator[requests.Session]:
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def check_upstream_auth(record: Recorded, backend: Backend) -> None:
    """The provider's own key went upstream; the client's token never did."""
    headers = lower(record.headers)
    assert headers.get(backend.key_header) == backend.key_value
    assert TOKEN not in json.dumps(record.headers)
    assert TOKEN.encode() not in record.body
    assert TOKEN not in record.path
    assert headers.get("x-request-id")
    if backend.provider == "anthropic":
        assert headers.get("anthropic-version")


def raw_events(text: str) -> list[tuple[str | None, dict | str]]:
    """(event name, JSON payload) of an SSE body, in order."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
        if data:
            payload = "\n".join(data)
            try:
                events.append((name, json.loads(payload)))
            except ValueError:
                events.append((name, payload))
    return events


def post_messages(http, proxy, body: dict, **headers) -> requests.Response:
    return http.post(
        proxy.url + "/v1/messages",
        json=body,
        headers={"x-api-key": TOKEN, "anthropic-version": "2023-06-01", **headers},
        timeout=20,
    )


# --- text, not streamed -----------------------------------------------------------------------


@backends
def test_text(client, stub, backend):
    stub.queue(backend.text(f"Hello from {backend.provider}"))
    message = client.messages.create(
        model=backend.name, max_tokens=100, system="Be brief.", messages=USER
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.id
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == f"Hello from {backend.provider}"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == backend.text_usage[0]
    assert message.usage.output_tokens == backend.text_usage[1]

    assert len(stub.requests) == 1
    sent = stub.requests[0]
    assert sent.method == "POST"
    assert sent.path == backend.path
    check_upstream_auth(sent, backend)
    body = sent.json()
    if backend is OPENAI:
        assert body["model"] == "up-oa"
        assert body["max_tokens"] == 100
        assert body["messages"] == [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
        ]
    elif backend is GOOGLE:
        assert body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
        assert body["contents"] == [{"role": "user", "parts": [{"text": "Hello there"}]}]
        assert body["generationConfig"]["maxOutputTokens"] == 100
    else:
        assert body["model"] == "claude-up"
        assert body["max_tokens"] == 100
        assert body["system"] == "Be brief."
        assert body["messages"] == USER


@backends
def test_routing_headers(client, stub, backend):
    stub.queue(backend.text("hi"))
    raw = client.messages.with_raw_response.create(
        model=backend.name,
        max_tokens=10,
        messages=USER,
        extra_headers={"X-Request-ID": "anthropic-req-1"},
    )
    assert raw.status_code == 200
    assert raw.headers["content-type"].startswith("application/json")
    assert raw.headers["x-ai-proxy-model"] == backend.name
    assert raw.headers["x-ai-proxy-attempts"] == "1"
    assert raw.headers["x-request-id"] == "anthropic-req-1"
    assert lower(stub.requests[0].headers)["x-request-id"] == "anthropic-req-1"
    assert raw.parse().content[0].text == "hi"


# --- streaming --------------------------------------------------------------------------------


@backends
def test_stream_events_and_final_message(client, stub, backend):
    stub.queue(backend.stream(["Hello", " streaming", " world"]))
    with client.messages.stream(model=backend.name, max_tokens=100, messages=USER) as stream:
        events = list(stream)
        final = stream.get_final_message()
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-1] == "message_stop"
    start = events[0].message
    assert start.usage.input_tokens > 0
    assert start.content == []
    texts = [e.text for e in events if e.type == "text"]
    assert "".join(texts) == "Hello streaming world"
    assert final.content[0].type == "text"
    assert final.content[0].text == "Hello streaming world"
    assert len(final.content) == 1
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == backend.stream_usage[0]
    assert final.usage.output_tokens == backend.stream_usage[1]

    sent = stub.requests[0]
    assert sent.path == backend.stream_path
    check_upstream_auth(sent, backend)
    if backend is not GOOGLE:
        assert sent.json()["stream"] is True


@backends
def test_stream_text_stream(client, stub, backend):
    stub.queue(backend.stream(["one", " two", " three"]))
    with client.messages.stream(model=backend.name, max_tokens=50, messages=USER) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(pieces) == "one two three"
    assert final.content[0].text == "one two three"


@backends
def test_stream_with_create_stream_true(client, stub, backend):
    stub.queue(backend.stream(["a", "b"]))
    events = list(
        client.messages.create(model=backend.name, max_tokens=50, messages=USER, stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    deltas = [e for e in events if e.type == "content_block_delta"]
    assert "".join(d.delta.text for d in deltas) == "ab"
    assert events[0].message.usage.input_tokens > 0
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == backend.stream_usage[1]


@backends
def test_stream_raw_event_order_and_headers(http, proxy, stub, backend):
    stub.queue(backend.stream(["Hi", " you"]))
    response = post_messages(
        http,
        proxy,
        {"model": backend.name, "max_tokens": 20, "messages": USER, "stream": True},
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["x-ai-proxy-model"] == backend.name
    events = [(n, d) for n, d in raw_events(response.text) if n != "ping"]
    names = [n for n, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    for name, data in events:
        assert data["type"] == name
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0
    assert events[1][1] == {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    assert [d["delta"] for n, d in events if n == "content_block_delta"] == [
        {"type": "text_delta", "text": "Hi"},
        {"type": "text_delta", "text": " you"},
    ]
    delta = events[-2][1]
    assert delta["delta"]["stop_reason"] == "end_turn"
    assert delta["usage"]["output_tokens"] == backend.stream_usage[1]


# --- tools ------------------------------------------------------------------------------------


def check_tool_message(message) -> None:
    assert message.stop_reason == "tool_use"
    tools = [b for b in message.content if b.type == "tool_use"]
    assert len(tools) == 1
    block = tools[0]
    assert block.name == "get_weather"
    assert block.id
    assert block.input == ARGS
    texts = [b.text for b in message.content if b.type == "text"]
    assert "".join(texts) == "Let me check."
    # Text comes before the call, as the model wrote it.
    assert message.content[0].type == "text"


def check_tools_sent(record: Recorded, backend: Backend) -> None:
    body = record.json()
    if backend is OPENAI:
        assert body["tools"] == [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "description": WEATHER_TOOL["description"],
                    "parameters": WEATHER_TOOL["input_schema"],
                },
            }
        ]
        assert body.get("tool_choice") == "auto"
    elif backend is GOOGLE:
        declarations = body["tools"][0]["functionDeclarations"]
        assert [d["name"] for d in declarations] == ["get_weather"]
        schema = declarations[0].get("parametersJsonSchema") or declarations[0].get("parameters")
        assert schema["properties"]["city"] == {"type": "string"}
    else:
        assert body["tools"] == [WEATHER_TOOL]
        assert body["tool_choice"] == {"type": "auto"}


@backends
def test_tool_call(client, stub, backend):
    stub.queue(backend.tool())
    message = client.messages.create(
        model=backend.name,
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
    )
    check_tool_message(message)
    check_tools_sent(stub.requests[0], backend)


@backends
def test_tool_call_streamed(client, stub, backend):
    stub.queue(backend.tool_stream())
    with client.messages.stream(
        model=backend.name,
        max_tokens=200,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "auto"},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    check_tool_message(final)
    check_tools_sent(stub.requests[0], backend)
    starts = [e for e in events if e.type == "content_block_start"]
    assert [s.content_block.type for s in starts] == ["text", "tool_use"]
    assert [s.index for s in starts] == [0, 1]
    # Anthropic's order: the tool block's input arrives as input_json_delta, not in the start.
    assert starts[1].content_block.input == {}
    json_deltas = [
        e for e in events if e.type == "content_block_delta" and e.delta.type == "input_json_delta"
    ]
    assert json_deltas and all(e.index == 1 for e in json_deltas)
    assert json.loads("".join(e.delta.partial_json for e in json_deltas)) == ARGS
    message_delta = [e for e in events if e.type == "message_delta"]
    assert len(message_delta) == 1
    assert message_delta[0].delta.stop_reason == "tool_use"
    assert message_delta[0].usage.output_tokens > 0
    assert events[-1].type == "message_stop"


def tool_history(is_error: bool = False) -> list[dict]:
    result: dict = {
        "type": "tool_result",
        "tool_use_id": "toolu_hist_1",
        "content": [{"type": "text", "text": "18C, sunny"}],
    }
    if is_error:
        result["is_error"] = True
    return [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me check."},
                {"type": "tool_use", "id": "toolu_hist_1", "name": "get_weather", "input": ARGS},
            ],
        },
        {"role": "user", "content": [result]},
    ]


@backends
def test_tool_result_round_trip(client, stub, backend):
    stub.queue(backend.text("It is 18C and sunny in Paris."))
    message = client.messages.create(
        model=backend.name, max_tokens=200, messages=tool_history(), tools=[WEATHER_TOOL]
    )
    assert message.content[0].text == "It is 18C and sunny in Paris."
    assert message.stop_reason == "end_turn"
    body = stub.requests[0].json()
    if backend is OPENAI:
        messages = body["messages"]
        assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
        call = messages[1]["tool_calls"][0]
        assert call["id"] == "toolu_hist_1"
        assert call["function"]["name"] == "get_weather"
        assert json.loads(call["function"]["arguments"]) == ARGS
        assert messages[2]["tool_call_id"] == "toolu_hist_1"
        assert "18C, sunny" in json.dumps(messages[2]["content"])
    elif backend is GOOGLE:
        contents = body["contents"]
        assert [c["role"] for c in contents] == ["user", "model", "user"]
        calls = [p["functionCall"] for p in contents[1]["parts"] if "functionCall" in p]
        assert calls == [{"name": "get_weather", "args": ARGS}]
        responses = [p["functionResponse"] for p in contents[2]["parts"] if "functionResponse" in p]
        assert len(responses) == 1
        assert responses[0]["name"] == "get_weather"
        assert "18C, sunny" in json.dumps(responses[0]["response"])
    else:
        assert body["messages"] == tool_history()


@translated
def test_tool_result_error_reaches_the_backend_as_an_error(client, stub, backend):
    stub.queue(backend.text("Sorry, the lookup failed."))
    client.messages.create(model=backend.name, max_tokens=50, messages=tool_history(is_error=True))
    sent = json.dumps(stub.requests[0].json())
    assert "18C, sunny" in sent
    assert "error" in sent.lower()


@translated
def test_base64_image_reaches_the_backend(client, stub, backend):
    stub.queue(backend.text("A tiny image."))
    client.messages.create(
        model=backend.name,
        max_tokens=50,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": IMAGE_B64},
                    },
                ],
            }
        ],
    )
    body = stub.requests[0].json()
    if backend is OPENAI:
        parts = body["messages"][0]["content"]
        urls = [p["image_url"]["url"] for p in parts if p["type"] == "image_url"]
        assert urls == [f"data:image/png;base64,{IMAGE_B64}"]
    else:
        parts = body["contents"][0]["parts"]
        assert {"inlineData": {"mimeType": "image/png", "data": IMAGE_B64}} in parts
        assert {"text": "What is this?"} in parts


# --- count_tokens -----------------------------------------------------------------------------


def test_count_tokens_native_asks_the_provider(client, stub):
    stub.queue(Reply(body={"input_tokens": 1234}))
    counted = client.messages.count_tokens(
        model=ANTHROPIC.name,
        system="Be brief.",
        messages=USER,
        tools=[WEATHER_TOOL],
    )
    assert counted.input_tokens == 1234
    assert len(stub.requests) == 1
    sent = stub.requests[0]
    assert sent.path == "/v1/messages/count_tokens"
    check_upstream_auth(sent, ANTHROPIC)
    body = sent.json()
    assert body["model"] == "claude-up"
    assert body["messages"] == USER
    assert body["system"] == "Be brief."
    assert body["tools"] == [WEATHER_TOOL]


@translated
def test_count_tokens_estimate_for_other_backends(client, backend):
    short = client.messages.count_tokens(model=backend.name, messages=USER)
    assert short.input_tokens > 0
    longer = client.messages.count_tokens(
        model=backend.name,
        system="You are a meticulous assistant. " * 10,
        messages=[{"role": "user", "content": "Tell me about the weather. " * 40}],
        tools=[WEATHER_TOOL],
    )
    assert longer.input_tokens > short.input_tokens


def test_count_tokens_unknown_model_is_404(client):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.count_tokens(model="no-such-model", messages=USER)
    assert caught.value.status_code == 404
    assert caught.value.type == "not_found_error"


# --- errors as the SDK sees them --------------------------------------------------------------


def check_anthropic_error_body(err: anthropic.APIStatusError, kind: str) -> dict:
    assert err.response.headers["content-type"].startswith("application/json")
    body = err.response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == kind
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert err.type == kind
    return body


def test_wrong_token_is_401(proxy, stub):
    bad = anthropic.Anthropic(
        base_url=proxy.url,
        api_key="sk-wrong",
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    with bad, pytest.raises(anthropic.AuthenticationError) as caught:
        bad.messages.create(model=OPENAI.name, max_tokens=10, messages=USER)
    assert caught.value.status_code == 401
    check_anthropic_error_body(caught.value, "authentication_error")
    assert stub.requests == []


def test_unknown_model_is_404(client, stub):
    with pytest.raises(anthropic.NotFoundError) as caught:
        client.messages.create(model="no-such-model", max_tokens=10, messages=USER)
    assert caught.value.status_code == 404
    check_anthropic_error_body(caught.value, "not_found_error")
    assert stub.requests == []


def test_unknown_model_streamed_is_404_before_the_stream(client, stub):
    with pytest.raises(anthropic.NotFoundError):
        with client.messages.stream(model="no-such-model", max_tokens=10, messages=USER) as s:
            s.until_done()
    assert stub.requests == []


def test_missing_max_tokens_is_400(client, stub):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=OPENAI.name, max_tokens=anthropic.omit, messages=USER)
    assert caught.value.status_code == 400
    body = check_anthropic_error_body(caught.value, "invalid_request_error")
    assert "max_tokens" in body["error"]["message"]
    assert stub.requests == []


def test_bad_message_role_is_400(client, stub):
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(
            model=OPENAI.name, max_tokens=10, messages=[{"role": "system", "content": "x"}]
        )
    check_anthropic_error_body(caught.value, "invalid_request_error")
    assert stub.requests == []


@backends
def test_upstream_500_is_502_in_anthropic_shape(client, stub, backend):
    stub.queue(backend.failure)
    with pytest.raises(anthropic.InternalServerError) as caught:
        client.messages.create(model=backend.fail, max_tokens=10, messages=USER)
    err = caught.value
    assert isinstance(err, anthropic.APIStatusError)
    assert err.status_code == 502
    body = check_anthropic_error_body(err, "api_error")
    assert set(body) == {"type", "error"}
    text = err.response.text
    assert str(stub.port) not in text
    assert "127.0.0.1" not in text
    for key in (OPENAI_KEY, GOOGLE_KEY, ANTHROPIC_KEY):
        assert key not in text
    assert len(stub.requests) == 1


@backends
def test_upstream_500_before_a_stream_is_502(client, stub, backend):
    stub.queue(backend.failure)
    with pytest.raises(anthropic.InternalServerError) as caught:
        with client.messages.stream(model=backend.fail, max_tokens=10, messages=USER) as stream:
            stream.until_done()
    assert caught.value.status_code == 502
    check_anthropic_error_body(caught.value, "api_error")


def test_upstream_400_from_native_backend_is_a_400(client, stub):
    stub.queue(
        Reply(
            status=400,
            body={
                "type": "error",
                "error": {"type": "invalid_request_error", "message": "max_tokens: too large"},
            },
        )
    )
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model=ANTHROPIC.fail, max_tokens=10**7, messages=USER)
    assert caught.value.status_code == 400
    check_anthropic_error_body(caught.value, "invalid_request_error")


# --- failures mid-stream ----------------------------------------------------------------------


@backends
def test_stream_cut_mid_way_ends_with_an_error_event(http, proxy, stub, backend):
    stub.queue(backend.cut)
    response = post_messages(
        http,
        proxy,
        {"model": backend.fail, "max_tokens": 50, "messages": USER, "stream": True},
    )
    assert response.status_code == 200
    events = raw_events(response.text)
    names = [n for n, _ in events]
    assert names[0] == "message_start"
    assert "content_block_delta" in names
    assert "message_stop" not in names
    name, error = events[-1]
    assert name == "error"
    assert error["type"] == "error"
    assert set(error["error"]) >= {"type", "message"}
    assert error["error"]["message"]
    assert str(stub.port) not in response.text
    assert names.count("error") == 1


@backends
def test_stream_cut_mid_way_raises_in_the_sdk(client, stub, backend):
    stub.queue(backend.cut)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        with client.messages.stream(model=backend.fail, max_tokens=50, messages=USER) as stream:
            for text in stream.text_stream:
                seen.append(text)
    assert seen, "the text before the failure is delivered"
    assert caught.value.type in {"api_error", "overloaded_error", "timeout_error"}


def test_native_stream_error_event_is_relayed_as_an_error_event(http, proxy, stub):
    events = anthropic_text_events(["partial", " answer"])[:5]
    events.append(sse("error", error={"type": "overloaded_error", "message": "Overloaded"}))
    stub.queue(Reply(events=events))
    response = post_messages(
        http, proxy, {"model": ANTHROPIC.fail, "max_tokens": 50, "messages": USER, "stream": True}
    )
    parsed = raw_events(response.text)
    assert [d["delta"]["text"] for n, d in parsed if n == "content_block_delta"] == [
        "partial",
        " answer",
    ]
    name, error = parsed[-1]
    assert name == "error"
    assert error["type"] == "error" and error["error"]["message"]
    assert "message_stop" not in [n for n, _ in parsed]


def test_native_stream_ending_without_message_stop_is_an_error(http, proxy, stub):
    # The upstream closes the stream cleanly, but before message_delta and message_stop: the
    # answer is incomplete, and the client must not take it for a whole one.
    stub.queue(Reply(events=anthropic_text_events(["cut", " short"])[:5]))
    response = post_messages(
        http, proxy, {"model": ANTHROPIC.fail, "max_tokens": 50, "messages": USER, "stream": True}
    )
    parsed = raw_events(response.text)
    assert parsed[-1][0] == "error"
    assert "message_stop" not in [n for n, _ in parsed]


def test_gemini_error_payload_mid_stream_is_an_error_event(http, proxy, stub):
    events = gemini_text_events(["one", " two", " three"])[:2]
    events.append("data: " + json.dumps({"error": {"code": 503, "message": "overloaded"}}))
    stub.queue(Reply(events=events))
    response = post_messages(
        http, proxy, {"model": GOOGLE.fail, "max_tokens": 50, "messages": USER, "stream": True}
    )
    parsed = raw_events(response.text)
    assert parsed[-1][0] == "error"
    assert parsed[-1][1]["type"] == "error"
    assert "message_stop" not in [n for n, _ in parsed]


# --- what is dropped, what passes through -----------------------------------------------------


def thinking_history() -> list[dict]:
    return [
        {"role": "user", "content": "What is 17*23?"},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "17*23 = 391", "signature": "c2lnbmF0dXJl"},
                {"type": "text", "text": "391"},
            ],
        },
        {"role": "user", "content": "And doubled?"},
    ]


def test_dropped_thinking_and_top_k_are_named_in_a_warning_header(client, stub):
    stub.queue(OPENAI.text("782"))
    raw = client.messages.with_raw_response.create(
        model=OPENAI.name,
        max_tokens=2000,
        messages=thinking_history(),
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"top_k": 5},
    )
    warning = raw.headers.get("x-ai-proxy-warning")
    assert warning, "dropped features must be named"
    assert "thinking" in warning.lower()
    assert "top_k" in warning
    assert raw.parse().content[0].text == "782"
    body = stub.requests[0].json()
    assert "top_k" not in body and "thinking" not in body
    assert "17*23 = 391" not in json.dumps(body)
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


def test_warning_header_on_a_translated_stream_too(http, proxy, stub):
    stub.queue(OPENAI.stream(["ok"]))
    response = post_messages(
        http,
        proxy,
        {
            "model": OPENAI.name,
            "max_tokens": 50,
            "messages": USER,
            "top_k": 3,
            "stream": True,
        },
    )
    assert response.status_code == 200
    assert "top_k" in response.headers.get("x-ai-proxy-warning", "")


def test_no_warning_when_nothing_is_dropped(client, stub):
    stub.queue(OPENAI.text("hi"))
    raw = client.messages.with_raw_response.create(model=OPENAI.name, max_tokens=10, messages=USER)
    assert "x-ai-proxy-warning" not in raw.headers


def test_top_k_to_gemini_is_used_or_named(client, stub):
    stub.queue(GOOGLE.text("ok"))
    raw = client.messages.with_raw_response.create(
        model=GOOGLE.name, max_tokens=10, messages=USER, extra_body={"top_k": 7}
    )
    config = stub.requests[0].json().get("generationConfig", {})
    assert config.get("topK") == 7 or "top_k" in raw.headers.get("x-ai-proxy-warning", "")


def native_body() -> dict:
    return {
        "model": ANTHROPIC.name,
        "max_tokens": 2000,
        "system": [{"type": "text", "text": "Be exact.", "cache_control": {"type": "ephemeral"}}],
        "messages": thinking_history(),
        "thinking": {"type": "enabled", "budget_tokens": 1024},
        "top_k": 5,
        "stop_sequences": ["###"],
        "metadata": {"user_id": "u-1"},
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "auto"},
        "some_future_field": {"nested": [1, 2]},
    }


def test_native_backend_gets_the_body_untranslated(http, proxy, stub):
    answer = anthropic_message(
        [
            {"type": "thinking", "thinking": "391*2 = 782", "signature": "c2ln"},
            {"type": "text", "text": "782"},
        ]
    )
    stub.queue(Reply(body=answer))
    sent_body = native_body()
    response = post_messages(http, proxy, sent_body)
    assert response.status_code == 200
    assert "x-ai-proxy-warning" not in response.headers
    message = response.json()
    # The answer's blocks come back as Anthropic sent them, thinking included.
    assert message["content"] == answer["content"]
    assert message["usage"]["input_tokens"] == 13
    received = stub.requests[0].json()
    check_upstream_auth(stub.requests[0], ANTHROPIC)
    assert received.pop("stream", False) is False
    assert received == {**sent_body, "model": "claude-up"}


def test_native_backend_through_the_sdk(client, stub):
    stub.queue(Reply(body=anthropic_message([{"type": "text", "text": "782"}])))
    raw = client.messages.with_raw_response.create(
        model=ANTHROPIC.name,
        max_tokens=2000,
        messages=thinking_history(),
        thinking={"type": "enabled", "budget_tokens": 1024},
        extra_body={"top_k": 5},
    )
    assert "x-ai-proxy-warning" not in raw.headers
    assert raw.parse().content[0].text == "782"
    received = stub.requests[0].json()
    assert received["model"] == "claude-up"
    assert received["top_k"] == 5
    assert received["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert received["messages"] == thinking_history()


def test_native_stream_passes_events_and_body_through(client, stub):
    stub.queue(Reply(events=anthropic_text_events(["Deep", " thought"], usage=(77, 8))))
    body = native_body()
    with client.messages.stream(
        model=body["model"],
        max_tokens=body["max_tokens"],
        system=body["system"],
        messages=body["messages"],
        thinking=body["thinking"],
        stop_sequences=body["stop_sequences"],
        metadata=body["metadata"],
        tools=body["tools"],
        tool_choice=body["tool_choice"],
        extra_body={"top_k": 5, "some_future_field": {"nested": [1, 2]}},
    ) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert events[0].type == "message_start"
    # The native backend's real input count is in message_start.
    assert events[0].message.usage.input_tokens == 77
    assert final.content[0].text == "Deep thought"
    assert final.usage.input_tokens == 77
    assert final.usage.output_tokens == 8
    received = stub.requests[0].json()
    assert received["stream"] is True
    received.pop("stream")
    assert received == {**body, "model": "claude-up"}


def test_openai_stream_ending_without_a_finish_is_an_error(http, proxy, stub):
    # The upstream closes cleanly after some text, with no finish_reason and no [DONE]: a
    # truncated answer, which must not be passed off as a whole one with stop_reason end_turn.
    events = openai_text_events(["cut", " short", " here"])[:3]
    stub.queue(Reply(events=events))
    response = post_messages(
        http, proxy, {"model": OPENAI.fail, "max_tokens": 50, "messages": USER, "stream": True}
    )
    parsed = raw_events(response.text)
    assert [d["delta"]["text"] for n, d in parsed if n == "content_block_delta"] == [
        "cut",
        " short",
    ]
    assert parsed[-1][0] == "error"
    assert "message_stop" not in [n for n, _ in parsed]


def test_gemini_message_start_has_the_real_input_tokens(client, stub):
    # Gemini reports usageMetadata (promptTokenCount) on every streamed chunk, so the real input
    # count is known before the first byte goes out (CONTRACT section 8: "real input_tokens").
    def partial(text: str, finish: str | None, output: int) -> dict:
        return gemini_answer([{"text": text}], finish=finish, usage=(321, output))

    stub.queue(
        Reply(
            events=gemini_events(
                [partial("Hello", None, 1), partial(" there", None, 2), partial("!", "STOP", 3)]
            )
        )
    )
    with client.messages.stream(model=GOOGLE.name, max_tokens=20, messages=USER) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert events[0].type == "message_start"
    assert events[0].message.usage.input_tokens == 321
    assert final.usage.input_tokens == 321
    assert final.usage.output_tokens == 3


# --- the surface itself -----------------------------------------------------------------------


def test_bearer_token_works_too(proxy, stub):
    sdk = anthropic.Anthropic(
        base_url=proxy.url,
        auth_token=TOKEN,
        max_retries=0,
        http_client=anthropic.DefaultHttpxClient(trust_env=False),
    )
    stub.queue(OPENAI.text("via bearer"))
    with sdk:
        message = sdk.messages.create(model=OPENAI.name, max_tokens=10, messages=USER)
    assert message.content[0].text == "via bearer"
    check_upstream_auth(stub.requests[0], OPENAI)


@pytest.mark.parametrize("backend", [OPENAI, ANTHROPIC], ids=lambda b: b.provider)
def test_beta_messages_work_unchanged(client, stub, backend):
    stub.queue(backend.text("beta ok"))
    message = client.beta.messages.create(
        model=backend.name,
        max_tokens=10,
        messages=USER,
        betas=["token-efficient-tools-2025-02-19"],
    )
    assert message.content[0].text == "beta ok"
    check_upstream_auth(stub.requests[0], backend)


def test_wrong_method_is_405_in_anthropic_shape(http, proxy):
    response = http.get(proxy.url + "/v1/messages", headers={"x-api-key": TOKEN})
    assert response.status_code == 405
    assert response.headers["Content-Type"].startswith("application/json")
    assert "POST" in response.headers["Allow"]
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"


def test_bad_json_is_400_in_anthropic_shape(http, proxy, stub):
    response = http.post(
        proxy.url + "/v1/messages",
        data=b'{"model": "oa-model", "messages": [',
        headers={"x-api-key": TOKEN, "Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert stub.requests == []


def test_missing_token_on_count_tokens_is_401(http, proxy):
    response = http.post(
        proxy.url + "/v1/messages/count_tokens",
        json={"model": OPENAI.name, "messages": USER},
        timeout=10,
    )
    assert response.status_code == 401
    body = response.json()
    assert body == {"type": "error", "error": body["error"]}
    assert body["error"]["type"] == "authentication_error"


def test_proxy_logs_hold_no_secrets(proxy, client, stub):
    stub.queue(ANTHROPIC.text("hi"))
    client.messages.create(model=ANTHROPIC.name, max_tokens=10, messages=USER)
    logs = proxy.logs()
    assert logs
    for secret in (TOKEN, OPENAI_KEY, GOOGLE_KEY, ANTHROPIC_KEY):
        assert secret not in logs
