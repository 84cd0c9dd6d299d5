"""A stub upstream that answers every wire format the Responses tests route to: OpenAI chat
(an OpenAI-compatible server without Responses), Anthropic Messages, Gemini, and OpenAI's own
Responses API (`responses: true`), streamed or not.

Each answers like a tool-using model: with tools offered and no tool result yet, it calls the
first tool with `{"city": "Paris"}`; otherwise it says `echo: <the last user or tool text>`.
"""

from __future__ import annotations

import json

from tests.stub_upstream import Recorded, Reply

TOOL_ARGS = {"city": "Paris"}
USAGE = {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14}


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for part in content or ():
        if isinstance(part, dict):
            value = part.get("text") or part.get("output") or part.get("content")
            if isinstance(value, str):
                texts.append(value)
            elif isinstance(part.get("functionResponse"), dict):
                # The proxy wraps a tool's text as {"content": text} for Gemini.
                response = part["functionResponse"].get("response") or {}
                texts.append(str(response.get("content", json.dumps(response))))
    return " ".join(texts)


def decide(turns: list[tuple[str, str]], tools: list[str]) -> tuple[str | None, str]:
    """(the tool to call or None, the text to say) for a conversation of (role, text) turns,
    where a tool result's role is `tool`."""
    if tools and not any(role == "tool" for role, _ in turns):
        return tools[0], ""
    last = next((text for role, text in reversed(turns) if role in ("user", "tool")), "")
    return None, f"echo: {last}"


def openai_chat(record: Recorded) -> Reply:
    body = record.json()
    turns = [(m["role"], _text(m.get("content"))) for m in body["messages"]]
    tools = [t["function"]["name"] for t in body.get("tools") or ()]
    tool, text = decide(turns, tools)
    message: dict = {"role": "assistant", "content": text or None}
    if tool:
        call = {"id": "call_1", "type": "function"}
        call["function"] = {"name": tool, "arguments": json.dumps(TOOL_ARGS)}
        message["tool_calls"] = [call]
    finish = "tool_calls" if tool else "stop"
    if not body.get("stream"):
        return Reply(body=_completion(message, finish))
    base = {"id": "chatcmpl-s", "object": "chat.completion.chunk", "created": 1, "model": "up"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    for word in text.split(" ") if text else ():
        delta = {"content": word if not chunks[1:] else " " + word}
        chunks.append({**base, "choices": [{"index": 0, "delta": delta}]})
    if tool:
        call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": tool}}
        chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
        for piece in ('{"city": ', '"Paris"}'):
            call = {"index": 0, "function": {"arguments": piece}}
            chunks.append({**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}]})
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    chunks.append({**base, "choices": [], "usage": USAGE})
    return Reply(events=[f"data: {json.dumps(c)}" for c in chunks] + ["data: [DONE]"])


def _completion(message: dict, finish: str) -> dict:
    choice = {"index": 0, "message": message, "finish_reason": finish}
    return {"id": "chatcmpl-w", "object": "chat.completion", "created": 1, "model": "up",
            "choices": [choice], "usage": USAGE}  # fmt: skip


def anthropic(record: Recorded) -> Reply:
    body = record.json()
    turns = []
    for message in body["messages"]:
        content = message["content"]
        results = [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        role = "tool" if results else message["role"]
        turns.append((role, _text(results[0]["content"] if results else content)))
    tool, text = decide(turns, [t["name"] for t in body.get("tools") or ()])
    if tool:
        content = [{"type": "tool_use", "id": "toolu_1", "name": tool, "input": TOOL_ARGS}]
    else:
        content = [{"type": "text", "text": text}]
    stop = "tool_use" if tool else "end_turn"
    usage = {"input_tokens": 11, "output_tokens": 3}
    message = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
               "content": content, "stop_reason": stop, "stop_sequence": None,
               "usage": usage}  # fmt: skip
    if not body.get("stream"):
        return Reply(body=message)

    def sse(kind: str, **data) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}"

    events = [sse("message_start", message={**message, "content": [], "stop_reason": None})]
    if tool:
        block = {**content[0], "input": {}}
        events.append(sse("content_block_start", index=0, content_block=block))
        delta = {"type": "input_json_delta", "partial_json": json.dumps(TOOL_ARGS)}
        events.append(sse("content_block_delta", index=0, delta=delta))
    else:
        events.append(
            sse("content_block_start", index=0, content_block={"type": "text", "text": ""})
        )
        delta = {"type": "text_delta", "text": text}
        events.append(sse("content_block_delta", index=0, delta=delta))
    events.append(sse("content_block_stop", index=0))
    delta = {"stop_reason": stop, "stop_sequence": None}
    events.append(sse("message_delta", delta=delta, usage={"output_tokens": 3}))
    events.append(sse("message_stop"))
    return Reply(events=events)


