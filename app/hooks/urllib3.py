"""urllib3 internals the proxy relies on: watched connections, pool counts, the drain.

- `watch_connections`: a pool manager's pools open connections that report their socket just
  before the thread waits for an answer (`pool_classes_by_scheme`, `ConnectionCls`, and
  `HTTPConnection.getresponse` being where urllib3 waits), and report each connection as it goes
  back to its pool, before another thread can take it (`HTTPConnectionPool._put_conn`, the one
  way into the pool's queue).
- `pool_counts`: connections checked out and pooled idle (`PoolManager.pools`, each pool's
  `pool` queue of `maxsize` slots holding connections or `None` placeholders).
- `drain`: read the last bytes of a framed answer so urllib3 gives its connection back to the
  pool (`HTTPResponse.connection.sock`, `chunked`, `length_remaining`, `read1`).
- `released`: whether urllib3 has given an answer's connection back (`HTTPResponse.connection`).
- `OneSend`: a small request's headers and body in one send (`HTTPConnection.request` sends
  the header block through `send` from `endheaders`, then each body chunk through `send`).
- `close_idle`: close pooled connections idle past a limit, however busy the pool is
  (`HTTPConnectionPool._put_conn` stamps a connection as it is given back; the pool's `LifoQueue`
  keeps the most recently used on top, so under steady traffic those at the bottom would idle
  for ever; its `mutex` and `queue` list; `_get_conn` makes a new connection for a `None` slot).
  `close_surplus`: the same, keeping only the most recently given back few.
- `remember_targets`: `HTTPConnectionPool.urlopen` percent-encodes every request target through
  `urllib3.connectionpool._encode_target`, a Python loop over the target's bytes (6 us for
  `/v1/chat/completions`, 17 us for a Gemini stream's); it is a function of the target alone,
  so its answers for the last TARGETS_REMEMBERED targets are kept.

tests/test_hooks_urllib3.py pins each of these against a real local HTTP server.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable
from typing import NamedTuple

import urllib3.connectionpool
import urllib3.exceptions
from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.response import BaseHTTPResponse

# Called with the connection and its socket once a request is sent, before the answer is waited for.
OnWait = Callable[[HTTPConnection, socket.socket | None], None]
# Called with a connection just before it goes back to its pool (where it may serve another).
OnRelease = Callable[[HTTPConnection], None]


class ConnectionCounts(NamedTuple):
    in_use: int  # checked out of a pool and not given back yet
    idle: int  # pooled, with an open socket, ready for the next request


# The monotonic time a pooled connection was last given back to its pool.
IDLE_SINCE = "ai_proxy_idle_since"


def _stamp(conn) -> None:
    if conn is not None:
        setattr(conn, IDLE_SINCE, time.monotonic())


def _ignore(conn: HTTPConnection) -> None:
    return None


# A request body up to this size is sent in one piece with the request's headers.
ONE_SEND_BYTES = 64 * 1024
# Request targets whose percent-encoded form is kept (model ids in paths may come from clients).
TARGETS_REMEMBERED = 1024


class OneSend:
    """`HTTPConnection.request` sending a small request whole: headers and body in one send.

    urllib3 sends the header block (`endheaders`, through `send`) and then each chunk of the body
    (`send` again): two sends, and on a socket with a timeout each is a `poll` and a `sendto`,
    every one letting go of the GIL. For a body of bytes up to ONE_SEND_BYTES (every JSON call
    the proxy makes), the header block is held back and goes out with the body: one send, one
    TLS record. Anything else (no body, a larger one, an iterable, chunked) is sent as urllib3
    sends it; a request that fails before its body is sent leaves nothing held.
    """

    _held: bytes | None = None
    _holding = False

    def request(self, method, url, body=None, headers=None, **kwargs):
        self._holding = (
            type(body) is bytes and 0 < len(body) <= ONE_SEND_BYTES and not kwargs.get("chunked")
        )
        self._held = None
        try:
            super().request(method, url, body=body, headers=headers, **kwargs)
            if self._held is not None:  # (the body was never sent: the headers still go out)
                held, self._held = self._held, None
                super().send(held)
        finally:
            self._holding = False
            self._held = None

    def send(self, data) -> None:
        if self._holding:
            if self._held is None:
                self._held = data  # the header block, from endheaders
                return
            data, self._held, self._holding = self._held + data, None, False
        super().send(data)


@functools.cache
def _pool_classes(
    on_wait: OnWait, on_release: OnRelease = _ignore
) -> dict[str, type[HTTPConnectionPool]]:
    """Pool classes whose connections call `on_wait(conn, sock)` once a request is sent and
    `on_release(conn)` as they go back to the pool, where they are also stamped with the time
    (for `close_idle`)."""

    class WatchedHTTPConnection(OneSend, HTTPConnection):
        def getresponse(self, *args, **kwargs):
            # The request is sent; from here the thread waits on the upstream for its headers.
            on_wait(self, self.sock)
            return super().getresponse(*args, **kwargs)

    class WatchedHTTPSConnection(OneSend, HTTPSConnection):
        def getresponse(self, *args, **kwargs):
            on_wait(self, self.sock)
            return super().getresponse(*args, **kwargs)

    class GivingBack:
        """`_put_conn` of both pool classes: the one way a connection goes back to a pool."""

        def _put_conn(self, conn) -> None:
            if conn is not None:
                # Before the pool's queue holds it: no thread can take it up until this returns.
                on_release(conn)
            _stamp(conn)
            super()._put_conn(conn)

    class WatchedHTTPConnectionPool(GivingBack, HTTPConnectionPool):
        ConnectionCls = WatchedHTTPConnection

    class WatchedHTTPSConnectionPool(GivingBack, HTTPSConnectionPool):
        ConnectionCls = WatchedHTTPSConnection

    return {"http": WatchedHTTPConnectionPool, "https": WatchedHTTPSConnectionPool}


def watch_connections(
    poolmanager: PoolManager, on_wait: OnWait, on_release: OnRelease = _ignore
) -> None:
    """Make `poolmanager` open connections that call `on_wait(conn, sock)` before each answer
    wait, and `on_release(conn)` before each goes back to its pool.

    Pools made before this call keep their old connections: call it on a new pool manager.
    """
    poolmanager.pool_classes_by_scheme = _pool_classes(on_wait, on_release)


def pool_counts(poolmanager: PoolManager) -> ConnectionCounts:
    """The connections of one pool manager: checked out now, and pooled idle."""
    in_use = idle = 0
    pools = poolmanager.pools
    for key in pools.keys():
        pool = pools.get(key)
        # A closed pool's queue is None; a pool evicted since keys() was read is gone.
        if pool is None or pool.pool is None:
            continue
        queue = pool.pool
        # Every slot not in the queue is a connection checked out; the queue holds pooled
        # connections and `None` placeholders for connections not made yet.
        in_use += queue.maxsize - queue.qsize()
        idle += sum(
            1
            for conn in list(queue.queue)
            if conn is not None and getattr(conn, "sock", None) is not None
        )
    return ConnectionCounts(in_use, idle)


def close_idle(poolmanager: PoolManager, max_idle: float, now: float | None = None) -> int:
    """Close the pooled connections given back more than `max_idle` seconds ago; how many."""
    now = time.monotonic() if now is None else now
    # A connection never stamped (a pool manager `watch_connections` did not make) is left alone.
    return _close_pooled(
        poolmanager,
        lambda conns: [c for c in conns if now - getattr(c, IDLE_SINCE, float("inf")) >= max_idle],
    )


def close_surplus(poolmanager: PoolManager, keep: int) -> int:
    """Close all but the `keep` most recently given back pooled connections of each pool (every
    one for `keep` 0); how many were closed."""
    keep = max(0, keep)
    return _close_pooled(
        poolmanager, lambda conns: sorted(conns, key=_idle_since)[: max(0, len(conns) - keep)]
    )


def _idle_since(conn) -> float:
    # A connection never given back (never stamped) counts as the longest idle.
    return getattr(conn, IDLE_SINCE, float("-inf"))


def _close_pooled(poolmanager: PoolManager, choose: Callable[[list], list]) -> int:
    """Close the pooled connections `choose(pooled)` picks in each pool; how many.

    Safe beside threads using the pools: a connection is taken out of its pool's queue under
    the queue's own lock (the one `_get_conn` takes), so no thread can check it out meanwhile;
    its slot becomes `None`, for which urllib3 opens a new connection when it is needed again.
    The sockets are closed after the lock is let go. Connections checked out are never seen
    here: only the pool's queue is read.
    """
    closed = []
    pools = poolmanager.pools
    for key in pools.keys():
        pool = pools.get(key)
        queue = getattr(pool, "pool", None)
        if queue is None:
            continue
        with queue.mutex:
            slots = queue.queue
            chosen = {id(conn) for conn in choose([conn for conn in slots if conn is not None])}
            for index, conn in enumerate(slots):
                if conn is not None and id(conn) in chosen:
                    slots[index] = None
                    closed.append(conn)
    for conn in closed:
        conn.close()
    return len(closed)


def released(raw: BaseHTTPResponse | None) -> bool:
    """Whether urllib3 gave this answer's connection back (read to its end, or closed)."""
    return raw is not None and getattr(raw, "connection", None) is None


