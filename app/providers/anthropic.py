"""Anthropic's native Messages API: canonical OpenAI chat translated to `/messages` and back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests

from ..content import content_text
from ..errors import InvalidRequestError, UpstreamError, client_shape, upstream_shape
from ..providers.base import CallContext, ChatStream, Provider, chat_completion, completion_choice
from ..providers.http import Event
from ..providers.shapes import arguments_object, declaration
from ..upstream import error_message, read_json

MESSAGES_PATH = "/messages"
# A Go-style `url` may name the full endpoint, or the OpenAI-compatible one older configs used.
ENDPOINT_SUFFIXES = (MESSAGES_PATH, "/chat/completions")
API_VERSION = "2023-06-01"
# Anthropic requires max_tokens; OpenAI clients usually leave it out.
DEFAULT_MAX_TOKENS = 4096
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}
TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
# Anthropic request fields a client may send as extras (OpenAI SDK `extra_body`); others drop.
NATIVE_FIELDS = ("top_k", "thinking", "service_tier")


class AnthropicProvider(Provider):
    name = "anthropic"
    endpoint_suffixes = ENDPOINT_SUFFIXES
    api_path = "/v1"  # the SDK's root has none: `https://api.anthropic.com`

    def headers(self, ctx: CallContext, stream: bool = False) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION, **self.json_headers(ctx, stream)}
        if ctx.anthropic_beta:
            headers.setdefault("anthropic-beta", ctx.anthropic_beta)
        if self.model.token:
            headers["x-api-key"] = self.model.token
        return headers

    def _send(self, payload: dict, ctx: CallContext, stream: bool) -> requests.Response:
        return self.post(self.base_url + MESSAGES_PATH, payload, ctx, stream=stream)

    def chat(self, body: dict, ctx: CallContext) -> dict:
        response = self._send(to_messages_request(body), ctx, stream=False)
        return to_chat_completion(read_json(response, self.label), self.label)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        payload = {**to_messages_request(body), "stream": True}
        response = self._send(payload, ctx, stream=True)
        return AnthropicStream(response, self.label, body.get("model") or "")

    native_messages = True

    def messages(self, body: dict, ctx: CallContext) -> dict:
        """A /v1/messages request passed through untranslated."""
        response = self._send({**body, "stream": False}, ctx, stream=False)
        answer = read_json(response, self.label)
        if not isinstance(answer, dict) or answer.get("type") != "message":
            raise UpstreamError(f"{self.label}: the upstream answer is not a message")
        return answer

    def open_messages_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self._send({**body, "stream": True}, ctx, stream=True)
        return NativeEvents(response, self.label)

    def count_tokens(self, body: dict, ctx: CallContext) -> int | None:
        fields = ("model", "messages", "system", "tools", "tool_choice", "thinking")
        payload = {key: body[key] for key in fields if key in body}
        answer = self.post_json(self.base_url + MESSAGES_PATH + "/count_tokens", payload, ctx)
        tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, int):
            raise UpstreamError(f"{self.label}: the upstream token count is not a number")
        return tokens


class NativeEvents(ChatStream):
    """Anthropic's own stream events, relayed as (event name, payload) pairs."""

    @upstream_shape
    def __iter__(self) -> Iterator[tuple[str, dict]]:
        for name, data in self.events(_stream_failure, done=None):
            kind = name or data.get("type")
            if not kind:
                raise UpstreamError(f"{self.label}: the stream sent an unexpected event")
            yield kind, data
            if kind == "message_stop":
                self.completed = True
                return
        raise UpstreamError(f"{self.label}: the stream ended before message_stop")


def _stream_failure(event: Event) -> str | None:
    """The message of an in-band `error` event."""
    if (event.name or event.data.get("type")) == "error":
        return error_message(event.data)[0] or "unknown error"
    return None


# ---------------------------------------------------------------------------------------------
# Requests: OpenAI chat -> Anthropic Messages.


