"""Pins what app.hooks.urllib3 relies on in urllib3, against a real local HTTP server.

Each test fails if an urllib3 upgrade changes a hook's footing: where a connection waits for
its answer, how pools keep their connections, or when an answer gives its connection back.
"""

from __future__ import annotations

import socket
import time

import pytest
import urllib3
import urllib3.connection
import urllib3.connectionpool
from urllib3.connectionpool import HTTPConnectionPool

from app.hooks.urllib3 import (
    IDLE_SINCE,
    ONE_SEND_BYTES,
    TARGETS_REMEMBERED,
    ConnectionCounts,
    close_idle,
    close_surplus,
    drain,
    pool_counts,
    released,
    remember_targets,
    watch_connections,
)
from tests.servers import CountingSocket
from tests.stub_upstream import Reply, StubUpstream

EVENTS = ["data: one", "data: two", "data: three"]
# The bytes of the SSE events above as the stub frames them, without the chunked terminator.
EVENT_BYTES = sum(len(event) + 2 for event in EVENTS)


@pytest.fixture
def manager():
    manager = urllib3.PoolManager(maxsize=2, retries=False)
    yield manager
    manager.clear()


def stream(manager: urllib3.PoolManager, upstream: StubUpstream, **reply) -> urllib3.HTTPResponse:
    upstream.queue(Reply(events=EVENTS, **reply))
    return manager.request("POST", upstream.url + "/stream", body=b"{}", preload_content=False)


def test_watched_connections_report_their_socket_before_each_answer(manager, upstream):
    seen: list[tuple] = []
    watch_connections(manager, lambda conn, sock: seen.append((conn, sock)))
    for _ in range(2):
        response = manager.request("GET", upstream.url + "/a")
        assert response.status == 200
    # Once per request, with the connection and its open socket; kept alive, so the same.
    assert len(seen) == 2
    assert all(isinstance(sock, socket.socket) for _, sock in seen)
    assert seen[0][0] is seen[1][0] and seen[0][1] is seen[1][1]
    assert isinstance(seen[0][0], urllib3.connection.HTTPConnection)
    assert len({r.headers["X-Client-Port"] for r in upstream.requests}) == 1


def test_watched_connections_report_going_back_before_another_thread_can_take_them(
    manager, upstream
):
    """`on_release` runs before the pool's queue holds the connection: until it returns no
    other request can check the connection out (what the watchdog's cut relies on)."""
    waited: list = []
    released_seen: list[tuple] = []

    def on_release(conn) -> None:
        queue = [c for key in manager.pools.keys() for c in manager.pools.get(key).pool.queue]
        released_seen.append((conn, conn in queue, conn.sock is not None))

    watch_connections(manager, lambda conn, sock: waited.append(conn), on_release)
    response = stream(manager, upstream)
    assert released_seen == []  # checked out while its answer is read
    response.read()  # read to its end: urllib3 gives the connection back
    assert released_seen == [(waited[0], False, True)]
    assert pooled(manager)[-1] is waited[0]
    # A closed answer's connection goes back too (closed, so nobody reuses its socket).
    response = stream(manager, upstream)
    response.read(5)
    response.close()
    response.release_conn()
    assert released_seen[1:] == [(waited[1], False, False)]


@pytest.mark.parametrize(
    "scheme, connection_cls",
    [("http", urllib3.connection.HTTPConnection), ("https", urllib3.connection.HTTPSConnection)],
)
def test_watched_pools_make_watched_connections(manager, scheme, connection_cls):
    watch_connections(manager, lambda conn, sock: None)
    pool = manager.connection_from_url(f"{scheme}://example.invalid")
    assert issubclass(pool.ConnectionCls, connection_cls)
    assert "getresponse" in vars(pool.ConnectionCls)
    assert isinstance(pool._new_conn(), connection_cls)
    # urllib3 waits for an answer in HTTPConnection.getresponse: that is what is overridden.
    assert "getresponse" in vars(urllib3.connection.HTTPConnection)
    assert HTTPConnectionPool.ConnectionCls is urllib3.connection.HTTPConnection


def test_pool_counts_see_connections_checked_out_and_given_back(manager, upstream):
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=0)
    first = stream(manager, upstream)
    assert pool_counts(manager) == ConnectionCounts(in_use=1, idle=0)
    second = stream(manager, upstream)
    assert pool_counts(manager) == ConnectionCounts(in_use=2, idle=0)
    first.read()
    second.read()
    # Read to their ends, both answers gave their connections back: pooled, sockets open.
    assert released(first) and released(second)
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=2)
    manager.clear()
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=0)


def test_a_closed_answer_does_not_count_as_idle(manager, upstream):
    response = stream(manager, upstream)
    response.read(5)
    response.close()
    response.release_conn()
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=0)


