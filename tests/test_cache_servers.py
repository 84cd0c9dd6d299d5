"""The response cache through real gunicorn with the official SDKs: hits after misses, streams
replayed from stored whole answers and the reverse, single flight in one process and across two
sharing a real redis-server, Redis dying or holding a corrupt entry, and the memory bound."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import anthropic
import openai
import pytest
import redis
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN, openai_model
from tests.servers import ProxyServer, RedisServer, wait_until
from tests.stub_upstream import Reply, StubUpstream, chat_completion
from tests.test_integration_anthropic import ARGS, anthropic_message, anthropic_tool_events

ADMIN = "admin-token-for-cache"
MEMORY_LIMIT = 40_000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "What is the weather?"}]}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def config(upstream, **cache) -> dict:
    return {
        "auth": {"tokens": [{"name": "team-a", "token": TOKEN}], "admin_token": ADMIN},
        "models": [
            openai_model(upstream),
            {
                "name": "claude",
                "provider": "anthropic",
                "base_url": upstream.url,
                "token": "sk-ant-upstream",
                "model": "claude-up",
            },
            {"name": "echo", "provider": "echo"},
        ],
        "retry": {"max_retries": 0},
        # A failure in one test must not keep the deployment out of the next.
        "routing": {"cooldown_seconds": 0},
        "cache": {"enabled": True, **cache},
    }


def sample(proxy, name: str, **labels) -> float:
    text = requests.get(proxy.url + "/metrics", timeout=5).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def tool_answer() -> dict:
    answer = chat_completion("Let me look that up for you right now.")
    message = answer["choices"][0]["message"]
    message["reasoning_content"] = "The user wants weather; call the tool."
    message["tool_calls"] = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": "Paris"})},
        }
    ]
    answer["choices"][0]["finish_reason"] = "tool_calls"
    return answer


def tool_stream_events() -> list[str]:
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "up"}

    def chunk(delta: dict, finish=None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({**base, "choices": [choice]})

    opening = {"index": 0, "id": "call_9", "type": "function"}
    return [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Checking "}),
        chunk({"content": "the weather."}),
        chunk({"tool_calls": [{**opening, "function": {"name": "get_weather", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Oslo"}'}}]}),
        chunk({}, "tool_calls"),
        "data: "
        + json.dumps(
            {
                **base,
                "choices": [],
                "usage": {"prompt_tokens": 9, "completion_tokens": 8, "total_tokens": 17},
            }
        ),
        "data: [DONE]",
    ]


def start_proxy(folder, settings: dict, **kwargs) -> ProxyServer:
    path = folder / f"config-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(settings))
    return ProxyServer(path, **kwargs).start()


@pytest.fixture(scope="module")
def module_stub():
    stub = StubUpstream()
    yield stub
    stub.close()


@pytest.fixture
def upstream(module_stub):
    """The module's stub, as each test finds a fresh one: no handler, no requests, defaults."""
    module_stub.handler = None
    module_stub.default = Reply(body=chat_completion())
    module_stub.requests.clear()
    return module_stub


@pytest.fixture(scope="module")
def proxy(module_stub, tmp_path_factory):
    # Room for a few dozen answers: each test's fit, the memory test's many do not.
    settings = config(module_stub, max_memory_bytes=MEMORY_LIMIT)
    server = start_proxy(tmp_path_factory.mktemp("cache"), settings, threads=16)
    yield server
    server.stop()


def unique(body: dict) -> dict:
    """`body` with a question of its own, so no other test's entry answers it."""
    question = f"{body['messages'][0]['content']} ({uuid.uuid4().hex[:8]})"
    return {**body, "messages": [{"role": "user", "content": question}]}


@pytest.fixture
def oai(proxy):
    return openai.OpenAI(api_key=TOKEN, base_url=proxy.url + "/v1", max_retries=0, timeout=10)


def streamed(oai, **body):
    raw = oai.chat.completions.with_raw_response.create(**body, stream=True)
    chunks = list(raw.parse())
    return raw.headers, chunks


def collect(chunks) -> tuple[str, str, list[tuple[str, str, str]]]:
    text, reasoning, calls = "", "", {}
    for chunk in chunks:
        for choice in chunk.choices:
            delta = choice.delta
            text += delta.content or ""
            reasoning += (delta.model_extra or {}).get("reasoning_content") or ""
            for call in delta.tool_calls or ():
                held = calls.setdefault(call.index, ["", "", ""])
                held[0] = call.id or held[0]
                held[1] += (call.function and call.function.name) or ""
                held[2] += (call.function and call.function.arguments) or ""
    return text, reasoning, [tuple(calls[i]) for i in sorted(calls)]


