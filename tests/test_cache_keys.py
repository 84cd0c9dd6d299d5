"""The cache key: every parameter that changes an answer changes the key, and nothing else
does; entries are checked byte for byte; stored answers replay as streams that assemble back."""

from __future__ import annotations

import copy
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from app.cache import (
    ChatForm,
    CompletionForm,
    CorruptEntry,
    Entry,
    MemoryStore,
    MessageForm,
    ResponsesForm,
    decode,
    encode,
    key_body,
    make_key,
    pieces,
)
from app.cache.stores import ENTRY_OVERHEAD_BYTES


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


CHAT = {
    "model": "gpt-test",
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ],
    "temperature": 0.5,
    "tools": [
        {
            "type": "function",
            "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
        }
    ],
}


def key_of(
    body: dict,
    surface: str = "openai",
    model: str = "gpt-test",
    scope: str = "team-a",
    headers: dict | None = None,
) -> str:
    return make_key(surface, model, scope, key_body(body), headers).digest


def changed(path: tuple, value) -> dict:
    body = copy.deepcopy(CHAT)
    target = body
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return body


# Each of these is another request: another answer, another key.
DIFFERENT = {
    "temperature": changed(("temperature",), 0.6),
    "no temperature": {k: v for k, v in CHAT.items() if k != "temperature"},
    "top_p": {**CHAT, "top_p": 0.9},
    "max_tokens": {**CHAT, "max_tokens": 100},
    "max_completion_tokens": {**CHAT, "max_completion_tokens": 100},
    "seed": {**CHAT, "seed": 1},
    "n": {**CHAT, "n": 2},
    "stop": {**CHAT, "stop": ["x"]},
    "response_format": {**CHAT, "response_format": {"type": "json_object"}},
    "tool_choice": {**CHAT, "tool_choice": "required"},
    "parallel_tool_calls": {**CHAT, "parallel_tool_calls": False},
    "logprobs": {**CHAT, "logprobs": True},
    "reasoning_effort": {**CHAT, "reasoning_effort": "high"},
    "user text": changed(("messages", 1, "content"), "Hello!"),
    "system text": changed(("messages", 0, "content"), "Be long."),
    "role": changed(("messages", 1, "role"), "assistant"),
    "message order": {**CHAT, "messages": CHAT["messages"][::-1]},
    "one message more": {**CHAT, "messages": [*CHAT["messages"], {"role": "user", "content": "x"}]},
    "tool name": changed(("tools", 0, "function", "name"), "g"),
    "tool schema": changed(("tools", 0, "function", "parameters", "type"), "string"),
    "no tools": {k: v for k, v in CHAT.items() if k != "tools"},
    "content as parts": changed(("messages", 1, "content"), [{"type": "text", "text": "Hello"}]),
    "number type in text": changed(("messages", 1, "content"), "1"),
    "float-like text": changed(("messages", 1, "content"), "[1.0]"),
    "a number, not text": changed(("messages", 1, "content"), 1),
    "unicode": changed(("messages", 1, "content"), "Hëllo"),
}
# Each of these is the same request: how it is delivered, who asks, how it is spelled.
SAME = {
    "stream": {**CHAT, "stream": True},
    "stream false": {**CHAT, "stream": False},
    "stream_options": {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
    "user": {**CHAT, "user": "someone"},
    "metadata": {**CHAT, "metadata": {"user_id": "u1"}},
    "key order": dict(reversed(list(CHAT.items()))),
    "integral float": changed(("temperature",), 0.5) | {"seed": 1.0},
    "integral floats nested": {**CHAT, "seed": 1, "logit_bias": {"5": 1.0, "6": [2.0, -3.0]}},
}


@pytest.mark.parametrize("name", sorted(DIFFERENT))
def test_a_parameter_that_changes_the_answer_changes_the_key(name):
    assert key_of(DIFFERENT[name]) != key_of(CHAT)


@pytest.mark.parametrize("name", sorted(SAME))
def test_delivery_and_caller_fields_leave_the_key_alone(name):
    base = {
        "integral float": {**CHAT, "seed": 1},
        "integral floats nested": {**CHAT, "seed": 1, "logit_bias": {"5": 1, "6": [2, -3]}},
    }.get(name, CHAT)
    assert key_of(SAME[name]) == key_of(base)


def test_every_variant_has_its_own_key():
    keys = {key_of(body) for body in DIFFERENT.values()} | {key_of(CHAT)}
    assert len(keys) == len(DIFFERENT) + 1


@pytest.mark.parametrize(
    ("change", "kwargs"),
    [
        ("surface", {"surface": "anthropic"}),
        ("model name sent", {"model": "fast"}),
        ("scope", {"scope": "team-b"}),
        ("shared scope", {"scope": "*"}),
        ("a beta header", {"headers": {"anthropic-beta": "tools-2024"}}),
    ],
)
def test_surface_model_scope_and_named_headers_are_in_the_key(change, kwargs):
    assert key_of(CHAT, **kwargs) != key_of(CHAT)


def test_nested_user_and_metadata_are_part_of_the_body():
    """Only the top-level delivery fields are left out: inside a message they are content."""
    nested = changed(("messages", 1, "content"), {"user": "x", "metadata": 1})
    assert key_of(nested) != key_of(changed(("messages", 1, "content"), {}))


def test_a_client_token_is_never_in_a_key():
    key = make_key("openai", "gpt-test", "team-a", key_body(CHAT))
    assert len(key.digest) == 64 and int(key.digest, 16) >= 0


# --- entries -----------------------------------------------------------------------------------


def entry(body: bytes = b'{"a": 1}') -> Entry:
    return Entry(body, "gpt-test", "openai", 1700000000.0, {"x-ai-proxy-warning": "w"})


def test_an_entry_reads_back():
    assert decode("k", encode("k", entry())) == entry()


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: data[:-1],
        lambda data: data + b" ",
        lambda data: data.replace(b'"a": 1', b'"a": 2'),
        lambda data: b"garbage",
        lambda data: b"",
        lambda data: data.replace(b"AIPC1", b"AIPC2"),
        lambda data: data.split(b"\n")[0] + b"\n{not json\n" + b'{"a": 1}',
        lambda data: data.replace(b'"deployment":"gpt-test"', b'"deployment":7'),
    ],
)
def test_a_damaged_entry_is_corrupt(damage):
    with pytest.raises(CorruptEntry):
        decode("k", damage(encode("k", entry())))


