"""The Gemini API (`generateContent`, `streamGenerateContent?alt=sse`) behind the canonical form.

Requests go out in Gemini's wire format with the key in `x-goog-api-key`; answers and stream
events come back as OpenAI chat completions and chunks.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import requests

from ..errors import (
    InvalidRequestError,
    UpstreamClientError,
    UpstreamError,
    upstream_shape,
)
from ..kinds import FAILED_FINISHES
from ..model_ids import IdForm, path_part
from ..providers import http
from ..providers.base import CallContext, ChatStream, Provider, chat_completion, completion_choice

# SKIP_SIGNATURE and to_gemini are part of this adapter's interface: re-exported.
from ..providers.google_request import SKIP_SIGNATURE as SKIP_SIGNATURE
from ..providers.google_request import to_gemini
from ..tokens import estimate_tokens
from ..upstream import error_message, read_json, safe_text

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
# Resource names Google takes in place of a bare model id (`models/x`, `tunedModels/x`).
RESOURCE_COLLECTIONS = ("models", "tunedModels")

FINISH_REASONS = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter",
    "IMAGE_RECITATION": "content_filter",
}

# Gemini answers a bad or expired key, and a region it does not serve, with 400: that is this
# deployment failing, not the client's request, so routing should move on.
_KEY_REFUSED_RE = re.compile(r"\bAPI[ _]?key\b", re.IGNORECASE)
_REGION_REFUSED_RE = re.compile(r"location is not supported", re.IGNORECASE)
# What a Go-style `url` or an OpenAI-compatible root may end with beyond the API root.
_ROOT_SUFFIX_RE = re.compile(
    r"(/models/[^/]+:[A-Za-z]+|/models|/openai/chat/completions|/chat/completions|/openai)$"
)


def api_root(url: str) -> str:
    """The Gemini API root of a configured URL (see `app.providers.http.api_root`)."""
    return http.api_root(url, _ROOT_SUFFIX_RE, GoogleProvider.api_path)


class GoogleProvider(Provider):
    name = "google"
    model_id_form = IdForm.SEGMENT  # {root}/models/<id>:generateContent
    # `.../v1beta/models` (Go), the OpenAI-compatible root, or google-genai's unversioned root.
    endpoint_suffixes = _ROOT_SUFFIX_RE
    api_path = "/v1beta"
    fallback_root = DEFAULT_BASE_URL

    def check_upstream_id(self, model_id: str) -> str:
        self.model_path(model_id)
        return model_id

    def model_path(self, model_id: str) -> str:
        """`models/<id>` for a bare id; `models/x` and `tunedModels/x` are full resource names.
        The id itself is one checked, encoded path segment."""
        collection, slash, rest = model_id.partition("/")
        if slash and collection in RESOURCE_COLLECTIONS:
            return f"{collection}/{path_part(rest, IdForm.SEGMENT)}"
        return f"models/{path_part(model_id, IdForm.SEGMENT)}"

    def endpoint(self, model: str, method: str) -> str:
        return f"{self.base_url}/{self.model_path(model)}:{method}"

    def auth_headers(self, ctx: CallContext) -> dict[str, str]:
        return {"x-goog-api-key": self.model.token} if self.model.token else {}

    def _send(self, body: dict, ctx: CallContext, stream: bool) -> requests.Response:
        model = str(body.get("model") or self.model.upstream_model())
        return self._call(model, to_gemini(body), ctx, stream)

    def _call(
        self, model: str, payload: dict, ctx: CallContext, stream: bool, method: str | None = None
    ) -> requests.Response:
        """POST a Gemini request for `model` (generateContent, its SSE stream, or `method`)."""
        method = method or ("streamGenerateContent" if stream else "generateContent")
        params = {"alt": "sse"} if stream else None
        try:
            return self.post(
                self.endpoint(model, method), payload, ctx, stream=stream, params=params
            )
        except UpstreamClientError as err:
            if _KEY_REFUSED_RE.search(err.message):
                raise UpstreamError(
                    f"{self.label}: the provider refused the proxy's credentials ({err.status})"
                ) from err
            if _REGION_REFUSED_RE.search(err.message):
                raise UpstreamError(
                    f"{self.label}: the provider does not serve the proxy's location"
                ) from err
            raise

    def chat(self, body: dict, ctx: CallContext) -> dict:
        answer = read_json(self._send(body, ctx, stream=False), self.label)
        return to_completion(answer, str(body.get("model") or ""), self.label)

    def open_chat_stream(self, body: dict, ctx: CallContext) -> ChatStream:
        response = self._send(body, ctx, stream=True)
        return GeminiStream(response, self.label, str(body.get("model") or ""))

    # The Gemini surface's requests, passed through as the client wrote them.
    native_gemini: ClassVar[bool] = True

    def generate_content(self, model: str, body: dict, ctx: CallContext) -> dict:
        """A GenerateContentRequest answered by this deployment, untranslated."""
        return _check_answer(read_json(self._call(model, body, ctx, False), self.label), self.label)

    def open_generate_stream(self, model: str, body: dict, ctx: CallContext) -> ChatStream:
        """streamGenerateContent?alt=sse: iterate for each GenerateContentResponse as it comes."""
        return NativeGeminiStream(self._call(model, body, ctx, True), self.label, model)

    def count_gemini_tokens(self, model: str, body: dict, ctx: CallContext) -> int:
        """The deployment's own countTokens for a Gemini countTokens body."""
        inner = body.get("generateContentRequest")
        if isinstance(inner, dict):
            # The inner request names the model it is counted for: this deployment's.
            body = {**body, "generateContentRequest": {**inner, "model": self.model_path(model)}}
        answer = read_json(self._call(model, body, ctx, False, "countTokens"), self.label)
        tokens = answer.get("totalTokens") if isinstance(answer, dict) else None
        if not isinstance(tokens, int):
            raise UpstreamError(f"{self.label}: the upstream token count is not a number")
        return tokens

    def embed(self, body: dict, ctx: CallContext) -> dict:
        """OpenAI embeddings through `batchEmbedContents`, one request per input."""
        model = str(body.get("model") or self.model.upstream_model())
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        if not all(isinstance(text, str) for text in inputs):
            raise InvalidRequestError("Gemini embeds text only, not token ids.", param="input")
        resource = model if "/" in model else f"models/{model}"
        requests_ = []
        for text in inputs:
            request: dict = {"model": resource, "content": {"parts": [{"text": text}]}}
            if body.get("dimensions"):
                request["outputDimensionality"] = body["dimensions"]
            requests_.append(request)
        url = self.endpoint(model, "batchEmbedContents")
        answer = self.post_json(url, {"requests": requests_}, ctx)
        embeddings = answer.get("embeddings") if isinstance(answer, dict) else None
        if not isinstance(embeddings, list) or len(embeddings) != len(inputs):
            raise UpstreamError(f"{self.label}: the upstream answer is not an embedding list")
        base64_wanted = body.get("encoding_format") == "base64"
        data = []
        for index, item in enumerate(embeddings):
            values = item.get("values") if isinstance(item, dict) else None
            if not isinstance(values, list):
                raise UpstreamError(f"{self.label}: an embedding has no values")
            data.append(
                {
                    "object": "embedding",
                    "index": index,
                    "embedding": encode_floats(values) if base64_wanted else values,
                }
            )
        prompt = sum(estimate_tokens(text) for text in inputs)
        return {
            "object": "list",
            "data": data,
            "model": model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }


