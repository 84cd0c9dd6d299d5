"""Unit tests of app/messages.py: Anthropic Messages requests into the canonical OpenAI chat form,
and canonical answers and stream chunks back into Anthropic messages and events."""

from __future__ import annotations

import json

import pytest

from app.messages import EventWriter, estimate_input_tokens, to_chat_request, to_message

IMAGE_B64 = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
    "+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
)
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "unit": {"type": "string"}},
        "required": ["city"],
    },
}


def translate(**body) -> tuple[dict, list[str]]:
    body.setdefault("model", "claude-public")
    body.setdefault("max_tokens", 256)
    body.setdefault("messages", [{"role": "user", "content": "hi"}])
    warnings: list[str] = []
    return to_chat_request(body, warnings), warnings


def text_of(content) -> str:
    """The text of an OpenAI message content, whether a string or a list of parts."""
    if isinstance(content, str):
        return content
    return "\n".join(p["text"] for p in content or [] if p.get("type") == "text")


def warned(warnings: list[str], word: str) -> bool:
    return any(word.lower() in w.lower() for w in warnings)


def tool_use(id_: str, name: str, payload: dict) -> dict:
    return {"type": "tool_use", "id": id_, "name": name, "input": payload}


# --- Anthropic request -> canonical OpenAI chat ----------------------------------------------


def test_plain_request_keeps_model_limit_and_sampling():
    request, warnings = translate(
        messages=[{"role": "user", "content": "Hello"}],
        temperature=0.3,
        top_p=0.9,
        metadata={"user_id": "u-42"},
    )
    assert request["model"] == "claude-public"
    assert request["max_tokens"] == 256
    assert request["messages"] == [{"role": "user", "content": "Hello"}]
    assert request["temperature"] == 0.3
    assert request["top_p"] == 0.9
    assert request["user"] == "u-42"
    assert "stream" not in request
    assert warnings == []


def test_system_string_becomes_a_system_message_first():
    request, warnings = translate(system="Be terse.")
    assert request["messages"][0] == {"role": "system", "content": "Be terse."}
    assert request["messages"][1]["role"] == "user"
    assert warnings == []


def test_system_text_blocks_are_joined_in_order():
    request, warnings = translate(
        system=[
            {"type": "text", "text": "You are a pirate."},
            {"type": "text", "text": "Answer in French.", "cache_control": {"type": "ephemeral"}},
        ]
    )
    system = request["messages"][0]
    assert system["role"] == "system"
    text = text_of(system["content"])
    assert "You are a pirate." in text and "Answer in French." in text
    assert text.index("pirate") < text.index("French")
    assert [m["role"] for m in request["messages"]].count("system") == 1
    assert warnings == []


def test_multi_turn_history_keeps_roles_and_order():
    request, warnings = translate(
        messages=[
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": [{"type": "text", "text": "And 3+3?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "6"}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}]},
        ]
    )
    roles = [m["role"] for m in request["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    texts = [text_of(m["content"]) for m in request["messages"]]
    assert texts == ["What is 2+2?", "4", "And 3+3?", "6", "Thanks."]
    assert warnings == []


def test_several_text_blocks_in_one_turn_keep_all_text():
    request, _ = translate(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}],
            }
        ]
    )
    assert len(request["messages"]) == 1
    text = text_of(request["messages"][0]["content"])
    assert "first" in text and "second" in text and text.index("first") < text.index("second")


def test_base64_image_becomes_a_data_url_part():
    request, warnings = translate(
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
        ]
    )
    parts = request["messages"][0]["content"]
    assert parts[0] == {"type": "text", "text": "What is this?"}
    assert parts[1]["type"] == "image_url"
    assert parts[1]["image_url"]["url"] == f"data:image/png;base64,{IMAGE_B64}"
    assert warnings == []


def test_url_image_becomes_an_image_url_part():
    request, warnings = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": "https://x.test/cat.jpg"}},
                    {"type": "text", "text": "Describe it."},
                ],
            }
        ]
    )
    parts = request["messages"][0]["content"]
    assert {"type": "image_url", "image_url": {"url": "https://x.test/cat.jpg"}} in [
        {"type": p["type"], "image_url": {"url": p["image_url"]["url"]}}
        for p in parts
        if p["type"] == "image_url"
    ]
    assert text_of(parts) == "Describe it."
    assert warnings == []