def test_an_entry_under_another_key_is_corrupt():
    with pytest.raises(CorruptEntry):
        decode("other", encode("k", entry()))


# --- the memory store ------------------------------------------------------------------------


def test_memory_store_keeps_within_its_bytes_least_recently_used_first():
    # Room for seven entries of 1,000 bytes, with their slot names and overhead.
    store = MemoryStore(max_bytes=7 * (1000 + 64 + ENTRY_OVERHEAD_BYTES) + 100)
    keys = [make_key("openai", "m", "s", {"i": i}) for i in range(40)]
    evictions = metric("ai_proxy_cache_evictions_total")
    for key in keys[:7]:
        store.write(store.read(key).slot, "m", b"x" * 1000, ttl=60)
    assert len(store) == 7
    assert store.read(keys[0]).data  # read: now the most recently used
    store.write(keys[7].digest, "m", b"x" * 1000, ttl=60)
    assert store.read(keys[0]).data and store.read(keys[1]).data is None
    for key in keys[8:]:
        store.write(key.digest, "m", b"x" * 1000, ttl=60)
        assert store.size <= store.max_bytes
    assert store.read(keys[-1]).data == b"x" * 1000
    assert metric("ai_proxy_cache_evictions_total") == evictions + 33
    assert metric("ai_proxy_cache_memory_bytes") == store.size


def test_memory_store_forgets_expired_and_too_large_entries():
    now = [0.0]
    store = MemoryStore(max_bytes=5000, clock=lambda: now[0])
    key = make_key("openai", "m", "s", {})
    store.write(key.digest, "m", b"x", ttl=10)
    assert store.read(key).data == b"x"
    now[0] = 11
    assert store.read(key).data is None and store.size == 0
    assert not store.write(key.digest, "m", b"x" * 6000, ttl=10)


def test_memory_store_deletes_one_models_entries():
    store = MemoryStore(max_bytes=100_000)
    a, b = make_key("openai", "a", "s", {}), make_key("openai", "b", "s", {})
    store.write(a.digest, "a", b"1", ttl=60)
    store.write(b.digest, "b", b"2", ttl=60)
    store.delete("a")
    assert store.read(a).data is None and store.read(b).data == b"2"
    store.delete()
    assert len(store) == 0 and store.size == 0


# --- forms: a stored answer replays as a stream that assembles back to it -------------------------


class Call:
    def __init__(self, include_usage: bool = False) -> None:
        self.include_usage = include_usage
        self.body: dict = {}


def assemble(form, events) -> object:
    assembler = form.assembler()
    ends = [assembler.feed(piece) for piece in events]
    assert ends[-1] and not any(ends[:-1])
    return assembler.whole()


text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=200)
arguments = st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=20), max_size=4)


