"""Caching for the OpenAI surface: chat completions, legacy completions and embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from ..streaming import DONE, encode_chunk
from .forms import CacheForm, SSEAssembler, cut, loads_object, pieces

# Finish reasons of a complete answer; `length` (truncated) and `content_filter` are not.
COMPLETE_FINISHES = frozenset({"stop", "tool_calls", "function_call"})
# Chunk fields copied to the whole answer and back (the first chunk's value).
ANSWER_FIELDS = ("id", "created", "model", "system_fingerprint", "service_tier")
# Fields that are not the answer's own: its parts, and OpenAI's per-chunk random padding.
NOT_CARRIED = frozenset({"choices", "usage", "object", "obfuscation"})


def answer_head(answer: dict, kind: str) -> dict:
    """What every replayed chunk carries: the answer's fields but its choices and usage,
    vendor ones too (Perplexity's `citations`, Azure's filter results), under `object`."""
    head = {key: value for key, value in answer.items() if key not in NOT_CARRIED}
    head["object"] = kind
    return head


def _choices(answer: object, part: str) -> list[dict] | None:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        return None
    if not all(isinstance(c, dict) and part in c for c in choices):
        return None
    return choices


def complete_choices(answer: object, part: str) -> bool:
    choices = _choices(answer, part)
    return choices is not None and all(c.get("finish_reason") in COMPLETE_FINISHES for c in choices)


def _replayable(message: object) -> bool:
    """Whether a whole answer's message is in the shape a stream is replayed from: text as a
    string (some servers send a list of parts), tool-call arguments as a string."""
    if not isinstance(message, dict) or not isinstance(message.get("content"), str | None):
        return False
    calls = message.get("tool_calls") or []
    if not isinstance(calls, list):
        return False
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("arguments", ""), str):
            return False
    return True


@dataclass
class _Choice:
    """One choice of a chat stream, as its deltas add up."""

    role: str | None = None
    texts: dict[str, list[str]] = field(default_factory=dict)  # content, reasoning, refusal
    others: dict[str, object] = field(default_factory=dict)  # lists extended, the rest kept
    calls: dict[int, dict] = field(default_factory=dict)
    logprobs: list = field(default_factory=list)
    finish: str | None = None

    def add(self, delta: dict) -> None:
        for name, value in delta.items():
            if name == "role":
                self.role = value or self.role
            elif name == "tool_calls":
                for call in value or ():
                    self.add_call(call)
            elif isinstance(value, str):
                self.texts.setdefault(name, []).append(value)
            elif isinstance(value, list):
                self.others.setdefault(name, [])
                self.others[name].extend(value)
            elif isinstance(value, dict):
                self._merge(name, value)
            elif value is not None:
                self.others[name] = value

    def _merge(self, name: str, value: dict) -> None:
        """An object sent in pieces (a legacy `function_call`, `audio`): its text fields add
        up across the deltas (name, arguments, data, transcript); the rest is the latest."""
        held = self.others.get(name)
        if not isinstance(held, dict):
            self.others[name] = dict(value)
            return
        for key, piece in value.items():
            if isinstance(piece, str) and isinstance(held.get(key), str):
                held[key] += piece
            elif piece is not None:
                held[key] = piece

    def add_call(self, call: dict) -> None:
        held = self.calls.setdefault(
            call.get("index", len(self.calls)),
            {"id": None, "type": "function", "function": {"name": "", "arguments": ""}},
        )
        if call.get("id"):
            held["id"] = call["id"]
        if call.get("type"):
            held["type"] = call["type"]
        function = call.get("function") or {}
        if function.get("name"):
            held["function"]["name"] += function["name"]
        if function.get("arguments"):
            held["function"]["arguments"] += function["arguments"]

    def message(self) -> dict:
        message: dict = {"role": self.role or "assistant"}
        message["content"] = "".join(self.texts["content"]) if "content" in self.texts else None
        for name, parts in self.texts.items():
            message.setdefault(name, "".join(parts))
        message.update(self.others)
        if self.calls:
            message["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return message


class _ChoicesAssembler(SSEAssembler):
    """OpenAI-style chunks (`choices`, then `[DONE]`) into the whole answer `OBJECT`: the answer
    fields and usage kept from the chunks, each choice gathered by `add` and written by
    `choices`."""

    OBJECT = ""

    def __init__(self) -> None:
        super().__init__()
        self.head: dict = {}
        self.usage: object = None

    def event(self, name: str | None, data: str) -> bool:
        if data.strip() == "[DONE]":
            return True
        chunk = loads_object(data)
        if "error" in chunk and not chunk.get("choices"):
            self.failed = True
            return False
        for key, value in chunk.items():
            if key in NOT_CARRIED or (key in ANSWER_FIELDS and key in self.head):
                continue
            # A vendor's own field (citations...): its latest value, which holds the rest.
            self.head[key] = value
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            self.add(choice.get("index", 0), choice)
        return False

    def whole(self, usage: object = None) -> dict | None:
        if not self.ended or self.failed:
            return None
        choices = self.choices()
        if not choices:
            return None
        answer = {**self.head, "object": self.OBJECT, "choices": choices}
        if self.usage or usage:
            answer["usage"] = self.usage or usage
        return answer

    def add(self, index: int, choice: dict) -> None:
        raise NotImplementedError

    def choices(self) -> list[dict]:
        raise NotImplementedError


class ChatAssembler(_ChoicesAssembler):
    """OpenAI chat chunks into a `chat.completion`."""

    OBJECT = "chat.completion"

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[int, _Choice] = {}

    def add(self, index: int, choice: dict) -> None:
        held = self.held.setdefault(index, _Choice())
        held.add(choice.get("delta") or {})
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            held.logprobs.extend(logprobs["content"])
        if choice.get("finish_reason"):
            held.finish = choice["finish_reason"]

    def choices(self) -> list[dict]:
        return [
            {
                "index": index,
                "message": held.message(),
                "logprobs": {"content": held.logprobs} if held.logprobs else None,
                "finish_reason": held.finish,
            }
            for index, held in sorted(self.held.items())
        ]


class ChatForm(CacheForm):
    def storable(self, answer: object) -> bool:
        return complete_choices(answer, "message") and all(
            _replayable(choice.get("message")) for choice in answer["choices"]
        )

    def assembler(self) -> ChatAssembler:
        return ChatAssembler()

    def replay(self, answer: dict, call) -> Iterator[bytes]:
        head = answer_head(answer, "chat.completion.chunk")

        def chunk(index: int, delta: dict, finish: str | None = None, logprobs=None) -> bytes:
            choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            return encode_chunk({**head, "choices": [choice]})

        for choice in answer["choices"]:
            index, message = choice.get("index", 0), dict(choice["message"])
            role = message.pop("role", "assistant")
            content = message.pop("content", None)
            calls = message.pop("tool_calls", None) or []
            yield chunk(index, {"role": role, "content": None if content is None else ""})
            for name, value in message.items():
                # Reasoning (`reasoning_content`, `reasoning`) comes before the text, as it did.
                if isinstance(value, str) and name != "refusal":
                    for piece in pieces(value):
                        yield chunk(index, {name: piece})
            for piece in pieces(content or ""):
                yield chunk(index, {"content": piece})
            if isinstance(message.get("refusal"), str):
                for piece in pieces(message["refusal"]):
                    yield chunk(index, {"refusal": piece})
            others = {k: v for k, v in message.items() if v is not None and not isinstance(v, str)}
            if others:
                yield chunk(index, others)
            for position, tool_call in enumerate(calls):
                yield from _call_chunks(chunk, index, position, tool_call)
            yield chunk(index, {}, choice.get("finish_reason"), choice.get("logprobs"))
        if call.include_usage and answer.get("usage"):
            yield encode_chunk({**head, "choices": [], "usage": answer["usage"]})
        yield DONE


def _call_chunks(chunk, index: int, position: int, call: dict) -> Iterator[bytes]:
    """A tool call as OpenAI streams it: its id and name first, then its arguments in pieces."""
    function = call.get("function") or {}
    opening = {
        "index": position,
        "id": call.get("id"),
        "type": call.get("type", "function"),
        "function": {"name": function.get("name", ""), "arguments": ""},
    }
    yield chunk(index, {"tool_calls": [opening]})
    for piece in cut(function.get("arguments") or ""):
        yield chunk(index, {"tool_calls": [{"index": position, "function": {"arguments": piece}}]})


class CompletionAssembler(_ChoicesAssembler):
    """Legacy completion chunks into a `text_completion`."""

    OBJECT = "text_completion"

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[int, list[str]] = {}
        self.finishes: dict[int, str | None] = {}
        self.logprobs: dict[int, dict] = {}

    def add(self, index: int, choice: dict) -> None:
        self.texts.setdefault(index, []).append(str(choice.get("text") or ""))
        if choice.get("finish_reason"):
            self.finishes[index] = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict):
            # Each chunk's token lists (tokens, token_logprobs, top_logprobs, text_offset).
            held = self.logprobs.setdefault(index, {})
            for name, values in logprobs.items():
                if isinstance(values, list):
                    held.setdefault(name, []).extend(values)

    def choices(self) -> list[dict]:
        return [
            {
                "index": index,
                "text": "".join(parts),
                "logprobs": self.logprobs.get(index),
                "finish_reason": self.finishes.get(index),
            }
            for index, parts in sorted(self.texts.items())
        ]


class CompletionForm(CacheForm):
    def storable(self, answer: object) -> bool:
        return complete_choices(answer, "text")

    def assembler(self) -> CompletionAssembler:
        return CompletionAssembler()

    def replay(self, answer: dict, call) -> Iterator[bytes]:
        head = answer_head(answer, "text_completion")
        for choice in answer["choices"]:
            index = choice.get("index", 0)
            text, logprobs = choice.get("text") or "", choice.get("logprobs")
            # Token log probabilities go with the text they score: then it is one piece.
            for piece in [text] if isinstance(logprobs, dict) else pieces(text):
                part = {"index": index, "text": piece, "logprobs": logprobs, "finish_reason": None}
                yield encode_chunk({**head, "choices": [part]})
            ending = {"index": index, "text": "", "logprobs": None}
            finish = choice.get("finish_reason") or "stop"
            yield encode_chunk({**head, "choices": [{**ending, "finish_reason": finish}]})
        if call.include_usage and answer.get("usage"):
            yield encode_chunk({**head, "choices": [], "usage": answer["usage"]})
        yield DONE


class EmbeddingForm(CacheForm):
    """Embeddings are never streamed: only whole answers are stored."""

    def storable(self, answer: object) -> bool:
        data = answer.get("data") if isinstance(answer, dict) else None
        return isinstance(data, list) and bool(data)
