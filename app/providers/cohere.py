"""Cohere's native v2 Chat API (`POST /v2/chat`): canonical OpenAI chat in and out, streams too."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import requests

from ..content import content_text
from ..errors import UpstreamError, upstream_shape
from ..providers.base import (
    CallContext,
    CountingStream,
    Provider,
    chat_completion,
    completion_choice,
)
from ..providers.http import Event
from ..providers.shapes import (
    declaration,
    function_tools,
    narrowed_tools,
    passed_fields,
    token_limit,
)
from ..tokens import estimate_tokens, prompt_estimate
from ..upstream import read_json, safe_text

CHAT_PATH = "/v2/chat"
# Suffixes a configured URL may carry that are not part of the API root: the v2 endpoint itself,
# and the OpenAI-compatible endpoint this provider name pointed at before it had an adapter.
_ROOT_SUFFIXES = (
    "/compatibility/v1/chat/completions",
    "/compatibility/v1",
    "/v2/chat",
    "/v1/chat",
    "/v2",
    "/v1",
)
FINISH_REASONS = {
    "COMPLETE": "stop",
    "STOP_SEQUENCE": "stop",
    "MAX_TOKENS": "length",
    "TOOL_CALL": "tool_calls",
}
TOOL_CHOICES = {"none": "NONE", "required": "REQUIRED"}  # "auto" is Cohere's default
# Finish reasons that mean the generation failed rather than ended.
FAILED_REASONS = frozenset({"ERROR", "TIMEOUT", "ERROR_TOXIC", "ERROR_LIMIT"})
# OpenAI fields with the same meaning in Cohere's request, and their names there.
_FIELDS = {
    "max_tokens": "max_tokens",
    "temperature": "temperature",
    "seed": "seed",
    "frequency_penalty": "frequency_penalty",
    "presence_penalty": "presence_penalty",
    "top_p": "p",
    "top_k": "k",
}


class CohereProvider(Provider):
    name = "cohere"
    # The SDK's root has no version (`https://api.cohere.com`); a versioned one loses it.
    endpoint_suffixes = _ROOT_SUFFIXES

    def endpoint(self) -> str:
        """`{root}/v2/chat`, whichever of `base_url`, Go-style `url` or the default names it."""
        return self.base_url + CHAT_PATH

    def _send(self, body: dict, ctx: CallContext, stream: bool) -> requests.Response:
        return self.post(self.endpoint(), to_cohere(body, stream=stream), ctx, stream=stream)

    def chat(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self._send(body, ctx, stream=False), self.label)
        return to_completion(answer, body, self.label)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> CohereStream:
        return CohereStream(self._send(body, ctx, stream=True), body, self.label)


# ---------------------------------------------------------------------------------------------
# Request: OpenAI chat -> Cohere v2 chat.


def _text(content: object) -> str:
    return content_text(content, sep="")


def _user_content(content: object) -> str | list[dict]:
    """User content: a string, or Cohere content blocks (text and image_url parts)."""
    if not isinstance(content, list):
        return _text(content)
    blocks: list[dict] = []
    for part in content:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            blocks.append({"type": "text", "text": part["text"]})
        elif part.get("type") == "image_url" and isinstance(part.get("image_url"), dict):
            image = {k: v for k, v in part["image_url"].items() if k in ("url", "detail")}
            blocks.append({"type": "image_url", "image_url": image})
    return blocks


def _tool_call(call: object) -> dict | None:
    if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
        return None
    function = call["function"]
    arguments = function.get("arguments")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments if arguments is not None else {})
    return {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": function.get("name") or "", "arguments": arguments},
    }


def _message(message: dict) -> dict:
    role = message.get("role")
    content = message.get("content")
    if role in ("system", "developer"):
        return {"role": "system", "content": _text(content)}
    if role == "assistant":
        calls = [c for c in map(_tool_call, message.get("tool_calls") or ()) if c]
        if calls:
            # Cohere keeps the text that precedes tool calls as the call's plan.
            converted: dict = {"role": "assistant", "tool_calls": calls}
            if _text(content):
                converted["tool_plan"] = _text(content)
            return converted
        return {"role": "assistant", "content": _text(content)}
    if role in ("tool", "function"):
        call_id = message.get("tool_call_id") or message.get("name") or ""
        return {"role": "tool", "tool_call_id": call_id, "content": _text(content)}
    return {"role": "user", "content": _user_content(content)}


def _tools(tools: object, tool_choice: object) -> tuple[list[dict], str | None]:
    """Cohere `tools` and `tool_choice` for OpenAI ones.

    Cohere can only require some tool, not a named one: naming one keeps just that tool and
    requires it.
    """
    converted = []
    for function in function_tools(tools):
        entry = declaration(function)
        converted.append({"type": "function", "function": entry, "strict": function.get("strict")})
    choice = TOOL_CHOICES.get(tool_choice) if isinstance(tool_choice, str) else None
    return narrowed_tools(converted, tool_choice, choice, "REQUIRED")


def _response_format(value: object) -> dict | None:
    """JSON mode; Cohere takes a JSON schema as part of `json_object`."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in ("json_object", "json_schema"):
        return None
    spec = value.get("json_schema") if kind == "json_schema" else None
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if isinstance(schema, dict):
        return {"type": "json_object", "json_schema": schema}
    return {"type": "json_object"}


