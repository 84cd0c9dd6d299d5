"""The Anthropic Messages surface: its requests into the canonical OpenAI chat form, and the
canonical answers and streams back into Anthropic's messages and events."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

from .content import content_text
from .errors import InvalidRequestError, client_shape, upstream_shape
from .kinds import FAILED_FINISHES
from .streaming import encode_event
from .tokens import estimate_tokens

STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}
TOOL_CHOICES = {"auto": "auto", "any": "required", "none": "none"}


def stop_reason(finish: object) -> str:
    """Anthropic's stop reason for a chat finish reason. An answer that did not end well (one
    of FAILED_FINISHES, as Gemini's `malformed_function_call`) keeps its reason: it must not
    read as a complete `end_turn`, to the client or to the response cache. Any other reason
    a server invents (`eos`) is an end_turn."""
    if finish in FAILED_FINISHES:
        return str(finish)
    return STOP_REASONS.get(finish, "end_turn")


def _text_of(blocks: object) -> str:
    """The text of Anthropic content: a string, or its text blocks joined by newlines."""
    return content_text(blocks, sep="\n", kind="text")


def _image_part(block: dict, warnings: list[str]) -> dict | None:
    source = block.get("source") or {}
    if source.get("type") == "base64":
        url = f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"
    elif source.get("type") == "url":
        url = source.get("url", "")
    else:
        warnings.append(f"image source {source.get('type')!r} dropped")
        return None
    return {"type": "image_url", "image_url": {"url": url}}


def _tool_result_content(block: dict, warnings: list[str] | None = None) -> str:
    content = block.get("content")
    text = content if isinstance(content, str) else _text_of(content)
    if warnings is not None and isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") != "text":
                warnings.append(f"{part.get('type')} in tool_result dropped")
    if block.get("is_error"):
        return f"Error: {text}" if text else "Error"
    return text


@client_shape
def to_chat_request(body: dict, warnings: list[str]) -> dict:
    """An Anthropic Messages request as a canonical OpenAI chat request.

    What the canonical form cannot carry (thinking blocks, documents, server tools, top_k) is
    dropped and named in `warnings`.
    """
    messages: list[dict] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _text_of(system)})
    for turn in body["messages"]:
        role, content = turn["role"], turn["content"]
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        parts: list[dict] = []
        tool_calls: list[dict] = []
        for block in content:
            kind = block.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": block.get("text", "")})
            elif kind == "image" and role == "user":
                image = _image_part(block, warnings)
                if image:
                    parts.append(image)
            elif kind == "tool_use" and role == "assistant":
                tool_calls.append(
                    {
                        "id": block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                        "type": "function",
                        "function": {
                            "name": block.get("name", ""),
                            "arguments": json.dumps(block.get("input") or {}),
                        },
                    }
                )
            elif kind == "tool_result" and role == "user":
                # OpenAI wants tool results as their own messages, right after the call.
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": block.get("tool_use_id", ""),
                        "content": _tool_result_content(block, warnings),
                    }
                )
            else:
                warnings.append(f"{kind} block dropped")
        if role == "assistant":
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            message: dict = {"role": "assistant", "content": text or None}
            if tool_calls:
                message["tool_calls"] = tool_calls
            if text or tool_calls:
                messages.append(message)
        elif parts:
            only_text = all(p["type"] == "text" for p in parts)
            messages.append(
                {
                    "role": "user",
                    "content": "\n".join(p["text"] for p in parts) if only_text else parts,
                }
            )

    request: dict = {
        "model": body.get("model"),
        "messages": messages,
        "max_tokens": body["max_tokens"],
    }
    for source, target in (("temperature", "temperature"), ("top_p", "top_p")):
        if body.get(source) is not None:
            request[target] = body[source]
    if body.get("stop_sequences"):
        request["stop"] = body["stop_sequences"]
    if body.get("top_k") is not None:
        warnings.append("top_k dropped")
    thinking = body.get("thinking")
    if thinking and not (isinstance(thinking, dict) and thinking.get("type") == "disabled"):
        warnings.append("thinking dropped")
    user = (body.get("metadata") or {}).get("user_id")
    if user:
        request["user"] = user
    tools = []
    for tool in body.get("tools") or []:
        if tool.get("type") not in (None, "custom"):
            warnings.append(f"server tool {tool.get('type')!r} dropped")
            continue
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": tool["name"],
                    "description": tool.get("description", ""),
                    "parameters": tool.get("input_schema") or {"type": "object"},
                },
            }
        )
    if tools:
        request["tools"] = tools
        choice = body.get("tool_choice") or {}
        kind = choice.get("type")
        if kind == "tool":
            request["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
        elif kind in TOOL_CHOICES:
            request["tool_choice"] = TOOL_CHOICES[kind]
        if choice.get("disable_parallel_tool_use"):
            request["parallel_tool_calls"] = False
    if body.get("stream"):
        request["stream"] = True
        request["stream_options"] = {"include_usage": True}
    return request


@client_shape
def estimate_input_tokens(body: dict) -> int:
    """Input tokens of a Messages request, estimated from its text (for count_tokens)."""
    text = [_text_of(body.get("system"))]
    for turn in body.get("messages") or []:
        content = turn.get("content")
        if isinstance(content, str):
            text.append(content)
        elif isinstance(content, list):
            for block in content:
                if not isinstance(block, dict):
                    continue
                if block.get("type") == "text":
                    text.append(block.get("text", ""))
                elif block.get("type") == "tool_use":
                    text.append(json.dumps(block.get("input") or {}))
                elif block.get("type") == "tool_result":
                    text.append(_tool_result_content(block))
    if body.get("tools"):
        text.append(json.dumps(body["tools"]))
    return max(1, sum(estimate_tokens(t) for t in text if t))


def _tool_input(arguments: str | None) -> dict:
    try:
        value = json.loads(arguments or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {"value": value}


def _usage(usage: object, fallback_input: int, output_text: str) -> dict:
    usage = usage if isinstance(usage, dict) else {}
    output = usage.get("completion_tokens")
    return {
        "input_tokens": usage.get("prompt_tokens", fallback_input),
        "output_tokens": output if isinstance(output, int) else estimate_tokens(output_text),
    }


def _output_text(message: dict) -> str:
    """What an answer said, tool arguments included, for estimating its output tokens."""
    calls = message.get("tool_calls") or []
    arguments = "".join(str((c.get("function") or {}).get("arguments") or "") for c in calls)
    return (message.get("content") or "") + arguments


@upstream_shape
def to_message(answer: dict, model: str, fallback_input: int) -> dict:
    """A canonical chat completion as an Anthropic message."""
    choice = (answer.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        function = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": function.get("name", ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    finish = choice.get("finish_reason") or "stop"
    if message.get("tool_calls"):
        finish = "tool_calls"
    return {
        "id": f"msg_{uuid.uuid4().hex[:24]}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason(finish),
        "stop_sequence": None,
        "usage": _usage(answer.get("usage"), fallback_input, _output_text(message)),
    }


class EventWriter:
    """Canonical chunks in, Anthropic stream events out, in Anthropic's order."""

    def __init__(self, model: str, input_tokens: int) -> None:
        self.model = model
        self.input_tokens = input_tokens
        self.block = -1  # index of the open content block
        self.open_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # OpenAI tool_call index -> block index
        self.finish: str | None = None
        self.usage: dict | None = None
        self.saw_tool = False
        self.text: list[str] = []

    def start(self) -> bytes:
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return encode_event("message_start", {"type": "message_start", "message": message})

    def _close_block(self) -> Iterator[bytes]:
        if self.open_kind is not None:
            yield encode_event(
                "content_block_stop", {"type": "content_block_stop", "index": self.block}
            )
            self.open_kind = None

    def _open_block(self, block: dict) -> Iterator[bytes]:
        yield from self._close_block()
        self.block += 1
        self.open_kind = block["type"]
        yield encode_event(
            "content_block_start",
            {"type": "content_block_start", "index": self.block, "content_block": block},
        )

    @upstream_shape
    def feed(self, chunk: dict) -> Iterator[bytes]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            text = delta.get("content")
            if text:
                if self.open_kind != "text":
                    yield from self._open_block({"type": "text", "text": ""})
                self.text.append(text)
                yield encode_event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": self.block,
                        "delta": {"type": "text_delta", "text": text},
                    },
                )
            for call in delta.get("tool_calls") or ():
                yield from self._tool_delta(call)
            if choice.get("finish_reason"):
                self.finish = choice["finish_reason"]

    def _tool_delta(self, call: dict) -> Iterator[bytes]:
        position = call.get("index", 0)
        function = call.get("function") or {}
        if position not in self.tool_blocks:
            self.saw_tool = True
            yield from self._open_block(
                {
                    "type": "tool_use",
                    "id": call.get("id") or f"toolu_{uuid.uuid4().hex[:24]}",
                    "name": function.get("name", ""),
                    "input": {},
                }
            )
            self.tool_blocks[position] = self.block
        elif self.tool_blocks[position] != self.block:
            # Arguments for a tool block already closed cannot be sent in Anthropic's order.
            return
        arguments = function.get("arguments")
        if arguments:
            yield encode_event(
                "content_block_delta",
                {
                    "type": "content_block_delta",
                    "index": self.block,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                },
            )

    @upstream_shape
    def finish_events(self) -> Iterator[bytes]:
        yield from self._close_block()
        finish = "tool_calls" if self.saw_tool else (self.finish or "stop")
        usage = self.usage or {}
        output = usage.get("completion_tokens")
        if output is None:
            output = estimate_tokens("".join(self.text))
        yield encode_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {
                    "stop_reason": stop_reason(finish),
                    "stop_sequence": None,
                },
                "usage": {
                    "input_tokens": usage.get("prompt_tokens", self.input_tokens),
                    "output_tokens": output,
                },
            },
        )
        yield encode_event("message_stop", {"type": "message_stop"})


def check_request(body: object) -> dict:
    """The few shape checks the translation relies on; 400 naming the field otherwise."""
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def now() -> int:
    return int(time.time())
