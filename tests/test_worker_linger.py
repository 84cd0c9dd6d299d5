"""The worker serves a kept-alive connection's next request on the thread that answered the
last one when it comes at once (app.worker), and gives the connection back to gunicorn's main
thread otherwise."""

from __future__ import annotations

import contextlib
import select
import socket
import subprocess
import sys
import threading
import time

import pytest

from app import worker as proxy_worker
from app.threads import ElasticThreadPool
from tests.servers import ROOT, free_port, wait_until


@pytest.fixture
def counting_server(tmp_path):
    port = free_port()
    log = open(tmp_path / "gunicorn.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class",
            "tests.linger_worker.CountingWorker",
            "--workers",
            "1",
            "--threads",
            "4",
            "--bind",
            f"127.0.0.1:{port}",
            "tests.linger_worker:app",
        ],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def up() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return sock.recv(64).startswith(b"HTTP/1.1 200")
        except OSError:
            return False

    try:
        assert wait_until(up, timeout=30), (tmp_path / "gunicorn.log").read_text()
        yield port
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """`count` HTTP answers with Content-Length bodies read off `sock`: their bodies."""
    data, bodies = b"", []
    while len(bodies) < count:
        head_end = data.find(b"\r\n\r\n")
        if head_end >= 0:
            head = data[:head_end].decode()
            length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
            if len(data) >= head_end + 4 + length:
                bodies.append(data[head_end + 4 : head_end + 4 + length])
                data = data[head_end + 4 + length :]
                continue
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {len(bodies)} answers"
        data += chunk
    return bodies


def test_requests_that_come_at_once_are_served_without_a_trip_through_the_main_thread(
    counting_server,
):
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", counting_server), timeout=10) as sock:
        read_answers(_sent(sock, request), 1)
        # Ten requests in one write: each one is there when the last answer is out. (The
        # first may reach the main thread, if this test was slower than the linger.)
        bodies = read_answers(_sent(sock, request * 10), 10)
    # None of the ten was followed by a trip through the main thread.
    assert bodies == [bodies[0]] * 10


def test_an_idle_connection_goes_back_to_the_main_thread_and_is_served_again(counting_server):
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", counting_server), timeout=10) as sock:
        first = int(read_answers(_sent(sock, request), 1)[0])
        # Past the linger: the connection was handed back, and the main thread serves it.
        time.sleep(proxy_worker.LINGER_SECONDS * 20)
        second = int(read_answers(_sent(sock, request), 1)[0])
    assert second > first


def _sent(sock: socket.socket, data: bytes) -> socket.socket:
    sock.sendall(data)
    return sock


class _Conn:
    """The parts of gunicorn's TConn the linger looks at."""

    def __init__(self, sock, buffered: bytes = b"", http2: bool = False):
        import io

        self.sock = sock
        self.is_http2 = http2
        self.parser = type("P", (), {"unreader": type("U", (), {"buf": io.BytesIO(buffered)})()})()


def test_the_next_request_is_seen_buffered_readable_or_closed_and_not_otherwise():
    left, right = socket.socketpair()
    try:
        assert proxy_worker._next_request_within(_Conn(left, b"GET / HTTP/1.1\r\n"))
        started = time.monotonic()
        assert not proxy_worker._next_request_within(_Conn(left), 0.01)
        assert time.monotonic() - started >= 0.009
        right.sendall(b"G")
        assert proxy_worker._next_request_within(_Conn(left))
        assert not proxy_worker._next_request_within(_Conn(left, http2=True))
        left.recv(1)
        right.close()  # the client's close is read as the connection's end, on this thread
        assert proxy_worker._next_request_within(_Conn(left))
        left.close()
        assert not proxy_worker._next_request_within(_Conn(left))
    finally:
        left.close()
        right.close()


def test_bytes_tls_has_already_decrypted_count_as_the_next_request():
    left, right = socket.socketpair()

    class TlsSocket:
        """A TLS socket's view: nothing on the wire, a record already decrypted."""

        def __init__(self, sock):
            self.sock = sock

        def fileno(self):
            return self.sock.fileno()

        def pending(self):
            return 17

    try:
        assert proxy_worker._next_request_within(_Conn(TlsSocket(left)), 0.01)
        assert not proxy_worker._next_request_within(_Conn(left), 0.01)
    finally:
        left.close()
        right.close()


