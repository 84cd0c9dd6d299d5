"""Server-sent events: parsing upstream streams and writing client ones."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from .errors import UpstreamError

MAX_EVENT_BYTES = 8 * 1024 * 1024
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


@dataclass(frozen=True)
class SSEEvent:
    event: str | None
    data: str


def iter_sse(chunks: Iterable[bytes], label: str = "upstream") -> Iterator[SSEEvent]:
    """Parse an SSE byte stream into events as soon as each one is complete.

    Comment lines (`: keep-alive`, OpenRouter's `: OPENROUTER PROCESSING`) are skipped. A final
    event without its blank line is still delivered when the stream ends. Linear in the bytes
    read, however they are split (a byte at a time, or a megabyte of short lines in one read),
    and an event (its unfinished line plus its data lines) is bounded by MAX_EVENT_BYTES.
    """
    partial = bytearray()  # the current line, while its end has not arrived
    event: str | None = None
    data: list[bytes] = []
    size = 0
    for chunk in chunks:
        lines = chunk.split(b"\n")
        # The last piece has no newline yet: it is the start of the next line.
        tail = lines.pop()
        if lines and partial:
            partial += lines[0]
            lines[0] = bytes(partial)
            partial.clear()
        for line in lines:
            if not line or line == b"\r":
                if data:
                    yield SSEEvent(event, _joined(data))
                    data, size = [], 0
                event = None
                continue
            if line[0] == 58:  # b":", a comment
                continue
            if line[-1] == 13:  # b"\r"
                line = line[:-1]
            name, _, value = line.partition(b":")
            if value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                size += len(value) + 1
                if size > MAX_EVENT_BYTES:
                    raise UpstreamError(f"{label}: an event in the stream is too large")
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")
        partial += tail
        if size + len(partial) > MAX_EVENT_BYTES:
            raise UpstreamError(f"{label}: an event in the stream is too large")
    line = bytes(partial).rstrip(b"\r\n")
    if line.startswith(b"data:"):
        value = line[5:]
        data.append(value[1:] if value[:1] == b" " else value)
    if data:
        yield SSEEvent(event, _joined(data))


def _joined(data: list[bytes]) -> str:
    """An event's data lines, joined by newlines as SSE says, decoded once."""
    raw = data[0] if len(data) == 1 else b"\n".join(data)
    return raw.decode("utf-8", "replace")


def utf8_json(payload: object) -> str:
    """JSON text that encodes to UTF-8: non-ASCII as it is, but if the payload holds a lone
    surrogate (half of an emoji an upstream split across two deltas, or a client's `\\ud800`),
    everything escaped: a lone surrogate has no UTF-8 form, while `\\ud83d` is valid JSON."""
    text = json.dumps(payload, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(payload)
    return text


def encode_chunk(chunk: dict) -> bytes:
    """One OpenAI stream event."""
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def encode_event(name: str, payload: dict) -> bytes:
    """One named event (the Anthropic surface)."""
    body = json.dumps(payload, separators=(",", ":"))
    return f"event: {name}\ndata: {body}\n\n".encode()
