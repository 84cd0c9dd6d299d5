"""A real HTTP server standing in for an LLM provider in tests, scripted per test."""

from __future__ import annotations

import json
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Reply:
    """What the stub answers: a status and JSON body, or SSE events sent one at a time."""

    status: int = 200
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    events: Iterable[str | bytes] | None = None  # raw SSE event payloads (`data: ...`)
    delay: float = 0.0  # seconds before each event
    chunked: bool = True
    raw: bytes | None = None  # a body sent as-is (garbage tests)
    hang: float = 0.0  # seconds to wait before answering at all
    cut_after: int | None = None  # drop the connection after this many events
    reset: bool = False  # close the connection without answering


def chat_completion(content: str = "hi there", model: str = "up-model", usage=None) -> dict:
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 1700000000,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }
        ],
        "usage": usage or {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }


def text_completion(text: str = "hi", model: str = "up-model") -> dict:
    """A legacy /v1/completions answer."""
    return {
        "id": "cmpl-stub",
        "object": "text_completion",
        "created": 1,
        "model": model,
        "choices": [{"text": text, "index": 0, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


def chat_chunks(words: list[str], model: str = "up-model", usage: bool = True) -> list[str]:
    """OpenAI-style SSE `data:` payloads for a streamed answer, ending with [DONE]."""
    base = {"id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 1, "model": model}
    events = [
        json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]}),
    ]
    for i, word in enumerate(words):
        text = word if i == 0 else " " + word
        events.append(json.dumps({**base, "choices": [{"index": 0, "delta": {"content": text}}]}))
    events.append(
        json.dumps({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    )
    if usage:
        events.append(
            json.dumps(
                {
                    **base,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": 3,
                        "completion_tokens": len(words),
                        "total_tokens": 3 + len(words),
                    },
                }
            )
        )
    events.append("[DONE]")
    return [f"data: {e}" for e in events]


class QuietServer(ThreadingHTTPServer):
    """Clients (the proxy) hanging up mid-answer is part of the tests, not an error to print."""

    def handle_error(self, request, client_address) -> None:
        pass


class StubUpstream:
    """Serves queued replies (or a handler's) and records every request it gets."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.replies: queue.Queue[Reply] = queue.Queue()
        self.handler: Callable[[Recorded], Reply] | None = None
        self.default = Reply(body=chat_completion())
        self.stream_closed = threading.Event()
        self.events_sent = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = dict(self.headers.items())
                headers["X-Client-Port"] = str(self.client_address[1])
                record = Recorded(self.command, self.path, headers, body)
                stub.requests.append(record)
                if stub.handler is not None:
                    reply = stub.handler(record)
                else:
                    try:
                        reply = stub.replies.get_nowait()
                    except queue.Empty:
                        reply = stub.default
                stub._send(self, reply)

            do_POST = do_GET = _handle

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def queue(self, *replies: Reply) -> None:
        for reply in replies:
            self.replies.put(reply)

    def _send(self, handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        if reply.hang:
            time.sleep(reply.hang)
        if reply.reset:
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            handler.connection.close()
            handler.close_connection = True
            return
        if reply.raw is not None:
            handler.send_response(reply.status)
            headers = {"Content-Type": "application/json", **reply.headers}
            handler.send_header("Content-Length", str(len(reply.raw)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(reply.raw)
            return
        if reply.events is None:
            data = json.dumps(reply.body).encode()
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(data)
            return
        handler.send_response(reply.status)
        handler.send_header("Content-Type", "text/event-stream")
        if reply.chunked:
            handler.send_header("Transfer-Encoding", "chunked")
        else:
            handler.send_header("Connection", "close")
            handler.close_connection = True
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.end_headers()
        try:
            for index, event in enumerate(reply.events):
                if reply.cut_after is not None and index >= reply.cut_after:
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    handler.close_connection = True
                    return
                if reply.delay:
                    time.sleep(reply.delay)
                payload = (event.encode() if isinstance(event, str) else event) + b"\n\n"
                if reply.chunked:
                    payload = f"{len(payload):x}\r\n".encode() + payload + b"\r\n"
                handler.wfile.write(payload)
                handler.wfile.flush()
                self.events_sent += 1
            if reply.chunked:
                handler.wfile.write(b"0\r\n\r\n")
                handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.stream_closed.set()
            handler.close_connection = True

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
