"""ProxyResponse (app.fastresponse) against flask.Response: the same status, headers (names,
values, order) and body on the wire for every kind of answer, the same errors for bad headers."""

from __future__ import annotations

import pytest
from flask import Response
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers
from werkzeug.test import EnvironBuilder, run_wsgi_app

from app.fastresponse import ProxyResponse, plain_headers

ENVIRON = EnvironBuilder(path="/v1/chat/completions", method="POST").get_environ()

HEADERS = [
    None,
    {},
    {"x-ai-proxy-model": "m", "x-ai-proxy-attempts": "1", "x-ratelimit-limit-requests": "10"},
    {"Content-Type": "text/plain", "X-Custom": "a"},
    {"content-length": "3"},
    {"Location": "/elsewhere"},
    {"Content-Location": "/über"},
    {"x-number": 5, "x-text": "a"},
    {"x-list": ["a", "b"], "x-text": "c"},
    {"x-tuple": ("a", "b")},
    {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    {"x-unicode": "héllo"},
]
BODIES = [b'{"a": 1}', '{"é": 1}', [b"a", b"bc"], None]
STATUSES = [200, 201, 204, 301, 304, 404, 429, 500]


def wire(cls, body, status, headers, mimetype="application/json"):
    response = cls(body() if callable(body) else body, status, headers, mimetype=mimetype)
    app_iter, status_line, sent = run_wsgi_app(response, dict(ENVIRON))
    return status_line, list(sent.items()), b"".join(app_iter)


@pytest.mark.parametrize("headers", HEADERS)
@pytest.mark.parametrize("body", BODIES)
@pytest.mark.parametrize("status", STATUSES)
def test_same_answer_on_the_wire(headers, body, status):
    copy = dict(headers) if headers is not None else None
    assert wire(ProxyResponse, body, status, copy) == wire(Response, body, status, headers)


def events():
    yield b"data: 1\n\n"
    yield b"data: [DONE]\n\n"


@pytest.mark.parametrize("headers", HEADERS[:4])
def test_same_stream_on_the_wire(headers):
    assert wire(ProxyResponse, events, 200, headers, "text/event-stream") == wire(
        Response, events, 200, headers, "text/event-stream"
    )


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "\r\n", "x\n"])
def test_a_newline_in_a_value_is_refused_as_werkzeug_refuses_it(value):
    with pytest.raises(ValueError) as slow:
        Response(b"", headers={"x-ok": "1", "x-bad": value})
    with pytest.raises(ValueError) as fast:
        ProxyResponse(b"", headers={"x-ok": "1", "x-bad": value})
    assert str(fast.value) == str(slow.value)


def test_headers_changed_after_construction_are_sent_as_changed():
    fast = ProxyResponse(b"{}", headers={"a": "1", "b": "2"})
    slow = Response(b"{}", headers={"a": "1", "b": "2"})
    for response in (fast, slow):
        response.headers["a"] = "3"
        response.headers.add("c", "4")
        del response.headers["b"]
        response.headers["Location"] = "/x"
    assert run_wsgi_app(fast, dict(ENVIRON))[2] == run_wsgi_app(slow, dict(ENVIRON))[2]


def test_the_sent_headers_are_a_copy():
    response = ProxyResponse(b"{}", headers={"a": "1"})
    sent = response.get_wsgi_headers(dict(ENVIRON))
    sent["a"] = "changed"
    assert response.headers["a"] == "1"


TEXT = st.text(alphabet="ab-é\r\n\t ", max_size=6)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    st.dictionaries(
        st.text(alphabet="abcX-", min_size=1, max_size=6),
        st.one_of(TEXT, st.integers(), st.lists(TEXT, max_size=2)),
        max_size=6,
    )
)
def test_any_dict_gives_werkzeugs_headers(mapping):
    try:
        slow = Headers(mapping)
    except ValueError:
        with pytest.raises(ValueError):
            Headers(plain_headers(mapping))
        return
    assert list(Headers(plain_headers(mapping))) == list(slow)