def test_openai_sdk_stream_from_a_stored_whole_answer(oai, upstream):
    upstream.default = Reply(body=tool_answer())
    body = {**unique(CHAT), "tools": TOOLS}
    raw = oai.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-ai-proxy-cache"] == "miss"
    whole = raw.parse()
    headers, chunks = streamed(oai, **body, stream_options={"include_usage": True})
    assert headers["x-ai-proxy-cache"] == "hit" and headers["x-ai-proxy-model"] == "gpt-test"
    assert len(chunks) > 5
    text, reasoning, calls = collect(chunks)
    message = whole.choices[0].message
    assert text == message.content
    assert reasoning == message.model_extra["reasoning_content"]
    call = message.tool_calls[0]
    assert calls == [(call.id, call.function.name, call.function.arguments)]
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert [f for f in finishes if f] == ["tool_calls"]
    usage_chunks = [c for c in chunks if c.usage]
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.total_tokens == whole.usage.total_tokens
    headers, chunks = streamed(oai, **body)
    assert headers["x-ai-proxy-cache"] == "hit"
    assert not any(c.usage for c in chunks)
    assert len(upstream.requests) == 1


def test_openai_sdk_whole_answer_from_a_stored_stream(oai, upstream):
    upstream.default = Reply(events=tool_stream_events())
    body = {**unique(CHAT), "tools": TOOLS}
    headers, chunks = streamed(oai, **body)
    assert headers["x-ai-proxy-cache"] == "miss"
    text, _, calls = collect(chunks)
    # Stored by the time the last byte was sent: the next request is a hit at once.
    raw = oai.chat.completions.with_raw_response.create(**body)
    assert raw.headers["x-ai-proxy-cache"] == "hit"
    whole = raw.parse()
    message = whole.choices[0].message
    assert message.content == text == "Checking the weather."
    call = message.tool_calls[0]
    assert [(call.id, call.function.name, call.function.arguments)] == calls
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.usage.total_tokens == 17
    assert len(upstream.requests) == 1


def thinking_message() -> dict:
    return anthropic_message(
        [
            {"type": "thinking", "thinking": "Weather needs a tool call.", "signature": "sig-1"},
            {"type": "text", "text": "Let me check that for you."},
            {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": ARGS},
        ],
        stop_reason="tool_use",
    )


def blocks(message) -> list[dict]:
    """A message's content blocks as plain data (a streamed message's blocks are Parsed*)."""
    return [
        {k: v for k, v in block.model_dump().items() if k != "parsed_output"}
        for block in message.content
    ]


def test_anthropic_sdk_stream_from_a_stored_whole_message_and_back(proxy, upstream):
    client = anthropic.Anthropic(api_key=TOKEN, base_url=proxy.url, max_retries=0, timeout=10)
    upstream.default = Reply(body=thinking_message())
    body = unique(
        {"model": "claude", "max_tokens": 200, "messages": [{"role": "user", "content": "Hi"}]}
    )
    raw = client.messages.with_raw_response.create(**body)
    assert raw.headers["x-ai-proxy-cache"] == "miss"
    whole = raw.parse()
    with client.messages.stream(**body) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
        assert stream.response.headers["x-ai-proxy-cache"] == "hit"
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert kinds.count("content_block_start") == 3
    assert blocks(final) == blocks(whole) and final.stop_reason == "tool_use"
    assert final.content[0].thinking == "Weather needs a tool call."
    assert final.content[0].signature == "sig-1"
    assert final.usage.output_tokens == whole.usage.output_tokens

    upstream.default = Reply(events=anthropic_tool_events())
    other = unique(body)
    with client.messages.stream(**other) as stream:
        streamed_final = stream.get_final_message()
        assert stream.response.headers["x-ai-proxy-cache"] == "miss"
    raw = client.messages.with_raw_response.create(**other)
    assert raw.headers["x-ai-proxy-cache"] == "hit"
    assert blocks(raw.parse()) == blocks(streamed_final)
    assert len(upstream.requests) == 2


def slow_handler(upstream, seconds: float = 0.6):
    def handle(record):
        return Reply(body=chat_completion("slow answer"), hang=seconds)

    upstream.handler = handle


def post_together(urls: list[str], body: dict) -> list[requests.Response]:
    start = threading.Barrier(len(urls))

    def one(url: str) -> requests.Response:
        start.wait()
        return requests.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=20)

    with ThreadPoolExecutor(len(urls)) as pool:
        return list(pool.map(one, urls))


def test_eight_identical_requests_make_one_upstream_call(proxy, upstream):
    slow_handler(upstream)
    answers = post_together([proxy.url] * 8, unique(CHAT))
    assert [a.status_code for a in answers] == [200] * 8
    assert len(upstream.requests) == 1
    assert sorted(a.headers["x-ai-proxy-cache"] for a in answers) == ["hit"] * 7 + ["miss"]
    assert len({a.content for a in answers}) == 1


def test_waiters_make_their_own_call_when_the_first_request_fails(proxy, upstream):
    calls = []

    def handle(record):
        calls.append(record)
        if len(calls) == 1:
            return Reply(status=500, body={"error": {"message": "down"}}, hang=0.5)
        return Reply(body=chat_completion("second try"))

    upstream.handler = handle
    answers = post_together([proxy.url] * 4, unique(CHAT))
    assert sorted(a.status_code for a in answers) == [200, 200, 200, 502]
    assert len(calls) >= 2  # the first failed: the waiters asked for themselves


