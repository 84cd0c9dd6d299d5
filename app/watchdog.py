"""Deadlines and departed clients for upstream answers: no wait on an upstream is unbounded.

A worker thread blocked on an upstream socket that stays silent (or sends only keep-alive
comments) is woken by nothing of its own. One daemon thread per process watches every upstream
answer being waited for or read: once it is past its deadline, or the client it is for has hung
up, the watchdog shuts the upstream socket down. That wakes the reading thread with an end of
stream or an error, and the reader raises the watch's error (`Watch.check`).

Watches are made where the socket is known, as urllib3 sends a request (`install`, through
app.hooks.urllib3, the one place that reaches into urllib3's connection classes), for the
request scope the blueprints open (`enter_scope`). A connection going back to urllib3's pool
ends its watch first, under the same lock a cut holds from its check to its shutdown: a socket
that may serve another request is never cut for this one.

The same thread runs the process's housekeeping (`every`): closing upstream connections idle
past their limit (app.upstream), so no thread of its own wakes for it.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum

from .errors import ClientGoneError, UpstreamTimeoutError
from .hooks.urllib3 import HTTPConnection, released, watch_connections

logger = logging.getLogger(__name__)

# How often departed clients are looked for: a client that leaves frees its thread within
# about this long (plus the reader's wake-up), even while the upstream sends nothing.
POLL_SECONDS = 0.5
# How often housekeeping runs (idle upstream connections are closed within about this long of
# passing their limit).
HOUSEKEEPING_SECONDS = 1.0
_GONE_EVENTS = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


class Reason(StrEnum):
    DEADLINE = "deadline"
    CLIENT_GONE = "client_gone"


@dataclass(frozen=True)
class Scope:
    """What one client request allows its upstream calls: deadlines and who is waiting."""

    deadline: float  # monotonic time by which the first answer byte is due
    stream_deadline: float | None = None  # by which a stream must be over, once it answered
    client: socket.socket | None = None  # the client's connection, watched for a hang-up


@dataclass(eq=False)
class Watch:
    """One upstream exchange under a deadline: made when its request is sent."""

    scope: Scope
    sock: socket.socket | None = None
    deadline: float = 0.0
    reason: Reason | None = None
    # The urllib3 answer once headers came; a released one's connection may serve others.
    raw: object = field(default=None, repr=False)
    # The urllib3 connection the exchange runs on: its return to the pool ends the watch.
    conn: object = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.deadline = self.scope.deadline

    def answered(self) -> None:
        """The first answer byte came: from now on the stream's own deadline applies."""
        if self.scope.stream_deadline is not None:
            self.deadline = self.scope.stream_deadline

    def check(self, label: str) -> None:
        """Raise the failure this exchange met: past its deadline, or its client gone."""
        if self.reason is None and time.monotonic() >= self.deadline:
            self.reason = Reason.DEADLINE
        if self.reason is Reason.CLIENT_GONE:
            raise ClientGoneError()
        if self.reason is Reason.DEADLINE:
            raise UpstreamTimeoutError(f"{label}: no complete answer within the proxy's deadline")


_scope: contextvars.ContextVar[Scope | None] = contextvars.ContextVar(
    "ai_proxy_scope", default=None
)
_pending: contextvars.ContextVar[list[Watch] | None] = contextvars.ContextVar(
    "ai_proxy_pending", default=None
)


def enter_scope(scope: Scope | None) -> None:
    """Upstream calls this thread makes from now on are watched under `scope` (None: not)."""
    _scope.set(scope)


@contextlib.contextmanager
def sending() -> Iterator[list[Watch]]:
    """Collect the watches made while one request is sent (urllib3 may retry it).

    The caller keeps the last one (the answer it got); the others were for answers urllib3
    already gave back, and stop being watched here, whatever happens.
    """
    watches: list[Watch] = []
    token = _pending.set(watches)
    try:
        yield watches
    except BaseException:
        for watch in watches:
            WATCHDOG.discard(watch)
        raise
    finally:
        _pending.reset(token)
    for watch in watches[:-1]:
        WATCHDOG.discard(watch)


def _watch_socket(conn: HTTPConnection, sock: socket.socket | None) -> None:
    """Start watching the exchange about to wait on `sock`, if the thread has a scope."""
    scope, pending = _scope.get(), _pending.get()
    if scope is None or pending is None or sock is None:
        return
    watch = Watch(scope, sock, conn=conn)
    pending.append(watch)
    WATCHDOG.add(watch)


