"""What a request reserves is what it can cost: every part of the prompt the model is sent (tool
definitions, earlier tool calls, images, a response schema, legacy prompts in every form) and
every answer it asks for. A window reserved for less would be overshot by requests that all fit."""

from __future__ import annotations

import json
import math

import pytest

from app.tokens import IMAGE_TOKENS, LOW_DETAIL_IMAGE_TOKENS, prompt_estimate
from tests.stub_upstream import Reply
from tests.test_reservations import PROMPT, Gate, burst, quota_config, tokens_reserved

ROOM = 100_000


def tokens_of(value) -> int:
    """Four characters a token over the compact JSON of `value`."""
    return math.ceil(len(json.dumps(value, separators=(",", ":"))) / 4)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Looks a thing up. " * 50,
            "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
        },
    }
]
CALL = {
    "id": "c1",
    "type": "function",
    "function": {"name": "lookup", "arguments": '{"q": "x"}' * 40},
}
SCHEMA = {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}


def test_the_estimate_counts_everything_the_model_is_sent():
    assert prompt_estimate({"messages": [PROMPT]}) == 1
    assert prompt_estimate({"messages": [PROMPT], "tools": TOOLS}) == 1 + tokens_of(TOOLS)
    assert prompt_estimate({"messages": [PROMPT], "response_format": SCHEMA}) == 1 + tokens_of(
        SCHEMA
    )
    called = {"role": "assistant", "content": None, "tool_calls": [CALL]}
    arguments = CALL["function"]["name"] + CALL["function"]["arguments"]
    assert prompt_estimate({"messages": [PROMPT, called]}) == 1 + math.ceil(len(arguments) / 4)
    legacy = {"role": "assistant", "content": None, "function_call": CALL["function"]}
    assert prompt_estimate({"messages": [legacy]}) == math.ceil(len(arguments) / 4)
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + "A" * 9000}}
    low = {"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "low"}}
    parts = {"role": "user", "content": [{"type": "text", "text": "hi"}, image, low]}
    assert prompt_estimate({"messages": [parts]}) == 1 + IMAGE_TOKENS + LOW_DETAIL_IMAGE_TOKENS
    # Legacy completion prompts: a string, strings, token ids, lists of token ids.
    assert prompt_estimate({"prompt": "hi there"}) == 2
    assert prompt_estimate({"prompt": ["hi", "hi there"]}) == 3
    assert prompt_estimate({"prompt": [1, 2, 3, 4, 5]}) == 5
    assert prompt_estimate({"prompt": [[1, 2, 3], [4, 5]]}) == 5


def test_odd_shapes_estimate_without_failing():
    odd = {
        "messages": [None, 3, {"content": 7, "tool_calls": "x"}, {"tool_calls": [None, {}]}],
        "tools": "not a list",
        "prompt": {"a": 1},
    }
    assert prompt_estimate(odd) == tokens_of("not a list")
    assert prompt_estimate({"messages": [{"function_call": {"name": "f", "arguments": {}}}]}) == 1


CASES = [
    (
        "/v1/chat/completions",
        {"messages": [PROMPT], "tools": TOOLS, "max_tokens": 40},
        1 + tokens_of(TOOLS) + 40,
    ),
    (
        "/v1/chat/completions",
        {
            "messages": [
                PROMPT,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "c1", "content": "ok"},
            ],
            "max_tokens": 40,
        },
        1 + math.ceil(len("lookup" + CALL["function"]["arguments"]) / 4) + 1 + 40,
    ),
    (
        "/v1/chat/completions",
        {"messages": [PROMPT], "response_format": SCHEMA, "max_tokens": 9},
        1 + tokens_of(SCHEMA) + 9,
    ),
    # No cap and three answers asked: the default reserve for each.
    ("/v1/chat/completions", {"messages": [PROMPT], "n": 3}, 1 + 3 * 300),
    # Both spellings set: a backend may honour either, so the larger is reserved.
    (
        "/v1/chat/completions",
        {"messages": [PROMPT], "max_completion_tokens": 7, "max_tokens": 40},
        1 + 40,
    ),
    ("/v1/completions", {"prompt": ["hi", "hi"], "max_tokens": 40}, 2 + 2 * 40),
    ("/v1/completions", {"prompt": [1, 2, 3, 4, 5], "max_tokens": 40}, 5 + 40),
    ("/v1/completions", {"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 40}, 5 + 2 * 40),
    ("/v1/completions", {"prompt": ["hi", "hi"]}, 2 + 2 * 300),
    (
        "/v1/messages",
        {
            "messages": [PROMPT],
            "max_tokens": 40,
            "tools": [
                {"name": "lookup", "description": "x" * 400, "input_schema": {"type": "object"}}
            ],
        },
        None,
    ),
]


@pytest.mark.parametrize(("path", "body", "reserved"), CASES)
def test_each_request_reserves_all_it_can_cost(make_app, upstream, path, body, reserved):
    taken = tokens_reserved(make_app, upstream, path, body, ROOM)
    if reserved is None:  # Anthropic tools: at least their 400 characters of description
        assert taken >= 1 + 100 + 40
    else:
        assert taken == reserved


def test_agents_with_large_tool_definitions_never_overshoot_the_window(make_app, upstream):
    """Ten concurrent requests with ~2,500 tokens of tools each and `max_tokens: 10` against a
    3,000-token window: one fits. Reserving only the messages admitted all ten (8x over)."""
    tools = [{**TOOLS[0], "function": {**TOOLS[0]["function"], "description": "x" * 10_000}}]
    app = make_app(quota_config("memory://", upstream, {"tokens_per_minute": 3000}))
    gate = Gate(
        upstream, usage={"prompt_tokens": 2600, "completion_tokens": 10, "total_tokens": 2610}
    )

    def send(_i):
        response = app.test_client().post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [PROMPT], "tools": tools, "max_tokens": 10},
            headers={"Authorization": "Bearer k-1"},
        )
        response.get_data()
        response.close()
        return response.status_code

    futures, pool = burst(send, 10, upstream)
    assert len(upstream.requests) == 1
    gate.open.set()
    statuses = sorted(f.result() for f in futures)
    pool.shutdown()
    assert statuses == [200] + [429] * 9
    report = app.extensions["ai_proxy"].quotas.report("token:a")["tokens_per_minute"]
    assert report["used"] <= 3000


