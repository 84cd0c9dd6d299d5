"""The plumbing every adapter shares: a deployment's URL root, and its upstream JSON event streams.

Provider modules keep only the translation between the canonical form and their wire format;
how a configured URL becomes the API root and how a stream's events are read live here once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

import requests

from ..errors import UpstreamError
from ..streaming import iter_sse
from ..upstream import read_chunks, safe_text

# The last segment of a versioned API root: `v1`, `v1beta`, `v2`, `v1alpha2` ...
_VERSION_SEGMENT_RE = re.compile(r"^v\d+(?:\.\d+)?[a-z]*\d*$", re.IGNORECASE)
DONE = "[DONE]"


def api_root(url: str, suffixes: tuple[str, ...] | re.Pattern = (), api_path: str = "") -> str:
    """The API root a configured `base_url` or Go-style `url` names, as the adapter's paths
    expect it.

    The query and fragment go (credentials travel in headers), then a trailing slash, then one
    endpoint suffix a Go-style `url` may carry (`/messages`, `/v2/chat`, ...). Then the root is
    completed with `api_path`, the part of the path every endpoint of the API sits under
    (`/v1`, `/v1beta`, `/api/v1`): a root given as the provider's own SDK takes it, without its
    version (`https://api.anthropic.com`), reaches the same endpoints as the versioned one
    (`https://api.anthropic.com/v1`). A root that already names a version keeps its own.
    """
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    if isinstance(suffixes, re.Pattern):
        path = suffixes.sub("", path).rstrip("/")
        suffixes = ()
    for suffix in suffixes:
        if path.lower().endswith(suffix.lower()):
            path = path[: -len(suffix)].rstrip("/")
            break
    path = _completed(path, api_path)
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def _completed(path: str, api_path: str) -> str:
    """`path` ending with `api_path`: the segments of it that are missing are appended."""
    wanted = [s for s in api_path.split("/") if s]
    if not wanted:
        return path
    have = [s for s in path.split("/") if s]
    if have and _VERSION_SEGMENT_RE.match(have[-1]) and _VERSION_SEGMENT_RE.match(wanted[-1]):
        # Another version of the same API (Gemini's `v1` for `v1beta`): the user's choice.
        return path
    # The longest head of `api_path` the root already ends with (`/api` of `/api/v1`).
    for size in range(len(wanted), 0, -1):
        if [s.lower() for s in have[-size:]] == [s.lower() for s in wanted[:size]]:
            return "/".join(["", *have, *wanted[size:]])
    return "/".join(["", *have, *wanted])


class Event(NamedTuple):
    """One upstream stream event: its SSE `event:` name (often None) and its JSON payload."""

    name: str | None
    data: dict


def answered_whole(response: requests.Response) -> bool:
    """Whether an upstream asked to stream answered with one whole JSON body instead."""
    return "application/json" in response.headers.get("Content-Type", "")


def json_events(
    stream,
    failure: Callable[[Event], str | None] | None = None,
    *,
    done: str | None = DONE,
    lists: bool = False,
) -> Iterator[Event]:
    """The JSON events of `stream.response`, an SSE stream, each as soon as it is read.

    `done` (OpenAI's `[DONE]`) ends the events and marks the stream completed, so its
    connection can go back to the pool; the caller marks other endings. Empty events are
    skipped. Invalid JSON, a payload that is not an object, and an in-band error event (for
    which `failure` returns the upstream's message) are retryable upstream failures, with the
    message scrubbed. With `lists`, a JSON array is a batch of events (Gemini's error bodies).
    """
    label = stream.label
    for sse in iter_sse(read_chunks(stream.response, label), label):
        data = sse.data.strip()
        if not data:
            continue
        if done is not None and data == done:
            stream.completed = True
            return
        try:
            payload = json.loads(data)
        except ValueError as err:
            raise UpstreamError(f"{label}: the stream sent invalid JSON") from err
        for item in payload if lists and isinstance(payload, list) else (payload,):
            if not isinstance(item, dict):
                raise UpstreamError(f"{label}: the stream sent an unexpected event")
            event = Event(sse.event, item)
            message = failure(event) if failure is not None else None
            if message is not None:
                raise UpstreamError(f"{label}: the stream failed: {safe_text(message)}")
            yield event