@client_shape
def to_messages_request(body: dict) -> dict:
    """The Messages request for a canonical OpenAI chat request; 400 for what cannot be said."""
    if isinstance(body.get("n"), int) and body["n"] > 1:
        raise InvalidRequestError("Anthropic models return one choice: n must be 1.", param="n")
    system, messages = _translate_messages(body.get("messages") or [])
    limit = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    request: dict = {"model": body.get("model"), "messages": messages, "max_tokens": limit}
    if system:
        request["system"] = system
    stop = body.get("stop")
    if isinstance(stop, str):
        request["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        request["stop_sequences"] = stop
    for field in ("temperature", "top_p", *NATIVE_FIELDS):
        if body.get(field) is not None:
            request[field] = body[field]
    if isinstance(body.get("user"), str) and body["user"]:
        request["metadata"] = {"user_id": body["user"]}
    tools = body.get("tools")
    if tools:
        request["tools"] = [_tool(tool, i) for i, tool in enumerate(tools)]
        choice = _tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        if choice:
            request["tool_choice"] = choice
    return request


def _translate_messages(messages: list) -> tuple[str, list[dict]]:
    """The system prompt, and user/assistant turns that alternate as Anthropic requires."""
    system: list[str] = []
    turns: list[dict] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        if role in ("system", "developer"):
            text = content_text(message.get("content"))
            if text:
                system.append(text)
            continue
        if role == "user":
            content = _user_content(message.get("content"), f"messages[{i}].content")
        elif role == "assistant":
            content = _assistant_content(message, i)
        elif role == "tool":
            content = [_tool_result(message, i)]
        else:
            raise InvalidRequestError(
                f"Anthropic models do not take {role!r} messages; use tool messages.",
                param=f"messages[{i}].role",
            )
        if not content:
            continue
        turn_role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == turn_role:
            turns[-1]["content"] = _blocks(turns[-1]["content"]) + _blocks(content)
        else:
            turns.append({"role": turn_role, "content": content})
    return "\n\n".join(system), turns


def _blocks(content: str | list[dict]) -> list[dict]:
    return [{"type": "text", "text": content}] if isinstance(content, str) else content


def _user_content(content: object, param: str) -> str | list[dict]:
    if content is None or isinstance(content, str):
        return content or ""
    return [_part(part, f"{param}[{j}]") for j, part in enumerate(content)]


def _part(part: dict, param: str) -> dict:
    """One OpenAI content part as an Anthropic content block."""
    kind = part.get("type")
    if kind == "text":
        block: dict = {"type": "text", "text": part.get("text") or ""}
    elif kind == "image_url":
        image = part.get("image_url")
        url = image.get("url") if isinstance(image, dict) else image
        block = {"type": "image", "source": _source(url, param)}
    elif kind == "file" and isinstance(part.get("file"), dict) and part["file"].get("file_data"):
        block = {"type": "document", "source": _source(part["file"]["file_data"], param)}
    else:
        raise InvalidRequestError(
            f"Anthropic models do not take {kind!r} content parts.", param=f"{param}.type"
        )
    if isinstance(part.get("cache_control"), dict):
        block["cache_control"] = part["cache_control"]
    return block


def _source(url: object, param: str) -> dict:
    """An image or document source: base64 from a `data:` URL, else the http(s) URL itself."""
    if not isinstance(url, str) or not url:
        raise InvalidRequestError("A content part has no URL.", param=param)
    if url.startswith("data:"):
        header, _, data = url[5:].partition(",")
        media_type, _, encoding = header.partition(";")
        if encoding != "base64" or not data:
            raise InvalidRequestError("Data URLs must be base64-encoded.", param=param)
        return {"type": "base64", "media_type": media_type, "data": data}
    if url.startswith(("http://", "https://")):
        return {"type": "url", "url": url}
    raise InvalidRequestError("Content URLs must be http(s) or base64 data URLs.", param=param)


def _assistant_content(message: dict, index: int) -> str | list[dict]:
    content = message.get("content")
    if isinstance(content, str) and not message.get("tool_calls"):
        return content
    blocks: list[dict] = []
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for part in content:
            text = part.get("text") or part.get("refusal")
            if text:
                blocks.append({"type": "text", "text": text})
    for j, call in enumerate(message.get("tool_calls") or []):
        function = call.get("function") or {}
        parsed = arguments_object(function.get("arguments"))
        if parsed is None:
            raise InvalidRequestError(
                "Tool call arguments must be a JSON object.",
                param=f"messages[{index}].tool_calls[{j}].function.arguments",
            )
        blocks.append(
            {
                "type": "tool_use",
                "id": call.get("id"),
                "name": function.get("name"),
                "input": parsed,
            }
        )
    return blocks


def _tool_result(message: dict, index: int) -> dict:
    content = message.get("content")
    result: dict = {"type": "tool_result", "tool_use_id": message.get("tool_call_id")}
    if isinstance(content, list):
        content = _user_content(content, f"messages[{index}].content")
    if content:
        result["content"] = content
    return result


def _tool(tool: dict, index: int) -> dict:
    function = tool.get("function") if tool.get("type", "function") == "function" else None
    if not isinstance(function, dict) or not function.get("name"):
        raise InvalidRequestError(
            "Anthropic models take function tools only.", param=f"tools[{index}]"
        )
    return declaration(function, "input_schema")


def _tool_choice(choice: object, parallel: object) -> dict | None:
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        result: dict | None = {"type": TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    else:
        result = None
    if parallel is False:
        if result is None:
            result = {"type": "auto"}
        if result["type"] != "none":
            result["disable_parallel_tool_use"] = True
    return result


# ---------------------------------------------------------------------------------------------
# Answers: Anthropic Messages -> OpenAI chat.


def finish_reason(stop_reason: object) -> str | None:
    """The OpenAI finish_reason for an Anthropic stop_reason (None while still running)."""
    if stop_reason is None:
        return None
    return FINISH_REASONS.get(str(stop_reason), "stop")


def chat_usage(usage: object) -> dict:
    """OpenAI usage from Anthropic's: prompt tokens count the cached ones too."""
    usage = usage if isinstance(usage, dict) else {}

    def number(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) else 0

    cached = number("cache_read_input_tokens")
    prompt = number("input_tokens") + cached + number("cache_creation_input_tokens")
    completion = number("output_tokens")
    result = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        result["prompt_tokens_details"] = {"cached_tokens": cached}
    return result


@upstream_shape
def to_chat_completion(answer: object, label: str) -> dict:
    """An OpenAI chat.completion for an Anthropic Message."""
    if not isinstance(answer, dict) or not isinstance(answer.get("content"), list):
        raise UpstreamError(f"{label}: the upstream answer is not a Messages answer")
    texts: list[str] = []
    tool_calls: list[dict] = []
    for block in answer["content"]:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            tool_calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {
                        "name": block.get("name"),
                        "arguments": json.dumps(block.get("input") or {}),
                    },
                }
            )
    message: dict = {"role": "assistant", "content": "".join(texts)}
    if tool_calls:
        message["content"] = message["content"] or None
        message["tool_calls"] = tool_calls
    finish = finish_reason(answer.get("stop_reason")) or "stop"
    return chat_completion(
        [completion_choice(message, finish)],
        model=answer.get("model", ""),
        usage=chat_usage(answer.get("usage")),
        id=answer.get("id"),
    )