def google(record: Recorded) -> Reply:
    body = record.json()
    turns = []
    for content in body["contents"]:
        responses = [p for p in content["parts"] if "functionResponse" in p]
        turns.append(
            ("tool" if responses else content.get("role", "user"), _text(content["parts"]))
        )
    declarations = [d for t in body.get("tools") or () for d in t.get("functionDeclarations") or ()]
    tool, text = decide(turns, [d["name"] for d in declarations])
    parts = [{"functionCall": {"name": tool, "args": TOOL_ARGS}}] if tool else [{"text": text}]
    answer = {
        "candidates": [{"content": {"role": "model", "parts": parts}, "finishReason": "STOP"}],
        "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 3, "totalTokenCount": 14},
        "modelVersion": "gemini-up",
    }
    if "streamGenerateContent" in record.path:
        # The parts first, then the ending with the usage, as Gemini streams them.
        candidate = {"content": {"role": "model", "parts": parts}}
        ending = {**answer, "candidates": [{**answer["candidates"][0], "content": {
            "role": "model", "parts": [{"text": ""}]}}]}  # fmt: skip
        return Reply(events=[f"data: {json.dumps({'candidates': [candidate]})}",
                             f"data: {json.dumps(ending)}"])  # fmt: skip
    return Reply(body=answer)


def responses_api(record: Recorded) -> Reply:
    """OpenAI's own Responses API (a `responses: true` deployment)."""
    body = record.json()
    items = body["input"]
    items = [{"role": "user", "content": items}] if isinstance(items, str) else items
    turns = []
    for item in items:
        if item.get("type") == "function_call_output":
            turns.append(("tool", item["output"]))
        elif item.get("type", "message") == "message":
            turns.append((item["role"], _text(item["content"])))
    tool, text = decide(turns, [t["name"] for t in body.get("tools") or ()])
    if tool:
        item = {"id": "fc_up1", "type": "function_call", "status": "completed",
                "call_id": "call_up1", "name": tool,
                "arguments": json.dumps(TOOL_ARGS)}  # fmt: skip
    else:
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {"id": "msg_up1", "type": "message", "status": "completed", "role": "assistant",
                "content": [part]}  # fmt: skip
    usage = {"input_tokens": 11, "output_tokens": 3, "total_tokens": 14}
    response = {"id": f"resp_up{len(turns)}", "object": "response", "created_at": 1,
                "status": "completed", "model": body["model"], "output": [item],
                "usage": usage}  # fmt: skip
    if not body.get("stream"):
        return Reply(body=response)
    return Reply(events=responses_events(response, item))


def responses_events(response: dict, item: dict) -> list[str]:
    """The events OpenAI streams for a one-item response."""
    events = []

    def add(kind: str, **data) -> None:
        payload = {"type": kind, "sequence_number": len(events), **data}
        events.append(f"event: {kind}\ndata: {json.dumps(payload)}")

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    add("response.created", response=started)
    add("response.in_progress", response=started)
    add("response.output_item.added", output_index=0, item={**item, "status": "in_progress"})
    where = {"item_id": item["id"], "output_index": 0}
    if item["type"] == "message":
        text = item["content"][0]["text"]
        part = {"type": "output_text", "text": "", "annotations": []}
        add("response.content_part.added", **where, content_index=0, part=part)
        add("response.output_text.delta", **where, content_index=0, delta=text, logprobs=[])
        add("response.output_text.done", **where, content_index=0, text=text, logprobs=[])
        add("response.content_part.done", **where, content_index=0, part={**part, "text": text})
    else:
        add("response.function_call_arguments.delta", **where, delta=item["arguments"])
        add("response.function_call_arguments.done", **where, arguments=item["arguments"])
    add("response.output_item.done", output_index=0, item=item)
    add("response.completed", response=response)
    return events


def every_format(record: Recorded) -> Reply:
    """The handler: the wire format the request's path names."""
    if "/native/" in record.path:
        return responses_api(record)
    if record.path.startswith("/anthropic/"):
        return anthropic(record)
    if record.path.startswith("/v1beta/"):
        return google(record)
    return openai_chat(record)


def models(url: str) -> list[dict]:
    """One deployment of each wire format on the stub at `url`."""
    return [
        {"name": "chat-only", "provider": "openai", "base_url": url + "/v1", "token": "sk-up",
         "model": "up-chat"},
        {"name": "claude", "provider": "anthropic", "base_url": url + "/anthropic",
         "token": "sk-ant-up", "model": "claude-up"},
        {"name": "gemini", "provider": "google", "base_url": url + "/v1beta",
         "token": "g-up", "model": "gemini-up"},
        {"name": "native", "provider": "openai", "base_url": url + "/native/v1",
         "token": "sk-up", "model": "gpt-up", "responses": True},
    ]  # fmt: skip