# --- what an answer is charged -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage", "text", "charged"),
    [
        ({"prompt_tokens": 5, "completion_tokens": 7}, "", (5, 7)),
        # A missing completion: the total less the prompt, else the text counted.
        ({"prompt_tokens": 5, "total_tokens": 12}, "x" * 400, (5, 7)),
        ({"prompt_tokens": 5}, "x" * 400, (5, 100)),
        ({"prompt_tokens": 5, "completion_tokens": None}, "x" * 400, (5, 100)),
        # Counts that are not counts are not believed.
        ({"prompt_tokens": 5, "completion_tokens": -900}, "x" * 40, (5, 10)),
        ({"prompt_tokens": 5, "completion_tokens": 2.5}, "x" * 40, (5, 10)),
        ({"prompt_tokens": 5, "completion_tokens": True}, "x" * 40, (5, 10)),
        ({"prompt_tokens": -5, "completion_tokens": 7}, "x" * 40, (1, 10)),
        # Embeddings: a prompt and no text.
        ({"prompt_tokens": 5, "total_tokens": 5}, "", (5, 0)),
        # Anthropic: what its prompt cache read or wrote is prompt too.
        (
            {
                "input_tokens": 10,
                "output_tokens": 5,
                "cache_read_input_tokens": 50_000,
                "cache_creation_input_tokens": 2000,
            },
            "",
            (52_010, 5),
        ),
    ],
)
def test_usage_is_believed_only_where_it_counts(usage, text, charged):
    from app.tokens import usage_numbers

    assert usage_numbers(usage, {"messages": [PROMPT]}, text) == charged


def cut_config(upstream):
    return quota_config("memory://", upstream, {"tokens_per_minute": ROOM})


def charged_tokens(app) -> int:
    window = app.extensions["ai_proxy"].quotas.report("token:a")["tokens_per_minute"]
    assert window["reserved"] == 0
    return window["used"]


