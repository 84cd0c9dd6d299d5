"""The OpenAI streaming wire format, shared by the adapters that speak it (OpenAI-compatible
upstreams, Azure)."""

from __future__ import annotations

from collections.abc import Iterator

from ..errors import UpstreamError, upstream_shape
from ..providers.base import ChatStream
from ..providers.http import Event
from ..upstream import body_error, error_message


class OpenAIStream(ChatStream):
    """Chunks from an OpenAI-style SSE stream, or from a whole answer if upstream ignored stream."""

    @upstream_shape
    def __iter__(self) -> Iterator[dict]:
        if self.answered_whole():
            yield from completion_to_chunks(self.whole_answer(), self.label)
            return
        finished = False
        for _name, chunk in self.events(stream_failure):
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
        if self.completed:
            return
        if not finished:
            # Neither [DONE] nor a finish reason: the stream was cut, not completed.
            raise UpstreamError(f"{self.label}: the stream ended before its answer was complete")
        self.ended_unmarked = True


def stream_failure(event: Event) -> str | None:
    """The message of an in-band error chunk (`{"error": ...}` without choices)."""
    if "error" in event.data and "choices" not in event.data:
        return error_message(event.data)[0] or "unknown error"
    return None


def with_usage(body: dict) -> dict:
    """A streamed request that asks for usage whatever the client asked, so quotas and metrics
    see real numbers."""
    options = body.get("stream_options")
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return {**body, "stream": True, "stream_options": options}


def chat_answer(answer: object, label: str) -> dict:
    """A whole chat completion checked: an in-band error raised as the upstream's own, anything
    without message choices a retryable failure, a malformed `usage` dropped."""
    if isinstance(answer, dict) and answer.get("error") and not answer.get("choices"):
        raise body_error(answer, label)
    answer = _with_choices(answer, label, "message", dict, "chat completion")
    if not isinstance(answer.get("usage"), dict | None):
        del answer["usage"]
    return answer


def completion_answer(answer: object, label: str) -> dict:
    """A whole legacy text completion checked: choices that each carry their `text`."""
    return _with_choices(answer, label, "text", str, "completion")


def _with_choices(answer: object, label: str, field: str, kind: type, what: str) -> dict:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if (
        not choices
        or not isinstance(choices, list)
        or not all(isinstance(c, dict) and isinstance(c.get(field), kind) for c in choices)
    ):
        raise UpstreamError(f"{label}: the upstream answer is not a {what}")
    return answer


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
