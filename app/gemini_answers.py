"""The Gemini surface's answers: canonical chat completions and chunks as Gemini's
`GenerateContentResponse`s, whole or streamed (SSE events or a JSON array that grows)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from .errors import ProxyError, UpstreamError, upstream_shape
from .providers.shapes import arguments_object
from .redact import REDACTOR
from .streaming import utf8_json
from .tokens import estimate_tokens

FINISH_REASONS = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "function_call": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
}


def finish_reason(reason: object) -> str:
    """Gemini's finish reason for a canonical one (an unknown one is OTHER)."""
    return FINISH_REASONS.get(str(reason), "OTHER")


def function_call(call: dict) -> dict:
    """A canonical tool call as Gemini's `functionCall`, its arguments as an object."""
    function = call.get("function") or {}
    raw = function.get("arguments")
    args = arguments_object(raw)
    if args is None:
        # Not a JSON object: kept whole rather than lost.
        args = {"arguments": raw}
    result: dict = {"name": str(function.get("name") or ""), "args": args}
    if isinstance(call.get("id"), str) and call["id"]:
        result["id"] = call["id"]
    return result


def usage_metadata(usage: object) -> dict | None:
    """Gemini's `usageMetadata` for canonical usage (reasoning tokens as thoughts)."""
    if not isinstance(usage, dict) or not isinstance(usage.get("prompt_tokens"), int):
        return None
    prompt = usage["prompt_tokens"]
    completion = (
        usage.get("completion_tokens") if isinstance(usage.get("completion_tokens"), int) else 0
    )
    details = usage.get("completion_tokens_details")
    thoughts = details.get("reasoning_tokens") if isinstance(details, dict) else None
    thoughts = thoughts if isinstance(thoughts, int) and 0 < thoughts <= completion else 0
    meta = {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion - thoughts,
        "totalTokenCount": prompt + completion,
    }
    if thoughts:
        meta["thoughtsTokenCount"] = thoughts
    cached = usage.get("prompt_tokens_details")
    if isinstance(cached, dict) and isinstance(cached.get("cached_tokens"), int):
        meta["cachedContentTokenCount"] = cached["cached_tokens"]
    return meta


def estimated_usage(prompt: int, text: str) -> dict:
    completion = estimate_tokens(text)
    return {
        "promptTokenCount": prompt,
        "candidatesTokenCount": completion,
        "totalTokenCount": prompt + completion,
    }


def response_id(completion_id: object) -> str:
    text = str(completion_id or "")
    return text.removeprefix("chatcmpl-") or uuid.uuid4().hex


def reasoning(source: dict) -> str | None:
    """An upstream's reasoning text in a message or delta (`reasoning_content`, `reasoning`)."""
    for key in ("reasoning_content", "reasoning"):
        if isinstance(source.get(key), str) and source[key]:
            return source[key]
    return None


@upstream_shape
def to_response(completion: dict, model: str, prompt_estimate: int, thoughts: bool = False) -> dict:
    """The GenerateContentResponse for a whole canonical chat completion; with `thoughts`,
    the upstream's reasoning comes first as a thought part."""
    candidates = []
    texts: list[str] = []
    for position, choice in enumerate(completion.get("choices") or []):
        message = choice.get("message") or {}
        parts: list[dict] = []
        thought = reasoning(message) if thoughts else None
        if thought:
            parts.append({"text": thought, "thought": True})
        content = message.get("content")
        if isinstance(content, list):
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not content and isinstance(message.get("refusal"), str):
            # Gemini has no refusal of its own: the model's words are its answer's text.
            content = message["refusal"]
        if isinstance(content, str) and content:
            parts.append({"text": content})
            texts.append(content)
        for call in message.get("tool_calls") or []:
            parts.append({"functionCall": function_call(call)})
        if not parts:
            parts.append({"text": ""})
        candidate: dict = {"content": {"role": "model", "parts": parts}, "index": position}
        candidate["index"] = choice.get("index", position)
        if choice.get("finish_reason"):
            candidate["finishReason"] = finish_reason(choice["finish_reason"])
        candidates.append(candidate)
    meta = usage_metadata(completion.get("usage")) or estimated_usage(
        prompt_estimate, "".join(texts)
    )
    return {
        "candidates": candidates,
        "usageMetadata": meta,
        "modelVersion": str(completion.get("model") or model),
        "responseId": response_id(completion.get("id")),
    }


def response_text(response: dict) -> str:
    """The text of a GenerateContentResponse's candidates (thoughts left out)."""
    texts = []
    for candidate in response.get("candidates") or []:
        if not isinstance(candidate, dict):
            continue
        content = candidate.get("content")
        for part in (content.get("parts") if isinstance(content, dict) else None) or []:
            if (
                isinstance(part, dict)
                and isinstance(part.get("text"), str)
                and not part.get("thought")
            ):
                texts.append(part["text"])
    return "".join(texts)


