"""Caching for the Anthropic Messages surface: streams assembled into a `message`, and stored
messages replayed as Anthropic's events in order, thinking and tool use included."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping

from ..streaming import encode_event
from .forms import CacheForm, SSEAssembler, cut, loads_object, pieces

# Stop reasons of a complete answer; `max_tokens` (truncated), `refusal` (filtered) and
# `pause_turn` (unfinished) are not.
COMPLETE_STOPS = frozenset({"end_turn", "tool_use", "stop_sequence"})
# How each block type's streamed text is named, in its block and in its delta.
TEXT_DELTAS = {"text": ("text", "text_delta"), "thinking": ("thinking", "thinking_delta")}


class MessageAssembler(SSEAssembler):
    """Anthropic events into the `message` they describe."""

    def __init__(self) -> None:
        super().__init__()
        self.message: dict | None = None
        self.blocks: dict[int, dict] = {}
        self.json_parts: dict[int, list[str]] = {}

    def event(self, name: str | None, data: str) -> bool:
        payload = loads_object(data)
        kind = payload.get("type") or name
        if kind == "message_start":
            self.message = dict(payload["message"])
            self.message["content"] = []
        elif kind == "content_block_start":
            self.blocks[payload["index"]] = dict(payload["content_block"])
        elif kind == "content_block_delta":
            self._delta(self.blocks[payload["index"]], payload["index"], payload["delta"])
        elif kind == "message_delta":
            self.message.update(payload.get("delta") or {})
            usage = {k: v for k, v in (payload.get("usage") or {}).items() if v is not None}
            self.message["usage"] = {**(self.message.get("usage") or {}), **usage}
        elif kind == "message_stop":
            return self.message is not None
        elif kind not in ("ping", "content_block_stop"):
            # An error, or an event this proxy does not know: never stored.
            self.failed = True
        return False

    def _delta(self, block: dict, index: int, delta: dict) -> None:
        kind = delta.get("type")
        if kind == "text_delta":
            block["text"] = block.get("text", "") + delta["text"]
        elif kind == "thinking_delta":
            block["thinking"] = block.get("thinking", "") + delta["thinking"]
        elif kind == "signature_delta":
            block["signature"] = block.get("signature", "") + delta["signature"]
        elif kind == "input_json_delta":
            self.json_parts.setdefault(index, []).append(delta["partial_json"])
        elif kind == "citations_delta":
            block.setdefault("citations", []).append(delta["citation"])
        else:
            raise ValueError(f"unknown delta {kind!r}")

    def whole(self, usage: object = None) -> dict | None:
        if not self.ended or self.failed or self.message is None:
            return None
        content = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            if index in self.json_parts or block.get("type") in ("tool_use", "server_tool_use"):
                text = "".join(self.json_parts.get(index, ()))
                block["input"] = json.loads(text) if text else block.get("input") or {}
            content.append(block)
        return {**self.message, "content": content}


class MessageForm(CacheForm):
    # Betas change what a model may do and answer.
    key_headers = ("anthropic-beta",)

    def key_body(self, body: Mapping) -> dict | None:
        # A reused code-execution `container` holds files earlier requests left: the answer
        # depends on them, not on the body alone.
        if body.get("container") is not None:
            return None
        return super().key_body(body)

    def storable(self, answer: object) -> bool:
        return (
            isinstance(answer, dict)
            and answer.get("type") == "message"
            and isinstance(answer.get("content"), list)
            and answer.get("stop_reason") in COMPLETE_STOPS
        )

    def assembler(self) -> MessageAssembler:
        return MessageAssembler()

    def replay(self, answer: dict, call) -> Iterator[bytes]:
        usage = dict(answer.get("usage") or {})
        start = {**answer, "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = {**usage, "output_tokens": min(1, usage.get("output_tokens") or 0)}
        yield encode_event("message_start", {"type": "message_start", "message": start})
        for index, block in enumerate(answer["content"]):
            yield from _block_events(index, block)
        ending = {
            "stop_reason": answer.get("stop_reason"),
            "stop_sequence": answer.get("stop_sequence"),
        }
        yield encode_event(
            "message_delta", {"type": "message_delta", "delta": ending, "usage": usage}
        )
        yield encode_event("message_stop", {"type": "message_stop"})


def _block_events(index: int, block: dict) -> Iterator[bytes]:
    kind = block.get("type")

    def delta(body: dict) -> bytes:
        return encode_event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": body}
        )

    if kind in TEXT_DELTAS:
        field, delta_type = TEXT_DELTAS[kind]
        opening = {**block, field: ""}
        opening.pop("citations", None)
        if kind == "thinking":
            opening["signature"] = ""
        yield _start(index, opening)
        for citation in block.get("citations") or ():
            yield delta({"type": "citations_delta", "citation": citation})
        for piece in pieces(block.get(field) or ""):
            yield delta({"type": delta_type, field: piece})
        if kind == "thinking" and block.get("signature"):
            yield delta({"type": "signature_delta", "signature": block["signature"]})
    elif kind in ("tool_use", "server_tool_use"):
        yield _start(index, {**block, "input": {}})
        for piece in cut(json.dumps(block.get("input") or {})):
            yield delta({"type": "input_json_delta", "partial_json": piece})
    else:
        # Blocks without deltas (redacted thinking, tool results) start whole.
        yield _start(index, block)
    yield encode_event("content_block_stop", {"type": "content_block_stop", "index": index})


def _start(index: int, block: dict) -> bytes:
    return encode_event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )
