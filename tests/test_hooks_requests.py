"""Pins what app.hooks.requests relies on in requests, against a real local HTTP server.

Each test fails if a requests upgrade changes a hook's footing: what a copied prepared request
sends, or where a session keeps its adapters' urllib3 pools.
"""

from __future__ import annotations

import base64

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from app.config import RetryConfig
from app.hooks.requests import PreparedTemplates, pool_managers
from app.hooks.urllib3 import ConnectionCounts, pool_counts
from app.upstream import UpstreamPool, read_chunks, release
from tests.stub_upstream import Reply, chat_chunks


@pytest.fixture
def session():
    session = requests.Session()
    session.trust_env = False
    yield session
    session.close()


def send(session: requests.Session, request: requests.PreparedRequest) -> requests.Response:
    response = session.send(request, timeout=5, stream=True, allow_redirects=False)
    response.content  # noqa: B018 - read to its end, so the connection is pooled again
    return response


# Each call's own headers and body; nothing of another call's goes out with it.
CALLS = [
    ({"X-One": "1", "Content-Type": "application/json"}, b'{"a": 1}'),
    ({"X-Two": "2"}, b"x" * 1000),
    ({"X-Three": "3"}, b""),
    ({"X-Four": "4"}, None),
]


def test_a_template_copy_sends_only_its_own_headers_and_body(session, upstream):
    templates = PreparedTemplates(8)
    for headers, body in CALLS:
        request = templates.prepare(session, "POST", upstream.url + "/v1/x", None, headers, body)
        send(session, request)
    assert len(templates) == 1
    for (headers, body), seen in zip(CALLS, upstream.requests, strict=True):
        assert seen.method == "POST" and seen.path == "/v1/x"
        assert seen.body == (body or b"")
        assert seen.headers["Content-Length"] == str(len(body or b""))
        sent = {name for name in seen.headers if name.startswith("X-") and name != "X-Client-Port"}
        assert sent == set(headers) - {"Content-Type"}
        for name, value in headers.items():
            assert seen.headers[name] == value


@pytest.mark.parametrize(
    "params, path",
    [
        (None, "/v1/m:generate"),
        ({"alt": "sse"}, "/v1/m:generate?alt=sse"),
        ({"b": "2", "a": "x y"}, "/v1/m:generate?b=2&a=x+y"),
    ],
)
def test_a_template_carries_its_query(session, upstream, params, path):
    templates = PreparedTemplates(8)
    for _ in range(2):
        request = templates.prepare(
            session, "POST", upstream.url + "/v1/m:generate", params, {}, b""
        )
        send(session, request)
    assert [r.path for r in upstream.requests] == [path, path]


def test_credentials_in_the_url_become_basic_auth_on_every_copy(session, upstream):
    url = upstream.url.replace("http://", "http://us%40er:p%3Ass@") + "/v1/x"
    templates = PreparedTemplates(8)
    for _ in range(2):
        send(session, templates.prepare(session, "POST", url, None, {"X-A": "1"}, b"{}"))
    expected = "Basic " + base64.b64encode(b"us@er:p:ss").decode()
    assert [r.headers.get("Authorization") for r in upstream.requests] == [expected] * 2


def test_a_template_sends_no_cookies(session, upstream):
    session.cookies.set("session", "someone-elses")
    templates = PreparedTemplates(8)
    for _ in range(2):
        send(session, templates.prepare(session, "GET", upstream.url + "/v1/x", None, {}, None))
    assert all("Cookie" not in r.headers for r in upstream.requests)


def test_templates_stay_bounded(session, upstream):
    templates = PreparedTemplates(3)
    for index in range(7):
        url = f"{upstream.url}/v1/m-{index}"
        send(session, templates.prepare(session, "POST", url, None, {}, b"{}"))
        assert len(templates) <= 3
    assert upstream.requests[-1].path == "/v1/m-6"


def test_pool_managers_are_the_adapters_pools(session, upstream):
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=2)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    (manager,) = pool_managers(session)
    assert isinstance(manager, urllib3.PoolManager)
    assert manager is adapter.poolmanager
    upstream.queue(Reply(events=chat_chunks(["hi"])))
    response = session.get(upstream.url + "/stream", stream=True, timeout=5)
    assert pool_counts(manager) == ConnectionCounts(in_use=1, idle=0)
    response.content  # noqa: B018
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=1)


def test_a_fresh_session_has_one_pool_manager_per_adapter(session):
    # requests mounts separate adapters for http:// and https:// by default.
    assert len(pool_managers(session)) == 2


# -- as app.upstream uses the hooks -------------------------------------------------------------


@pytest.fixture
def pool():
    pool = UpstreamPool(RetryConfig(max_retries=0), 4)
    yield pool
    pool.close()


def open_stream(pool: UpstreamPool, upstream, **reply) -> requests.Response:
    upstream.queue(Reply(events=chat_chunks(["a", "b"]), **reply))
    return pool.send(
        "POST", upstream.url + "/v1/chat", label="t", headers={}, body=b"{}", timeout=(2, 5)
    )


@pytest.mark.parametrize("reuse", [True, False], ids=["drained", "closed"])
def test_connections_count_streams_in_use_and_idle(pool, upstream, reuse):
    assert pool.connections() == {"in_use": 0, "idle": 0}
    first = open_stream(pool, upstream)
    second = open_stream(pool, upstream)
    assert pool.connections() == {"in_use": 2, "idle": 0}
    for response in (first, second):
        # The stream is read up to its last event; the chunked terminator is left.
        seen = b""
        for chunk in read_chunks(response, "t"):
            seen += chunk
            if b"data: [DONE]" in seen:
                break
        release(response, reuse=reuse)
    # Drained, each stream's connection is pooled again; closed, it is gone.
    assert pool.connections() == {"in_use": 0, "idle": 2 if reuse else 0}


def test_a_released_unframed_stream_closes_its_connection(pool, upstream):
    response = open_stream(pool, upstream, chunked=False)
    release(response, reuse=True)
    assert pool.connections() == {"in_use": 0, "idle": 0}


def test_a_drained_stream_s_connection_serves_the_next_request(pool, upstream):
    release(open_stream(pool, upstream), reuse=True)
    release(open_stream(pool, upstream), reuse=True)
    ports = {r.headers["X-Client-Port"] for r in upstream.requests}
    assert len(ports) == 1