def test_image_with_unsupported_source_is_dropped_with_a_warning():
    request, warnings = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image", "source": {"type": "file", "file_id": "file_123"}},
                ],
            }
        ]
    )
    assert text_of(request["messages"][0]["content"]) == "look"
    assert "image_url" not in json.dumps(request)
    assert warned(warnings, "image")


def test_tool_use_in_history_becomes_assistant_tool_calls():
    request, warnings = translate(
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "text", "text": "Let me check."},
                    tool_use("toolu_1", "get_weather", {"city": "Paris"}),
                    tool_use("toolu_2", "get_weather", {"city": "Oslo", "unit": "celsius"}),
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "7C"},
                ],
            },
        ]
    )
    assistant = request["messages"][1]
    assert assistant["role"] == "assistant"
    assert text_of(assistant["content"]) == "Let me check."
    calls = assistant["tool_calls"]
    assert [c["id"] for c in calls] == ["toolu_1", "toolu_2"]
    assert all(c["type"] == "function" for c in calls)
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_weather"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [
        {"city": "Paris"},
        {"city": "Oslo", "unit": "celsius"},
    ]
    assert warnings == []


def test_tool_use_only_assistant_turn_has_no_text():
    request, _ = translate(
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [tool_use("toolu_1", "get_weather", {})]},
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}],
            },
        ]
    )
    assistant = request["messages"][1]
    assert not assistant.get("content")
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {}


def test_tool_results_become_tool_messages_right_after_the_calls():
    request, warnings = translate(
        messages=[
            {"role": "user", "content": "Weather in Paris and Oslo?"},
            {
                "role": "assistant",
                "content": [
                    tool_use("toolu_1", "get_weather", {"city": "Paris"}),
                    tool_use("toolu_2", "get_weather", {"city": "Oslo"}),
                ],
            },
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Here you go."},
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C and sunny"},
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_2",
                        "content": [
                            {"type": "text", "text": "7C"},
                            {"type": "text", "text": "light rain"},
                        ],
                    },
                ],
            },
        ]
    )
    messages = request["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "tool", "tool", "user"]
    first, second = messages[2], messages[3]
    assert first["tool_call_id"] == "toolu_1"
    assert text_of(first["content"]) == "18C and sunny"
    assert second["tool_call_id"] == "toolu_2"
    assert "7C" in text_of(second["content"]) and "light rain" in text_of(second["content"])
    # The user's own text in the same turn follows the tool messages.
    assert text_of(messages[4]["content"]) == "Here you go."
    assert warnings == []


def test_tool_result_error_is_marked_as_an_error():
    request, _ = translate(
        messages=[
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": [tool_use("toolu_9", "get_weather", {"city": "X"})]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_9",
                        "content": "city not found",
                        "is_error": True,
                    }
                ],
            },
        ]
    )
    tool = request["messages"][2]
    assert tool["role"] == "tool"
    assert tool["tool_call_id"] == "toolu_9"
    content = text_of(tool["content"])
    assert "city not found" in content
    assert "error" in content.lower()


