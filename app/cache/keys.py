"""Cache keys: which requests are the same request, as a SHA-256 digest.

The key is made of the surface and the endpoint (a body valid for two endpoints of one surface,
say chat and legacy completions, has a different answer on each), the public model name the
client asked for, the scope (the client token's name, or one shared scope), the request headers
a surface names as changing the answer, and the body in canonical form: keys sorted, integral
floats written as integers (`1.0` and `1` are one number), and the fields that do not change
the answer left out (`stream`, `stream_options`, the client's `user` and `metadata`). A client
token is never part of a key: only its configured name is.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

# Top-level body fields that never change an answer: how it is delivered, and who asks.
IGNORED_FIELDS = frozenset({"stream", "stream_options", "user", "metadata"})
SHARED_SCOPE = "*"
# Longest header value that is part of a key; longer ones are hashed like the rest anyway.
MAX_HEADER_CHARS = 1000


@dataclass(frozen=True)
class CacheKey:
    """A request's cache identity: its digest, and the public model name it was asked for."""

    digest: str  # sha256 hex of everything that identifies the answer
    model: str  # the public model name the client sent (for deleting one model's entries)


def canonical(value: object) -> object:
    """A JSON value with integral floats as ints, so equal numbers make equal keys.

    Iterative, so a body nested as deep as the JSON reader accepts needs no recursion here.
    """
    root = [value]
    pending: list[tuple[list | dict, int | str]] = [(root, 0)]
    while pending:
        container, slot = pending.pop()
        item = container[slot]
        if isinstance(item, float) and item.is_integer() and abs(item) < 2**53:
            container[slot] = int(item)
        elif isinstance(item, dict):
            container[slot] = copied = dict(item)
            pending.extend((copied, key) for key in copied)
        elif isinstance(item, list):
            container[slot] = copied = list(item)
            pending.extend((copied, index) for index in range(len(copied)))
    return root[0]


def key_body(body: Mapping) -> dict:
    """The part of a request body that identifies its answer."""
    return {key: value for key, value in body.items() if key not in IGNORED_FIELDS}


def make_key(
    surface: str,
    model: str,
    scope: str,
    body: Mapping,
    headers: Mapping[str, str] | None = None,
    endpoint: str = "",
) -> CacheKey:
    """The key of one request; `body` is the part `key_body` keeps (or a surface's own);
    `endpoint` names the operation (`create_chat_completion`), so no two share an entry."""
    identity = {
        "surface": surface,
        "endpoint": endpoint,
        "model": model,
        "scope": scope,
        "headers": {
            name.lower(): value[:MAX_HEADER_CHARS] for name, value in (headers or {}).items()
        },
        "body": body,
    }
    text = _dumps(identity)
    if _INTEGRAL_FLOAT.search(text):
        # Rare: a float written `1.0` somewhere (or text that looks like one); write it as `1`.
        text = _dumps({**identity, "body": canonical(body)})
    return CacheKey(hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest(), model)


def _dumps(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# How json writes an integral float (`1.0`, `-3.0`) before the next item or the end of its
# container; JSON text without it holds no float that `canonical` would change.
_INTEGRAL_FLOAT = re.compile(r"\.0[,}\]]")
