"""/v1/responses in-app: bad input refused before any upstream call, what is sent upstream
(translated or passed through), warnings, stored responses and their owners, charging."""

from __future__ import annotations

import json

import pytest
import responses as mocked

from app.config import ConfigError
from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply, chat_completion

OTHER = "sk-other-token"
CALL = {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"}


@pytest.fixture
def app(make_app, upstream):
    return make_app(
        {
            "auth": {
                "tokens": [
                    {"name": "team", "token": TOKEN},
                    {"name": "other", "token": OTHER},
                    {"name": "small", "token": "sk-small", "tokens_per_minute": 20},
                    {"name": "gpt-only", "token": "sk-gpt-only", "models": ["gpt"]},
                ]
            },
            "models": [
                openai_model(upstream, name="gpt"),
                openai_model(upstream, name="native", responses=True, model="gpt-up"),
                {
                    "name": "azure-native",
                    "provider": "azure",
                    "base_url": "https://res.openai.azure.com",
                    "token": "azure-secret",
                    "model": "my-deployment",
                    "responses": True,
                },
            ],
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 0},
        }
    )


@pytest.fixture
def client(app):
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    return client


def post(client, body: dict, token: str = TOKEN):
    response = client.post("/v1/responses", json=body, headers={"Authorization": f"Bearer {token}"})
    response.get_data()
    response.close()  # as a WSGI server does once the answer is sent: usage is charged then
    return response


def output(call_id: str, value) -> dict:
    return {"type": "function_call_output", "call_id": call_id, "output": value}


def message(content, role: str = "user") -> dict:
    return {"type": "message", "role": role, "content": content}


# (input or extra fields, status, param): every one refused before any upstream call.
BAD = [
    ({"input": 5}, 400, "input"),
    ({"input": [5]}, 400, "input"),
    ({"input": []}, 400, "input"),
    ({}, 400, "input"),
    ({"input": [{"type": "bogus"}]}, 400, "input[0].type"),
    ({"input": [{"type": None, "content": "x"}]}, 400, "input[0].type"),
    ({"input": [{"content": "no type or role"}]}, 400, "input[0].type"),
    ({"input": [message("hi", role="robot")]}, 400, "input[0].role"),
    ({"input": [message("hi", role=["user"])]}, 400, "input[0].role"),
    ({"input": [message(5)]}, 400, "input[0].content"),
    ({"input": [message(None)]}, 400, "input[0].content"),
    ({"input": [message([{"type": "video"}])]}, 400, "input[0].content[0].type"),
    ({"input": [message(["text"])]}, 400, "input[0].content[0].type"),
    ({"input": [message([{"type": "input_text", "text": 5}])]}, 400, "input[0].content[0].text"),
    ({"input": [message([{"type": "input_image", "image_url": 5}])]}, 400,
     "input[0].content[0].image_url"),
    ({"input": [{**CALL, "call_id": 5}]}, 400, "input[0].call_id"),
    ({"input": [{**CALL, "name": None}]}, 400, "input[0].name"),
    ({"input": [{**CALL, "arguments": {"a": 1}}]}, 400, "input[0].arguments"),
    ({"input": [output("call_1", "x")]}, 400, "input[0].call_id"),
    ({"input": [CALL, output("call_2", "x")]}, 400, "input[1].call_id"),
    ({"input": [CALL, output("CALL_1", "x")]}, 400, "input[1].call_id"),
    ({"input": [output("call_1", "x"), CALL]}, 400, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "output": "x"}]}, 400, "input[0].call_id"),
    ({"input": [CALL, output("call_1", 5)]}, 400, "input[1].output"),
    ({"input": [CALL, output("call_1", [{"type": "x"}])]}, 400, "input[1].output[0].type"),
    ({"input": [CALL, output("call_1", [{"type": {"a": 1}}])]}, 400, "input[1].output[0].type"),
    ({"input": [message([{"type": ["input_text"]}])]}, 400, "input[0].content[0].type"),
    ({"input": "hi", "tool_choice": {"type": "function", "name": "f"}, "tools": "x"}, 400, "tools"),
    ({"input": "hi", "previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
    ({"input": "hi", "previous_response_id": ""}, 400, "previous_response_id"),
    ({"input": "hi", "tools": [{"type": "function"}]}, 400, "tools"),
    ({"input": "hi", "tools": "f"}, 400, "tools"),
    ({"input": "hi", "tools": [{"name": "no type"}]}, 400, "tools"),
    ({"input": "hi", "tool_choice": {"type": "function"}}, 400, "tool_choice"),
    ({"input": "hi", "tool_choice": "any"}, 400, "tool_choice"),
    ({"input": "hi", "text": {"format": {"type": "xml"}}}, 400, "text"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text"),
    ({"input": "hi", "text": "json"}, 400, "text"),
    ({"input": "hi", "metadata": {"k": 5}}, 400, "metadata"),
    ({"input": "hi", "metadata": {f"k{i}": "v" for i in range(17)}}, 400, "metadata"),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "hi", "max_output_tokens": "16"}, 400, "max_output_tokens"),
    ({"input": "hi", "temperature": 3}, 400, "temperature"),
    ({"input": "hi", "top_p": True}, 400, "top_p"),
    ({"input": "hi", "stream": "true"}, 400, "stream"),
    ({"input": "hi", "store": "no"}, 400, "store"),
    ({"input": "hi", "parallel_tool_calls": 1}, 400, "parallel_tool_calls"),
    ({"input": "hi", "instructions": 5}, 400, "instructions"),
]  # fmt: skip


