"""Cloudflare Workers AI's native run endpoint (`POST {account}/ai/run/{model}`), streams too.

Older models answer in the native shape (`result.response`, `result.tool_calls`); newer ones answer
OpenAI-shaped `choices` on the same endpoint. Both come back as canonical OpenAI chat.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator

import requests

from ..config import ModelConfig
from ..content import content_text
from ..errors import InvalidRequestError, UpstreamError, upstream_shape
from ..images import MAX_IMAGE_BYTES, entries_from_json, entry_from_bytes
from ..model_ids import IdForm
from ..providers.base import (
    CallContext,
    CountingStream,
    Provider,
    chat_completion,
    completion_choice,
)
from ..providers.shapes import function_tools, narrowed_tools, passed_fields, token_limit
from ..tokens import estimate_tokens, prompt_estimate
from ..upstream import read_bytes, read_json, safe_text

RUN_PATH = "/run/"
BASE_URL_FORM = "https://api.cloudflare.com/client/v4/accounts/<ACCOUNT_ID>/ai"
# A configured root may name the OpenAI-compatible endpoint of the same account instead.
_ROOT_SUFFIXES = ("/v1/chat/completions", "/v1", "/run")
_ACCOUNT_RE = re.compile(r"/accounts/[^/]+$")
# OpenAI fields with the same name and meaning in the run endpoint's input schema.
_SAME_FIELDS = {
    name: name
    for name in (
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "frequency_penalty",
        "presence_penalty",
        "repetition_penalty",
    )
}
FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "model_length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


class CloudflareProvider(Provider):
    name = "cloudflare"
    model_id_form = IdForm.SEGMENTS  # /ai/run/@cf/<org>/<name>, slashes and `@` as documented
    endpoint_suffixes = _ROOT_SUFFIXES

    def endpoint(self, upstream_model: str) -> str:
        """A Go-style `url` naming `/ai/run/<model>` is used as is; else `{root}/run/{model}`."""
        if self.model.url and not self.model.base_url and "/ai/run/" in self.model.url:
            return self.model.url
        root = self.base_url
        if _ACCOUNT_RE.search(root):
            # The account's own URL, as the API reference writes it: its `/ai` is implied.
            root += "/ai"
        return root + RUN_PATH + self.model_path(upstream_model)

    def _send(self, body: dict, ctx: CallContext, stream: bool) -> requests.Response:
        url = self.endpoint(str(body.get("model") or ""))
        return self.post(url, to_workers_ai(body, stream=stream), ctx, stream=stream)

    def chat(self, body: dict, ctx: CallContext) -> dict:
        envelope = read_json(self._send(body, ctx, stream=False), self.label)
        return to_completion(envelope, body, self.label)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> WorkersAIStream:
        return WorkersAIStream(self._send(body, ctx, stream=True), body, self.label)

    def generate_image(self, body: dict, ctx: CallContext) -> list[dict]:
        """Workers AI text-to-image (flux and kin): {"prompt"} in, `result.image` or bytes out."""
        payload: dict = {"prompt": body["prompt"]}
        width, _, height = str(body.get("size") or "").partition("x")
        if width.isdigit() and height.isdigit():
            payload.update(width=int(width), height=int(height))
        # One image per call: Workers AI has no `n`.
        return [self._one_image(payload, body, ctx) for _ in range(int(body.get("n") or 1))]

    def _one_image(self, payload: dict, body: dict, ctx: CallContext) -> dict:
        url = self.endpoint(str(body.get("model") or ""))
        headers = {**self.headers(ctx), "Accept": "application/json, image/*"}
        response = self.post(url, payload, ctx, headers=headers)
        if response.headers.get("Content-Type", "").startswith("image/"):
            # Stable Diffusion models answer with the PNG itself.
            return entry_from_bytes(read_bytes(response, self.label, MAX_IMAGE_BYTES), self.label)
        envelope = read_json(response, self.label)
        if isinstance(envelope, dict):
            _raise_failure(envelope, self.label)
        return entries_from_json(envelope, self.label)[0]

    def embed(self, body: dict, ctx: CallContext) -> dict:
        """Workers AI embeddings (bge and kin): {"text": [...]} in, `result.data` out."""
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not all(isinstance(text, str) for text in inputs):
            raise InvalidRequestError("Workers AI embeds text only, not token ids.", param="input")
        url = self.endpoint(str(body.get("model") or ""))
        envelope = self.post_json(url, {"text": inputs}, ctx)
        if isinstance(envelope, dict):
            _raise_failure(envelope, self.label)
        result = envelope.get("result") if isinstance(envelope, dict) else None
        vectors = result.get("data") if isinstance(result, dict) else None
        if not isinstance(vectors, list) or len(vectors) != len(inputs):
            raise UpstreamError(f"{self.label}: the upstream answer is not an embedding list")
        prompt = sum(estimate_tokens(text) for text in inputs)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)
            ],
            "model": str(body.get("model") or ""),
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }

    @classmethod
    def check(cls, model: ModelConfig, default_base_url: str | None) -> list[str]:
        if model.base_url or model.url or default_base_url:
            return []
        return [f"base_url: required for provider 'cloudflare': {BASE_URL_FORM} (or give url)"]


# ---------------------------------------------------------------------------------------------
# Request: OpenAI chat -> Workers AI run input.


def _text(content: object) -> str:
    """Message content as the string every text model takes: text parts joined by newlines."""
    return content_text(content, sep="\n")


def _arguments(value: object) -> str:
    """Tool call arguments as the JSON string OpenAI clients expect (some models send objects)."""
    if isinstance(value, str):
        return value
    return json.dumps(value if value is not None else {})


def _tool_call(call: object) -> dict | None:
    """An OpenAI tool call from either the OpenAI shape or the native flat `{name, arguments}`."""
    if not isinstance(call, dict):
        return None
    function = call.get("function") if isinstance(call.get("function"), dict) else call
    name = function.get("name")
    if not name:
        return None
    return {
        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": _arguments(function.get("arguments"))},
    }


def _message(message: dict) -> dict:
    role = message.get("role")
    role = {"developer": "system", "function": "tool"}.get(role, role)
    # The older models' schema wants `content` as a string, never null.
    converted: dict = {"role": role, "content": _text(message.get("content"))}
    if role == "assistant":
        calls = [c for c in map(_tool_call, message.get("tool_calls") or ()) if c]
        if calls:
            converted["tool_calls"] = calls
    elif role == "tool":
        if message.get("tool_call_id"):
            converted["tool_call_id"] = message["tool_call_id"]
        if message.get("name"):
            converted["name"] = message["name"]
    return converted


def _tools(tools: object, tool_choice: object) -> tuple[list[dict], str | None]:
    """Tools in the OpenAI shape, which every function-calling model's schema accepts.

    The run endpoint cannot force one named tool: naming one keeps just that tool and requires it,
    as Cloudflare's own AI SDK provider does.
    """
    converted = []
    for function in function_tools(tools):
        # The older models' schema requires a description and `type` and `properties`.
        parameters = dict(function.get("parameters") or {})
        parameters.setdefault("type", "object")
        parameters.setdefault("properties", {})
        converted.append(
            {
                "type": "function",
                "function": {
                    "name": function["name"],
                    "description": function.get("description") or "",
                    "parameters": parameters,
                },
            }
        )
    choice = tool_choice if tool_choice in ("auto", "none", "required") else None
    return narrowed_tools(converted, tool_choice, choice, "required")


def _response_format(value: object) -> dict | None:
    """JSON mode: `json_object`, or `json_schema` with the bare schema (OpenAI nests it)."""
    if not isinstance(value, dict):
        return None
    if value.get("type") == "json_object":
        return {"type": "json_object"}
    if value.get("type") == "json_schema":
        schema = value.get("json_schema")
        if isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            schema = schema["schema"]
        return {"type": "json_schema", "json_schema": schema if isinstance(schema, dict) else {}}
    return None


def to_workers_ai(body: dict, stream: bool = False) -> dict:
    """The run endpoint's input for a canonical request; fields it does not take are dropped."""
    payload: dict = {
        "messages": [_message(m) for m in body.get("messages") or () if isinstance(m, dict)]
    }
    if stream:
        payload["stream"] = True
    payload.update(passed_fields({**body, "max_tokens": token_limit(body)}, _SAME_FIELDS))
    response_format = _response_format(body.get("response_format"))
    if response_format:
        payload["response_format"] = response_format
    tools, choice = _tools(body.get("tools"), body.get("tool_choice"))
    if tools:
        payload["tools"] = tools
        if choice:
            payload["tool_choice"] = choice
    return payload