@st.composite
def chat_answers(draw) -> dict:
    choices = []
    for index in range(draw(st.integers(1, 2))):
        message: dict = {"role": "assistant", "content": draw(st.none() | text)}
        if draw(st.booleans()):
            message["reasoning_content"] = draw(text.filter(bool))
        calls = [
            {
                "id": f"call_{index}_{i}",
                "type": "function",
                "function": {
                    "name": draw(st.sampled_from(["f", "get_weather"])),
                    "arguments": json.dumps(draw(arguments)),
                },
            }
            for i in range(draw(st.integers(0, 2)))
        ]
        if calls:
            message["tool_calls"] = calls
        finish = "tool_calls" if calls else "stop"
        choices.append(
            {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
        )
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": choices,
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


@settings(max_examples=60, deadline=None)
@given(chat_answers())
def test_a_chat_answer_replays_and_assembles_back(answer):
    form = ChatForm()
    events = list(form.replay(answer, Call(include_usage=True)))
    assert assemble(form, events) == answer
    assert form.storable(answer)


def test_the_usage_chunk_only_when_asked():
    answer = chat_answer_with_tool()
    with_usage = [e for e in ChatForm().replay(answer, Call(True)) if b'"choices":[]' in e]
    without = [e for e in ChatForm().replay(answer, Call(False)) if b'"usage"' in e]
    assert len(with_usage) == 1 and without == []


def chat_answer_with_tool() -> dict:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Let me look that up for you now.",
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "lookup", "arguments": '{"q": "weather"}'},
                        }
                    ],
                },
                "logprobs": None,
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }


def test_replay_sends_text_and_arguments_in_several_chunks():
    events = list(ChatForm().replay(chat_answer_with_tool(), Call()))
    texts = [e for e in events if b'"content":"' in e and b'"content":""' not in e]
    arguments = [e for e in events if b'"arguments":"' in e and b'"arguments":""' not in e]
    assert len(texts) > 1 and len(arguments) > 1


@settings(max_examples=40, deadline=None)
@given(st.lists(text, min_size=1, max_size=2))
def test_a_completion_replays_and_assembles_back(texts):
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": i, "text": t, "logprobs": None, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }
    form = CompletionForm()
    assert assemble(form, form.replay(answer, Call(True))) == answer


@st.composite
def messages(draw) -> dict:
    content: list[dict] = []
    if draw(st.booleans()):
        content.append({"type": "thinking", "thinking": draw(text), "signature": "sig-abc"})
    if draw(st.booleans()):
        content.append({"type": "redacted_thinking", "data": "opaque"})
    if draw(st.booleans()):
        content.append({"type": "text", "text": draw(text)})
    tools = draw(st.integers(0, 2))
    for i in range(tools):
        content.append(
            {"type": "tool_use", "id": f"toolu_{i}", "name": "f", "input": draw(arguments)}
        )
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": content,
        "stop_reason": "tool_use" if tools else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 9},
    }


@settings(max_examples=60, deadline=None)
@given(messages())
def test_a_message_replays_in_anthropic_order_and_assembles_back(message):
    form = MessageForm()
    events = list(form.replay(message, Call()))
    names = [e.split(b"\n", 1)[0] for e in events]
    assert names[0] == b"event: message_start"
    assert names[-2:] == [b"event: message_delta", b"event: message_stop"]
    assert assemble(form, events) == message


@pytest.mark.parametrize(
    ("form", "answer"),
    [
        (ChatForm(), {"choices": [{"message": {}, "finish_reason": "length"}]}),
        (ChatForm(), {"choices": [{"message": {}, "finish_reason": "content_filter"}]}),
        (ChatForm(), {"choices": [{"message": {}, "finish_reason": None}]}),
        (ChatForm(), {"choices": []}),
        (ChatForm(), {"error": {"message": "x"}}),
        (CompletionForm(), {"choices": [{"text": "x", "finish_reason": "length"}]}),
        (MessageForm(), {"type": "message", "content": [], "stop_reason": "max_tokens"}),
        (MessageForm(), {"type": "message", "content": [], "stop_reason": "refusal"}),
        (MessageForm(), {"type": "message", "content": [], "stop_reason": "pause_turn"}),
        (MessageForm(), {"type": "error", "error": {}}),
    ],
)
def test_truncated_filtered_and_failed_answers_are_not_stored(form, answer):
    assert not form.storable(answer)