@pytest.mark.parametrize("model", ["gpt", "native"])
@pytest.mark.parametrize(("extra", "status", "param"), BAD, ids=[row[2] for row in BAD])
def test_bad_input_is_refused_naming_the_field(client, upstream, model, extra, status, param):
    response = post(client, {"model": model, **extra})
    assert response.status_code == status, response.json
    assert response.mimetype == "application/json"
    error = response.json["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    if status == 404:
        assert error["code"] == "not_found"
    assert upstream.requests == []


def test_the_translation_sent_upstream(client, upstream):
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}}
    body = {
        "model": "gpt",
        "instructions": "Be brief.",
        "input": [
            message("hello"),
            message([{"type": "input_text", "text": "look"},
                     {"type": "input_image", "image_url": "https://x/i.png", "detail": "low"}]),
            message([{"type": "output_text", "text": "calling"}], role="assistant"),
            CALL,
            {"type": "function_call_output", "call_id": "call_1", "output": "42"},
            {"role": "developer", "content": "easy form"},
        ],
        "tools": [tool, {"type": "web_search"}],
        "tool_choice": {"type": "function", "name": "f"},
        "parallel_tool_calls": False,
        "max_output_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "text": {"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"},
                            "strict": True}},
        "metadata": {"k": "v"},
        "reasoning": {"effort": "high"},
        "include": ["reasoning.encrypted_content"],
        "truncation": "disabled",
    }  # fmt: skip
    response = post(client, body)
    assert response.status_code == 200, response.json
    sent = upstream.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.json() == {
        "model": "up-model",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "https://x/i.png", "detail": "low"}},
            ]},
            {"role": "assistant", "content": "calling", "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            {"role": "system", "content": "easy form"},
        ],
        "tools": [{"type": "function", "function": {
            "name": "f", "description": "d", "parameters": {"type": "object"}}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "parallel_tool_calls": False,
        "max_tokens": 64,
        "temperature": 0.5,
        "top_p": 0.9,
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "out", "schema": {"type": "object"}, "strict": True}},
    }  # fmt: skip
    warning = response.headers["x-ai-proxy-warning"]
    for dropped in ("reasoning", "include", "web_search tool"):
        assert dropped in warning
    assert "truncation" not in warning and "metadata" not in warning
    answer = response.json
    assert answer["object"] == "response" and answer["status"] == "completed"
    assert answer["metadata"] == {"k": "v"} and answer["instructions"] == "Be brief."
    assert answer["output"][0]["content"][0]["text"] == "hi there"
    assert answer["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 2,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 7,
    }


@pytest.mark.parametrize(
    "tool_type", ["web\nsearch", "日本", "x" * 5000], ids=["newline", "non-ascii", "long"]
)
def test_a_warning_header_holds_only_safe_text(client, upstream, tool_type):
    response = post(client, {"model": "gpt", "input": "hi", "tools": [{"type": tool_type}]})
    assert response.status_code == 200
    warning = response.headers["x-ai-proxy-warning"]
    assert warning.isascii() and "\n" not in warning and len(warning) <= 1000