def test_tool_result_without_content_is_still_a_tool_message():
    request, _ = translate(
        messages=[
            {"role": "user", "content": "Do it."},
            {"role": "assistant", "content": [tool_use("toolu_5", "do_it", {})]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_5"}]},
        ]
    )
    tool = request["messages"][2]
    assert tool["role"] == "tool" and tool["tool_call_id"] == "toolu_5"
    assert isinstance(tool["content"], str)


def test_image_inside_a_tool_result_is_named_in_a_warning():
    # OpenAI tool messages take text only: the image cannot go along, so it must be named.
    request, warnings = translate(
        messages=[
            {"role": "user", "content": "Screenshot please."},
            {"role": "assistant", "content": [tool_use("toolu_3", "screenshot", {})]},
            {
                "role": "user",
                "content": [
                    {
                        "type": "tool_result",
                        "tool_use_id": "toolu_3",
                        "content": [
                            {"type": "text", "text": "captured"},
                            {
                                "type": "image",
                                "source": {
                                    "type": "base64",
                                    "media_type": "image/png",
                                    "data": IMAGE_B64,
                                },
                            },
                        ],
                    }
                ],
            },
        ]
    )
    tool = request["messages"][2]
    assert tool["role"] == "tool"
    assert "captured" in text_of(tool["content"])
    assert warned(warnings, "image")


def test_tools_become_functions():
    request, warnings = translate(tools=[WEATHER_TOOL, {"name": "no_schema"}])
    assert request["tools"][0] == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": WEATHER_TOOL["input_schema"],
        },
    }
    second = request["tools"][1]
    assert second["type"] == "function"
    assert second["function"]["name"] == "no_schema"
    assert second["function"]["parameters"]["type"] == "object"
    assert warnings == []


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ({"type": "auto"}, "auto"),
        ({"type": "any"}, "required"),
        ({"type": "none"}, "none"),
        (
            {"type": "tool", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
        ),
    ],
)
def test_every_tool_choice(choice, expected):
    request, warnings = translate(tools=[WEATHER_TOOL], tool_choice=choice)
    assert request["tool_choice"] == expected
    assert request.get("parallel_tool_calls", True) is True
    assert warnings == []


def test_no_tool_choice_leaves_the_default():
    request, _ = translate(tools=[WEATHER_TOOL])
    assert request.get("tool_choice", "auto") == "auto"


@pytest.mark.parametrize("kind", ["auto", "any"])
def test_disable_parallel_tool_use(kind):
    request, _ = translate(
        tools=[WEATHER_TOOL], tool_choice={"type": kind, "disable_parallel_tool_use": True}
    )
    assert request["parallel_tool_calls"] is False


def test_server_tools_are_dropped_with_a_warning():
    request, warnings = translate(
        tools=[WEATHER_TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    )
    names = [t["function"]["name"] for t in request["tools"]]
    assert names == ["get_weather"]
    assert warned(warnings, "web_search")


def test_stop_sequences_become_stop():
    request, _ = translate(stop_sequences=["END", "###"])
    assert request["stop"] == ["END", "###"]


def test_stream_asks_for_usage():
    request, _ = translate(stream=True)
    assert request["stream"] is True
    assert request["stream_options"] == {"include_usage": True}


def test_thinking_config_and_top_k_are_dropped_and_named():
    request, warnings = translate(thinking={"type": "enabled", "budget_tokens": 2048}, top_k=5)
    assert "top_k" not in request and "thinking" not in request
    assert warned(warnings, "top_k")
    assert warned(warnings, "thinking")


def test_thinking_blocks_in_history_are_dropped_and_named():
    request, warnings = translate(
        messages=[
            {"role": "user", "content": "Think first."},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "Let me reason...", "signature": "sig=="},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "Done."},
                ],
            },
            {"role": "user", "content": "Go on."},
        ]
    )
    assert [m["role"] for m in request["messages"]] == ["user", "assistant", "user"]
    assert text_of(request["messages"][1]["content"]) == "Done."
    assert "Let me reason" not in json.dumps(request)
    assert "opaque" not in json.dumps(request)
    assert warned(warnings, "thinking")


def test_document_blocks_are_dropped_and_named():
    request, warnings = translate(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Summarize."},
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0=",
                        },
                    },
                ],
            }
        ]
    )
    assert text_of(request["messages"][0]["content"]) == "Summarize."
    assert "JVBERi0=" not in json.dumps(request)
    assert warned(warnings, "document")


def test_estimate_input_tokens_counts_all_text():
    short = estimate_input_tokens({"messages": [{"role": "user", "content": "hi"}]})
    longer = estimate_input_tokens(
        {
            "system": "You are helpful. " * 20,
            "messages": [
                {"role": "user", "content": "hi " * 50},
                {"role": "assistant", "content": [tool_use("t", "f", {"q": "x" * 80})]},
                {
                    "role": "user",
                    "content": [{"type": "tool_result", "tool_use_id": "t", "content": "y" * 80}],
                },
            ],
            "tools": [WEATHER_TOOL],
        }
    )
    assert short >= 1
    assert longer > short + 50


