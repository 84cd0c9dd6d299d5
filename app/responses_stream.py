"""Responses streams: OpenAI's typed events, in its order, with increasing `sequence_number`.

`EventWriter` turns canonical chat chunks into events; `response_events` renders a whole Response
object as the stream that would have carried it (for replaying a stored answer). Either ends with
`response.completed` / `response.incomplete`, or `response.failed` when the answer broke off:
never a `completed` for a stream that was cut.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .errors import ProxyError, UpstreamError, upstream_shape
from .redact import REDACTOR
from .responses_output import (
    call_item,
    finished,
    message_item,
    new_id,
    refusal_item,
    response_usage,
    text_part,
)
from .streaming import encode_event

logger = logging.getLogger(__name__)

# How many pieces `response_events` cuts a stored text into.
REPLAY_PIECES = 4


@dataclass
class Item:
    """One output item being streamed: a message's text, or a call's arguments."""

    item: dict  # the item as `response.output_item.added` showed it
    index: int  # its place in the output
    pieces: list[str] = field(default_factory=list)
    done: bool = False
    # The delta events' fixed text around their sequence number and delta (see `_delta`).
    delta_head: str = ""
    delta_middle: str = ""
    delta_tail: str = ""
    # The item as it was stored, when replaying one: shown as it is when done (its
    # annotations, several parts), not rebuilt from the pieces streamed.
    final: dict | None = None

    @property
    def is_message(self) -> bool:
        return self.item["type"] == "message"

    def where(self) -> dict:
        return {"item_id": self.item["id"], "output_index": self.index}


def failure_body(err: ProxyError) -> dict:
    """A Response's `error` for a proxy error, in OpenAI's codes, scrubbed of secrets."""
    code = "rate_limit_exceeded" if err.status == 429 else "server_error"
    return REDACTOR.scrub_answer(
        {"code": code, "message": err.message, "type": err.type, "param": err.param}
    )


class EventWriter:
    """Builds one Response's events; it knows the sequence numbers and the output so far."""

    def __init__(self, response: dict) -> None:
        self.response = {**response, "status": "in_progress", "output": [], "usage": None}
        self.sequence = 0
        self.items: list[Item] = []
        self.message: Item | None = None  # the message text goes to, while it is open
        self.calls: dict[object, Item] = {}  # chat tool-call index -> its item
        self.refusal: list[str] = []  # a refusal's pieces, written whole as the stream ends

    def event(self, kind: str, **fields) -> bytes:
        payload = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return encode_event(kind, payload)

    def start(self) -> list[bytes]:
        # The same Response twice: encoded once.
        body = json.dumps(self.response, separators=(",", ":"))
        events = []
        for kind in ("response.created", "response.in_progress"):
            head = f'{{"type":"{kind}","sequence_number":{self.sequence},"response":'
            events.append(f"event: {kind}\ndata: {head}{body}}}\n\n".encode())
            self.sequence += 1
        return events

    def _open(self, item: dict, delta_kind: str, extra: str = "") -> tuple[Item, bytes]:
        opened = Item(item, len(self.items))
        opened.delta_head = f'event: {delta_kind}\ndata: {{"type":"{delta_kind}","sequence_number":'
        where = json.dumps(opened.where(), separators=(",", ":"))[1:-1]
        opened.delta_middle = f',{where}{extra},"delta":'
        self.items.append(opened)
        return opened, self.event(
            "response.output_item.added", output_index=opened.index, item=item
        )

    def _delta(self, item: Item, delta: str) -> bytes:
        """A delta event, written around its one changing value: the hot path of a stream
        (the same JSON as `event` would write)."""
        item.pieces.append(delta)
        sequence = self.sequence
        self.sequence += 1
        return (
            f"{item.delta_head}{sequence}{item.delta_middle}{json.dumps(delta)}{item.delta_tail}"
        ).encode()

    def text(self, delta: str, item_id: str | None = None) -> list[bytes]:
        """Text of the answer: into the open message, or a new one."""
        message = self.message
        if message is not None:
            return [self._delta(message, delta)]
        item = {**message_item("", "in_progress", item_id), "content": []}
        message, added = self._open(item, "response.output_text.delta", ',"content_index":0')
        message.delta_tail = ',"logprobs":[]}\n\n'
        self.message = message
        part = self.event(
            "response.content_part.added", **message.where(), content_index=0, part=text_part("")
        )
        return [added, part, self._delta(message, delta)]

    def call(
        self, key: object, call_id: str, name: str, arguments: str, item_id: str | None = None
    ) -> list[bytes]:
        """A piece of a function call: its start (id and name) the first time `key` is seen."""
        item = self.calls.get(key)
        events = []
        if item is None:
            # A call ends the message before it: text after it starts a new one.
            events = self.close_message()
            opened = call_item(call_id, name, "", "in_progress", item_id)
            item, added = self._open(opened, "response.function_call_arguments.delta")
            item.delta_tail = "}\n\n"
            self.calls[key] = item
            events.append(added)
        if arguments:
            events.append(self._delta(item, arguments))
        return events

    def close_message(self) -> list[bytes]:
        if self.message is None:
            return []
        events = list(self._close(self.message, "completed"))
        self.message = None
        return events

    def _close(self, item: Item, status: str) -> Iterator[bytes]:
        where = item.where()
        text = "".join(item.pieces)
        if item.is_message:
            yield self.event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            )
            yield self.event(
                "response.content_part.done", **where, content_index=0, part=text_part(text)
            )
        else:
            yield self.event(
                "response.function_call_arguments.done",
                **where,
                arguments=text,
                name=item.item["name"],
            )
        item.done = True
        yield self.event(
            "response.output_item.done",
            output_index=where["output_index"],
            item=self._final(item, status),
        )

    def whole_item(self, item: dict) -> list[bytes]:
        """An output item not streamed in pieces (reasoning, a hosted tool's call): added,
        then done as it is; it ends the message before it."""
        events = self.close_message()
        index = len(self.items)
        self.items.append(Item(item, index, done=True, final=item))
        added = {**item, "status": "in_progress"} if "status" in item else item
        events.append(self.event("response.output_item.added", output_index=index, item=added))
        events.append(self.event("response.output_item.done", output_index=index, item=item))
        return events

    def _final(self, item: Item, status: str) -> dict:
        if item.final is not None:
            return item.final
        text = "".join(item.pieces)
        if item.is_message:
            return message_item(text, status, item.item["id"])
        base = item.item
        return call_item(base["call_id"], base["name"], text, status, base["id"])

    def finish(self, finish: str | None, usage: dict) -> Iterator[bytes]:
        """Every open item closed, a refusal's message, then `response.completed` (or
        `.incomplete`)."""
        response = finished(self.response, finish, usage)
        status = "completed" if response["status"] == "completed" else "incomplete"
        if self.refusal:
            yield from self.whole_item(refusal_item("".join(self.refusal), status))
        for item in self.items:
            if not item.done:
                yield from self._close(item, status)
        self.response = {**response, "output": [self._final(i, status) for i in self.items]}
        yield self.event(f"response.{self.response['status']}", response=self.response)

    def fail(self, err: ProxyError) -> bytes:
        """`response.failed`, with what was said up to the failure."""
        output = [self._final(i, "completed" if i.done else "incomplete") for i in self.items]
        self.response = {
            **self.response,
            "status": "failed",
            "error": failure_body(err),
            "output": output,
        }
        return self.event("response.failed", response=self.response)

    def output_text(self) -> str:
        return "".join("".join(i.pieces) for i in self.items) + "".join(self.refusal)