def test_dropped_items_and_parts_are_named(client, upstream):
    body = {
        "model": "gpt",
        "input": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            message([{"type": "input_text", "text": "hi"}, {"type": "input_file", "file_id": "f"}]),
        ],
    }
    response = post(client, body)
    assert response.status_code == 200
    assert upstream.requests[0].json()["messages"] == [{"role": "user", "content": "hi"}]
    warning = response.headers["x-ai-proxy-warning"]
    assert "reasoning input item dropped" in warning and "input_file content dropped" in warning


def test_a_tool_call_answer(client, upstream):
    call = {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    answer = chat_completion(content=None)
    reply = {"role": "assistant", "content": None, "tool_calls": [call]}
    answer["choices"][0].update(message=reply, finish_reason="tool_calls")
    upstream.queue(Reply(body=answer))
    tools = [{"type": "function", "name": "f"}]
    response = post(client, {"model": "gpt", "input": "hi", "tools": tools}).json
    (item,) = response["output"]
    assert item["type"] == "function_call" and item["id"].startswith("fc_")
    assert (item["call_id"], item["name"], item["arguments"]) == ("call_9", "f", '{"a":1}')
    # The next turn answers the call after the stored conversation.
    result = {"type": "function_call_output", "call_id": "call_9", "output": "done"}
    second = post(
        client, {"model": "gpt", "input": [result], "previous_response_id": response["id"]}
    )
    assert second.status_code == 200, second.json
    sent = upstream.requests[1].json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"]
    assert sent[1]["tool_calls"][0]["id"] == "call_9"


def test_passed_through_as_sent_with_the_stored_conversation(client, upstream):
    first = post(client, {"model": "gpt", "input": "first", "instructions": "old"}).json
    native = {"id": "resp_upstream", "object": "response", "created_at": 1, "status": "completed",
              "model": "gpt-up", "output": [{"id": "msg_u", "type": "message", "role": "assistant",
              "status": "completed", "content": [{"type": "output_text", "text": "yes"}]}],
              "usage": {"input_tokens": 9, "output_tokens": 1, "total_tokens": 10}}  # fmt: skip
    upstream.queue(Reply(body=native))
    body = {"model": "native", "input": "second", "previous_response_id": first["id"],
            "reasoning": {"effort": "low"}, "store": True, "custom": {"kept": 1}}  # fmt: skip
    response = post(client, body)
    assert response.status_code == 200
    assert "x-ai-proxy-warning" not in response.headers
    sent = upstream.requests[1]
    assert sent.path == "/v1/responses"
    assert sent.headers["Authorization"] == "Bearer sk-upstream-secret"
    assert sent.json() == {
        "model": "gpt-up",
        "reasoning": {"effort": "low"},
        "store": True,
        "custom": {"kept": 1},
        # The stored conversation first (without the ids the proxy gave it), then the new input;
        # the earlier instructions are not carried over (as OpenAI does).
        "input": [
            {"type": "message", "role": "user", "content": "first"},
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "hi there", "annotations": [], "logprobs": []}]},
            {"type": "message", "role": "user", "content": "second"},
        ],
    }  # fmt: skip
    answer = response.json
    # The proxy's own id (its store's), and the conversation it continues.
    assert answer["id"].startswith("resp_") and answer["id"] != "resp_upstream"
    assert answer["previous_response_id"] == first["id"]
    assert client.get(f"/v1/responses/{answer['id']}").json["output"][0]["id"] == "msg_u"


@mocked.activate
def test_azure_serves_responses_on_its_v1_api(client):
    native = {"id": "resp_az", "object": "response", "created_at": 1, "status": "completed",
              "model": "my-deployment", "output": []}  # fmt: skip
    mocked.post("https://res.openai.azure.com/openai/v1/responses", json=native)
    response = post(client, {"model": "azure-native", "input": "hi"})
    assert response.status_code == 200, response.json
    (call,) = mocked.calls
    assert call.request.headers["api-key"] == "azure-secret"
    assert "Authorization" not in call.request.headers
    assert json.loads(call.request.body) == {"model": "my-deployment", "input": "hi"}


