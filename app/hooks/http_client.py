"""http.client internals the proxy relies on: the header parser of every upstream answer.

- `parse_headers`: `http.client.HTTPResponse.begin` reads an answer's header block through the
  module's `parse_headers(fp)`, which joins the lines and hands them to the `email` package's
  feed parser (about 28 us for a typical upstream answer, most of a request's header work).
  For a block of plain `Name: value` lines, the common case by far, `fast_parse_headers` builds
  the very same `HTTPMessage` directly (about 6 us); anything else (a folded or malformed line,
  a bare CR, a missing end, a multipart or message type, another message class) goes to the
  original. It reads lines with `http.client._read_headers` (the line and count limits) and
  fills `Message._headers` and `_payload` as `email.feedparser` with the compat32 policy does.

tests/test_hooks_http_client.py compares the two on generated header blocks, so an upgrade that
changes either side fails there.
"""

from __future__ import annotations

import http.client
import re

_original = http.client.parse_headers

# Header lines the feed parser splits as "name:value" with nothing else to do: a name of the
# characters its header pattern allows (printable, no colon or space), then a value with no CR
# or LF (the feed parser splits lines at a bare CR too), then the line's end.
_LINE = r"([\x21-\x39\x3b-\x7e]+):([^\r\n]*)\r?\n"
_PLAIN_BLOCK = re.compile(f"(?:{_LINE})*")
_PLAIN_LINE = re.compile(_LINE)


def fast_parse_headers(fp, _class=http.client.HTTPMessage):
    """`http.client.parse_headers`, the same message built without the email parser when every
    line is a plain header line."""
    if _class is not http.client.HTTPMessage:
        return _original(fp, _class)
    lines = http.client._read_headers(fp)
    message = _from_plain_lines(lines)
    if message is None:
        # Read already: the original parses the same lines from a file of them.
        return _original(_Lines(lines), _class)
    return message


def _from_plain_lines(lines: list[bytes]) -> http.client.HTTPMessage | None:
    if lines[-1] not in (b"\r\n", b"\n"):
        return None  # the block ended without its empty line
    block = b"".join(lines[:-1]).decode("iso-8859-1")
    if _PLAIN_BLOCK.fullmatch(block) is None:
        return None
    # compat32's header_source_parse: the value without leading blanks or trailing CR/LF.
    headers = [(name, value.lstrip(" \t")) for name, value in _PLAIN_LINE.findall(block)]
    for name, value in headers:
        if name.lower() == "content-type":
            kind = value.lower()
            if "multipart" in kind or "message" in kind:
                return None  # the feed parser looks for parts (and notes defects) in these
    message = http.client.HTTPMessage()
    message._headers = headers
    message._payload = ""  # the (empty) rest of the block, as the feed parser sets it
    return message


class _Lines:
    """Lines already read, offered again through `readline` (for the original parser)."""

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = iter(lines)

    def readline(self, limit: int = -1) -> bytes:
        return next(self._lines, b"")


def install() -> None:
    """Every `http.client` answer's headers parsed by `fast_parse_headers` (idempotent)."""
    http.client.parse_headers = fast_parse_headers
