"""How an endpoint's answers are cached: the hooks a surface fills in (`Endpoint.cache_form`).

One stored form serves both kinds of request: the whole answer, as a non-streaming request gets
it. A stream is assembled into that form as its events are relayed (`Assembler`), and a stored
whole answer is replayed as a stream in the surface's own format (`CacheForm.replay`), in several
chunks. A new surface subclasses `CacheForm` (and `SSEAssembler` for its streams); the hooks:

    key_body(body)            the part of the body that identifies the answer; None: never cached
    key_headers               request headers that change the answer (part of the key)
    storable(answer)          whether a whole answer is complete (not truncated, filtered, failed)
    assembler()               a fresh Assembler that collects a relayed stream into the whole
                              answer; None: streams are not stored
    replay(answer, call)      the stored whole answer as the surface's stream, in several events
    rewrites, for_request()   a hit's answer made the request's own before it is sent (a fresh
                              id, kept where the surface keeps its answers)

app/cache/responses_forms.py is the Responses API's, built on these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping

from .keys import key_body

# Replayed text is cut into at most this many pieces (fewer for short text: one word at least).
MAX_PIECES = 24
_WORDS = re.compile(r"\s*\S+\s*|\s+")


class Assembler:
    """Collects a stream's events, as the client is sent them, into the whole answer."""

    def feed(self, piece: bytes) -> bool:
        """Take the next bytes sent; True once they end the stream properly (its last event)."""
        raise NotImplementedError

    def whole(self, usage: object = None) -> object | None:
        """The whole answer once the stream ended properly, else None. `usage` is what the
        upstream reported when the client's stream left it out (OpenAI without include_usage)."""
        raise NotImplementedError


class CacheForm:
    """The caching hooks of one endpoint; the defaults cache whole answers only."""

    # Request headers that change an answer, and so are part of its key.
    key_headers: tuple[str, ...] = ()

    def key_body(self, body: Mapping) -> dict | None:
        """The part of the body that identifies the answer; None: never cached."""
        return key_body(body)

    def storable(self, answer: object) -> bool:
        """Whether a whole answer is complete: not truncated, filtered or an error."""
        return isinstance(answer, dict)

    def assembler(self) -> Assembler | None:
        """A fresh assembler for one stream (None: streams are not stored)."""
        return None

    def replay(self, answer: object, call) -> Iterator[bytes]:
        """A stored whole answer as this surface's stream (`call`: the request's Call)."""
        raise NotImplementedError

    # Whether a hit's answer goes through `for_request` (else its stored bytes are sent as
    # they are, which is the cheapest hit).
    rewrites: bool = False

    def for_request(self, answer: object, call) -> object:
        """A stored answer made this request's own (a fresh id, say); only when `rewrites`.
        Made before the request is admitted: what it keeps, `served` keeps."""
        return answer

    def served(self, answer: object, call) -> None:
        """A rewritten hit is going to its client (it was admitted): keep what it makes."""


class SSEAssembler(Assembler):
    """An assembler over server-sent events: `event(name, data)` sees each one whole."""

    def __init__(self) -> None:
        self._buffer = b""
        self.failed = False  # an error event, or something unreadable: never stored
        self.ended = False

    def feed(self, piece: bytes) -> bool:
        if self.failed or self.ended:
            self.failed = True  # nothing may follow the end
            return False
        self._buffer += piece
        while not self.failed and b"\n\n" in self._buffer:
            raw, self._buffer = self._buffer.split(b"\n\n", 1)
            name, data = _parse(raw)
            if data is None:
                continue
            try:
                self.ended = self.event(name, data) or False
            except (ValueError, TypeError, KeyError, AttributeError):
                self.failed = True
        return self.ended and not self.failed and not self._buffer

    def event(self, name: str | None, data: str) -> bool:
        """Take one event; True if it is the stream's proper last event."""
        raise NotImplementedError


def _parse(raw: bytes) -> tuple[str | None, str | None]:
    name, data = None, []
    for line in raw.decode("utf-8", "replace").split("\n"):
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
    return name, ("\n".join(data) if data else None)


def pieces(text: str) -> list[str]:
    """`text` cut at word boundaries into at most MAX_PIECES pieces that join back to it."""
    if not text:
        return []
    words = _WORDS.findall(text)
    size = -(-len(words) // MAX_PIECES)
    return ["".join(words[start : start + size]) for start in range(0, len(words), size)]


def cut(text: str, count: int = 4) -> list[str]:
    """Text without word boundaries (JSON arguments) cut into `count` pieces by length."""
    if not text:
        return []
    size = max(1, -(-len(text) // count))
    return [text[start : start + size] for start in range(0, len(text), size)]


def loads_object(data: str) -> dict:
    value = json.loads(data)
    if not isinstance(value, dict):
        raise ValueError("not an object")
    return value