def test_a_legacy_completion_stream_is_charged_its_text(make_app, upstream):
    """Legacy chunks carry `choices[].text`, not a delta: the text counted is what it sent."""
    head = {"id": "cmpl-1", "object": "text_completion", "model": "m"}
    pieces = ["x" * 40, "y" * 40]
    events = [json.dumps({**head, "choices": [{"index": 0, "text": t}]}) for t in pieces]
    events.append(
        json.dumps({**head, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    )
    upstream.queue(Reply(events=[f"data: {e}" for e in [*events, "[DONE]"]]))
    app = make_app(cut_config(upstream))
    response = app.test_client().post(
        "/v1/completions",
        json={"model": "gpt", "prompt": "hi", "stream": True, "max_tokens": 500},
        headers={"Authorization": "Bearer k-1"},
    )
    response.get_data()
    response.close()
    assert charged_tokens(app) == 1 + 20


def test_a_cut_translated_messages_stream_is_charged_what_it_delivered(make_app, upstream):
    from tests.stub_upstream import chat_chunks

    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    upstream.queue(Reply(events=chat_chunks(words), cut_after=4))
    app = make_app(cut_config(upstream))
    response = app.test_client().post(
        "/v1/messages",
        json={"model": "gpt", "max_tokens": 500, "stream": True, "messages": [PROMPT]},
        headers={"Authorization": "Bearer k-1"},
    )
    assert b"event: error" in response.get_data()
    response.close()
    assert charged_tokens(app) == 1 + len("alpha beta gamma") // 4


def test_a_cut_native_messages_stream_is_charged_what_it_delivered(make_app, upstream):
    """message_start's output_tokens is a placeholder (1): a stream cut before message_delta
    is charged the text it delivered, not one token."""
    from tests.test_provider_anthropic import anthropic_model

    def event(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}"

    usage = {"input_tokens": 3, "output_tokens": 1}
    events = [
        event(
            "message_start",
            {
                "message": {
                    "id": "m",
                    "type": "message",
                    "role": "assistant",
                    "content": [],
                    "model": "c",
                    "usage": usage,
                }
            },
        ),
        event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *[
            event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "text_delta", "text": "w" * 40}},
            )
            for _ in range(10)
        ],
    ]
    upstream.queue(Reply(events=events, cut_after=len(events)))
    config = cut_config(upstream)
    config["models"] = [anthropic_model(upstream.url, name="gpt")]
    app = make_app(config)
    response = app.test_client().post(
        "/v1/messages",
        json={"model": "gpt", "max_tokens": 500, "stream": True, "messages": [PROMPT]},
        headers={"Authorization": "Bearer k-1"},
    )
    response.get_data()
    response.close()
    assert charged_tokens(app) == 3 + 100


# --- requests a window can never admit ---------------------------------------------------------


def small_window_app(make_app, upstream, owner: str):
    """An app whose token (or deployment) has a tokens_per_minute of 500."""
    limit = {"tokens_per_minute": 500}
    config = quota_config("memory://", upstream, limit if owner == "token" else None)
    if owner == "deployment":
        config["models"][0].update(limit)
    return make_app(config)


@pytest.mark.parametrize("owner", ["token", "deployment"])
def test_a_default_reserve_fits_a_small_window(make_app, upstream, owner):
    """tokens_per_minute 500 and the default reserve of 1024: a request that sets no cap
    reserves what the window can hold (it was refused forever, with a Retry-After)."""
    app = small_window_app(make_app, upstream, owner)
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [PROMPT]},
        headers={"Authorization": "Bearer k-1"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    window = app.extensions["ai_proxy"].quotas.report(
        "token:a" if owner == "token" else "model:gpt#0"
    )["tokens_per_minute"]
    assert window["used"] + window["reserved"] <= 500


@pytest.mark.parametrize("owner", ["token", "deployment"])
def test_a_request_larger_than_the_whole_window_is_told_so_without_retry_after(
    make_app, upstream, owner
):
    app = small_window_app(make_app, upstream, owner)
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [PROMPT], "max_tokens": 10**6},
        headers={"Authorization": "Bearer k-1"},
    )
    assert response.status_code == (429 if owner == "token" else 503)
    assert "can never be admitted" in response.get_json()["error"]["message"]
    assert "Retry-After" not in response.headers  # waiting cannot help
    assert upstream.requests == []