# --- canonical chat completion -> Anthropic message -----------------------------------------


def completion(message: dict, finish: str | None = "stop", usage: dict | None = None) -> dict:
    answer = {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up-model",
        "choices": [
            {"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}
        ],
    }
    if usage is not None:
        answer["usage"] = usage
    return answer


def test_to_message_text():
    message = to_message(
        completion(
            {"content": "Hello there"},
            usage={"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        ),
        "claude-public",
        99,
    )
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["id"].startswith("msg_")
    assert message["model"] == "claude-public"
    assert message["content"] == [{"type": "text", "text": "Hello there"}]
    assert message["stop_reason"] == "end_turn"
    assert message["stop_sequence"] is None
    assert message["usage"]["input_tokens"] == 12
    assert message["usage"]["output_tokens"] == 3


def test_to_message_without_usage_falls_back_to_the_estimate():
    message = to_message(completion({"content": "Hi"}), "m", 42)
    assert message["usage"]["input_tokens"] == 42
    assert isinstance(message["usage"]["output_tokens"], int)


def test_to_message_tool_calls():
    message = to_message(
        completion(
            {
                "content": "Checking.",
                "tool_calls": [
                    {
                        "id": "call_a",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                    },
                    {
                        "id": "call_b",
                        "type": "function",
                        "function": {
                            "name": "get_weather",
                            "arguments": '{"city": "Oslo", "unit": "celsius"}',
                        },
                    },
                ],
            },
            finish="tool_calls",
        ),
        "m",
        5,
    )
    assert message["content"][0] == {"type": "text", "text": "Checking."}
    assert message["content"][1:] == [
        {"type": "tool_use", "id": "call_a", "name": "get_weather", "input": {"city": "Paris"}},
        {
            "type": "tool_use",
            "id": "call_b",
            "name": "get_weather",
            "input": {"city": "Oslo", "unit": "celsius"},
        },
    ]
    assert message["stop_reason"] == "tool_use"


def test_to_message_tool_calls_without_text_or_arguments():
    message = to_message(
        completion(
            {
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_x",
                        "type": "function",
                        "function": {"name": "ping", "arguments": ""},
                    }
                ],
            },
            finish="tool_calls",
        ),
        "m",
        5,
    )
    assert message["content"] == [{"type": "tool_use", "id": "call_x", "name": "ping", "input": {}}]


def test_to_message_tool_calls_with_a_stop_finish_still_say_tool_use():
    # Some backends (Gemini) finish with "stop" after calling functions.
    message = to_message(
        completion(
            {
                "content": None,
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a": 1}'},
                    }
                ],
            },
            finish="stop",
        ),
        "m",
        1,
    )
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [
        ("stop", "end_turn"),
        ("length", "max_tokens"),
        ("tool_calls", "tool_use"),
        ("function_call", "tool_use"),
        ("content_filter", "refusal"),
        (None, "end_turn"),
    ],
)
def test_to_message_finish_reasons(finish, stop_reason):
    message = to_message(completion({"content": "x"}, finish=finish), "m", 1)
    assert message["stop_reason"] == stop_reason


# --- canonical chunks -> Anthropic stream events --------------------------------------------


