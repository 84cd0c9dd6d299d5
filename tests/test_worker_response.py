"""The worker's HTTP/1 response (app.worker.OneWriteResponse): a whole body goes out in one
write with its header block; anything else is written as gunicorn writes it. Requests are parsed
by gunicorn's own parser off a real socket; the answer's socket counts its writes."""

from __future__ import annotations

import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser

from app.worker import OneWriteResponse
from tests.servers import CountingSocket


@pytest.fixture
def exchange():
    """(request bytes) -> (gunicorn request, the counting server socket, the client socket)."""
    pairs = []

    def make(raw: bytes):
        server, client = socket.socketpair()
        pairs.append((server, client))
        client.sendall(raw)
        cfg = Config()
        req = next(RequestParser(cfg, server, ("127.0.0.1", 1)))
        return req, CountingSocket(server), client, cfg

    yield make
    for server, client in pairs:
        server.close()
        client.close()


def answer(exchange, method: str, status: str, headers: list, pieces: list[bytes], cls=None):
    """What a response of `cls` (default OneWriteResponse) writes: its writes, and the wire."""
    req, sock, client, cfg = exchange(f"{method} / HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    resp = (cls or OneWriteResponse)(req, sock, cfg)
    resp.start_response(status, headers)
    for piece in pieces:
        resp.write(piece)
    resp.close()
    client.settimeout(5)
    sock._sock.shutdown(socket.SHUT_WR)
    wire = b""
    while chunk := client.recv(65536):
        wire += chunk
    return sock.sent, wire


def test_a_whole_body_goes_out_with_its_headers(exchange):
    body = b'{"id": "chatcmpl-1", "choices": []}'
    sent, wire = answer(
        exchange,
        "POST",
        "200 OK",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        [body],
    )
    assert len(sent) == 1
    assert wire == sent[0]
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n") and wire.endswith(b"\r\n\r\n" + body)
    assert b"Content-Length: %d\r\n" % len(body) in wire


@pytest.mark.parametrize(
    "method, status, headers, pieces, writes",
    [
        # A stream: chunked, each piece framed and written as it comes.
        ("POST", "200 OK", [("Content-Type", "text/event-stream")], [b"data: 1\n\n", b"x"], 4),
        # A body in pieces under its Content-Length.
        ("POST", "200 OK", [("Content-Length", "6")], [b"abc", b"def"], 3),
        # No body: HEAD, 204 and 304 answers.
        ("HEAD", "200 OK", [("Content-Length", "5")], [b"hello"], 1),
        ("POST", "204 No Content", [], [b""], 1),
        ("GET", "304 Not Modified", [("Content-Length", "5")], [b"hello"], 1),
        # An empty body.
        ("POST", "200 OK", [("Content-Length", "0")], [b""], 1),
    ],
    ids=["chunked stream", "body in pieces", "HEAD", "204", "304", "empty"],
)
def test_other_answers_are_written_as_gunicorn_writes_them(
    exchange, method, status, headers, pieces, writes
):
    sent, wire = answer(exchange, method, status, headers, pieces)
    assert len(sent) == writes
    assert wire == b"".join(sent)
    assert wire.startswith(f"HTTP/1.1 {status}\r\n".encode())
    sent_plain, wire_plain = answer(exchange, method, status, headers, pieces, wsgi.Response)
    assert len(sent_plain) == writes
    assert _without_date(wire) == _without_date(wire_plain)


def _without_date(wire: bytes) -> bytes:
    return b"\r\n".join(line for line in wire.split(b"\r\n") if not line.startswith(b"Date: "))


def test_the_same_bytes_as_gunicorns_own_response(exchange):
    body = b"x" * 1000
    headers = [("Content-Type", "application/json"), ("Content-Length", "1000")]
    sent, wire = answer(exchange, "POST", "200 OK", headers, [body])
    plain_sent, plain = answer(exchange, "POST", "200 OK", headers, [body], wsgi.Response)
    assert len(plain_sent) == 2  # gunicorn's own: the header block, then the body
    assert len(sent) == 1
    assert _without_date(wire) == _without_date(plain)