@pytest.fixture(scope="module")
def shared_redis(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared(module_stub, shared_redis, tmp_path_factory):
    """Two proxies (one worker each) sharing one real redis-server as their cache."""
    folder = tmp_path_factory.mktemp("shared")
    settings = config(module_stub, storage=shared_redis.url)
    servers = [start_proxy(folder, settings, threads=8) for _ in range(2)]
    yield servers
    for server in servers:
        server.stop()


def test_two_processes_sharing_redis_make_one_upstream_call(shared, upstream, shared_redis):
    slow_handler(upstream)
    answers = post_together([p.url for p in shared] * 4, unique(CHAT))
    assert [a.status_code for a in answers] == [200] * 8
    assert len(upstream.requests) == 1
    assert sorted(a.headers["x-ai-proxy-cache"] for a in answers) == ["hit"] * 7 + ["miss"]
    db = redis.Redis(port=shared_redis.port)
    assert not db.keys("*:lock")  # the lock went with its answer


def test_no_store_leaves_no_trace_in_redis(shared, upstream, shared_redis):
    db = redis.Redis(port=shared_redis.port)
    db.flushdb()
    body = unique(CHAT)
    for proxy in shared:
        answer = requests.post(
            proxy.url + "/v1/chat/completions",
            json=body,
            headers={**AUTH, "Cache-Control": "no-store"},
            timeout=10,
        )
        assert answer.headers["x-ai-proxy-cache"] == "bypass"
    assert db.dbsize() == 0


def test_a_corrupt_redis_entry_is_a_miss_and_deletes_work_across_processes(
    shared, upstream, shared_redis
):
    db = redis.Redis(port=shared_redis.port)
    db.flushdb()
    first, second = shared
    url = "/v1/chat/completions"
    CHAT = unique(globals()["CHAT"])  # noqa: N806 - this test's own question
    assert requests.post(first.url + url, json=CHAT, headers=AUTH).headers["x-ai-proxy-cache"] == (
        "miss"
    )
    assert (
        requests.post(second.url + url, json=CHAT, headers=AUTH).headers["x-ai-proxy-cache"]
        == "hit"
    )
    (slot,) = [k for k in db.keys("ai-proxy:cache:*") if b":gen" not in k]
    db.set(slot, db.get(slot).replace(b"hi there", b"hi therE"))
    errors = sample(second, "ai_proxy_cache_errors_total", op="corrupt")
    answer = requests.post(second.url + url, json=CHAT, headers=AUTH)
    assert answer.headers["x-ai-proxy-cache"] == "miss"
    assert answer.json()["choices"][0]["message"]["content"] == "hi there"
    assert sample(second, "ai_proxy_cache_errors_total", op="corrupt") == errors + 1
    assert (
        requests.post(first.url + url, json=CHAT, headers=AUTH).headers["x-ai-proxy-cache"] == "hit"
    )
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert requests.delete(first.url + "/admin/cache?model=gpt-test", headers=admin).ok
    assert (
        requests.post(second.url + url, json=CHAT, headers=AUTH).headers["x-ai-proxy-cache"]
        == "miss"
    )


def test_redis_killed_mid_test_is_served_as_a_miss(shared, upstream, shared_redis):
    proxy = shared[0]
    body = unique(CHAT)

    def ask() -> requests.Response:
        return requests.post(proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=5)

    assert ask().headers["x-ai-proxy-cache"] == "miss"
    assert ask().headers["x-ai-proxy-cache"] == "hit"
    errors = sample(proxy, "ai_proxy_cache_errors_total")
    shared_redis.stop()
    try:
        answers = [ask() for _ in range(3)]
        assert [a.status_code for a in answers] == [200] * 3
        assert {a.headers["x-ai-proxy-cache"] for a in answers} == {"miss"}
        assert answers[0].json()["choices"][0]["message"]["content"] == "hi there"
        assert sample(proxy, "ai_proxy_cache_errors_total") > errors
        assert "cache storage" in proxy.logs()
    finally:
        shared_redis.start()  # the same port: the proxies find it again
    # Back: the cache is used again (after the second it leaves a failed storage alone).
    assert wait_until(lambda: ask().headers["x-ai-proxy-cache"] == "hit", timeout=5)


def test_the_memory_bound_evicts_under_load(proxy, upstream):
    evictions = sample(proxy, "ai_proxy_cache_evictions_total")

    def ask(index: int) -> int:
        question = f"answer {index} {uuid.uuid4().hex[:6]} " * 20
        body = {"model": "echo", "messages": [{"role": "user", "content": question}]}
        return requests.post(
            proxy.url + "/v1/chat/completions", json=body, headers=AUTH, timeout=10
        ).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(ask, range(100))) == {200}
    assert wait_until(lambda: sample(proxy, "ai_proxy_cache_evictions_total") > evictions + 50)
    assert 0 < sample(proxy, "ai_proxy_cache_memory_bytes") <= MEMORY_LIMIT
    assert sample(proxy, "ai_proxy_cache_stored_bytes_total") > MEMORY_LIMIT
