"""Pins app.hooks.http_client: its header parser builds exactly the message http.client's own
builds (through the email package), for any header block, and upstream answers go through it.
"""

from __future__ import annotations

import email.errors
import http.client
import io
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.hooks import http_client as hook
from app.hooks.http_client import fast_parse_headers

ORIGINAL = hook._original

PLAIN = (
    b"Content-Type: application/json\r\n"
    b"Content-Length: 245\r\n"
    b"Date: Thu, 03 Dec 2026 21:00:00 GMT\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"x-empty:\r\n"
    b"x-blanks: \t padded \t\r\n"
    b"x-latin: caf\xe9\r\n"
    b"\r\n"
)


def state(message) -> dict:
    """Everything a message holds, its defects by kind and text (they are new objects)."""
    fields = dict(vars(message))
    fields["defects"] = [(type(d), str(d)) for d in fields["defects"]]
    if isinstance(fields["_payload"], list):  # the parts of a multipart or message type
        fields["_payload"] = [state(part) for part in fields["_payload"]]
    return fields


def both(block: bytes):
    """Each parser's outcome on the same bytes (message state or exception type) and what each
    left unread."""
    outcomes = []
    for parse in (ORIGINAL, fast_parse_headers):
        fp = io.BytesIO(block)
        try:
            outcome = state(parse(fp))
        except http.client.HTTPException as err:
            outcome = type(err)
        outcomes.append((outcome, fp.read()))
    return outcomes


def test_a_plain_block_is_built_without_the_email_parser():
    lines = http.client._read_headers(io.BytesIO(PLAIN))
    built = hook._from_plain_lines(lines)
    assert built is not None
    assert built.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert built["x-blanks"] == "padded \t"
    assert built["x-latin"] == "caf\xe9"
    assert state(built) == state(ORIGINAL(io.BytesIO(PLAIN)))


@pytest.mark.parametrize(
    "block",
    [
        PLAIN,
        PLAIN.replace(b"\r\n", b"\n"),
        b"\r\n",  # no headers
        b"",  # the connection closed before any line
        b"A: 1\r\n",  # closed before the empty line
        b"A: 1\r\n folded\r\n\r\n",  # a continuation line
        b" leading: continuation\r\nA: 1\r\n\r\n",
        b"A: 1\r2\r\n\r\n",  # a bare CR inside a value
        b"A: 1\r\r\n\r\n",
        b": no name\r\nA: 1\r\n\r\n",
        b"no colon\r\nA: 1\r\n\r\n",
        b"From nobody Thu Dec  3\r\nA: 1\r\n\r\n",  # an mbox envelope line
        b"A: 1\r\nFrom somebody\r\n\r\n",
        b"Bad Name: 1\r\n\r\n",
        b"A: x\x85y\x0cz\x0b\x1c\x1d\x1e\r\n\r\n",  # what str.splitlines would split at
        b"Content-Type: multipart/mixed; boundary=x\r\n\r\n",
        b"Content-Type: message/rfc822\r\n\r\n",
        b"Content-Type: Message/Delivery-Status\r\n\r\n",
        b"A: 1\r\n\r\nbody after the block\r\n",
        b"A: " + b"x" * (http.client._MAXLINE + 1) + b"\r\n\r\n",  # a line over the limit
        b"A: 1\r\n" * (http.client._MAXHEADERS + 1) + b"\r\n",  # too many lines
    ],
)
def test_every_kind_of_block_gives_what_http_client_gives(block):
    original, fast = both(block)
    assert fast == original


# Bytes that matter to one parser or the other, and a few ordinary ones.
_PIECES = st.sampled_from(
    [b"a", b"Z", b"-", b"1", b":", b" ", b"\t", b"\r", b"\n", b"\r\n", b"From ", b"\x85",
     b"\x0c", b"\x0b", b"\x1c", b"\xe9", b"\x00", b"\x7f", b"multipart/x", b"message/y",
     b"Content-Type", b"text/plain"]
)  # fmt: skip
_LINE = st.lists(_PIECES, max_size=8).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(
    lines=st.lists(_LINE, max_size=6),
    ending=st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
    end=st.sampled_from([b"\r\n", b"\n", b""]),
    rest=st.sampled_from([b"", b"body", b"Next: header\r\n"]),
)
def test_generated_blocks_give_what_http_client_gives(lines, ending, end, rest):
    block = b"".join(line + ending for line in lines) + end + rest
    original, fast = both(block)
    assert fast == original


@settings(max_examples=200, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1).filter(
                lambda name: ":" not in name
            ),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=20),
        ),
        max_size=8,
    )
)
def test_generated_plain_blocks_take_the_fast_path(headers):
    block = b"".join(f"{n}:{v}\r\n".encode("iso-8859-1") for n, v in headers) + b"\r\n"
    original, fast = both(block)
    assert fast == original
    lines = http.client._read_headers(io.BytesIO(block))
    plain = all(not any(c in v for c in "\r\n\x85\x0b\x0c\x1c\x1d\x1e") for _, v in headers)
    kinds = [v.lower() for n, v in headers if n.lower() == "content-type"]
    if plain and not any("multipart" in k or "message" in k for k in kinds):
        assert hook._from_plain_lines(lines) is not None


def test_another_message_class_goes_to_the_original():
    class Other(http.client.HTTPMessage):
        pass

    message = fast_parse_headers(io.BytesIO(PLAIN), Other)
    assert type(message) is Other
    assert message["Content-Length"] == "245"


def test_upstream_answers_are_parsed_by_the_hook():
    """Installed with the proxy's upstream pool; a real answer off a socket through requests."""
    from app.config import RetryConfig
    from app.upstream import UpstreamPool

    pool = UpstreamPool(RetryConfig(max_retries=0), 2)
    try:
        assert http.client.parse_headers is fast_parse_headers
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-one: 1\r\n"
            b"x-two:  two \r\nx-one: again\r\nContent-Length: 2\r\n\r\n{}"
        )
        with _raw_server([head, head.replace(b"x-one: 1\r\n", b"x-one: 1\r\n folded\r\n")]) as url:
            for expected in ("1, again", "1\r\n folded, again"):  # (compat32 keeps the fold)
                answer = pool.send(
                    "GET", url + "/h", label="t", headers={}, timeout=(5, 5), verify=False
                )
                assert answer.headers["x-one"] == expected
                assert answer.headers["x-two"] == "two "
                assert answer.content == b"{}"
    finally:
        pool.close()


class _raw_server:
    """A server on loopback that answers each request on one connection with the next of
    `answers`, byte for byte."""

    def __init__(self, answers: list[bytes]) -> None:
        self.answers = answers
        self.sock = socket.create_server(("127.0.0.1", 0))

    def __enter__(self) -> str:
        threading.Thread(target=self._serve, daemon=True).start()
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn:
            for answer in self.answers:
                data = b""
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                conn.sendall(answer)


def test_the_defects_the_email_parser_notes_still_come_through():
    message = fast_parse_headers(io.BytesIO(b" continuation\r\nA: 1\r\n\r\n"))
    assert [type(d) for d in message.defects] == [email.errors.FirstHeaderLineIsContinuationDefect]
