"""Server-sent events: parsing upstream streams and writing client ones."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from app.errors import UpstreamError

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
    event without its blank line is still delivered when the stream ends.
    """
    buffer = b""
    event: str | None = None
    data: list[str] = []
    for chunk in chunks:
        buffer += chunk
        if len(buffer) > MAX_EVENT_BYTES:
            raise UpstreamError(f"{label}: an event in the stream is too large")
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                break
            line = buffer[:newline].rstrip(b"\r")
            buffer = buffer[newline + 1 :]
            if not line:
                if data:
                    yield SSEEvent(event, "\n".join(data))
                event, data = None, []
                continue
            if line.startswith(b":"):
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value.decode("utf-8", "replace"))
            elif name == b"event":
                event = value.decode("utf-8", "replace")
    line = buffer.rstrip(b"\r\n")
    if line.startswith(b"data:"):
        data.append(line[5:].lstrip(b" ").decode("utf-8", "replace"))
    if data:
        yield SSEEvent(event, "\n".join(data))


def encode_chunk(chunk: dict) -> bytes:
    """One OpenAI stream event."""
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def encode_event(name: str, payload: dict) -> bytes:
    """One named event (the Anthropic surface)."""
    body = json.dumps(payload, separators=(",", ":"))
    return f"event: {name}\ndata: {body}\n\n".encode()