def _feed(writer: EventWriter, chunk: dict) -> list[bytes]:
    """The events of one canonical chunk (its first choice: a Response has one answer)."""
    events: list[bytes] = []
    for choice in chunk.get("choices") or ():
        if choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        text = delta.get("content")
        if isinstance(text, str) and text:
            events += writer.text(text)
        refusal = delta.get("refusal")
        if isinstance(refusal, str) and refusal:
            writer.refusal.append(refusal)
        for call in delta.get("tool_calls") or ():
            function = call.get("function") or {}
            arguments = function.get("arguments")
            events += writer.call(
                call.get("index", 0),
                call.get("id") or new_id("call"),
                str(function.get("name") or ""),
                arguments if isinstance(arguments, str) else "",
            )
    return events


@dataclass
class Ending:
    """How a canonical stream ended: its finish reason and usage, once seen."""

    finish: str | None = None
    usage: object = None


@upstream_shape
def canonical_events(
    chunks: Iterable[dict],
    writer: EventWriter,
    prompt_estimate: int,
    on_usage: Callable[[object], None],
    on_done: Callable[[dict], None],
) -> Iterator[bytes]:
    """Responses events for canonical chunks; `on_done` gets the finished Response before its
    last event is sent (so it is stored by the time the client can ask for it)."""
    ending = Ending()
    yield from writer.start()
    for chunk in chunks:
        if chunk.get("usage"):
            ending.usage = chunk["usage"]
            on_usage(chunk["usage"])
        for choice in chunk.get("choices") or ():
            if isinstance(choice, dict) and choice.get("finish_reason"):
                ending.finish = choice["finish_reason"]
        yield from _feed(writer, chunk)
    if ending.finish is None:
        # An upstream that stopped without saying why was cut off: never a clean end.
        raise UpstreamError("The upstream stream ended before its answer was complete.")
    usage = response_usage(ending.usage, prompt_estimate, writer.output_text())
    events = list(writer.finish(ending.finish, usage))
    on_done(writer.response)
    yield from events


