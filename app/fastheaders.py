"""The headers every proxy answer carries, set with one look through the answer's headers.

werkzeug's `Headers.__setitem__` and `setdefault` each scan the whole list (lower-casing every
name) to find an existing one; an answer of the proxy carries a dozen headers (rate limits,
model, attempts), so three such calls cost more than the rest of the response hook.
`stamp_headers` looks once, then appends what is absent (as `set` would, at the end) and falls
back to `set` only for a header already there, so the result is the same header list.
"""

from __future__ import annotations

from werkzeug.datastructures import Headers


def stamp_headers(headers: Headers, request_id: str) -> None:
    """x-request-id and X-Content-Type-Options set, Cache-Control defaulted to no-store."""
    present = {name.lower() for name, _value in headers}
    if "x-request-id" in present:
        headers["x-request-id"] = request_id
    else:
        headers.add("x-request-id", request_id)
    if "x-content-type-options" in present:
        headers["X-Content-Type-Options"] = "nosniff"
    else:
        headers.add("X-Content-Type-Options", "nosniff")
    if "cache-control" not in present:
        headers.add("Cache-Control", "no-store")