@pytest.mark.parametrize("status", [400, 401, 500])
def test_passthrough_errors_map_like_chat(client, upstream, status):
    error = {"error": {"message": "bad thing sk-upstream-secret", "type": "x", "code": "c"}}
    upstream.queue(Reply(status=status, body=error))
    response = post(client, {"model": "native", "input": "hi"})
    assert response.status_code == (400 if status == 400 else 502)
    assert "sk-upstream-secret" not in response.get_data(as_text=True)


def test_stored_responses_are_only_their_tokens(client, upstream):
    answer = post(client, {"model": "gpt", "input": "mine"}).json
    url = f"/v1/responses/{answer['id']}"
    assert client.get(url).json == answer
    other = {"Authorization": f"Bearer {OTHER}"}
    for method in (client.get, client.delete):
        refused = method(url, headers=other)
        assert refused.status_code == 404 and refused.json["error"]["code"] == "not_found"
    assert client.delete(url).json == {"id": answer["id"], "object": "response.deleted",
                                       "deleted": True}  # fmt: skip
    assert client.get(url).status_code == 404
    assert client.delete(url).status_code == 404
    assert client.get("/v1/responses/" + "x" * 300).status_code == 404


def test_streams_carry_the_warning_and_are_stored(client, upstream):
    body = {"model": "gpt", "input": "hi", "stream": True, "reasoning": {"effort": "low"}}
    upstream.queue(Reply(events=[
        'data: {"choices": [{"index": 0, "delta": {"content": "ok"}}]}',
        'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}',
        "data: [DONE]",
    ]))  # fmt: skip
    response = post(client, body)
    assert response.headers["x-ai-proxy-warning"] == "reasoning dropped"
    events = [json.loads(line[6:]) for line in response.get_data(as_text=True).splitlines()
              if line.startswith("data: ")]  # fmt: skip
    assert events[-1]["type"] == "response.completed"
    stored = client.get(f"/v1/responses/{events[-1]['response']['id']}").json
    assert stored == events[-1]["response"]


