"""The worker's HTTP/1 response (app.worker.OneWriteResponse): a whole body goes out in one
write with its header block; anything else is written as gunicorn writes it. Requests are parsed
by gunicorn's own parser off a real socket; the answer's socket counts its writes."""

from __future__ import annotations

import socket

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi
from gunicorn.http.parser import RequestParser
from hypothesis import given, settings
from hypothesis import strategies as st

from app import worker
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


# -- the headers' check ------------------------------------------------------------------------


def processed(cls, headers: list) -> tuple:
    """What `process_headers` of a fresh response of `cls` keeps, or the error it raises."""
    resp = cls.__new__(cls)
    resp.headers, resp.response_length, resp.upgrade = [], None, False
    try:
        resp.process_headers(headers)
    except Exception as err:  # noqa: BLE001 - compared with gunicorn's
        return type(err), str(err)
    return resp.headers, resp.response_length, resp.upgrade


NAMES = st.sampled_from(
    ["Content-Type", "Content-Length", "x-request-id", "Connection", "Upgrade", "Date",
     "Transfer-Encoding", "Bad Name", "bad:name", "", b"X-Bytes", "X-Ok"]
)  # fmt: skip
VALUES = st.one_of(
    st.sampled_from(["application/json", " 12 ", "websocket", "upgrade", "x\r\ny", "\t", ""]),
    st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=6),
    st.just(b"bytes"),
    st.just(7),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=6))
def test_headers_are_kept_and_refused_as_gunicorn_keeps_and_refuses_them(headers):
    expected = processed(wsgi.Response, headers)
    # Twice: the second time every name accepted the first time is known.
    assert processed(OneWriteResponse, headers) == expected
    assert processed(OneWriteResponse, headers) == expected


def test_known_names_take_the_one_pass_check():
    worker._KNOWN_NAMES.clear()
    headers = [("Content-Type", "application/json"), ("Content-Length", " 2"), ("X-A", "b\t")]
    assert processed(OneWriteResponse, headers) == (
        [("Content-Type", "application/json"), ("Content-Length", "2"), ("X-A", "b")],
        2,
        False,
    )
    assert worker._KNOWN_NAMES == {
        "Content-Type": "content-type",
        "Content-Length": "content-length",
        "X-A": "x-a",
    }
    # Hop-by-hop names are never known: gunicorn drops or handles each of them.
    processed(OneWriteResponse, [("Connection", "close"), ("Upgrade", "websocket")])
    assert "Connection" not in worker._KNOWN_NAMES and "Upgrade" not in worker._KNOWN_NAMES


def test_known_names_stay_bounded():
    worker._KNOWN_NAMES.clear()
    for index in range(3 * worker.MAX_KNOWN_NAMES):
        processed(OneWriteResponse, [(f"X-{index}", "1"), ("X-Other", "2")])
        assert len(worker._KNOWN_NAMES) <= worker.MAX_KNOWN_NAMES


def test_known_names_cleared_by_another_thread_midway_change_nothing(monkeypatch):
    """Each name is looked up once, in the check: a clear after it (another thread's slow path
    making room) cannot fail the copy that follows."""

    class ClearedOnceChecked(dict):
        def __getitem__(self, key):  # a second look-up would find the name gone
            raise KeyError(key)

    headers = [("Content-Type", "application/json"), ("Content-Length", "2")]
    known = ClearedOnceChecked({"Content-Type": "content-type", "Content-Length": "content-length"})
    monkeypatch.setattr(worker, "_KNOWN_NAMES", known)
    assert processed(OneWriteResponse, headers) == (headers, 2, False)
    # Not a list (WSGI says a list): gunicorn's own check, which reads it once.
    assert processed(OneWriteResponse, iter(headers)) == (headers, 2, False)