# ---------------------------------------------------------------------------------------------
# GenerateContentResponse -> OpenAI chat completion.


def finish_reason(reason: object, called_tools: bool) -> str:
    """OpenAI's finish reason for Gemini's; a stop after function calls is `tool_calls`.

    A reason OpenAI has no word for (`MALFORMED_FUNCTION_CALL`, `LANGUAGE`, ...) is an answer
    that did not end well: it is passed on in lower case (one of FAILED_FINISHES), never as
    `stop`, so that neither a client nor the response cache takes it for a complete answer; a
    reason this version does not know is `other`. None given (or unspecified) is a stop.
    """
    text = "" if reason is None else str(reason)
    if text in ("", "FINISH_REASON_UNSPECIFIED"):
        mapped = "stop"
    elif text in FINISH_REASONS:
        mapped = FINISH_REASONS[text]
    else:
        mapped = text.lower() if text.lower() in FAILED_FINISHES else "other"
    return "tool_calls" if called_tools and mapped == "stop" else mapped


def usage(meta: object) -> dict | None:
    """OpenAI usage from `usageMetadata`; thinking tokens count as completion tokens."""
    if not isinstance(meta, dict):
        return None

    def count(key: str) -> int:
        value = meta.get(key)
        return value if isinstance(value, int) else 0

    prompt = count("promptTokenCount") + count("toolUsePromptTokenCount")
    thoughts = count("thoughtsTokenCount")
    completion = count("candidatesTokenCount") + thoughts
    result: dict = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": count("totalTokenCount") or prompt + completion,
    }
    if count("cachedContentTokenCount"):
        result["prompt_tokens_details"] = {"cached_tokens": count("cachedContentTokenCount")}
    if thoughts:
        result["completion_tokens_details"] = {"reasoning_tokens": thoughts}
    return result