@pytest.mark.parametrize("form", [ChatForm(), MessageForm()])
@pytest.mark.parametrize("cut", [1, 2, -1])
def test_a_cut_stream_assembles_to_nothing(form, cut):
    answer = (
        chat_answer_with_tool()
        if isinstance(form, ChatForm)
        else {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "c",
            "content": [{"type": "text", "text": "one two three"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 1},
        }
    )
    events = list(form.replay(answer, Call()))
    assembler = form.assembler()
    assert not any(assembler.feed(piece) for piece in events[:cut])
    assert assembler.whole() is None


@pytest.mark.parametrize(
    "error",
    [
        b'data: {"error": {"message": "boom", "type": "api_error"}}\n\n',
        b'event: error\ndata: {"type": "error", "error": {"type": "api_error"}}\n\n',
        b"data: {not json\n\n",
    ],
)
@pytest.mark.parametrize("form", [ChatForm(), MessageForm()])
def test_an_in_band_error_is_never_stored(form, error):
    answer = (
        chat_answer_with_tool()
        if isinstance(form, ChatForm)
        else {
            "id": "m",
            "type": "message",
            "role": "assistant",
            "model": "c",
            "content": [{"type": "text", "text": "one two"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {},
        }
    )
    events = list(form.replay(answer, Call()))
    assembler = form.assembler()
    for piece in [*events[:2], error, *events[2:]]:
        assembler.feed(piece)
    assert assembler.whole() is None


@given(text)
def test_pieces_join_back(value):
    assert "".join(pieces(value)) == value
    assert len(pieces(value)) <= 24


def test_a_delete_asked_of_one_worker_reaches_the_others(tmp_path):
    """Workers of one server share a folder: each reads the deletes the others were asked for."""
    first, second = (MemoryStore(100_000, shared_folder=str(tmp_path)) for _ in range(2))
    a, b = make_key("openai", "a", "s", {}), make_key("openai", "b", "s", {})
    for store in (first, second):
        store.write(a.digest, "a", b"1", ttl=60)
        store.write(b.digest, "b", b"2", ttl=60)
    first.delete("a")
    assert second.read(a).data is None and second.read(b).data == b"2"
    first.write(a.digest, "a", b"3", ttl=60)
    assert first.read(a).data == b"3"  # its own delete is not applied twice
    second.delete()
    assert first.read(b).data is None and first.read(a).data is None
    late = MemoryStore(100_000, shared_folder=str(tmp_path))  # a worker started afterwards
    late.write(a.digest, "a", b"4", ttl=60)
    assert late.read(a).data == b"4"


@pytest.mark.parametrize(
    ("one", "other"), [("1.0,", "1,"), ("[1.0]", "[1]"), ('{"a":2.0}', '{"a":2}')]
)
def test_text_that_looks_like_a_float_is_text(one, other):
    assert key_of(changed(("messages", 1, "content"), one)) != key_of(
        changed(("messages", 1, "content"), other)
    )


# --- the Responses API's form ----------------------------------------------------------------


def responses_events(response: dict) -> list[bytes]:
    def event(kind: str, **fields) -> bytes:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **fields})}\n\n".encode()

    return [
        event("response.created", response={**response, "status": "in_progress", "output": []}),
        event("response.output_text.delta", item_id="msg_1", delta="Hel"),
        event("response.output_text.delta", item_id="msg_1", delta="lo"),
        event(f"response.{response['status']}", response=response),
    ]


RESPONSE = {
    "id": "resp_1",
    "object": "response",
    "status": "completed",
    "metadata": {"a": "1"},
    "output": [
        {
            "type": "message",
            "id": "msg_1",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hello"}],
        }
    ],
    "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
}


def test_a_completed_responses_stream_is_its_last_events_response():
    assert assemble(ResponsesForm(), responses_events(RESPONSE)) == RESPONSE
    assert ResponsesForm().storable(RESPONSE)


@pytest.mark.parametrize("status", ["incomplete", "failed"])
def test_an_unfinished_response_is_never_stored(status):
    response = {**RESPONSE, "status": status}
    assembler = ResponsesForm().assembler()
    for piece in responses_events(response):
        assembler.feed(piece)
    assert assembler.whole() is None and not ResponsesForm().storable(response)


def test_a_cut_responses_stream_is_not_stored():
    assembler = ResponsesForm().assembler()
    for piece in responses_events(RESPONSE)[:-1]:
        assembler.feed(piece)
    assert assembler.whole() is None


def test_a_continued_conversation_is_never_cached():
    form = ResponsesForm()
    assert form.key_body({"model": "m", "input": "hi", "previous_response_id": "resp_0"}) is None
    assert form.key_body({"model": "m", "input": "hi", "stream": True}) == {
        "model": "m",
        "input": "hi",
    }


def test_a_responses_hit_is_made_the_requests_own():
    kept = []

    class Prepared:
        response_id = "resp_new"
        keep = kept.append

    class ResponsesCall:
        body = {"model": "m", "input": "hi", "metadata": {"b": "2"}}
        prepared = Prepared()

    form = ResponsesForm()
    answer = form.for_request(RESPONSE, ResponsesCall())
    assert answer["id"] == "resp_new" and answer["metadata"] == {"b": "2"}
    # Kept only once the hit is admitted and served, not while it is looked up.
    assert answer["output"] == RESPONSE["output"] and kept == []
    form.served(answer, ResponsesCall())
    assert kept == [answer]
    replayed = ResponsesForm(replay=responses_events).replay(answer, ResponsesCall())
    assert assemble(ResponsesForm(), replayed) == answer
