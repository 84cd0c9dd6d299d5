"""The Responses API through real gunicorn with the openai SDK, in front of stub upstreams of
every wire format: OpenAI chat only, Anthropic, Gemini, and OpenAI's own Responses API."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tomllib
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import yaml

from app.config import load_config
from tests.conftest import TOKEN
from tests.servers import ROOT, ProxyServer
from tests.stub_upstream import Reply, StubUpstream
from tests.wire_stubs import every_format, models, responses_events

OTHER_TOKEN = "sk-other-team-token"
README = (ROOT / "README.md").read_text()
FENCE = re.compile(r"```(\w*)\n(.*?)```", re.S)
FORMATS = ["chat-only", "claude", "gemini", "native"]
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def config(url: str, **extra) -> dict:
    return {
        "auth": {
            "tokens": [{"name": "team", "token": TOKEN}, {"name": "other", "token": OTHER_TOKEN}]
        },
        # The README's example asks for `echo` and `SMALL`.
        "models": [*models(url), {"name": "echo", "provider": "echo", "model_size": "SMALL"}],
        "retry": {"max_retries": 0},
        # Failures are part of these tests: none may keep a deployment away from the next.
        "routing": {"cooldown_seconds": 0},
        **extra,
    }


@pytest.fixture(scope="module")
def upstream():
    stub = StubUpstream()
    yield stub
    stub.close()


@pytest.fixture(autouse=True)
def smart_upstream(upstream):
    upstream.handler = every_format
    upstream.requests.clear()
    yield
    upstream.handler = every_format


@pytest.fixture(scope="module")
def proxy(upstream, tmp_path_factory):
    path = tmp_path_factory.mktemp("responses") / "config.yaml"
    path.write_text(yaml.safe_dump(config(upstream.url)))
    server = ProxyServer(path).start()
    yield server
    server.stop()


@pytest.fixture
def client(proxy):
    return openai.OpenAI(base_url=proxy.url + "/v1", api_key=TOKEN, max_retries=0)


@pytest.mark.parametrize("model", FORMATS)
def test_create_on_every_wire_format(client, upstream, model):
    response = client.responses.create(model=model, input="hello there", instructions="Be brief.")
    assert response.status == "completed"
    assert response.output_text == "echo: hello there"
    assert response.id.startswith("resp_")
    assert response.usage.input_tokens == 11 and response.usage.output_tokens == 3
    (sent,) = upstream.requests
    if model == "native":
        # Passed through as sent, to the deployment's own /responses.
        assert sent.path == "/native/v1/responses"
        assert sent.json()["instructions"] == "Be brief." and sent.json()["input"] == "hello there"
    assert client.responses.retrieve(response.id).output_text == "echo: hello there"


@pytest.mark.parametrize("model", FORMATS)
def test_stream_on_every_wire_format(client, model):
    with client.responses.stream(model=model, input="streamed words here") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    for opened, closed in [
        ("response.output_item.added", "response.output_item.done"),
        ("response.content_part.added", "response.content_part.done"),
        ("response.output_text.delta", "response.output_text.done"),
    ]:
        assert kinds.index(opened) < kinds.index(closed)
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers)) and numbers[0] == 0
    assert final.output_text == "echo: streamed words here"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "echo: streamed words here"
    )


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("model", FORMATS)
def test_tools_over_two_turns(client, upstream, model, stream):
    def create(**kwargs):
        if not stream:
            return client.responses.create(model=model, tools=[WEATHER], **kwargs)
        with client.responses.stream(model=model, tools=[WEATHER], **kwargs) as events:
            return events.get_final_response()

    first = create(input="What is the weather in Paris?")
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    assert call.call_id
    # The second turn sends the whole conversation back, with the tool's output.
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}
    history = [{"role": "user", "content": "What is the weather in Paris?"}, call, result]
    second = create(input=history)
    assert second.output_text == "echo: sunny, 21C"
    # Or only the new item, after the stored first turn.
    third = create(input=[result], previous_response_id=first.id)
    assert third.output_text == "echo: sunny, 21C"
    assert third.previous_response_id == first.id


def test_a_conversation_moves_between_formats(client):
    first = client.responses.create(model="claude", input="one", tools=[WEATHER])
    (call,) = first.output
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "rainy"}
    second = client.responses.create(model="native", input=[result], previous_response_id=first.id)
    assert second.output_text == "echo: rainy"
    third = client.responses.create(model="gemini", input="bye", previous_response_id=second.id)
    assert third.output_text == "echo: bye"


def test_stored_responses_belong_to_their_token(client, proxy):
    response = client.responses.create(model="chat-only", input="mine")
    other = openai.OpenAI(base_url=proxy.url + "/v1", api_key=OTHER_TOKEN, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as info:
        other.responses.create(model="chat-only", input="x", previous_response_id=response.id)
    assert info.value.body["param"] == "previous_response_id"
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_store_false_keeps_nothing(client):
    response = client.responses.create(model="chat-only", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "up"}


def chat_event(delta: dict, finish: str | None = None) -> str:
    return "data: " + json.dumps(
        {**CHUNK, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    )


def test_a_cut_stream_ends_with_failed_never_completed(client, upstream):
    upstream.handler = None
    words = [chat_event({"role": "assistant", "content": "partial"}), chat_event({"content": " x"})]
    upstream.queue(Reply(events=[*words, chat_event({"content": " y"})], cut_after=2))
    with client.responses.stream(model="chat-only", input="hi") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds
    assert events[-1].response.error.message
    assert events[-1].response.output[0].content[0].text == "partial x"
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers))
    # A failed response is not stored.
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(events[0].response.id)


# Where each format's stub stream is cut: after the first text, before the ending.
CUT_AFTER = {"chat-only": 2, "claude": 3, "gemini": 1, "native": 4}


@pytest.mark.parametrize("model", FORMATS)
def test_every_format_cut_mid_answer_ends_with_failed(client, upstream, model):
    def cut(record):
        reply = every_format(record)
        reply.cut_after = CUT_AFTER[model]
        return reply

    upstream.handler = cut
    with client.responses.stream(model=model, input="one two three") as stream:
        events = list(stream)
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.failed", kinds
    assert "response.completed" not in kinds
    numbers = [e.sequence_number for e in events]
    assert numbers == sorted(set(numbers))


def test_a_stream_without_a_finish_reason_is_failed(client, upstream):
    upstream.handler = None
    upstream.queue(Reply(events=[chat_event({"role": "assistant", "content": "so far"})]))
    with client.responses.stream(model="chat-only", input="hi") as stream:
        kinds = [e.type for e in stream]
    assert kinds[-1] == "response.failed" and "response.completed" not in kinds


def test_an_in_band_upstream_error_ends_with_failed(client, upstream):
    upstream.handler = None
    error = {"error": {"message": "overloaded mid-answer", "type": "server_error"}}
    events = [chat_event({"role": "assistant", "content": "a"}), "data: " + json.dumps(error)]
    upstream.queue(Reply(events=events))
    with client.responses.stream(model="chat-only", input="hi") as stream:
        last = list(stream)[-1]
    assert last.type == "response.failed"
    assert "overloaded mid-answer" in last.response.error.message
    assert last.response.error.code == "server_error"


def test_a_passed_through_stream_cut_or_failing_ends_with_failed(client, upstream):
    upstream.handler = None
    item = {"id": "msg_1", "type": "message", "status": "completed", "role": "assistant",
            "content": [{"type": "output_text", "text": "hello", "annotations": []}]}  # fmt: skip
    response = {"id": "resp_up", "object": "response", "created_at": 1, "status": "completed",
                "model": "gpt-up", "output": [item], "usage": None}  # fmt: skip
    events = responses_events(response, item)
    upstream.queue(Reply(events=events, cut_after=len(events) - 1))
    error = {"type": "error", "code": "server_error", "message": "upstream broke", "param": None}
    upstream.queue(Reply(events=[*events[:4], "event: error\ndata: " + json.dumps(error)]))
    for expected in ("broke off", "upstream broke"):
        with client.responses.stream(model="native", input="hi") as stream:
            seen = list(stream)
        assert seen[-1].type == "response.failed", [e.type for e in seen]
        assert "response.completed" not in [e.type for e in seen]
        assert expected in seen[-1].response.error.message
        numbers = [e.sequence_number for e in seen]
        assert numbers == sorted(set(numbers))


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_max_output_tokens_gives_an_incomplete_response(client, upstream, stream):
    upstream.handler = None
    if stream:
        chunks = [chat_event({"role": "assistant", "content": "cut sh"}), chat_event({}, "length")]
        upstream.queue(Reply(events=[*chunks, "data: [DONE]"]))
        with client.responses.stream(model="chat-only", input="hi", max_output_tokens=16) as s:
            events = list(s)
        assert events[-1].type == "response.incomplete"
        response = events[-1].response
    else:
        message = {"role": "assistant", "content": "cut sh"}
        choice = {"index": 0, "message": message, "finish_reason": "length"}
        upstream.queue(Reply(body={**CHUNK, "object": "chat.completion", "choices": [choice]}))
        response = client.responses.create(model="chat-only", input="hi", max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "cut sh"
    assert upstream.requests[-1].json()["max_tokens"] == 16


def test_previous_response_id_across_two_proxies_on_one_redis(upstream, redis_server, tmp_path):
    servers = []
    for index in range(2):
        path = tmp_path / f"config-{index}.yaml"
        path.write_text(
            yaml.safe_dump(config(upstream.url, rate_limits={"storage": redis_server.url}))
        )
        servers.append(ProxyServer(path))
    with ThreadPoolExecutor(2) as pool:  # both start at once
        list(pool.map(ProxyServer.start, servers))
    try:
        first_proxy, second_proxy = (
            openai.OpenAI(base_url=s.url + "/v1", api_key=TOKEN, max_retries=0) for s in servers
        )
        first = first_proxy.responses.create(model="chat-only", input="remember the number 7")
        second = second_proxy.responses.create(
            model="claude", input="what was it?", previous_response_id=first.id
        )
        assert second.output_text == "echo: what was it?"
        sent = upstream.requests[-1].json()["messages"]
        assert [m["role"] for m in sent] == ["user", "assistant", "user"]
        assert "remember the number 7" in json.dumps(sent[0])
        assert first_proxy.responses.retrieve(second.id).previous_response_id == first.id
        second_proxy.responses.delete(first.id)
        with pytest.raises(openai.NotFoundError):
            first_proxy.responses.retrieve(first.id)
    finally:
        for server in servers:
            server.stop()


def readme_block(language: str, marker: str) -> str:
    blocks = [body for lang, body in FENCE.findall(README) if lang == language and marker in body]
    assert len(blocks) == 1, f"{len(blocks)} {language} blocks contain {marker!r}"
    return blocks[0]


def test_the_readme_responses_example_runs_as_written(proxy):
    code = readme_block("python", "client.responses.create")
    assert 'api_key="unused"' in code  # as the README's other examples, for a proxy without tokens
    code = code.replace('api_key="unused"', f'api_key="{TOKEN}"')
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code.replace("http://127.0.0.1:8080", proxy.url), "README", "exec"), {})
    assert out.getvalue() == "remember this\nand this too\ncompleted\n"


def test_the_readme_codex_and_config_examples_hold():
    codex = tomllib.loads(readme_block("toml", "wire_api"))
    provider = codex["model_providers"][codex["model_provider"]]
    assert provider["wire_api"] == "responses"
    assert provider["base_url"] == "http://127.0.0.1:8080/v1" and provider["env_key"]
    assert f"export {provider['env_key']}=" in readme_block("sh", "codex")
    example = yaml.safe_load(readme_block("yaml", "\nresponses:\n"))
    loaded = load_config(
        None, env={"OPENAI_API_KEY": "sk-x"}, overrides={**example, "default_model": None}
    )
    assert loaded.models[0].responses is True
    assert loaded.responses.storage.startswith("redis://")
    assert loaded.responses.ttl_seconds == 86400