def _answer_parts(candidate: dict) -> Iterator[dict]:
    """The parts that are the answer: thought summaries are not."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    for part in parts if isinstance(parts, list) else ():
        if isinstance(part, dict) and not part.get("thought"):
            yield part


def _tool_call(part: dict) -> dict:
    call = part["functionCall"]
    call_id = call.get("id")
    tool_call: dict = {
        "id": call_id if isinstance(call_id, str) and call_id else f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {
            "name": str(call.get("name") or ""),
            "arguments": json.dumps(call.get("args") or {}),
        },
    }
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        # Where Gemini's own OpenAI endpoint puts it; clients replay it with the history.
        tool_call["extra_content"] = {"google": {"thought_signature": signature}}
    return tool_call


def _is_call(part: dict) -> bool:
    return isinstance(part.get("functionCall"), dict)


def _response_id(answer: dict) -> str:
    response_id = answer.get("responseId")
    return f"chatcmpl-{response_id}" if response_id else f"chatcmpl-{uuid.uuid4().hex}"


def _check_answer(answer: object, label: str) -> dict:
    if isinstance(answer, list) and len(answer) == 1:
        answer = answer[0]
    if not isinstance(answer, dict):
        raise UpstreamError(f"{label}: the upstream answer is not a Gemini response")
    if "error" in answer and "candidates" not in answer:
        message = error_message(answer)[0] or "unknown"
        raise UpstreamError(f"{label}: the upstream failed: {safe_text(message)}")
    if not isinstance(answer.get("candidates"), list) and not _block_reason(answer):
        raise UpstreamError(f"{label}: the upstream answer is not a Gemini response")
    return answer


def _error_of(payload: dict) -> str | None:
    """The message of an in-band error (an `error` without candidates), else None."""
    if "error" in payload and "candidates" not in payload:
        return error_message(payload)[0] or "unknown error"
    return None


def _block_reason(answer: dict) -> str | None:
    feedback = answer.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    return str(reason) if reason else None


@upstream_shape
def to_completion(answer: object, model: str, label: str) -> dict:
    """The chat completion for a whole GenerateContentResponse."""
    answer = _check_answer(answer, label)
    choices = []
    for position, candidate in enumerate(answer.get("candidates") or []):
        if not isinstance(candidate, dict):
            continue
        parts = list(_answer_parts(candidate))
        text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
        calls = [_tool_call(p) for p in parts if _is_call(p)]
        message: dict = {"role": "assistant", "content": text or (None if calls else "")}
        if calls:
            message["tool_calls"] = calls
        reason = finish_reason(candidate.get("finishReason"), bool(calls))
        choices.append(completion_choice(message, reason, candidate.get("index", position)))
    if not choices:
        if not _block_reason(answer):
            raise UpstreamError(f"{label}: the upstream answered without a candidate")
        # The prompt itself was blocked: an empty, filtered answer, as OpenAI reports one.
        choices.append(completion_choice({"role": "assistant", "content": ""}, "content_filter"))
    return chat_completion(
        choices,
        model=answer.get("modelVersion") or model,
        usage=usage(answer.get("usageMetadata")),
        id=_response_id(answer),
    )


# ---------------------------------------------------------------------------------------------
# streamGenerateContent?alt=sse -> OpenAI chunks.


@dataclass
class _Choice:
    calls: int = 0
    finished: bool = False


class GeminiStream(ChatStream):
    """Chunks from Gemini's SSE stream: each event is a partial GenerateContentResponse."""

    def __init__(self, response: requests.Response, label: str, model: str) -> None:
        super().__init__(response, label, model)
        self.id: str | None = None  # the first event's `responseId`
        self.choices: dict[int, _Choice] = {}
        self.usage: dict | None = None

    def _events(self) -> Iterator[object]:
        if self.answered_whole():
            # An upstream that ignored alt=sse answers a JSON array of the same responses.
            answer = self.whole_answer()
            yield from answer if isinstance(answer, list) else [answer]
            return
        # Errors may come wrapped in a one-element list, as Google's error bodies do.
        for event in self.events(lambda event: _error_of(event.data), done=None, lists=True):
            yield event.data

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        for payload in self._events():
            yield from self._translate(payload)
        if not self.choices:
            return
        if not all(choice.finished for choice in self.choices.values()):
            raise UpstreamError(f"{self.label}: the stream ended before the answer was complete")
        if self.usage:
            yield {**self._base(), "choices": [], "usage": self.usage}

    def _base(self) -> dict:
        return {
            "id": self.id or f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
        }

    def _chunk(self, index: int, delta: dict, finish: str | None = None) -> dict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {**self._base(), "choices": [choice]}

    def _translate(self, payload: object) -> Iterable[dict]:
        if not isinstance(payload, dict):
            raise UpstreamError(f"{self.label}: the stream sent an unexpected event")
        message = _error_of(payload)
        if message is not None:
            raise UpstreamError(f"{self.label}: the stream failed: {safe_text(message)}")
        if self.id is None:
            self.id = _response_id(payload)
        self.model = payload.get("modelVersion") or self.model
        self.usage = usage(payload.get("usageMetadata")) or self.usage
        if self.usage and self.prompt_tokens is None:
            self.prompt_tokens = self.usage.get("prompt_tokens")
        candidates = payload.get("candidates")
        if not isinstance(candidates, list) or not candidates:
            if _block_reason(payload) and not self.choices:
                yield from self._start(0)
                self.choices[0].finished = True
                yield self._chunk(0, {}, "content_filter")
            return
        for position, candidate in enumerate(candidates):
            if not isinstance(candidate, dict):
                continue
            index = candidate.get("index", position)
            yield from self._start(index)
            state = self.choices[index]
            parts = list(_answer_parts(candidate))
            text = "".join(p["text"] for p in parts if isinstance(p.get("text"), str))
            if text:
                yield self._chunk(index, {"content": text})
            for part in parts:
                if _is_call(part):
                    # Gemini sends each call whole: one delta carries all of its arguments.
                    yield self._chunk(
                        index, {"tool_calls": [{"index": state.calls, **_tool_call(part)}]}
                    )
                    state.calls += 1
            if candidate.get("finishReason"):
                state.finished = True
                reason = finish_reason(candidate["finishReason"], state.calls > 0)
                yield self._chunk(index, {}, reason)

    def _start(self, index: int) -> Iterable[dict]:
        if index not in self.choices:
            self.choices[index] = _Choice()
            yield self._chunk(index, {"role": "assistant", "content": ""})