def failing(events: Iterator[bytes], fail: Callable[[ProxyError], bytes]) -> Iterator[bytes]:
    """`events`, ended by `response.failed` (what `fail` writes) if they break off; the error
    then goes on up (the pipeline logs it and tells routing), but the client has had its last
    event already."""
    try:
        yield from events
    except ProxyError as err:
        yield fail(err)
        raise
    except Exception as err:  # noqa: BLE001 - the client still gets its response.failed.
        logger.exception("Responses stream failed inside the proxy")
        error = ProxyError()
        yield fail(error)
        raise error from err


class Relay:
    """A passed-through Responses stream: the upstream's events as they come, noting what a
    `response.failed` of the proxy's own would need if the stream breaks off."""

    def __init__(self, stamp: dict) -> None:
        self.stamp = stamp  # fields the proxy sets on every Response (its own id ...)
        self.response: dict = {}
        self.sequence = 0
        self.done: dict[int, dict] = {}  # output index -> its finished item
        self.texts: list[str] = []
        self.usage: object = None

    def events(self, items: Iterable, on_done: Callable[[dict], None]) -> Iterator[bytes]:
        """Each upstream event relayed; `on_done` gets the final Response before its event."""
        for kind, data in items:
            sequence = data.get("sequence_number")
            self.sequence = sequence + 1 if isinstance(sequence, int) else self.sequence + 1
            response = data.get("response")
            if isinstance(response, dict):
                data = {**data, "response": {**response, **self.stamp}}
                self.response = response = data["response"]
                self.usage = response.get("usage") or self.usage
            if kind == "response.output_text.delta" and isinstance(data.get("delta"), str):
                self.texts.append(data["delta"])
            elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
                self.done[data.get("output_index", len(self.done))] = data["item"]
            if kind in ("response.completed", "response.incomplete") and self.response:
                on_done(self.response)
            yield encode_event(kind, data)

    def fail(self, err: ProxyError) -> bytes:
        response = {
            **self.response,
            "status": "failed",
            "error": failure_body(err),
            "output": [self.done[i] for i in sorted(self.done)],
        }
        payload = {
            "type": "response.failed",
            "sequence_number": self.sequence,
            "response": response,
        }
        return encode_event("response.failed", payload)


def response_events(response: dict) -> Iterator[bytes]:
    """A whole Response object as the events of its stream, ending as it ended."""
    writer = EventWriter(response)
    yield from writer.start()
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            text = "".join(
                p.get("text") or ""
                for p in item.get("content") or ()
                if isinstance(p, dict) and p.get("type") == "output_text"
            )
            for piece in _pieces(text) or [""]:
                yield from writer.text(piece, _str(item.get("id")))
            writer.items[-1].final = item
            yield from writer.close_message()
        elif item.get("type") == "function_call":
            key = object()
            pieces = _pieces(str(item.get("arguments") or "")) or [""]
            for piece in pieces:
                yield from writer.call(
                    key,
                    str(item.get("call_id") or ""),
                    str(item.get("name") or ""),
                    piece,
                    _str(item.get("id")),
                )
            writer.items[-1].final = item
        else:
            # Reasoning, a web search, any other item: as it was, never dropped.
            yield from writer.whole_item(item)
    reason = (response.get("incomplete_details") or {}).get("reason")
    finish = {"max_output_tokens": "length", "content_filter": "content_filter"}.get(reason)
    usage = response.get("usage") or response_usage(None, 0, writer.output_text())
    yield from writer.finish(finish, usage)


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _pieces(text: str) -> list[str]:
    if not text:
        return []
    size = max(1, -(-len(text) // REPLAY_PIECES))
    return [text[i : i + size] for i in range(0, len(text), size)]
