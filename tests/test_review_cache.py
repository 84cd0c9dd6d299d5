"""Adversarial cache tests from review: requests that must never share an entry."""

from __future__ import annotations

import json

import pytest

from tests.conftest import openai_model
from tests.stub_upstream import Reply, chat_completion
from tests.test_cache import cached, post  # noqa: F401 - the fixture

COMPLETION = {
    "id": "cmpl-stub",
    "object": "text_completion",
    "created": 1700000000,
    "model": "up-model",
    "choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": None}],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}
ANSWERS = {
    "/v1/chat/completions": ("chat.completion", chat_completion()),
    "/v1/completions": ("text_completion", COMPLETION),
}
# One body chat and legacy completions both accept as it is (one chat model serves both).
BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "Hello"}], "prompt": "Hello"}


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("/v1/chat/completions", "/v1/completions"),
        ("/v1/completions", "/v1/chat/completions"),
    ],
)
def test_one_body_on_two_endpoints_of_a_surface_is_two_entries(cached, upstream, first, second):  # noqa: F811
    client = cached()
    for path in (first, second):
        upstream.queue(Reply(body=ANSWERS[path][1]))
        answer = post(client, BODY, path=path)
        assert answer.status_code == 200, answer.json
        assert answer.headers["x-ai-proxy-cache"] == "miss"
        assert answer.json["object"] == ANSWERS[path][0]
    # Each is still its own endpoint's hit.
    for path in (first, second):
        hit = post(client, BODY, path=path)
        assert hit.headers["x-ai-proxy-cache"] == "hit"
        assert hit.json["object"] == ANSWERS[path][0]
    assert len(upstream.requests) == 2


REASONING = {
    "id": "rs_1",
    "type": "reasoning",
    "summary": [{"type": "summary_text", "text": "thinking"}],
}
SEARCH = {"id": "ws_1", "type": "web_search_call", "status": "completed"}
CITED = {
    "id": "msg_1",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [
        {
            "type": "output_text",
            "text": "Hello world",
            "annotations": [
                {"type": "url_citation", "url": "https://x", "start_index": 0, "end_index": 5}
            ],
        }
    ],
}
CALL = {
    "id": "fc_1",
    "type": "function_call",
    "status": "completed",
    "call_id": "call_1",
    "name": "get_weather",
    "arguments": '{"city":"Paris"}',
}


def response_with(output: list[dict]) -> dict:
    return {
        "id": "resp_up",
        "object": "response",
        "created_at": 1,
        "status": "completed",
        "model": "up-model",
        "output": output,
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }


def sse_data(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


@pytest.mark.parametrize(
    "output",
    [[REASONING, CITED], [SEARCH, CITED], [REASONING, CALL], [CITED, SEARCH, CALL], [REASONING]],
    ids=["reasoning", "search", "reasoning-call", "mixed", "reasoning-only"],
)
def test_a_stored_response_replayed_as_a_stream_keeps_every_output_item(cached, upstream, output):  # noqa: F811
    client = cached(models=[openai_model(upstream, responses=True)])
    upstream.queue(Reply(body=response_with(output)))
    body = {"model": "gpt-test", "input": "hi"}
    whole = post(client, body, path="/v1/responses")
    assert whole.json["output"] == output
    streamed = post(client, {**body, "stream": True}, path="/v1/responses")
    assert streamed.headers["x-ai-proxy-cache"] == "hit"
    events = sse_data(streamed.get_data(as_text=True))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    assert events[-1]["response"]["output"] == output
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert [(e["output_index"], e["item"]) for e in done] == list(enumerate(output))
    added = [e["output_index"] for e in events if e["type"] == "response.output_item.added"]
    assert added == list(range(len(output)))


@pytest.mark.parametrize(
    "state",
    [
        {"conversation": "conv_1"},
        {"conversation": {"id": "conv_1"}},
        {"prompt": {"id": "pmpt_1"}},
        {"prompt": {"id": "pmpt_1", "version": "2"}},
    ],
    ids=["conversation-id", "conversation-object", "prompt", "prompt-version"],
)
def test_a_response_that_depends_on_upstream_state_is_never_cached(cached, upstream, state):  # noqa: F811
    client = cached(models=[openai_model(upstream, responses=True)])
    body = {"model": "gpt-test", "input": "and then?", **state}
    for turn in range(2):
        upstream.queue(Reply(body=response_with([{**CITED, "id": f"msg_{turn}"}])))
        answer = post(client, body, path="/v1/responses")
        assert answer.status_code == 200, answer.json
        assert answer.headers["x-ai-proxy-cache"] == "bypass"
        assert answer.json["output"][0]["id"] == f"msg_{turn}"
    # Both went upstream, with the state they name.
    assert len(upstream.requests) == 2
    assert all(all(r.json()[k] == v for k, v in state.items()) for r in upstream.requests)


MESSAGE = {
    "id": "msg_up",
    "type": "message",
    "role": "assistant",
    "model": "up-model",
    "content": [{"type": "text", "text": "done"}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 3, "output_tokens": 1},
}


@pytest.mark.parametrize("container", ["container_1", {"id": "container_1"}])
def test_a_message_in_a_reused_container_is_never_cached(cached, upstream, container):  # noqa: F811
    model = {**openai_model(upstream), "provider": "anthropic", "base_url": upstream.url}
    client = cached(models=[model])
    body = {
        "model": "gpt-test",
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "run it again"}],
        "container": container,
    }
    for _ in range(2):
        upstream.queue(Reply(body=MESSAGE))
        answer = post(client, body, path="/v1/messages")
        assert answer.status_code == 200, answer.json
        assert answer.headers["x-ai-proxy-cache"] == "bypass"
    assert len(upstream.requests) == 2
    # Without a container the same request is cached as usual.
    plain = {key: value for key, value in body.items() if key != "container"}
    upstream.queue(Reply(body=MESSAGE))
    assert post(client, plain, path="/v1/messages").headers["x-ai-proxy-cache"] == "miss"
    assert post(client, plain, path="/v1/messages").headers["x-ai-proxy-cache"] == "hit"