def install(poolmanager) -> None:
    """Make a requests adapter's pool manager open connections the watchdog sees."""
    watch_connections(poolmanager, _watch_socket, WATCHDOG.released)


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer of a client connection has closed it (without reading from it)."""
    return bool(clients_gone([sock]))


def clients_gone(socks: list[socket.socket]) -> set[socket.socket]:
    """The client connections among `socks` whose peers have closed them: one poll for all
    (a sweep over hundreds of open streams makes one system call, not one each)."""
    poller = select.poll()
    by_fd: dict[int, socket.socket] = {}
    gone = set()
    for sock in socks:
        try:
            fd = sock.fileno()
        except (OSError, ValueError):
            fd = -1
        if fd < 0:
            gone.add(sock)  # closed on our side already
            continue
        if fd not in by_fd:
            by_fd[fd] = sock
            poller.register(fd, select.POLLIN | _GONE_EVENTS)
    try:
        events = poller.poll(0) if by_fd else []
    except OSError:
        return gone | set(by_fd.values())
    for fd, flags in events:
        sock = by_fd.get(fd)
        if sock is None:
            continue
        if flags & (_GONE_EVENTS | select.POLLNVAL):
            gone.add(sock)
            continue
        try:
            # Readable: either the peer's end of stream or bytes of a next (pipelined) request.
            if socket.socket.recv(sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                gone.add(sock)
        except BlockingIOError:
            pass
        except OSError:
            gone.add(sock)
    return gone


class WeakMethods(list):
    """Bound methods held weakly (a list of `weakref.WeakMethod`): an object that is dropped
    stops being called. `call(*args)` calls each live one; one that fails is logged with
    `failure` and the others still run."""

    def __init__(self, failure: str) -> None:
        super().__init__()
        self._failure = failure
        self._lock = threading.Lock()

    def add(self, method: Callable[..., object]) -> None:
        with self._lock:
            self[:] = [ref for ref in self if ref() is not None]
            self.append(weakref.WeakMethod(method))

    def call(self, *args) -> None:
        with self._lock:
            methods = [ref() for ref in self]
            self[:] = [ref for ref, method in zip(self, methods, strict=True) if method is not None]
        for method in methods:
            if method is None:
                continue
            try:
                method(*args)
            except Exception:  # noqa: BLE001 - named fail point: the others must still run.
                logger.exception(self._failure)


class Watchdog:
    """The process's watcher thread and the watches it looks after."""

    def __init__(self, poll_seconds: float = POLL_SECONDS) -> None:
        self.poll_seconds = poll_seconds
        self._watches: set[Watch] = set()
        # The watch of each connection's exchange in flight, to end it as the connection is
        # given back to its pool.
        self._by_conn: dict[object, Watch] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # Bound methods held weakly: an app's services that are dropped stop being called.
        self._chores = WeakMethods("watchdog housekeeping failed")
        self._next_chores = 0.0

    def every(self, chore: Callable[[], object]) -> None:
        """Run the bound method `chore` about every HOUSEKEEPING_SECONDS in this thread, for as
        long as its object lives."""
        self._chores.add(chore)
        with self._lock:
            self._ensure_thread()

    def run_chores(self) -> None:
        """Every live chore once; one that fails is logged and the others still run."""
        self._chores.call()

    def add(self, watch: Watch) -> None:
        with self._lock:
            self._ensure_thread()
            self._watches.add(watch)
            if watch.conn is not None:
                earlier = self._by_conn.get(watch.conn)
                if earlier is not None:
                    # Its exchange is over: the connection went through its pool since.
                    self._watches.discard(earlier)
                self._by_conn[watch.conn] = watch
        if watch.deadline - time.monotonic() < self.poll_seconds:
            self._wake.set()

    def discard(self, watch: Watch) -> None:
        with self._lock:
            self._remove(watch)

    def released(self, conn: object) -> None:
        """`conn` goes back to its pool, where another request may take it: whatever watch
        its last exchange had ends now, and no cut can reach its socket any more."""
        with self._lock:
            watch = self._by_conn.get(conn)
            if watch is not None:
                self._remove(watch)

    def _remove(self, watch: Watch) -> bool:
        """Stop watching `watch` (the lock held); whether it was still watched."""
        if watch not in self._watches:
            return False
        self._watches.discard(watch)
        if watch.conn is not None and self._by_conn.get(watch.conn) is watch:
            del self._by_conn[watch.conn]
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._watches)

    def _ensure_thread(self) -> None:
        if self._pid != os.getpid():
            # A forked child has the parent's watches but not its thread.
            self._pid, self._thread = os.getpid(), None
            self._watches.clear()
            self._by_conn.clear()
            self._next_chores = 0.0
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="ai-proxy-watchdog", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                wait = self.sweep()
            except Exception:  # noqa: BLE001 - named fail point: the watcher must not die.
                logger.exception("watchdog sweep failed")
                wait = self.poll_seconds
            now = time.monotonic()
            if now >= self._next_chores:
                self._next_chores = now + HOUSEKEEPING_SECONDS
                self.run_chores()
            self._wake.wait(wait)
            self._wake.clear()

    def sweep(self) -> float:
        """Cut every exchange past its deadline or whose client left; seconds to the next look."""
        now = time.monotonic()
        with self._lock:
            watches = list(self._watches)
        wait = self.poll_seconds
        live = []
        for watch in watches:
            if released(watch.raw):
                # urllib3 gave the connection back (the answer was read to its end): it may
                # already serve another request, so it is never touched from here.
                self.discard(watch)
            elif now >= watch.deadline:
                self._cut(watch, Reason.DEADLINE)
            else:
                live.append(watch)
        clients = [watch.scope.client for watch in live if watch.scope.client is not None]
        gone = clients_gone(clients) if clients else set()
        for watch in live:
            if watch.scope.client is not None and watch.scope.client in gone:
                self._cut(watch, Reason.CLIENT_GONE)
            else:
                wait = min(wait, watch.deadline - now)
        return max(0.01, wait)

    def _cut(self, watch: Watch, reason: Reason) -> None:
        with self._lock:
            # Checked and cut under the lock a connection's return to its pool takes: once
            # given back (even since the sweep looked), its socket may serve another request.
            if not self._remove(watch):
                return
            watch.reason = reason
            with contextlib.suppress(OSError):
                # The plain socket's shutdown (also under TLS): the blocked read returns at once.
                socket.socket.shutdown(watch.sock, socket.SHUT_RDWR)
        logger.info("upstream exchange cut: %s", reason)


WATCHDOG = Watchdog()
