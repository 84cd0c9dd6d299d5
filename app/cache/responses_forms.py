"""Caching for the OpenAI Responses API (`POST /v1/responses`).

A stream is stored from its `response.completed` event, which carries the whole Response. A hit
is made the request's own Response (`for_request`): the id the request was given, its own
`metadata` and `user`, and kept wherever the surface keeps its answers, so that a
`previous_response_id` naming it continues the conversation. A request that continues one
(`previous_response_id`, an upstream's `conversation`) or names a stored `prompt` is never
cached: its answer depends on state kept elsewhere.

The surface declares it with its own writer of a Response's events:

    cache_form = ResponsesForm(replay=response_events)  # app.responses_stream
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping

from .forms import CacheForm, SSEAssembler, loads_object

# Fields naming state kept elsewhere that the answer depends on, not on the body alone: a stored
# conversation (the proxy's `previous_response_id`, an upstream's `conversation`, which each
# answer also extends) or an upstream's stored prompt (its latest version can change).
STATEFUL = ("previous_response_id", "conversation", "prompt")
# Events that end a Response without it being complete: never stored.
UNFINISHED = frozenset({"response.failed", "response.incomplete", "error"})


class ResponsesAssembler(SSEAssembler):
    """Responses events: the whole answer is the one `response.completed` carries."""

    def __init__(self) -> None:
        super().__init__()
        self.response: dict | None = None

    def event(self, name: str | None, data: str) -> bool:
        payload = loads_object(data)
        kind = payload.get("type") or name
        if kind == "response.completed":
            response = payload["response"]
            if not isinstance(response, dict):
                raise ValueError("response.completed without a response")
            self.response = response
            return True
        if kind in UNFINISHED:
            self.failed = True
        return False

    def whole(self, usage: object = None) -> dict | None:
        if not self.ended or self.failed:
            return None
        return self.response


class ResponsesForm(CacheForm):
    rewrites = True

    def __init__(self, replay: Callable[[dict], Iterator[bytes]] | None = None) -> None:
        self._replay = replay

    def key_body(self, body: Mapping) -> dict | None:
        if any(body.get(name) is not None for name in STATEFUL):
            return None
        return super().key_body(body)

    def storable(self, answer: object) -> bool:
        return (
            isinstance(answer, dict)
            and answer.get("status") == "completed"
            and not answer.get("error")
            and isinstance(answer.get("output"), list)
        )

    def assembler(self) -> ResponsesAssembler:
        return ResponsesAssembler()

    def for_request(self, answer: dict, call) -> dict:
        """The stored Response as this request's: its id (`call.prepared.response_id` when the
        surface gave one), its metadata and user (kept by `served`, once the hit is admitted)."""
        prepared = getattr(call, "prepared", None)
        fresh = getattr(prepared, "response_id", None) or f"resp_{uuid.uuid4().hex}"
        answer = {**answer, "id": fresh, "previous_response_id": None}
        for name in ("metadata", "user"):
            if name in answer or name in call.body:
                answer[name] = call.body.get(name, {} if name == "metadata" else None)
        return answer

    def served(self, answer: object, call) -> None:
        keep = getattr(getattr(call, "prepared", None), "keep", None)
        if callable(keep):
            keep(answer)

    def replay(self, answer: dict, call) -> Iterator[bytes]:
        if self._replay is None:
            raise NotImplementedError("ResponsesForm needs the surface's event writer")
        return self._replay(answer)
