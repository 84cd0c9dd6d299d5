"""`stamp_headers` leaves exactly the header list werkzeug's set/setdefault calls would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from app.fastheaders import stamp_headers

NAMES = st.sampled_from(
    [
        "x-request-id",
        "X-Request-ID",
        "X-Content-Type-Options",
        "x-content-type-options",
        "Cache-Control",
        "cache-control",
        "Content-Type",
        "x-ratelimit-limit-requests",
        "Vary",
    ]
)
LISTS = st.lists(st.tuples(NAMES, st.sampled_from(["a", "b", "no-cache", ""])), max_size=8)


def _reference(headers: Headers, request_id: str) -> None:
    headers["x-request-id"] = request_id
    headers["X-Content-Type-Options"] = "nosniff"
    headers.setdefault("Cache-Control", "no-store")


@settings(max_examples=300, deadline=None)
@given(LISTS, st.sampled_from(["rid", "0123abcd"]))
def test_same_headers_as_set_and_setdefault(items, request_id):
    ours, theirs = Headers(items), Headers(items)
    stamp_headers(ours, request_id)
    _reference(theirs, request_id)
    assert list(ours.items()) == list(theirs.items())


def test_a_typical_answer():
    headers = Headers([("Content-Type", "application/json"), ("x-ai-proxy-model", "m")])
    stamp_headers(headers, "rid")
    assert headers["x-request-id"] == "rid"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Cache-Control"] == "no-store"
