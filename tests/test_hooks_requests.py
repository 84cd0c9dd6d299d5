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
from app.hooks.requests import MAX_POOL_KEYS, DirectAdapter, PreparedTemplates, pool_managers
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


# -- DirectAdapter ---------------------------------------------------------------------------------


def direct_session(adapter: HTTPAdapter) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def prepared(url: str) -> requests.PreparedRequest:
    return requests.Request("POST", url, data=b"{}").prepare()


@pytest.mark.parametrize("verify", [True, False])
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_direct_adapter_finds_the_pool_requests_finds(scheme, verify):
    direct, plain = DirectAdapter(), HTTPAdapter()
    request = prepared(f"{scheme}://Example.test:8443/v1/x?a=1")
    pools = [
        adapter.get_connection_with_tls_context(request, verify, proxies={})
        for adapter in (direct, direct, plain)
    ]
    # The kept key finds the very pool; it is the pool requests' own path makes, key for key.
    assert pools[0] is pools[1]
    assert type(pools[0]) is type(pools[2])
    assert direct.poolmanager.pools.keys() == plain.poolmanager.pools.keys()
    assert (pools[0].host, pools[0].port, pools[0].scheme) == ("example.test", 8443, scheme)
    assert direct.request_url(request, {}) == plain.request_url(request, {}) == "/v1/x?a=1"


def test_direct_adapter_sends_through_the_pool_it_kept(upstream):
    adapter = DirectAdapter(pool_connections=1, pool_maxsize=2)
    session = direct_session(adapter)
    try:
        for query in ("", "?q=1", "", "?q=1"):
            send(session, prepared(upstream.url + "/v1/x" + query))
        assert [r.path for r in upstream.requests] == ["/v1/x", "/v1/x?q=1"] * 2
        # One pool, one connection, kept alive across every request.
        assert len(adapter.poolmanager.pools) == 1
        assert len({r.headers["X-Client-Port"] for r in upstream.requests}) == 1
        # Found by the keys kept: one per URL (and verify).
        assert set(adapter._pool_keys) == {
            (upstream.url + "/v1/x", True),
            (upstream.url + "/v1/x?q=1", True),
        }
    finally:
        session.close()


def test_the_upstream_pool_sends_through_direct_adapters(pool, upstream):
    response = open_stream(pool, upstream)
    response.content  # noqa: B018
    adapter = pool.session(upstream.url).get_adapter(upstream.url)
    assert type(adapter) is DirectAdapter
    assert list(adapter._pool_keys) == [(upstream.url + "/v1/chat", True)]


def test_direct_adapter_finds_a_new_pool_once_the_old_one_is_gone(upstream):
    # One pool at a time: verify True and False need two, so each evicts (and closes) the other.
    adapter = DirectAdapter(pool_connections=1, pool_maxsize=2)
    session = direct_session(adapter)
    try:
        url = upstream.url + "/v1/x"
        for verify in (True, False, True, False):
            pool = adapter.get_connection_with_tls_context(prepared(url), verify, proxies={})
            assert pool.pool is not None  # open
            response = session.send(prepared(url), timeout=5, verify=verify)
            assert response.status_code == 200
        adapter.poolmanager.clear()  # every pool closed and dropped
        assert session.send(prepared(url), timeout=5).status_code == 200
        assert len(upstream.requests) == 5
    finally:
        session.close()


def test_direct_adapter_with_proxies_or_certificates_is_http_adapter():
    direct, plain = DirectAdapter(), HTTPAdapter()
    request = prepared("http://example.test/v1/x")
    proxies = {"http": "http://127.0.0.1:3128"}
    # Through a proxy a plain-HTTP request names its whole URL.
    assert direct.request_url(request, proxies) == plain.request_url(request, proxies)
    assert direct.request_url(request, proxies) == "http://example.test/v1/x"
    pool = direct.get_connection_with_tls_context(request, True, proxies=proxies)
    assert (pool.host, pool.port) == ("127.0.0.1", 3128)
    assert not direct._pool_keys  # nothing kept for a proxied call


def test_direct_adapter_keeps_a_bounded_number_of_urls():
    adapter = DirectAdapter()
    for index in range(MAX_POOL_KEYS + 10):
        adapter.get_connection_with_tls_context(
            prepared(f"http://example.test/v1/m-{index}"), True, proxies={}
        )
        assert len(adapter._pool_keys) <= MAX_POOL_KEYS
    assert len(adapter.poolmanager.pools) == 1
