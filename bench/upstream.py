"""A fast fake OpenAI upstream for the benchmarks: raw asyncio HTTP/1.1 on loopback.

    python bench/upstream.py --port 9000 [--chunks 20] [--interval 0.05] [--procs 1]

POST /v1/chat/completions (or /chat/completions):
  * without "stream": true -> one static `chat.completion` JSON with `usage` (pre-encoded, so the
    upstream costs a few microseconds per request and is never the bottleneck);
  * with "stream": true -> `chat.completion.chunk` SSE events with chunked transfer encoding,
    `--chunks` of them `--interval` seconds apart, then (when `stream_options.include_usage` is
    set, as OpenAI does) a usage chunk with `"choices": []`, then `data: [DONE]`.
    Every content chunk carries the upstream's send time, `time.time()` taken just before the
    write, as `<ts:1732912345.123456>` in its `delta.content`, so a client can measure how long
    each chunk took to reach it through a proxy.
GET /healthz -> {"status": "ok"}. Keep-alive and pipelining are supported; `--procs N` runs N
processes on one SO_REUSEPORT socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time

CHAT_PATHS = (b"/v1/chat/completions", b"/chat/completions")
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024

COMPLETION = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1732912345,
    "model": "bench-upstream",
    "system_fingerprint": "fp_bench",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! This is a static answer from the benchmark upstream.",
                "refusal": None,
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 11, "total_tokens": 23},
}


def _response(status: str, content_type: str, body: bytes, close: bool = False) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "x-request-id: bench-upstream\r\n" + ("Connection: close\r\n" if close else "") + "\r\n"
    )
    return head.encode() + body


COMPLETION_RESPONSE = _response("200 OK", "application/json", json.dumps(COMPLETION).encode())
HEALTH_RESPONSE = _response("200 OK", "application/json", b'{"status": "ok"}')
NOT_FOUND_RESPONSE = _response(
    "404 Not Found",
    "application/json",
    b'{"error": {"message": "not found", "type": "invalid_request_error", '
    b'"param": null, "code": "not_found"}}',
)
BAD_REQUEST_RESPONSE = _response(
    "400 Bad Request",
    "application/json",
    b'{"error": {"message": "bad request", "type": "invalid_request_error", '
    b'"param": null, "code": "invalid_json"}}',
    close=True,
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"x-request-id: bench-upstream\r\n"
    b"\r\n"
)
CHUNK_PREFIX = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1732912345,'
    b'"model":"bench-upstream","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":'
)
USAGE_EVENT = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1732912345,'
    b'"model":"bench-upstream","system_fingerprint":"fp_bench","choices":[],'
    b'"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}\n\n'
)
STOP_EVENT = CHUNK_PREFIX + b'{},"logprobs":null,"finish_reason":"stop"}]}\n\n'
DONE_EVENT = b"data: [DONE]\n\n"


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def content_event(index: int) -> bytes:
    """One content chunk stamped with the time it leaves the upstream."""
    role = '"role":"assistant",' if index == 0 else ""
    delta = f'{{{role}"content":"<ts:{time.time():.6f}> "}}'
    return CHUNK_PREFIX + delta.encode() + b',"logprobs":null,"finish_reason":null}]}\n\n'


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: parse requests in order, answer each (streams asynchronously)."""

    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks = chunks
        self.interval = interval
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport
        # asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, which a socket made
        # with proto 0 is not: without it, Nagle holds a stream's first chunk back until the
        # client ACKs the headers (up to 40 ms of delayed ACK).
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self.process()

    def process(self) -> None:
        while not self.streaming and not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.fail()
                return
            head = self.buffer[:end]
            lines = head.split(b"\r\n")
            try:
                method, target, version = lines[0].split(b" ", 2)
            except ValueError:
                self.fail()
                return
            length = 0
            chunked = False
            close = version == b"HTTP/1.0"
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        self.fail()
                        return
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection":
                    token = value.strip().lower()
                    close = token == b"close" or (close and token != b"keep-alive")
            rest = self.buffer[end + 4 :]
            if chunked:
                decoded = _dechunk(rest)
                if decoded is None:
                    return  # wait for the rest of the body
                body, used = decoded
                self.buffer = rest[used:]
            else:
                if length > MAX_BODY:
                    self.fail()
                    return
                if len(rest) < length:
                    return
                body = rest[:length]
                self.buffer = rest[length:]
            self.handle(method, target.split(b"?", 1)[0], body, close)

    def handle(self, method: bytes, path: bytes, body: bytes, close: bool) -> None:
        transport = self.transport
        if method == b"POST" and path in CHAT_PATHS:
            try:
                request = json.loads(body) if body else {}
            except ValueError:
                self.fail()
                return
            if not isinstance(request, dict):
                self.fail()
                return
            if request.get("stream"):
                options = request.get("stream_options")
                usage = isinstance(options, dict) and bool(options.get("include_usage"))
                self.streaming = True
                asyncio.get_running_loop().create_task(self.stream(usage, close))
                return
            transport.write(COMPLETION_RESPONSE)
        elif method == b"GET" and path in (b"/healthz", b"/ping"):
            transport.write(HEALTH_RESPONSE)
        else:
            transport.write(NOT_FOUND_RESPONSE)
        if close:
            self.closed = True
            transport.close()

    async def stream(self, usage: bool, close: bool) -> None:
        transport = self.transport
        try:
            transport.write(STREAM_HEAD)
            for index in range(self.chunks):
                if self.closed:
                    return
                if index:
                    await asyncio.sleep(self.interval)
                    if self.closed:
                        return
                transport.write(_chunked(content_event(index)))
            tail = _chunked(STOP_EVENT)
            if usage:
                tail += _chunked(USAGE_EVENT)
            transport.write(tail + _chunked(DONE_EVENT) + b"0\r\n\r\n")
        finally:
            self.streaming = False
        if close:
            self.closed = True
            transport.close()
        elif not self.closed and self.buffer:
            self.process()

    def fail(self) -> None:
        if self.transport and not self.closed:
            self.transport.write(BAD_REQUEST_RESPONSE)
            self.transport.close()
        self.closed = True