def test_no_linger_while_connections_wait_for_a_thread_or_the_worker_stops():
    pool = ElasticThreadPool(1, idle_seconds=30)
    gate = threading.Event()
    try:
        fake = proxy_worker.ProxyWorker.__new__(proxy_worker.ProxyWorker)
        fake.tpool, fake.alive = pool, True
        assert fake._may_linger()
        pool.submit(gate.wait, 10)
        pool.submit(lambda: None)  # waits: the one thread is busy
        assert wait_until(lambda: pool.queued == 1, timeout=5)
        assert not fake._may_linger()
        gate.set()
        assert wait_until(lambda: pool.queued == 0, timeout=5)
        assert fake._may_linger()
        fake.alive = False
        assert not fake._may_linger()
    finally:
        gate.set()
        pool.shutdown(wait=True)


def test_the_worker_freezes_what_it_built_before_serving(counting_server):
    """Modules, app and config are moved out of the cyclic collector's sweeps once the app is
    loaded (app.threads.freeze_heap); the collector still runs for what requests create."""
    with socket.create_connection(("127.0.0.1", counting_server), timeout=5) as sock:
        sock.sendall(b"GET /gc HTTP/1.1\r\nHost: x\r\n\r\n")
        frozen, enabled = read_answers(sock, 1)[0].decode().split()
    assert int(frozen) > 10_000  # the start-up heap (tens of thousands of objects)
    assert enabled == "True"


def test_the_worker_answers_through_its_one_write_response(counting_server):
    """In the worker's process gunicorn's HTTP/1 answers are OneWriteResponse (app.worker)."""
    with socket.create_connection(("127.0.0.1", counting_server), timeout=5) as sock:
        sock.sendall(b"GET /response HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_answers(sock, 1)[0] == b"OneWriteResponse"


def _accepting_worker(accepted: list, connections: int = 1000):
    """A ProxyWorker as far as `accept` needs one; what it hands to its thread pool goes to
    `accepted`."""
    from gunicorn.config import Config

    fake = proxy_worker.ProxyWorker.__new__(proxy_worker.ProxyWorker)
    fake.cfg, fake.nr_conns, fake.worker_connections = Config(), 0, connections
    fake.enqueue_req = accepted.append
    return fake


@contextlib.contextmanager
def _waiting_connections(count: int):
    """A listening socket (non-blocking, as gthread leaves it) with `count` connections waiting
    in its queue, and a list for what the test accepts; everything is closed after."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    clients = [socket.create_connection(listener.getsockname(), timeout=5) for _ in range(count)]
    accepted: list = []
    try:
        if count:
            probe = select.poll()
            probe.register(listener, select.POLLIN)
            assert probe.poll(5000)
            time.sleep(0.05)  # the last handshakes of the clients just connected
        yield listener, accepted
    finally:
        for conn in accepted:
            conn.close()
        for client in clients:
            client.close()
        listener.close()


@pytest.mark.parametrize(("pending", "limit", "taken"), [(5, 1000, 5), (5, 3, 3), (0, 1000, 0)])
def test_one_wake_accepts_every_waiting_connection(pending, limit, taken):
    """Under a burst the main thread gets the GIL seldom: each time it wakes for the listening
    socket it takes every connection waiting there (up to the worker's connection limit), not
    one a wake-up as gunicorn does."""
    with _waiting_connections(pending) as (listener, accepted):
        fake = _accepting_worker(accepted, limit)
        fake.accept(listener)  # once, as one readiness event of the listener calls it
        assert len(accepted) == taken == fake.nr_conns


def test_a_wake_accepts_at_most_a_batch(monkeypatch):
    monkeypatch.setattr(proxy_worker, "ACCEPT_BATCH", 2)
    with _waiting_connections(5) as (listener, accepted):
        fake = _accepting_worker(accepted)
        fake.accept(listener)
        assert len(accepted) == 2
        fake.accept(listener)  # the listener is still readable: the next wake takes more
        assert len(accepted) == 4
