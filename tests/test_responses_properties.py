"""Hypothesis properties of the Responses translators: no well-typed request or answer crashes
them, and round trips (request -> chat, chat answer -> Response, chunks -> events, Response ->
events) keep text, tool names and arguments, with events in order and numbered upward.

`AI_PROXY_FUZZ_EXAMPLES=500` (say) runs each property that many times with a random seed.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidRequestError
from app.responses_api import check_items, input_items, to_chat_request
from app.responses_output import skeleton, to_response
from app.responses_stream import EventWriter, canonical_events, response_events
from app.schemas import RESPONSES, validate_body

DEFAULT_EXAMPLES = 60
EXAMPLES = int(os.environ.get("AI_PROXY_FUZZ_EXAMPLES") or DEFAULT_EXAMPLES)
fuzz = settings(
    max_examples=EXAMPLES,
    derandomize=EXAMPLES == DEFAULT_EXAMPLES,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

texts = st.text(max_size=20)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,15}", fullmatch=True)
arguments = st.dictionaries(
    st.text(max_size=4), st.integers() | st.text(max_size=6), max_size=3
).map(json.dumps)
TEXT_PART_KINDS = ("input_text", "output_text", "text")
parts = st.one_of(
    st.builds(lambda k, t: {"type": k, "text": t}, st.sampled_from(TEXT_PART_KINDS), texts),
    st.builds(lambda t: {"type": "refusal", "refusal": t}, texts),
    st.builds(lambda u: {"type": "input_image", "image_url": u, "detail": "auto"}, texts),
    st.just({"type": "input_file", "file_id": "file_1"}),
)
messages = st.builds(
    lambda role, content, typed: {"role": role, "content": content, **typed},
    st.sampled_from(("user", "assistant", "system", "developer")),
    texts | st.lists(parts, max_size=3),
    st.sampled_from(({"type": "message"}, {})),
)
dropped = st.sampled_from(
    ({"type": "reasoning", "summary": []}, {"type": "item_reference", "id": "msg_1"})
)


@st.composite
def conversations(draw) -> list[dict]:
    """Items where each function_call_output follows its call."""
    items: list[dict] = []
    for index in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(("message", "call", "dropped")))
        if kind == "message":
            items.append(draw(messages))
        elif kind == "dropped":
            items.append(draw(dropped))
        else:
            call_id = f"call_{index}"
            items.append(
                {
                    "type": "function_call",
                    "call_id": call_id,
                    "name": draw(names),
                    "arguments": draw(arguments),
                }
            )
            output = draw(texts | st.lists(parts, max_size=2))
            items.append({"type": "function_call_output", "call_id": call_id, "output": output})
    return items


tools = st.lists(
    st.one_of(
        st.builds(
            lambda n: {"type": "function", "name": n, "parameters": {"type": "object"}}, names
        ),
        st.builds(lambda t: {"type": t}, st.sampled_from(("web_search", "file_search", "x"))),
    ),
    max_size=3,
)
bodies = st.fixed_dictionaries(
    {"input": conversations() | texts},
    optional={
        "instructions": texts,
        "tools": tools,
        "tool_choice": st.sampled_from(("auto", "none", "required"))
        | st.builds(lambda n: {"type": "function", "name": n}, names),
        "max_output_tokens": st.integers(1, 10_000),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0, 1),
        "parallel_tool_calls": st.booleans(),
        "text": st.sampled_from(
            (
                {"format": {"type": "text"}},
                {"format": {"type": "json_object"}},
                {"format": {"type": "json_schema", "name": "o", "schema": {"type": "object"}}},
                {"verbosity": "low"},
            )
        ),
        "metadata": st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
        "reasoning": st.just({"effort": "low"}),
        "include": st.just(["reasoning.encrypted_content"]),
        "stream": st.booleans(),
    },
)


def _message_texts(chat: list[dict]) -> str:
    out = []
    for message in chat:
        content = message.get("content")
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, list):
            out.extend(p["text"] for p in content if p["type"] == "text")
    return "\n".join(out)


def _item_texts(items: list[dict]) -> list[str]:
    found = []
    for item in items:
        content = item.get("content", item.get("output"))
        if isinstance(content, str):
            found.append(content)
        elif isinstance(content, list):
            found.extend(p.get("text", p.get("refusal", "")) for p in content)
    return [text for text in found if text]


@fuzz
@given(bodies)
def test_any_well_typed_request_translates_and_keeps_text_and_calls(body):
    validate_body(RESPONSES, body)
    items = input_items(body)
    check_items(items, "input", set())
    translated = to_chat_request(body, [], bool(body.get("stream")))
    err = translated.problem
    if err is not None:
        # Only what chat cannot be asked: input of system items alone, a tool_choice naming
        # a tool with no function tool given.
        with pytest.raises(InvalidRequestError):
            translated.check()
        assert err.param in ("input", "tool_choice"), err
        if err.param == "tool_choice":
            assert not any(t["type"] == "function" for t in body.get("tools") or ())
        else:
            assert not any(i.get("role") in ("user", "assistant") for i in items)
        return
    chat = translated.canonical["messages"]
    assert all(m["role"] in ("system", "user", "assistant", "tool") for m in chat)
    said = _message_texts(chat)
    for text in _item_texts(items):
        assert text in said
    sent_calls = [
        (c["id"], c["function"]["name"], c["function"]["arguments"])
        for m in chat
        for c in m.get("tool_calls") or ()
    ]
    asked = [
        (i["call_id"], i["name"], i["arguments"]) for i in items if i.get("type") == "function_call"
    ]
    assert sent_calls == asked
    answered = {m["tool_call_id"] for m in chat if m["role"] == "tool"}
    assert answered <= {call[0] for call in sent_calls}
    function_tools = [t["name"] for t in body.get("tools") or () if t["type"] == "function"]
    assert [t["function"]["name"] for t in translated.canonical.get("tools") or ()] == (
        function_tools
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=6),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
loose_items = st.lists(
    st.dictionaries(
        st.sampled_from(("type", "role", "content", "call_id", "name", "arguments", "output")),
        json_values
        | st.sampled_from(("message", "function_call", "function_call_output", "user", "c")),
        max_size=6,
    ),
    max_size=4,
)


@fuzz
@given(loose_items, json_values)
def test_no_input_crashes_the_translation(items, tool_choice):
    body = {
        "input": items,
        "tool_choice": tool_choice,
        "tools": [{"type": "function", "name": "f"}],
    }
    try:
        validate_body(RESPONSES, body)
        check_items(input_items(body), "input", set())
        to_chat_request(body, [], False)
    except InvalidRequestError as err:
        assert err.status == 400 and err.param


def parse(events) -> list[dict]:
    """The JSON payloads of SSE events, each checked against its `event:` name."""
    payloads = []
    for raw in events:
        name, data = raw.decode().strip().split("\n")
        payload = json.loads(data.removeprefix("data: "))
        assert name == f"event: {payload['type']}"
        payloads.append(payload)
    return payloads


def check_order(payloads: list[dict]) -> None:
    assert [p["sequence_number"] for p in payloads] == list(range(len(payloads)))
    assert [p["type"] for p in payloads[:2]] == ["response.created", "response.in_progress"]
    assert payloads[-1]["type"] in ("response.completed", "response.incomplete")
    added, done = set(), set()
    for payload in payloads[2:-1]:
        index = payload.get("output_index")
        if payload["type"] == "response.output_item.added":
            assert index not in added
            added.add(index)
        elif payload["type"] == "response.output_item.done":
            done.add(index)
        else:
            assert index in added and index not in done, payload["type"]
    assert added == done


calls = st.lists(st.tuples(names, arguments), max_size=3)


def completion(text: str, tool_calls: list, finish: str) -> dict:
    message = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = [
            {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
            for i, (n, a) in enumerate(tool_calls)
        ]
    return {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}


def summary(response: dict) -> tuple:
    """What a round trip keeps: the text, each call's name and arguments, the status."""
    text = "".join(
        part["text"]
        for item in response["output"]
        if item["type"] == "message"
        for part in item["content"]
    )
    called = [(i["name"], i["arguments"]) for i in response["output"] if i["type"] != "message"]
    return text, called, response["status"]


