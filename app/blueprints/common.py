"""Helpers the blueprints share: reading the request, authenticating, shaping responses."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterator

from flask import Blueprint, Request, current_app, g, request

from ..auth import require_model
from ..config import TokenConfig
from ..errors import (
    InvalidJSONError,
    InvalidRequestError,
    RequestTooLargeError,
    UnsupportedMediaTypeError,
)
from ..fastresponse import ProxyResponse as Response
from ..redact import CLIENT_WORDS
from ..state import CURRENT_REQUEST, EXTENSION_KEY, ProxyState, RequestState

logger = logging.getLogger(__name__)

# Answers longer than this are sent in slices of SLICE_CHARS (see json_response).
LARGE_ANSWER_CHARS = 1024 * 1024
SLICE_CHARS = 256 * 1024
CHUNK_BYTES = 65536


def proxy_state() -> ProxyState:
    current = CURRENT_REQUEST.get()
    if current is not None and current.proxy is not None:
        return current.proxy
    return current_app.extensions[EXTENSION_KEY]


def api_blueprint(name: str, import_name: str) -> Blueprint:
    """A surface's blueprint: every route on it wants a client token."""
    bp = Blueprint(name, import_name)

    @bp.before_request
    def require_token() -> None:
        authenticate()

    return bp


def current_request() -> Request:
    """`flask.request` itself (the object behind werkzeug's proxy), kept since the request
    began: one context-variable read instead of the proxy's look-up at every use."""
    current = CURRENT_REQUEST.get()
    if current is not None and current.request is not None:
        return current.request
    return request._get_current_object()


def request_state() -> RequestState:
    """This request's state (made when it began)."""
    current = CURRENT_REQUEST.get()
    return current if current is not None else g.ai_proxy


def authenticate(query_key: str | None = None) -> TokenConfig:
    """The caller's token, or a 401 (no token configured: loopback callers only); `query_key`
    is a token from the URL, for the surfaces that take one (Gemini's `?key=`)."""
    req = current_request()
    token = proxy_state().authenticator.authenticate(req.headers, req.remote_addr, query_key)
    request_state().token = token
    note(token=token.name)
    return token


def note(**fields) -> dict:
    """Add fields to this request's log line (and return the line's record)."""
    record = request_state().record
    record.update(fields)
    return record


def read_json_body() -> tuple[object, int]:
    """The parsed JSON body and its size in bytes; 413 past the size limit, 400 if not JSON.

    Non-finite numbers (`NaN`, `Infinity`, `1e999`) are refused anywhere in the body: they are
    not JSON, and forwarding them would send an upstream a body it cannot read. So is nesting
    deeper than `MAX_DEPTH`, which later encoding would fail on with a RecursionError.
    """
    coding = current_request().headers.get("Content-Encoding", "").strip().lower()
    if coding and coding != "identity":
        # Not decoded here: a small compressed body can stand for any size of JSON.
        raise UnsupportedMediaTypeError(
            "A compressed request body (Content-Encoding) is not supported; send it uncompressed."
        )
    raw = _read_body(proxy_state().config.server.max_body_bytes)
    words = CLIENT_WORDS.get()
    if words is not None:
        words.body = raw
    if not raw:
        raise InvalidJSONError("The request body is empty; send a JSON object.")
    try:
        body = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite)
    except _NonFinite as err:
        raise InvalidJSONError(str(err)) from None
    except json.JSONDecodeError as err:
        raise InvalidJSONError(
            f"The request body is not valid JSON: {err.msg} at line {err.lineno}, column "
            f"{err.colno}."
        ) from None
    except UnicodeDecodeError as err:
        raise InvalidJSONError(
            f"The request body is not UTF-8 text (byte {err.object[err.start]:#04x} at offset "
            f"{err.start})."
        ) from None
    except ValueError:
        # What else json.loads refuses is a number too long to read (Python reads integers of
        # up to 4,300 digits): no API takes one.
        raise InvalidJSONError("The request body holds a number too long to read.") from None
    except RecursionError:
        raise InvalidJSONError("The request body is nested too deeply.") from None
    # Only a body whose brackets nest that deep can be (those in strings count too, so it is
    # an upper bound): most bodies, with tools or not, are never walked.
    if raw.count(b"[") + raw.count(b"{") > MAX_DEPTH and _bracket_depth(raw) > MAX_DEPTH:
        check_depth(body)
    return body, len(raw)


