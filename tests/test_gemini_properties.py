"""Hypothesis properties of the Gemini translators: no crash on any well-typed request or answer,
and round trips keep text, function names and arguments (whole answers and streams)."""

from __future__ import annotations

import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.errors import InvalidRequestError, UpstreamError
from app.gemini_answers import ArrayEncoding, ChunkWriter, SseEncoding, to_response
from app.gemini_api import camel_case, to_chat
from app.schemas import CHAT_COMPLETION, GENERATE_CONTENT, validate_body

EXAMPLES = int(os.environ.get("AI_PROXY_FUZZ_EXAMPLES") or 60)
fuzz = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

texts = st.text(max_size=24)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:\-]{0,15}", fullmatch=True)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=4)
mimes = st.sampled_from(["image/png", "audio/wav", "application/pdf", "text/plain", "x/y"])

text_part = st.builds(lambda t: {"text": t}, texts)
thought_part = st.builds(lambda t: {"text": t, "thought": True}, texts)
call_part = st.builds(lambda n, a: {"functionCall": {"name": n, "args": a}}, names, json_objects)
response_part = st.builds(
    lambda n, r: {"functionResponse": {"name": n, "response": r}}, names, json_objects
)
inline_part = st.builds(
    lambda m, d: {"inlineData": {"mimeType": m, "data": d}}, mimes, st.text(max_size=8)
)
other_part = st.sampled_from(
    [{"executableCode": {"code": "1"}}, {"codeExecutionResult": {}}, {"fileData": {"fileUri": "u"}}]
)
any_part = text_part | thought_part | call_part | response_part | inline_part | other_part
turns = st.fixed_dictionaries(
    {"parts": st.lists(any_part, min_size=1, max_size=4)},
    optional={"role": st.sampled_from(["user", "model"])},
)
generation = st.fixed_dictionaries(
    {},
    optional={
        "temperature": st.floats(0, 2),
        "topP": st.floats(0, 1),
        "topK": st.integers(1, 100),
        "maxOutputTokens": st.integers(1, 10**6),
        "candidateCount": st.integers(1, 8),
        "stopSequences": st.lists(texts, max_size=3),
        "responseMimeType": st.sampled_from(["application/json", "text/plain"]),
        "responseSchema": st.just({"type": "OBJECT", "properties": {"a": {"type": "STRING"}}}),
        "responseJsonSchema": json_objects,
        "thinkingConfig": st.fixed_dictionaries(
            {},
            optional={"thinkingBudget": st.integers(-1, 10**4), "includeThoughts": st.booleans()},
        ),
    },
)
declarations = st.lists(
    st.fixed_dictionaries(
        {"name": names},
        optional={
            "description": texts,
            "parameters": json_objects,
            "parametersJsonSchema": json_objects,
        },
    ),
    max_size=3,
)
tools = st.lists(
    st.fixed_dictionaries({"functionDeclarations": declarations}) | st.just({"googleSearch": {}}),
    max_size=2,
)
tool_config = st.fixed_dictionaries(
    {
        "functionCallingConfig": st.fixed_dictionaries(
            {},
            optional={
                "mode": st.sampled_from(["AUTO", "ANY", "NONE", "VALIDATED"]),
                "allowedFunctionNames": st.lists(names, max_size=2),
            },
        )
    }
)
requests_ = st.fixed_dictionaries(
    {"contents": st.lists(turns, min_size=1, max_size=5)},
    optional={
        "systemInstruction": st.fixed_dictionaries(
            {"parts": st.lists(text_part | inline_part, min_size=1, max_size=2)}
        ),
        "generationConfig": generation,
        "tools": tools,
        "toolConfig": tool_config,
        "safetySettings": st.lists(json_objects, max_size=1),
    },
)


@fuzz
@given(requests_, st.booleans())
def test_any_well_typed_request_translates_or_is_a_clean_400(body, stream):
    validate_body(GENERATE_CONTENT, body)
    # Already camelCase: left exactly as it is (free-form args, responses and schemas too).
    assert camel_case({k: v for k, v in body.items() if k != "safetySettings"}) == {
        k: v for k, v in body.items() if k != "safetySettings"
    }
    try:
        translated = to_chat(body, "m", stream)
    except InvalidRequestError as err:
        assert err.status == 400 and err.param
        return
    # What goes upstream is a chat request the proxy itself would accept.
    validate_body(CHAT_COMPLETION, translated.canonical)
    json.dumps(translated.canonical)


@st.composite
def conversations(draw):
    """User text, then rounds of model function calls answered by the user, ending with text."""
    contents = [{"role": "user", "parts": [{"text": draw(texts)}]}]
    for _ in range(draw(st.integers(0, 3))):
        calls = draw(st.lists(st.tuples(names, json_objects), min_size=1, max_size=3))
        said = draw(texts)
        model_parts = ([{"text": said}] if said else []) + [
            {"functionCall": {"name": n, "args": a}} for n, a in calls
        ]
        contents.append({"role": "model", "parts": model_parts})
        results = [{"functionResponse": {"name": n, "response": {"out": a}}} for n, a in calls]
        contents.append({"role": "user", "parts": results})
    contents.append({"role": "user", "parts": [{"text": draw(texts) or "go"}]})
    return {"contents": contents}


