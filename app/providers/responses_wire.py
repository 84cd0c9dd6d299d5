"""OpenAI's Responses API on the wire, for deployments that serve it (`responses: true`): the
whole answer checked, and the stream's typed events read as they come."""

from __future__ import annotations

import json
from collections.abc import Iterator

from ..errors import UpstreamError, upstream_shape
from ..providers.base import ChatStream
from ..providers.http import Event
from ..responses_stream import response_events
from ..upstream import body_error, error_message

RESPONSES_PATH = "/responses"
# The events that end a Responses stream as its upstream meant it to end.
ENDINGS = frozenset(("response.completed", "response.incomplete", "response.failed"))


def response_answer(answer: object, label: str) -> dict:
    """A whole Response object checked: an error body raised as the upstream's own, anything
    that is not a Response a retryable failure."""
    if isinstance(answer, dict) and answer.get("error") and not answer.get("output"):
        raise body_error(answer, label)
    if not isinstance(answer, dict) or not isinstance(answer.get("output"), list):
        raise UpstreamError(f"{label}: the upstream answer is not a Response")
    if not isinstance(answer.get("id"), str) or not answer["id"]:
        raise UpstreamError(f"{label}: the upstream Response has no id")
    return answer


def stream_failure(event: Event) -> str | None:
    """The message of an `error` event (the stream's own failure, not a response.failed)."""
    if event.name == "error" or event.data.get("type") == "error":
        message = event.data.get("message")
        if not isinstance(message, str) or not message:
            message = error_message(event.data)[0] or "unknown error"
        return message
    return None


class ResponsesStream(ChatStream):
    """The events of a streamed Responses answer, each an `Event(name, data)`; a stream that
    ends before its `response.completed` (or `.incomplete`, `.failed`) was cut."""

    @upstream_shape
    def __iter__(self) -> Iterator[Event]:
        if self.answered_whole():
            # Asked to stream, it answered whole: the events that answer would have had.
            answer = response_answer(self.whole_answer(), self.label)
            self.completed = True
            for raw in response_events(answer):
                data = json.loads(raw.partition(b"\ndata: ")[2])
                yield Event(data["type"], data)
            return
        for event in self.events(stream_failure, done=None):
            kind = event.data.get("type") or event.name
            if not isinstance(kind, str):
                raise UpstreamError(f"{self.label}: the stream sent an event without a type")
            yield Event(kind, event.data)
            if kind in ENDINGS:
                self.completed = True
                return
        raise UpstreamError(f"{self.label}: the stream ended before its answer was complete")