def test_answers_are_charged_to_the_token(client, upstream):
    # 7 tokens an answer against 20 a minute, each reserving its prompt and 2 output tokens
    # first: settled at their real usage, the third request still fits, the fourth does not.
    body = {"model": "gpt", "input": "hi", "max_output_tokens": 2}
    statuses = [post(client, body, "sk-small").status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


def test_the_allow_list_applies(client, upstream):
    refused = post(client, {"model": "native", "input": "hi"}, "sk-gpt-only")
    assert refused.status_code == 403 and refused.json["error"]["code"] == "model_not_allowed"
    assert upstream.requests == []
    assert post(client, {"model": "gpt", "input": "hi"}, "sk-gpt-only").status_code == 200
    # Before anything else is looked at: an unknown stored id, bad input items.
    for extra in ({"previous_response_id": "resp_unknown"}, {"input": [{"type": "bogus"}]}):
        body = {"model": "native", "input": "hi", **extra}
        assert post(client, body, "sk-gpt-only").status_code == 403


@pytest.mark.parametrize("provider", ["anthropic", "google", "echo", "cohere"])
def test_responses_true_on_a_provider_without_the_api_is_a_config_error(make_app, provider):
    model = {"name": "m", "provider": provider, "base_url": "http://127.0.0.1:9", "token": "k"}
    with pytest.raises(ConfigError) as info:
        make_app({"models": [{**model, "responses": True}]})
    assert info.value.problems == [
        f"models[0].responses: provider {provider!r} does not serve the Responses API "
        "(its requests are translated without this flag)"
    ]


def test_a_passthrough_upstream_that_answers_whole_still_streams(client, upstream):
    item = {"id": "msg_w", "type": "message", "role": "assistant", "status": "completed",
            "content": [{"type": "output_text", "text": "whole answer"}]}  # fmt: skip
    native = {"id": "resp_w", "object": "response", "created_at": 1, "status": "completed",
              "model": "gpt-up", "output": [item]}  # fmt: skip
    upstream.queue(Reply(body=native))
    response = post(client, {"model": "native", "input": "hi", "stream": True})
    events = [json.loads(line[6:]) for line in response.get_data(as_text=True).splitlines()
              if line.startswith("data: ")]  # fmt: skip
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["type"] == "response.completed"
    deltas = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert deltas == "whole answer"
    assert upstream.requests[0].json()["stream"] is True


REFUSED = "I can't help with that."


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_refusal_is_a_refusal_part_not_an_empty_answer(client, upstream, stream):
    """A chat upstream refuses (structured outputs: content null, `refusal` said): the Response
    carries it as a `refusal` content part. It was `completed` with no output at all, so a
    client parsing its json_schema output parsed an empty string."""
    if stream:
        upstream.queue(Reply(events=[
            'data: {"choices": [{"index": 0, "delta": {"refusal": "I can\'t "}}]}',
            'data: {"choices": [{"index": 0, "delta": {"refusal": "help with that."}}]}',
            'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}',
            "data: [DONE]",
        ]))  # fmt: skip
    else:
        answer = chat_completion()
        answer["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": REFUSED}
        upstream.queue(Reply(body=answer))
    response = post(client, {"model": "gpt", "input": "hi", "stream": stream})
    if stream:
        lines = response.get_data(as_text=True).splitlines()
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        assert [e["sequence_number"] for e in events] == list(range(len(events)))
        done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
        assert done[-1]["content"] == [{"type": "refusal", "refusal": REFUSED}]
        final = events[-1]["response"]
    else:
        final = response.json
    assert final["status"] == "completed"
    (item,) = final["output"]
    assert item["type"] == "message"
    assert item["content"] == [{"type": "refusal", "refusal": REFUSED}]


def test_the_sdk_reads_a_refusal(client, upstream):
    from openai.types.responses import Response

    answer = chat_completion()
    answer["choices"][0]["message"] = {"role": "assistant", "content": None, "refusal": REFUSED}
    upstream.queue(Reply(body=answer))
    parsed = Response.model_validate(post(client, {"model": "gpt", "input": "hi"}).json)
    assert parsed.output[0].content[0].refusal == REFUSED


NATIVE_ANSWER = {
    "id": "resp_upstream", "object": "response", "created_at": 1, "status": "completed",
    "model": "gpt-up", "output": [{"id": "msg_u", "type": "message", "role": "assistant",
    "status": "completed", "content": [{"type": "output_text", "text": "yes"}]}],
    "usage": {"input_tokens": 9, "output_tokens": 1, "total_tokens": 10},
}  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        # Reasoning alone: nothing chat can carry (it sent `messages: []` upstream).
        ({"input": [{"type": "reasoning", "id": "rs_1", "summary": []}]}, "input"),
        # A tool asked for, none given (it was dropped without a word).
        ({"input": "hi", "tool_choice": {"type": "function", "name": "f"}}, "tool_choice"),
        ({"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_requests_chat_cannot_carry_are_a_400(client, upstream, extra, param):
    response = post(client, {"model": "gpt", **extra})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.json["error"]["param"] == param
    assert upstream.requests == []
    # A deployment that takes the Responses API as sent gets them: it may well answer them.
    upstream.queue(Reply(body=NATIVE_ANSWER))
    assert post(client, {"model": "native", **extra}).status_code == 200
    assert len(upstream.requests) == 1


def test_a_built_in_tool_choice_is_dropped_with_its_tool(client, upstream):
    upstream.queue(Reply(body=chat_completion()))
    body = {
        "model": "gpt",
        "input": "hi",
        "tools": [{"type": "web_search_preview"}],
        "tool_choice": "required",
    }
    response = post(client, body)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "web_search_preview" in response.headers["x-ai-proxy-warning"]


@pytest.mark.parametrize("finish", ["eos", "eos_token", "stop_sequence"])
def test_a_servers_own_word_for_stop_is_a_normal_end(client, upstream, finish):
    """Together says `eos`, TGI `eos_token`: answers that ended normally, on every surface
    (only the failures the adapters name, such as Gemini's malformed_function_call, are not)."""
    answer = chat_completion()
    answer["choices"][0]["finish_reason"] = finish
    upstream.default = Reply(body=answer)
    assert post(client, {"model": "gpt", "input": "hi"}).json["status"] == "completed"
    message = client.post(
        "/v1/messages",
        json={"model": "gpt", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]},
    ).json
    assert message["stop_reason"] == "end_turn"