@dataclass
class _Call:
    """A streamed tool call being put together: sent whole once its arguments are complete."""

    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def whole(self) -> dict:
        return {
            "id": self.id,
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


class ChunkWriter:
    """Canonical chunks in, streamed GenerateContentResponses out.

    Text is sent as it comes. A function call is sent whole, with its arguments as an object,
    when its choice finishes. The finishing response waits for the usage chunk that follows
    it, so usageMetadata rides on the last response as Gemini sends it.
    """

    def __init__(self, model: str, prompt_estimate: int, thoughts: bool = False) -> None:
        self.model = model
        self.thoughts = thoughts  # the upstream's reasoning sent as thought parts
        self.prompt_estimate = prompt_estimate
        self.id = ""
        self.calls: dict[int, dict[int, _Call]] = {}  # choice -> tool call index -> call
        self.held: list[dict] = []  # finishing candidates, until the usage comes
        self.finished = False
        self.usage: dict | None = None
        self.text: list[str] = []

    def _response(self, candidates: list[dict]) -> dict:
        return {
            "candidates": candidates,
            "modelVersion": self.model,
            "responseId": self.id,
        }

    @upstream_shape
    def feed(self, chunk: dict) -> Iterator[dict]:
        if not self.id:
            self.id = response_id(chunk.get("id"))
        if chunk.get("model"):
            self.model = str(chunk["model"])
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            yield from self._choice(choice)

    def _choice(self, choice: dict) -> Iterator[dict]:
        index = choice.get("index", 0)
        delta = choice.get("delta") or {}
        thought = reasoning(delta) if self.thoughts else None
        if thought:
            yield from self._release()
            yield self._response([_candidate(index, [{"text": thought, "thought": True}])])
        text = delta.get("content") or delta.get("refusal")  # a refusal is said as text
        if isinstance(text, str) and text:
            yield from self._release()
            self.text.append(text)
            yield self._response([_candidate(index, [{"text": text}])])
        for call in delta.get("tool_calls") or ():
            pending = self.calls.setdefault(index, {}).setdefault(call.get("index", 0), _Call())
            function = call.get("function") or {}
            pending.id = pending.id or str(call.get("id") or "")
            pending.name = pending.name or str(function.get("name") or "")
            if isinstance(function.get("arguments"), str):
                pending.arguments.append(function["arguments"])
        if choice.get("finish_reason"):
            calls = self.calls.pop(index, {})
            parts = [{"functionCall": function_call(c.whole())} for _, c in sorted(calls.items())]
            # An empty text part, as Gemini ends a text stream: the SDK's `.text` of the last
            # response is then "" rather than None.
            candidate = _candidate(index, parts or [{"text": ""}])
            candidate["finishReason"] = finish_reason(choice["finish_reason"])
            self.finished = True
            self.held.append(candidate)

    def _release(self) -> Iterator[dict]:
        if self.held:
            held, self.held = self.held, []
            yield self._response(held)

    def finish(self) -> Iterator[dict]:
        """The last response, with usageMetadata; a stream that never finished is cut."""
        if not self.finished:
            raise UpstreamError("The upstream stream ended before its answer was complete.")
        meta = usage_metadata(self.usage) or estimated_usage(
            self.prompt_estimate, "".join(self.text)
        )
        last = self._response(self.held)
        self.held = []
        last["usageMetadata"] = meta
        yield last


def _candidate(index: int, parts: list[dict]) -> dict:
    return {"content": {"role": "model", "parts": parts}, "index": index}


def canonical_responses(chunks: Iterable[dict], writer: ChunkWriter, tally) -> Iterator[dict]:
    """GenerateContentResponses for canonical chunks; the tally hears usage and text."""
    for chunk in chunks:
        if chunk.get("usage"):
            tally.usage = chunk["usage"]
        yield from writer.feed(chunk)
        tally.texts = writer.text
    yield from writer.finish()


def canonical_usage(meta: object) -> dict | None:
    """Canonical usage for Gemini's `usageMetadata` (thoughts count as completion)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("promptTokenCount"), int):
        return None
    counts = [meta.get(key) for key in ("candidatesTokenCount", "thoughtsTokenCount")]
    completion = sum(count for count in counts if isinstance(count, int))
    return {"prompt_tokens": meta["promptTokenCount"], "completion_tokens": completion}


def native_responses(items: Iterable, tally) -> Iterator[dict]:
    """A google deployment's own responses, relayed; usage and text noted for charging."""
    texts: list[str] = []
    for response in items:
        payload = response.data
        tally.usage = canonical_usage(payload.get("usageMetadata")) or tally.usage
        texts.append(response_text(payload))
        tally.texts = texts
        yield payload


# ---------------------------------------------------------------------------------------------
# The two stream encodings.


def _dumps(payload: dict) -> str:
    return utf8_json(payload)


class SseEncoding:
    """`?alt=sse`: each response a `data:` event; an error is the last event."""

    content_type = "text/event-stream"

    def write(self, responses: Iterable[dict]) -> Iterator[bytes]:
        for response in responses:
            yield f"data: {_dumps(response)}\r\n\r\n".encode()

    def error(self, err: ProxyError) -> bytes:
        return f"data: {_dumps(REDACTOR.scrub_answer(err.gemini_body()))}\r\n\r\n".encode()


class ArrayEncoding:
    """Without `alt=sse`: one JSON array written as it grows (`[`, elements split by `,`, `]`);
    an error is its last element, and the array is still closed."""

    content_type = "application/json"

    def __init__(self) -> None:
        self.opened = False

    def _element(self, payload: dict) -> bytes:
        lead = "\r\n," if self.opened else "["
        self.opened = True
        return f"{lead}{_dumps(payload)}".encode()

    def write(self, responses: Iterable[dict]) -> Iterator[bytes]:
        for response in responses:
            yield self._element(response)
        yield b"]" if self.opened else b"[]"

    def error(self, err: ProxyError) -> bytes:
        return self._element(REDACTOR.scrub_answer(err.gemini_body())) + b"]"