def test_drain_gives_a_chunked_answer_s_connection_back(manager, upstream):
    response = stream(manager, upstream)
    assert response.chunked
    # All the events are read; only the chunked terminator is left on the wire.
    assert len(response.read(EVENT_BYTES)) == EVENT_BYTES
    assert not released(response)
    drain(response, seconds=5.0, max_bytes=64 * 1024)
    assert released(response)
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=1)
    # The next request goes out on the same connection.
    manager.request("GET", upstream.url + "/next")
    ports = [r.headers["X-Client-Port"] for r in upstream.requests]
    assert ports[0] == ports[1]


def test_drain_gives_a_sized_answer_s_connection_back(manager, upstream):
    upstream.queue(Reply(body={"answer": "x" * 100}))
    response = manager.request("GET", upstream.url + "/sized", preload_content=False)
    assert response.length_remaining is not None
    response.read(10)
    drain(response, seconds=5.0, max_bytes=64 * 1024)
    assert released(response)
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=1)


def test_drain_leaves_an_answer_that_ends_only_when_the_upstream_closes(manager, upstream):
    response = stream(manager, upstream, chunked=False)
    assert not response.chunked and response.length_remaining is None
    response.read(5)
    drain(response, seconds=5.0, max_bytes=64 * 1024)
    assert not released(response)
    assert response.read(5)  # nothing was read past what the caller had


def test_drain_stops_at_its_time_limit(manager, upstream):
    response = stream(manager, upstream, delay=2.0)
    drain(response, seconds=0.05, max_bytes=64 * 1024)
    # The read timed out: urllib3 closed the connection rather than pool it.
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=0)


def test_drain_stops_at_its_byte_limit(manager, upstream):
    response = stream(manager, upstream)
    drain(response, seconds=5.0, max_bytes=4)
    assert not released(response)
    assert pool_counts(manager) == ConnectionCounts(in_use=1, idle=0)


@pytest.mark.parametrize("raw", [None, object()])
def test_drain_and_released_take_anything(raw):
    drain(raw, seconds=0.05, max_bytes=10)
    assert released(raw) is (raw is not None)


def pooled(manager: urllib3.PoolManager) -> list:
    """The connection objects in the pools' queues (`None` for empty slots), bottom first."""
    return [conn for key in manager.pools.keys() for conn in manager.pools.get(key).pool.queue]


def test_watched_pools_stamp_a_connection_as_it_goes_back(manager, upstream):
    watch_connections(manager, lambda conn, sock: None)
    before = time.monotonic()
    first, second = stream(manager, upstream), stream(manager, upstream)
    first.read()
    second.read()
    conns = [conn for conn in pooled(manager) if conn is not None]
    assert len(conns) == 2
    # `_put_conn` is where an answer read to its end gives its connection back.
    assert all(before <= getattr(conn, IDLE_SINCE) <= time.monotonic() for conn in conns)


def test_close_idle_closes_the_connections_left_idle_while_others_serve(manager, upstream):
    watch_connections(manager, lambda conn, sock: None)
    first, second = stream(manager, upstream), stream(manager, upstream)
    first.read()
    second.read()
    # Traffic goes on, one request at a time: the pool's LIFO queue hands out its top
    # connection each time, and the one below it stays idle.
    for _ in range(3):
        assert manager.request("GET", upstream.url + "/a").status == 200
    bottom, top = [conn for conn in pooled(manager) if conn is not None]
    idle_for = getattr(top, IDLE_SINCE) - getattr(bottom, IDLE_SINCE)
    assert idle_for > 0
    # The limit lies between how long each has been idle at `now`.
    now = getattr(top, IDLE_SINCE) + idle_for / 4
    assert close_idle(manager, idle_for / 2, now) == 1
    assert bottom.sock is None
    assert top.sock is not None
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=1)
    # Its slot is empty: urllib3 makes a new connection for it when two are needed again.
    assert None in pooled(manager)
    ports = len({r.headers["X-Client-Port"] for r in upstream.requests})
    first, second = stream(manager, upstream), stream(manager, upstream)
    first.read()
    second.read()
    assert len({r.headers["X-Client-Port"] for r in upstream.requests}) == ports + 1
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=2)


def test_close_idle_never_touches_a_connection_in_use(manager, upstream):
    watch_connections(manager, lambda conn, sock: None)
    first = stream(manager, upstream)
    first.read()
    busy = stream(manager, upstream)  # the same connection, checked out again
    assert close_idle(manager, 0.0, time.monotonic() + 3600) == 0
    assert busy.read().count(b"data:") == len(EVENTS)
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=1)
    assert close_idle(manager, 0.0, time.monotonic() + 3600) == 1
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=0)


def test_close_idle_leaves_unstamped_pools_and_closed_managers_alone(manager, upstream):
    # A pool manager not made by watch_connections: its connections carry no stamp.
    response = stream(manager, upstream)
    response.read()
    assert close_idle(manager, 0.0, time.monotonic() + 3600) == 0
    manager.clear()
    assert close_idle(manager, 0.0) == 0