@fuzz
@given(conversations())
def test_a_conversation_keeps_text_function_names_and_args(body):
    messages = to_chat(body, "m").canonical["messages"]
    sent_calls = [
        (c["name"], c["args"])
        for turn in body["contents"]
        for p in turn["parts"]
        if (c := p.get("functionCall"))
    ]
    got_calls = [
        (c["function"]["name"], json.loads(c["function"]["arguments"]))
        for m in messages
        for c in m.get("tool_calls") or []
    ]
    assert got_calls == sent_calls
    calls_by_id = {c["id"]: c for m in messages for c in m.get("tool_calls") or []}
    results = [m for m in messages if m["role"] == "tool"]
    assert len(results) == len(sent_calls)
    for message in results:
        call = calls_by_id[message["tool_call_id"]]
        assert json.loads(message["content"]) == {"out": json.loads(call["function"]["arguments"])}
    sent_text = [p["text"] for t in body["contents"] for p in t["parts"] if p.get("text")]
    got_text = [
        m["content"]
        for m in messages
        if m["role"] != "tool" and isinstance(m.get("content"), str) and m["content"]
    ]
    assert "".join(got_text) == "".join(sent_text)


tool_calls = st.lists(
    st.tuples(st.from_regex(r"call_[a-z0-9]{1,8}", fullmatch=True), names, json_objects),
    max_size=3,
    unique_by=lambda c: c[0],
)
finishes = st.sampled_from(["stop", "length", "tool_calls", "content_filter", "other"])


@fuzz
@given(texts, tool_calls, finishes)
def test_a_whole_answer_keeps_text_names_and_args(text, calls, finish):
    message: dict = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(a)}}
            for i, n, a in calls
        ]
    completion = {
        "id": "chatcmpl-x",
        "model": "up",
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    answer = to_response(completion, "m", 3)
    parts = answer["candidates"][0]["content"]["parts"]
    assert "".join(p.get("text", "") for p in parts) == text
    got = [
        (p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p
    ]
    assert got == [(n, a) for _, n, a in calls]
    assert answer["candidates"][0]["finishReason"] in ("STOP", "MAX_TOKENS", "SAFETY", "OTHER")
    assert answer["usageMetadata"]["promptTokenCount"] == 3


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


@fuzz
@given(
    st.lists(texts, max_size=4),
    tool_calls,
    st.lists(st.integers(0, 400), max_size=4),
    st.booleans(),
    st.sampled_from(["sse", "array"]),
)
def test_a_stream_keeps_text_and_sends_each_call_whole(pieces, calls, points, usage, form):
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "up"}

    def chunk(delta: dict, finish: str | None = None) -> dict:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    for position, (call_id, name, args) in enumerate(calls):
        function = {"name": name, "arguments": ""}
        chunks.append(
            chunk({"tool_calls": [{"index": position, "id": call_id, "function": function}]})
        )
        for piece in cut(json.dumps(args), points):
            delta = {"tool_calls": [{"index": position, "function": {"arguments": piece}}]}
            chunks.append(chunk(delta))
    chunks.append(chunk({}, "tool_calls" if calls else "stop"))
    if usage:
        counts = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}
        chunks.append({**base, "choices": [], "usage": counts})
    writer = ChunkWriter("m", 2)
    responses = [r for c in chunks for r in writer.feed(c)] + list(writer.finish())
    parts = [p for r in responses for c in r["candidates"] for p in c["content"]["parts"]]
    assert "".join(p.get("text", "") for p in parts) == "".join(pieces)
    got = [
        (p["functionCall"]["name"], p["functionCall"]["args"]) for p in parts if "functionCall" in p
    ]
    assert got == [(n, a) for _, n, a in calls]
    last = responses[-1]
    assert last["candidates"][-1]["finishReason"] == "STOP"
    assert last["usageMetadata"]["promptTokenCount"] == (5 if usage else 2)
    encoding = SseEncoding() if form == "sse" else ArrayEncoding()
    written = b"".join(encoding.write(iter(responses))).decode()
    if form == "array":
        assert json.loads(written) == responses
    else:
        events = [json.loads(e[len("data: ") :]) for e in written.split("\r\n\r\n") if e]
        assert events == responses


@fuzz
@given(st.lists(json_objects, max_size=3))
def test_an_array_cut_by_an_error_is_still_one_json_array(elements):
    encoding = ArrayEncoding()
    written = b""
    for piece in encoding.write(iter(elements)):
        if piece == b"]" or piece == b"[]":
            break  # the stream fails before its end
        written += piece
    written += encoding.error(UpstreamError("cut"))
    parsed = json.loads(written)
    assert parsed[:-1] == elements
    assert parsed[-1]["error"]["code"] == 502


def test_a_stream_that_never_finishes_is_cut():
    writer = ChunkWriter("m", 1)
    chunk = {"id": "x", "choices": [{"index": 0, "delta": {"content": "a"}}]}
    list(writer.feed(chunk))
    try:
        list(writer.finish())
    except UpstreamError:
        return
    raise AssertionError("a stream without a finish reason passed for a whole one")