def drain(raw: BaseHTTPResponse | None, seconds: float, max_bytes: int) -> None:
    """Read what is left of an answer if it ends by its framing within `seconds`/`max_bytes`.

    Read to its end, an answer's connection goes back to urllib3's pool. An answer whose end is
    only the upstream closing (no chunked framing, no length) is not waited for. The socket
    timeouts set here are the drain's own: urllib3 sets its own before each use of the
    connection. Whatever goes wrong only means the connection is not reused.
    """
    sock = getattr(getattr(raw, "connection", None), "sock", None)
    framed = getattr(raw, "chunked", False) or getattr(raw, "length_remaining", None) is not None
    if sock is None or not framed:
        return
    deadline = time.monotonic() + seconds
    left = max_bytes
    try:
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            sock.settimeout(remaining)
            data = raw.read1(left)
            if not data:
                return
            left -= len(data)
    except (urllib3.exceptions.HTTPError, OSError, ValueError):
        return  # not at its end in time: the caller closes the connection


def remember_targets() -> None:
    """urllib3's pools percent-encode each request target once (see the module docstring);
    idempotent."""
    encode = urllib3.connectionpool._encode_target
    if not hasattr(encode, "cache_info"):
        urllib3.connectionpool._encode_target = functools.lru_cache(TARGETS_REMEMBERED)(encode)