@pytest.mark.parametrize(("keep", "kept"), [(0, 0), (1, 1), (2, 2), (3, 2), (-1, 0)])
def test_close_surplus_keeps_the_most_recently_given_back(upstream, keep, kept):
    manager = urllib3.PoolManager(maxsize=4, retries=False)
    watch_connections(manager, lambda conn, sock: None)
    answers = [stream(manager, upstream) for _ in range(3)]
    # Given back in an order unlike the pool's: the last read is the most recently used.
    for answer in (answers[1], answers[2], answers[0]):
        answer.read()
    oldest, newer, newest = [conn for conn in pooled(manager) if conn is not None]
    busy = stream(manager, upstream)  # the newest, checked out again: never closed here
    assert close_surplus(manager, keep) == 2 - kept
    left = [conn for conn in pooled(manager) if conn is not None and conn.sock is not None]
    assert left == [oldest, newer][2 - kept :]
    assert newest.sock is not None
    assert busy.read().count(b"data:") == len(EVENTS)
    assert pool_counts(manager).idle == len(left) + 1
    # Slots emptied: the pool opens new connections for them when they are needed again.
    answers = [stream(manager, upstream) for _ in range(4)]
    assert [answer.read().count(b"data:") for answer in answers] == [len(EVENTS)] * 4
    manager.clear()


def test_close_surplus_closes_every_unstamped_pooled_connection_first(manager, upstream):
    first, second = stream(manager, upstream), stream(manager, upstream)
    first.read()
    second.read()
    assert close_surplus(manager, 1) == 1
    assert pool_counts(manager) == ConnectionCounts(in_use=0, idle=1)
    manager.clear()
    assert close_surplus(manager, 0) == 0


def counted_connection(manager: urllib3.PoolManager, upstream: StubUpstream) -> CountingSocket:
    """Open a pooled connection to `upstream` and count what its next requests send."""
    seen: list = []
    watch_connections(manager, lambda conn, sock: seen.append(conn))
    manager.request("GET", upstream.url + "/open")
    conn = seen[0]
    conn.sock = CountingSocket(conn.sock)
    return conn.sock


@pytest.mark.parametrize(
    "body",
    [b'{"model": "m", "messages": []}', b"x", b"y" * ONE_SEND_BYTES],
    ids=["json", "one byte", "at the limit"],
)
def test_a_small_request_goes_out_in_one_send(manager, upstream, body):
    counted = counted_connection(manager, upstream)
    response = manager.request("POST", upstream.url + "/v1/x", body=body)
    assert response.status == 200
    assert len(counted.sent) == 1  # headers and body together
    assert counted.sent[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert counted.sent[0].endswith(b"\r\n\r\n" + body)
    assert upstream.requests[-1].body == body


@pytest.mark.parametrize(
    "body, sends",
    [(None, 1), (b"", 1), (b"z" * (ONE_SEND_BYTES + 1), 2), ([b"a", b"b"], 4)],
    ids=["no body", "empty body", "past the limit", "iterable (chunked)"],
)
def test_other_requests_are_sent_as_urllib3_sends_them(manager, upstream, body, sends):
    counted = counted_connection(manager, upstream)
    response = manager.request("POST", upstream.url + "/v1/x", body=body)
    assert response.status == 200
    assert len(counted.sent) == sends
    wire = b"".join(counted.sent)
    if isinstance(body, list):  # (the stub reads Content-Length bodies only)
        assert wire.endswith(b"\r\n\r\n1\r\na\r\n1\r\nb\r\n0\r\n\r\n")
    else:
        assert wire.endswith(b"\r\n\r\n" + (body or b""))
        assert upstream.requests[-1].body == (body or b"")


def test_a_request_failing_before_its_body_sends_nothing(manager, upstream):
    """A header value http.client refuses fails the request before anything is sent: nothing
    held back goes out later, and the next request is answered."""
    counted = counted_connection(manager, upstream)
    with pytest.raises(ValueError):
        manager.request("POST", upstream.url + "/v1/x", body=b"{}", headers={"X-Bad": "a\r\nb"})
    assert counted.sent == []
    response = manager.request("POST", upstream.url + "/v1/y", body=b"{}")
    assert response.status == 200
    assert [r.path for r in upstream.requests] == ["/open", "/v1/y"]


def test_request_targets_are_encoded_once_and_as_urllib3_encodes_them(manager, upstream):
    encode = urllib3.connectionpool._encode_target
    original = getattr(encode, "__wrapped__", encode)
    remember_targets()
    remember_targets()  # idempotent: one memo, not one around another
    remembered = urllib3.connectionpool._encode_target
    assert remembered.__wrapped__ is original
    remembered.cache_clear()
    targets = ["/v1/chat/completions", "/v1/m odel:go?alt=sse&q=a b", "/v1/caf\u00e9/%7e?x=%zz"]
    for target in targets * 2:
        assert manager.request("GET", upstream.url + target).status == 200
    # What went out is what urllib3's own function makes of each target; each encoded once.
    assert [r.path for r in upstream.requests] == [original(t) for t in targets] * 2
    assert remembered.cache_info().misses == len(targets)
    assert remembered.cache_info().maxsize == TARGETS_REMEMBERED