# How deep a request body may nest (Google's own API refuses far less): deeper ones would
# exhaust the stack of whatever encodes or walks them later (a RecursionError, not a 400).
MAX_DEPTH = 256


def check_depth(body: object, limit: int = MAX_DEPTH) -> None:
    """400 for a body nested deeper than `limit` (Google's own API refuses far less): deeper
    ones would exhaust the stack of whatever encodes or walks them later."""
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            raise InvalidRequestError(f"The request body is nested deeper than {limit} levels.")
        if isinstance(value, dict):
            stack.extend((inner, depth + 1) for inner in value.values())
        elif isinstance(value, list):
            stack.extend((inner, depth + 1) for inner in value)


_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_OPENING = frozenset(b"[{")


def _bracket_depth(raw: bytes) -> int:
    """How deep the brackets of `raw` nest, strings not told apart (the C-level translate leaves
    only the brackets to count)."""
    depth = deepest = 0
    for byte in raw.translate(None, _NOT_BRACKETS):
        if byte in _OPENING:
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


class _NonFinite(Exception):
    """A number JSON cannot carry (kept apart from ValueError so its message is the whole one)."""


def _refuse_constant(name: str):
    raise _NonFinite(f"The request body holds {name}, which is not a JSON number.")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NonFinite(f"The request body holds a number too large for JSON ({text[:40]}).")
    return value


def _read_body(limit: int) -> bytes:
    """The request body, or 413 if it is longer than `limit` bytes, whether or not it is chunked.

    Werkzeug refuses a declared `Content-Length` over `request.max_content_length` itself, but a
    chunked body (no length; gunicorn sets `wsgi.input_terminated`) it only cuts at the limit,
    silently: so such a body is read here up to one byte past the limit, and that byte refuses it.
    """
    req = current_request()
    if req.content_length is not None or not req.environ.get("wsgi.input_terminated"):
        return req.get_data(cache=False)
    stream = req.environ["wsgi.input"]
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = stream.read(min(CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise RequestTooLargeError(
            f"The request body is larger than {limit} bytes.", headers={"Connection": "close"}
        )
    return b"".join(chunks)


def json_response(payload: object, status: int = 200, headers: dict | None = None) -> Response:
    """A JSON answer. A large one is encoded as it is sent, in slices, instead of whole: the
    answer is then held about twice (its objects and the piece being sent), not three times."""
    if _holds_more_text(payload, LARGE_ANSWER_CHARS):
        body: object = _encoded(payload)
    else:
        body = json.dumps(payload)
    # Headers given whole are added as they are; set one by one, each would be looked for
    # among those already there first (werkzeug's Headers.set scans the list).
    return Response(body, status=status, headers=headers, mimetype="application/json")


def _holds_more_text(payload: object, limit: int) -> bool:
    """Whether the strings in a JSON value add up to more than `limit` characters."""
    stack, total = [payload], 0
    pop, extend = stack.pop, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            total += len(item)
            if total > limit:
                return True
        elif kind is dict:
            # Everything is pushed: popping a number costs less than filtering it out first.
            extend(item)
            extend(item.values())
        elif kind is list or kind is tuple:
            extend(item)
        elif kind in _SCALARS:
            continue
        elif isinstance(item, str | dict | list | tuple):
            stack.append(_plain(item))
    return False


_SCALARS = frozenset({int, float, bool, type(None)})


def _plain(item: object) -> object:
    """A subclass of str, dict, list or tuple as its base type (for `_holds_more_text`)."""
    for base in (str, dict, list, tuple):
        if isinstance(item, base):
            return base(item)
    return item


def _encoded(payload: object) -> Iterator[bytes]:
    # json.dumps would hold every piece and then their join; pieces are sent as they come.
    for piece in json.JSONEncoder().iterencode(payload):
        for start in range(0, len(piece), SLICE_CHARS):
            yield piece[start : start + SLICE_CHARS].encode("ascii")


def authorise_model(token: TokenConfig, identifier: str) -> None:
    """403 unless the token may use `identifier`: asked before anything tells whether the model
    exists or what kind it is, so a token's allow-list hides everything outside it."""
    require_model(token, identifier, proxy_state().router.is_category(identifier))


def header_safe(text: str, limit: int = 1000) -> str:
    """Client-supplied names inside a header: ASCII only, no control characters, bounded."""
    ascii_text = text.encode("ascii", "backslashreplace").decode("ascii")
    return re.sub(r"[\x00-\x1f\x7f]", "?", ascii_text)[:limit]