def chunk(delta: dict | None = None, finish: str | None = None, usage: dict | None = None) -> dict:
    result: dict = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
    }
    if delta is None and finish is None:
        result["choices"] = []
    else:
        result["choices"] = [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    if usage is not None:
        result["usage"] = usage
    return result


def decode(raw: bytes) -> list[tuple[str, dict]]:
    """(event name, payload) pairs from the bytes the writer produced."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        name = data = None
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data = json.loads(line[5:].strip())
        assert name is not None and data is not None, block
        assert data["type"] == name
        events.append((name, data))
    return events


def run_writer(chunks: list[dict], input_tokens: int = 17) -> list[tuple[str, dict]]:
    writer = EventWriter("claude-public", input_tokens)
    out = [writer.start()]
    for c in chunks:
        out.extend(writer.feed(c))
    out.extend(writer.finish_events())
    # Every event is one complete SSE event.
    assert all(e.endswith(b"\n\n") for e in out)
    return decode(b"".join(out))


def assemble(events: list[tuple[str, dict]]) -> dict:
    """Check Anthropic's event grammar and rebuild the final message the way an SDK does."""
    names = [name for name, _ in events]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    assert names.count("message_start") == 1 and names.count("message_stop") == 1
    message = dict(events[0][1]["message"])
    assert message["content"] == []
    assert message["stop_reason"] is None
    content: list[dict] = []
    partial: dict[int, str] = {}
    open_index = None
    for name, data in events[1:-2]:
        if name == "content_block_start":
            assert open_index is None, "a block started before the previous one stopped"
            assert data["index"] == len(content), "block indexes must count up from 0"
            open_index = data["index"]
            content.append(dict(data["content_block"]))
            partial[open_index] = ""
        elif name == "content_block_delta":
            assert data["index"] == open_index, "a delta for a block that is not open"
            delta = data["delta"]
            block = content[open_index]
            if delta["type"] == "text_delta":
                assert block["type"] == "text"
                block["text"] += delta["text"]
            elif delta["type"] == "input_json_delta":
                assert block["type"] == "tool_use"
                partial[open_index] += delta["partial_json"]
            else:
                raise AssertionError(f"unexpected delta {delta}")
        elif name == "content_block_stop":
            assert data["index"] == open_index
            block = content[open_index]
            if block["type"] == "tool_use":
                block["input"] = json.loads(partial[open_index]) if partial[open_index] else {}
            open_index = None
        elif name != "ping":
            raise AssertionError(f"unexpected event {name} between blocks")
    assert open_index is None, "a block was never stopped"
    final = events[-2][1]
    message["content"] = content
    message["stop_reason"] = final["delta"]["stop_reason"]
    message["usage"] = {
        **message["usage"],
        **{k: v for k, v in final["usage"].items() if v is not None},
    }
    return message


def text_chunks(words: list[str], finish: str = "stop", usage: dict | None = None) -> list[dict]:
    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": w}) for w in words]
    chunks.append(chunk({}, finish))
    if usage:
        chunks.append(chunk(usage=usage))
    return chunks


def test_event_writer_text_order():
    usage = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}
    events = run_writer(text_chunks(["Hello", " streaming", " world"], usage=usage))
    names = [name for name, _ in events]
    assert names == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    start = events[0][1]["message"]
    assert start["type"] == "message" and start["role"] == "assistant"
    assert start["id"].startswith("msg_")
    assert start["model"] == "claude-public"
    assert start["usage"]["input_tokens"] == 17
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}
    assert [d["delta"]["text"] for n, d in events if n == "content_block_delta"] == [
        "Hello",
        " streaming",
        " world",
    ]
    message = assemble(events)
    assert message["content"] == [{"type": "text", "text": "Hello streaming world"}]
    assert message["stop_reason"] == "end_turn"


def test_event_writer_usage_in_message_delta():
    usage = {"prompt_tokens": 21, "completion_tokens": 3, "total_tokens": 24}
    events = run_writer(text_chunks(["a", "b", "c"], usage=usage))
    name, delta = events[-2]
    assert name == "message_delta"
    assert delta["delta"]["stop_sequence"] is None
    assert delta["usage"]["output_tokens"] == 3
    # The real input count, when the upstream reports it, overrides message_start's estimate.
    assert delta["usage"].get("input_tokens", 21) == 21
    assert assemble(events)["usage"] == {"input_tokens": 21, "output_tokens": 3}


def test_event_writer_without_upstream_usage_estimates_output():
    events = run_writer(text_chunks(["some words of an answer"]))
    usage = events[-2][1]["usage"]
    assert usage["output_tokens"] > 0
    assert assemble(events)["usage"]["input_tokens"] == 17


def test_event_writer_message_start_input_tokens_are_positive():
    events = run_writer(text_chunks(["x"]), input_tokens=5)
    assert events[0][1]["message"]["usage"]["input_tokens"] > 0
    assert events[0][1]["message"]["usage"]["output_tokens"] >= 0