def _dechunk(data: bytes) -> tuple[bytes, int] | None:
    """A whole chunked body and the bytes it used, or None while incomplete."""
    body = b""
    pos = 0
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            return None
        size = int(data[pos:line_end].split(b";", 1)[0].strip() or b"0", 16)
        start = line_end + 2
        if size == 0:
            trailer_end = data.find(b"\r\n\r\n", line_end)
            if trailer_end < 0:
                return None
            return body, trailer_end + 4
        if len(data) < start + size + 2:
            return None
        body += data[start : start + size]
        pos = start + size + 2


def make_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def serve(sock: socket.socket, chunks: int, interval: float) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, lambda: stop.done() or stop.set_result(None))
        server = await loop.create_server(
            lambda: UpstreamProtocol(chunks, interval), sock=sock, backlog=4096
        )
        async with server:
            await stop

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per stream")
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between chunks")
    parser.add_argument("--procs", type=int, default=1, help="processes on one SO_REUSEPORT port")
    args = parser.parse_args(argv)
    sock = make_socket(args.host, args.port)
    children = []
    for _ in range(max(1, args.procs) - 1):
        pid = os.fork()
        if pid == 0:
            serve(sock, args.chunks, args.interval)
            os._exit(0)
        children.append(pid)
    print(
        f"bench upstream on http://{args.host}:{args.port} ({args.procs} process(es), "
        f"{args.chunks} chunks / {args.interval * 1000:.0f} ms)",
        file=sys.stderr,
        flush=True,
    )
    try:
        serve(sock, args.chunks, args.interval)
    finally:
        for pid in children:
            try:
                os.kill(pid, signal.SIGTERM)
                os.waitpid(pid, 0)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