# ---------------------------------------------------------------------------------------------
# Answers: the `{result, success, errors}` envelope and SSE events -> OpenAI chat.


def failure(payload: dict) -> str | None:
    """The provider's error message when a payload reports a failure, else None."""
    errors = payload.get("errors")
    if payload.get("success") is False or (isinstance(errors, list) and errors):
        first = errors[0] if isinstance(errors, list) and errors else None
        message = first.get("message") if isinstance(first, dict) else first
        return message if isinstance(message, str) and message else "unknown error"
    error = payload.get("error")
    if error and "choices" not in payload and "response" not in payload:
        if isinstance(error, dict):
            error = error.get("message")
        return error if isinstance(error, str) and error else "unknown error"
    return None


def _raise_failure(payload: dict, label: str) -> None:
    message = failure(payload)
    if message is not None:
        raise UpstreamError(f"{label}: the provider reported an error: {safe_text(message)}")


def finish_reason(reason: object, has_tool_calls: bool, label: str) -> str:
    if reason == "error":
        raise UpstreamError(f"{label}: the generation failed")
    mapped = FINISH_REASONS.get(str(reason or ""), "stop")
    return "tool_calls" if has_tool_calls and mapped == "stop" else mapped


def to_usage(usage: object, body: dict, completion_text: str) -> dict:
    """OpenAI usage from the upstream's (same field names), else an estimate."""
    if isinstance(usage, dict):
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        if isinstance(prompt, int | float) and isinstance(completion, int | float):
            counted = {"prompt_tokens": int(prompt), "completion_tokens": int(completion)}
            counted["total_tokens"] = counted["prompt_tokens"] + counted["completion_tokens"]
            if isinstance(usage.get("prompt_tokens_details"), dict):
                counted["prompt_tokens_details"] = usage["prompt_tokens_details"]
            return counted
    prompt, completion = prompt_estimate(body), estimate_tokens(completion_text)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _response_text(value: object) -> str:
    """`result.response`: text, or a JSON value when JSON mode returned one parsed."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value)


@upstream_shape
def to_completion(envelope: object, body: dict, label: str) -> dict:
    """The OpenAI chat completion for a run endpoint answer, native or OpenAI-shaped."""
    if not isinstance(envelope, dict):
        raise UpstreamError(f"{label}: the upstream answer is not a chat answer")
    _raise_failure(envelope, label)
    result = envelope.get("result")
    if not isinstance(result, dict):
        raise UpstreamError(f"{label}: the upstream answer is not a chat answer")
    created = int(time.time())
    if isinstance(result.get("choices"), list) and result["choices"]:
        choices, texts = [], []
        for position, choice in enumerate(result["choices"]):
            choice = choice if isinstance(choice, dict) else {}
            message = dict(choice.get("message") or {})
            calls = [c for c in map(_tool_call, message.get("tool_calls") or ()) if c]
            message.pop("tool_calls", None)
            if calls:
                message["tool_calls"] = calls
            message["role"] = "assistant"
            message.setdefault("content", None)
            if isinstance(message["content"], str):
                texts.append(message["content"])
            reason = finish_reason(choice.get("finish_reason"), bool(calls), label)
            index = choice.get("index", position)
            choices.append(completion_choice(message, reason, index, choice.get("logprobs")))
        return chat_completion(
            choices,
            model=body.get("model") or result.get("model") or "",
            usage=to_usage(result.get("usage"), body, "".join(texts)),
            id=result.get("id"),
            created=result.get("created") or created,
        )
    text = _response_text(result.get("response"))
    calls = [c for c in map(_tool_call, result.get("tool_calls") or ()) if c]
    message: dict = {"role": "assistant", "content": text if text or not calls else None}
    if calls:
        message["tool_calls"] = calls
    reason = finish_reason(result.get("finish_reason"), bool(calls), label)
    return chat_completion(
        [completion_choice(message, reason)],
        model=body.get("model") or "",
        usage=to_usage(result.get("usage"), body, text),
        created=created,
    )


class WorkersAIStream(CountingStream):
    """OpenAI chunks from the run endpoint's SSE events, each written as soon as it is read."""

    last_tool_key: object = None  # the call a piece without index, id or name continues

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        if self.answered_whole():
            # Some models do not stream on the run endpoint and answer whole instead.
            yield from self._replayed(to_completion(self.whole_answer(), self.body, self.label))
            return
        started = False
        reason: object = None
        usage: object = None
        for _name, payload in self.events():
            _raise_failure(payload, self.label)
            if not started:
                started = True
                yield self._chunk({"role": "assistant", "content": ""})
            if isinstance(payload.get("usage"), dict):
                usage = payload["usage"]
            choices = payload.get("choices")
            if isinstance(choices, list):
                # Newer models stream OpenAI-shaped chunks on the run endpoint.
                choice = choices[0] if choices and isinstance(choices[0], dict) else {}
                delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
                text, calls = delta.get("content"), delta.get("tool_calls")
                reason = choice.get("finish_reason") or reason
            else:
                response = payload.get("response")
                text = response if isinstance(response, str) else None
                if response is not None and not isinstance(response, str):
                    text = json.dumps(response)
                calls = payload.get("tool_calls")
                reason = payload.get("finish_reason") or reason
            if isinstance(text, str) and text:
                self.texts.append(text)
                yield self._chunk({"content": text})
            deltas = self._tool_deltas(calls)
            if deltas:
                yield self._chunk({"tool_calls": deltas})
        if not self.completed and reason is None:
            raise UpstreamError(f"{self.label}: the stream ended before the answer was complete")
        if not started:
            yield self._chunk({"role": "assistant", "content": ""})
        finish = finish_reason(reason, bool(self.tool_index), self.label)
        yield from self._ending(finish, to_usage(usage, self.body, "".join(self.texts)))

    def _tool_deltas(self, calls: object) -> list[dict]:
        """OpenAI tool call deltas: a call's first piece has its id and name, later ones
        arguments fragments. Native models may also send each call whole, arguments as JSON."""
        deltas = []
        for call in calls if isinstance(calls, list) else ():
            if not isinstance(call, dict):
                continue
            function = call.get("function") if isinstance(call.get("function"), dict) else None
            source = function if function is not None else call
            name, arguments = source.get("name"), source.get("arguments")
            if not call.get("id") and not name and arguments in (None, ""):
                continue  # the empty piece some models send to close a call
            if arguments is not None and not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            if call.get("index") is not None:
                key = ("index", call["index"])
            elif name or call.get("id"):
                key = ("call", len(self.tool_index))
            else:
                key = self.last_tool_key
            self.last_tool_key = key
            if key not in self.tool_index:
                self.tool_index[key] = len(self.tool_index)
                deltas.append(
                    {
                        "index": self.tool_index[key],
                        "id": call.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                        "type": "function",
                        "function": {"name": name or "", "arguments": arguments or ""},
                    }
                )
            elif arguments:
                deltas.append({"index": self.tool_index[key], "function": {"arguments": arguments}})
        return deltas