def to_cohere(body: dict, stream: bool = False) -> dict:
    """The Cohere v2 request for a canonical one; OpenAI fields Cohere has no use for go."""
    payload: dict = {
        "model": body.get("model"),
        "messages": [_message(m) for m in body.get("messages") or () if isinstance(m, dict)],
    }
    if stream:
        payload["stream"] = True
    payload.update(passed_fields({**body, "max_tokens": token_limit(body)}, _FIELDS))
    stop = body.get("stop")
    if isinstance(stop, str):
        payload["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        payload["stop_sequences"] = stop
    response_format = _response_format(body.get("response_format"))
    if response_format:
        payload["response_format"] = response_format
    tools, choice = _tools(body.get("tools"), body.get("tool_choice"))
    if tools:
        # Cohere's strictness is one switch for every tool.
        if any([tool.pop("strict") for tool in tools]):
            payload["strict_tools"] = True
        payload["tools"] = tools
        if choice:
            payload["tool_choice"] = choice
    return payload


# ---------------------------------------------------------------------------------------------
# Answers: Cohere v2 -> OpenAI chat.completion and chat.completion.chunk.


def finish_reason(reason: object, label: str, detail: object = None) -> str:
    """The OpenAI finish reason for Cohere's, or UpstreamError for a failed generation."""
    reason = str(reason or "").upper()
    if reason in FAILED_REASONS:
        text = detail if isinstance(detail, str) and detail else reason.lower()
        raise UpstreamError(f"{label}: the generation failed: {safe_text(text)}")
    return FINISH_REASONS.get(reason, "stop")


def _count(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def to_usage(usage: object, body: dict, completion_text: str) -> dict:
    """OpenAI usage from Cohere's `usage.tokens` (else `billed_units`, else an estimate)."""
    prompt = completion = None
    if isinstance(usage, dict):
        for key in ("tokens", "billed_units"):
            counts = usage.get(key)
            if isinstance(counts, dict):
                prompt = _count(counts.get("input_tokens"))
                completion = _count(counts.get("output_tokens"))
                if prompt is not None and completion is not None:
                    break
    if prompt is None or completion is None:
        prompt, completion = prompt_estimate(body), estimate_tokens(completion_text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _answer_tool_calls(calls: object) -> list[dict]:
    return [c for c in map(_tool_call, calls if isinstance(calls, list) else ()) if c]


@upstream_shape
def to_completion(answer: object, body: dict, label: str) -> dict:
    """The OpenAI chat completion for a Cohere v2 chat answer."""
    if not isinstance(answer, dict) or not isinstance(answer.get("message"), dict):
        raise UpstreamError(f"{label}: the upstream answer is not a chat answer")
    message = answer["message"]
    reason = finish_reason(answer.get("finish_reason"), label, answer.get("error_message"))
    content = message.get("content")
    text = "".join(
        part["text"]
        for part in (content if isinstance(content, list) else ())
        if isinstance(part, dict)
        and part.get("type", "text") == "text"
        and isinstance(part.get("text"), str)
    )
    if isinstance(content, str):
        text = content
    calls = _answer_tool_calls(message.get("tool_calls"))
    reply: dict = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return chat_completion(
        [completion_choice(reply, reason)],
        model=body.get("model") or "",
        usage=to_usage(answer.get("usage"), body, text),
        id=answer.get("id"),
    )


class CohereStream(CountingStream):
    """OpenAI chunks from Cohere's v2 SSE events, each written as soon as it is read."""

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        if self.answered_whole():
            yield from self._replayed(to_completion(self.whole_answer(), self.body, self.label))
            return
        started = ended = False
        for name, payload in self.events(_stream_failure):
            kind = payload.get("type") or name
            if ended:
                continue
            if not started:
                started = True
                if kind == "message-start" and payload.get("id"):
                    self.id = str(payload["id"])
                yield self._chunk({"role": "assistant", "content": ""})
            delta = payload.get("delta") if isinstance(payload.get("delta"), dict) else {}
            message = delta.get("message") if isinstance(delta.get("message"), dict) else {}
            if kind in ("content-start", "content-delta"):
                text = (message.get("content") or {}).get("text")
                if isinstance(text, str) and text:
                    self.texts.append(text)
                    yield self._chunk({"content": text})
            elif kind == "tool-call-start":
                yield self._chunk({"tool_calls": [self._tool_start(payload, message)]})
            elif kind == "tool-call-delta":
                arguments = ((message.get("tool_calls") or {}).get("function") or {}).get(
                    "arguments"
                )
                if isinstance(arguments, str) and arguments:
                    index = self.tool_index.get(
                        payload.get("index"), max(self.tool_index.values(), default=0)
                    )
                    yield self._chunk(
                        {"tool_calls": [{"index": index, "function": {"arguments": arguments}}]}
                    )
            elif kind == "message-end":
                ended = True
                reason = finish_reason(delta.get("finish_reason"), self.label, delta.get("error"))
                usage = to_usage(delta.get("usage"), self.body, "".join(self.texts))
                yield from self._ending(reason, usage)
        if not ended:
            raise UpstreamError(f"{self.label}: the stream ended before the answer was complete")

    def _tool_start(self, payload: dict, message: dict) -> dict:
        call = message.get("tool_calls")
        call = call[0] if isinstance(call, list) and call else call
        call = call if isinstance(call, dict) else {}
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        index = len(self.tool_index)
        self.tool_index[payload.get("index", index)] = index
        arguments = function.get("arguments")
        return {
            "index": index,
            "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {
                "name": function.get("name") or "",
                "arguments": arguments if isinstance(arguments, str) else "",
            },
        }


def _stream_failure(event: Event) -> str | None:
    """The message of an in-band error: an `error` event, or an untyped payload with `error`."""
    kind = event.data.get("type") or event.name
    if kind == "error" or ("error" in event.data and kind is None):
        return _error_text(event.data)
    return None


def _error_text(payload: dict) -> str:
    error = payload.get("error")
    if isinstance(error, dict):
        error = error.get("message")
    message = error if isinstance(error, str) and error else payload.get("message")
    return message if isinstance(message, str) and message else "unknown error"