class NativeGeminiStream(ChatStream):
    """A google deployment's own stream events (GenerateContentResponses), relayed as they are.

    Each is wrapped in a `Native`, so a primed stream takes the first one as the answer's
    start; an in-band error is a retryable failure; a stream that ends before a candidate
    finished was cut.
    """

    @upstream_shape
    def __iter__(self) -> Iterator[Native]:
        if self.answered_whole():
            answer = self.whole_answer()
            events = answer if isinstance(answer, list) else [answer]
        else:
            events = (
                e.data for e in self.events(lambda e: _error_of(e.data), done=None, lists=True)
            )
        finished = False
        for payload in events:
            if not isinstance(payload, dict):
                raise UpstreamError(f"{self.label}: the stream sent an unexpected event")
            message = _error_of(payload)
            if message is not None:
                raise UpstreamError(f"{self.label}: the stream failed: {safe_text(message)}")
            candidates = payload.get("candidates")
            if isinstance(candidates, list) and any(
                isinstance(c, dict) and c.get("finishReason") for c in candidates
            ):
                finished = True
            finished = finished or bool(_block_reason(payload))
            meta = payload.get("usageMetadata")
            if isinstance(meta, dict) and isinstance(meta.get("promptTokenCount"), int):
                self.prompt_tokens = meta["promptTokenCount"]
            yield Native(payload)
        if not finished:
            raise UpstreamError(f"{self.label}: the stream ended before the answer was complete")
        self.completed = True


@dataclass(frozen=True)
class Native:
    """One event of a provider's own stream, relayed untranslated."""

    data: dict


def encode_floats(values: list) -> str:
    """An embedding as OpenAI's base64 encoding: little-endian float32, base64."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