@fuzz
@given(texts, calls, st.sampled_from(("stop", "length", "tool_calls", "content_filter")))
def test_answers_and_their_replayed_streams_keep_text_and_calls(text, tool_calls, finish):
    response = to_response(completion(text, tool_calls, finish), {"model": "m"}, "resp_1", 3)
    assert summary(response)[:2] == (text, [tuple(c) for c in tool_calls])
    payloads = parse(response_events(response))
    check_order(payloads)
    assert summary(payloads[-1]["response"]) == summary(response)
    assert payloads[-1]["response"]["id"] == "resp_1"


@fuzz
@given(texts, calls, st.data())
def test_chunked_streams_keep_text_and_calls(text, tool_calls, data):
    def split(value: str) -> list[str]:
        cuts = sorted(data.draw(st.lists(st.integers(0, len(value)), max_size=3)))
        return [value[a:b] for a, b in zip([0, *cuts], [*cuts, len(value)], strict=True)]

    chunks = [{"choices": [{"index": 0, "delta": {"content": p}}]} for p in split(text)]
    for index, (name, args) in enumerate(tool_calls):
        first = {"index": index, "id": f"call_{index}", "function": {"name": name}}
        chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [first]}}]})
        for piece in split(args):
            call = {"index": index, "function": {"arguments": piece}}
            chunks.append({"choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    finish = "tool_calls" if tool_calls else "stop"
    chunks.append({"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    kept: list[dict] = []
    writer = EventWriter(skeleton({}, "resp_s", "m"))
    payloads = parse(canonical_events(chunks, writer, 1, lambda usage: None, kept.append))
    check_order(payloads)
    final = payloads[-1]["response"]
    assert kept == [final]
    whole = to_response(completion(text, tool_calls, finish), {"model": "m"}, "resp_s", 1)
    assert summary(final) == summary(whole)
    deltas = "".join(p["delta"] for p in payloads if p["type"] == "response.output_text.delta")
    assert deltas == text
