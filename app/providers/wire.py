"""The OpenAI streaming wire format, shared by the adapters that speak it (OpenAI-compatible
upstreams, Azure)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import requests

from app.errors import UpstreamError, upstream_shape
from app.providers.base import ChatStream
from app.streaming import iter_sse
from app.upstream import error_message, read_chunks, read_json, safe_text


class OpenAIStream(ChatStream):
    """Chunks from an OpenAI-style SSE stream, or from a whole answer if upstream ignored stream."""

    def __init__(self, response: requests.Response, label: str) -> None:
        self.response = response
        self.label = label

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        content_type = self.response.headers.get("Content-Type", "")
        if "application/json" in content_type:
            yield from completion_to_chunks(read_json(self.response, self.label), self.label)
            return
        finished = False
        for event in iter_sse(read_chunks(self.response, self.label), self.label):
            if event.data == "[DONE]":
                self.completed = True
                return
            try:
                chunk = json.loads(event.data)
            except ValueError as err:
                raise UpstreamError(f"{self.label}: the stream sent invalid JSON") from err
            if not isinstance(chunk, dict):
                raise UpstreamError(f"{self.label}: the stream sent an unexpected event")
            if "error" in chunk and "choices" not in chunk:
                message, _ = error_message(chunk)
                raise UpstreamError(
                    f"{self.label}: the stream failed: {safe_text(message or 'unknown error')}"
                )
            choices = chunk.get("choices")
            if not choices and not chunk.get("usage"):
                # Nothing to relay (Azure opens with a `prompt_filter_results`-only chunk).
                continue
            if choices is None:
                chunk["choices"] = choices = []
            if not isinstance(choices, list) or not all(map(_well_formed, choices)):
                raise UpstreamError(f"{self.label}: the stream sent a malformed chunk")
            finished = finished or any(c.get("finish_reason") for c in choices)
            yield chunk
        if not finished:
            # Neither [DONE] nor a finish reason: the stream was cut, not completed.
            raise UpstreamError(f"{self.label}: the stream ended before its answer was complete")


def _well_formed(choice: object) -> bool:
    """A chat choice carries a `delta` object; a legacy completion choice a `text` string."""
    if not isinstance(choice, dict):
        return False
    if "delta" in choice:
        return isinstance(choice["delta"], dict)
    return isinstance(choice.get("text", ""), str)


@upstream_shape
def completion_to_chunks(answer: object, label: str) -> Iterator[dict]:
    """The chunks a streamed answer would have had, for upstreams that answer whole."""
    if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
        raise UpstreamError(f"{label}: the upstream answer is not a completion")
    chat = answer.get("object") != "text_completion"
    base = {
        "id": answer.get("id", "chatcmpl-proxy"),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": answer.get("created", 0),
        "model": answer.get("model", ""),
    }
    for choice in answer["choices"]:
        finish = choice.get("finish_reason")
        if not chat:
            piece = {"index": choice.get("index", 0), "text": choice.get("text", "")}
            yield {**base, "choices": [{**piece, "finish_reason": finish}]}
            continue
        message = dict(choice.get("message") or {})
        delta = {"role": message.pop("role", "assistant"), **message}
        if isinstance(delta.get("tool_calls"), list):
            # Streamed tool calls carry their position.
            delta["tool_calls"] = [
                {"index": i, **call} for i, call in enumerate(delta["tool_calls"])
            ]
        yield {
            **base,
            "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": finish}],
        }
    if answer.get("usage"):
        yield {**base, "choices": [], "usage": answer["usage"]}