class AnthropicStream(ChatStream):
    """OpenAI chunks from Anthropic's stream events, each written as soon as it arrives."""

    def __init__(self, response: requests.Response, label: str, model: str) -> None:
        super().__init__(response, label, model)
        self.usage: dict = {}
        self.started = False
        # Anthropic content block index -> OpenAI tool_calls index (tool_use blocks from 0).
        self.tools: dict[int, int] = {}

    def _start(self) -> Iterator[dict]:
        # Sent with the first content rather than at message_start, so an error event that
        # follows message_start still fails over before the client sees a byte.
        if not self.started:
            self.started = True
            yield self._chunk({"role": "assistant", "content": ""})

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        if self.answered_whole():
            yield from self._whole(self.whole_answer())
            return
        for name, data in self.events(_stream_failure, done=None):
            kind = data.get("type") or name
            if kind == "message_stop":
                self.completed = True
                return
            yield from self._event(kind, data)
        raise UpstreamError(f"{self.label}: the stream ended before message_stop")

    def _event(self, kind: object, data: dict) -> Iterator[dict]:
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = message.get("id") or self.id
            self.model = message.get("model") or self.model
            self.usage.update(message.get("usage") or {})
        elif kind == "content_block_start":
            yield from self._start()
            yield from self._block_start(data.get("index"), data.get("content_block") or {})
        elif kind == "content_block_delta":
            yield from self._delta(data.get("index"), data.get("delta") or {})
        elif kind == "message_delta":
            yield from self._start()
            self.usage.update({k: v for k, v in (data.get("usage") or {}).items() if v is not None})
            finish = finish_reason((data.get("delta") or {}).get("stop_reason"))
            if finish:
                yield self._chunk({}, finish)
            usage = self._chunk({})
            usage["choices"] = []
            usage["usage"] = chat_usage(self.usage)
            yield usage
        # ping, content_block_stop and event types added later carry nothing to relay.

    def _block_start(self, index: object, block: dict) -> Iterator[dict]:
        if block.get("type") == "text" and block.get("text"):
            yield self._chunk({"content": block["text"]})
        elif block.get("type") == "tool_use" and isinstance(index, int):
            position = len(self.tools)
            self.tools[index] = position
            call = {
                "index": position,
                "id": block.get("id"),
                "type": "function",
                "function": {
                    "name": block.get("name"),
                    "arguments": json.dumps(block["input"]) if block.get("input") else "",
                },
            }
            yield self._chunk({"tool_calls": [call]})

    def _delta(self, index: object, delta: dict) -> Iterator[dict]:
        kind = delta.get("type")
        if kind == "text_delta" and delta.get("text"):
            yield from self._start()
            yield self._chunk({"content": delta["text"]})
        elif kind == "input_json_delta" and delta.get("partial_json") and index in self.tools:
            fragment = {
                "index": self.tools[index],
                "function": {"arguments": delta["partial_json"]},
            }
            yield self._chunk({"tool_calls": [fragment]})
        # thinking, signature and citation deltas have no place in an OpenAI chat chunk.

    def _whole(self, answer: object) -> Iterator[dict]:
        """The chunks for an upstream that answered whole though asked to stream."""
        completion = to_chat_completion(answer, self.label)
        self.id, self.model = completion["id"], completion["model"]
        choice = completion["choices"][0]
        message = dict(choice["message"])
        if "tool_calls" in message:
            message["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(message["tool_calls"])
            ]
        yield self._chunk(message)
        yield self._chunk({}, choice["finish_reason"])
        usage = self._chunk({})
        usage["choices"] = []
        usage["usage"] = completion["usage"]
        yield usage