def test_event_writer_text_then_two_tool_calls_with_fragmented_arguments():
    call = lambda index, **fields: chunk({"tool_calls": [{"index": index, **fields}]})  # noqa: E731
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk({"content": "Let me"}),
        chunk({"content": " check."}),
        call(0, id="call_A", type="function", function={"name": "get_weather", "arguments": ""}),
        call(0, function={"arguments": '{"ci'}),
        call(0, function={"arguments": 'ty": "Pa'}),
        call(0, function={"arguments": 'ris"}'}),
        call(1, id="call_B", type="function", function={"name": "get_time", "arguments": '{"tz"'}),
        call(1, function={"arguments": ': "Europe/Oslo", '}),
        call(1, function={"arguments": '"h24": true}'}),
        chunk({}, "tool_calls"),
        chunk(usage={"prompt_tokens": 40, "completion_tokens": 22, "total_tokens": 62}),
    ]
    events = run_writer(chunks)
    names = [n for n, _ in events]
    assert names[:2] == ["message_start", "content_block_start"]
    starts = [d for n, d in events if n == "content_block_start"]
    assert [s["index"] for s in starts] == [0, 1, 2]
    assert starts[0]["content_block"]["type"] == "text"
    assert starts[1]["content_block"] == {
        "type": "tool_use",
        "id": "call_A",
        "name": "get_weather",
        "input": {},
    }
    assert starts[2]["content_block"] == {
        "type": "tool_use",
        "id": "call_B",
        "name": "get_time",
        "input": {},
    }
    # Each block stops before the next starts.
    stops = [i for i, (n, _) in enumerate(events) if n == "content_block_stop"]
    begins = [i for i, (n, _) in enumerate(events) if n == "content_block_start"]
    assert begins[1] > stops[0] and begins[2] > stops[1]
    json_deltas = [
        d
        for n, d in events
        if n == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert {d["index"] for d in json_deltas} == {1, 2}
    assert len([d for d in json_deltas if d["index"] == 1]) >= 3
    message = assemble(events)
    assert message["content"] == [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "call_A", "name": "get_weather", "input": {"city": "Paris"}},
        {
            "type": "tool_use",
            "id": "call_B",
            "name": "get_time",
            "input": {"tz": "Europe/Oslo", "h24": True},
        },
    ]
    assert message["stop_reason"] == "tool_use"
    assert message["usage"]["output_tokens"] == 22


def test_event_writer_whole_tool_call_in_one_chunk_with_stop_finish():
    # Gemini-like: the whole call at once, and finish "stop" although a tool was called.
    chunks = [
        chunk({"role": "assistant", "content": ""}),
        chunk(
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "call_G",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                    }
                ]
            }
        ),
        chunk({}, "stop"),
    ]
    message = assemble(run_writer(chunks))
    assert message["content"] == [
        {"type": "tool_use", "id": "call_G", "name": "get_weather", "input": {"city": "Rome"}}
    ]
    assert message["stop_reason"] == "tool_use"


@pytest.mark.parametrize(
    ("finish", "stop_reason"),
    [("stop", "end_turn"), ("length", "max_tokens"), ("content_filter", "refusal")],
)
def test_event_writer_finish_reasons(finish, stop_reason):
    message = assemble(run_writer(text_chunks(["x"], finish=finish)))
    assert message["stop_reason"] == stop_reason


def test_event_writer_empty_answer_is_still_a_complete_stream():
    events = run_writer([chunk({"role": "assistant", "content": ""}), chunk({}, "stop")])
    assert [n for n, _ in events] == ["message_start", "message_delta", "message_stop"]
    assert assemble(events)["content"] == []


def test_event_writer_ignores_other_choices():
    chunks = [
        chunk({"content": "zero"}),
        {**chunk(), "choices": [{"index": 1, "delta": {"content": "one"}, "finish_reason": None}]},
        chunk({}, "stop"),
    ]
    assert assemble(run_writer(chunks))["content"] == [{"type": "text", "text": "zero"}]
