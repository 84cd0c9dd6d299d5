"""Every wait on an upstream has a deadline, and a client that leaves frees its thread.

The upstreams here are raw sockets scripted to stall in the ways real ones do (keep-alive
comments, usage-only chunks, a body dripped a byte at a time, silence before or after the first
chunk); each records when the proxy hung up on it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable

import pytest
import requests
import urllib3
import yaml

from app import watchdog
from tests.conftest import TOKEN
from tests.servers import ProxyServer, wait_until
from tests.stub_upstream import Reply

MESSAGES = [{"role": "user", "content": "hello"}]
CHUNK = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
FIRST = json.dumps({**CHUNK, "choices": [{"index": 0, "delta": {"content": "hi"}}]})
USAGE_ONLY = json.dumps({**CHUNK, "choices": [], "usage": {"prompt_tokens": 1}})
ANSWER = json.dumps(
    {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
# No script runs longer than this, whatever the proxy does.
SCRIPT_SECONDS = 20.0


class ScriptedUpstream:
    """One HTTP exchange per connection, answered by a script writing to the raw socket."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.accepted = 0
        self.closed_at: list[float] = []  # when the proxy hung up, per connection
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._exchange, args=(conn,), daemon=True).start()

    def _exchange(self, conn: socket.socket) -> None:
        with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += conn.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            try:
                self.script(conn)
                # Then silence until the proxy hangs up (or the script's time is up).
                conn.settimeout(SCRIPT_SECONDS)
                while conn.recv(65536):
                    pass
            except OSError:
                pass
            self.closed_at.append(time.monotonic())

    def close(self) -> None:
        self.listener.close()


def sse_head(conn: socket.socket) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")


def repeat(payload: bytes, every: float) -> Callable[[socket.socket], None]:
    def script(conn: socket.socket) -> None:
        sse_head(conn)
        ends = time.monotonic() + SCRIPT_SECONDS
        while time.monotonic() < ends:
            conn.sendall(payload)
            time.sleep(every)

    return script


def first_then(payload: bytes | None, every: float = 0.1) -> Callable[[socket.socket], None]:
    """A first answer chunk, then `payload` over and over (None: silence)."""

    def script(conn: socket.socket) -> None:
        sse_head(conn)
        conn.sendall(f"data: {FIRST}\n\n".encode())
        ends = time.monotonic() + SCRIPT_SECONDS
        while payload is not None and time.monotonic() < ends:
            time.sleep(every)
            conn.sendall(payload)

    return script


def drip(conn: socket.socket) -> None:
    """A whole JSON answer, one byte every 50 ms."""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
    )
    for byte in ANSWER:
        conn.sendall(bytes([byte]))
        time.sleep(0.05)


def headers_never(conn: socket.socket) -> None:
    """Accepts the request and never answers."""


STALLS = {
    "keep-alive comments": repeat(b": keep-alive\n\n", 0.1),
    "openrouter processing comments": repeat(b": OPENROUTER PROCESSING\n\n", 0.1),
    "usage-only chunks": repeat(f"data: {USAGE_ONLY}\n\n".encode(), 0.1),
    "blank lines": repeat(b"\n", 0.05),
    "a body dripped byte by byte": drip,
    "no headers at all": headers_never,
}


@pytest.fixture
def scripted():
    servers = []

    def make(script) -> ScriptedUpstream:
        server = ScriptedUpstream(script)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def proxy_config(upstream_url: str, **routing) -> dict:
    return {
        "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
        "models": [
            {
                "name": "gpt",
                "provider": "openai",
                "base_url": upstream_url + "/v1",
                "token": "sk-upstream-secret",
                # The read timeout alone would wait far longer than the deadline.
                "http_client_config": {"timeout_seconds": 60},
            }
        ],
        "retry": {"max_retries": 0},
        "routing": routing,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("stall", list(STALLS))
def test_the_first_answer_byte_has_a_deadline(make_app, scripted, stall, stream):
    # Each stall for both forms: an upstream may ignore `stream` either way.
    upstream = scripted(STALLS[stall])
    app = make_app(proxy_config(upstream.url, request_timeout_seconds=1))
    client = app.test_client()
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": MESSAGES, "stream": stream},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.get_data(as_text=True)
    assert response.get_json()["error"]["code"] == "upstream_timeout"
    assert elapsed < 4, elapsed
    # The upstream connection is closed, not left to the upstream's own timeout.
    assert wait_until(lambda: upstream.closed_at, 2)


@pytest.mark.parametrize(
    "after_first",
    [None, b": keep-alive\n\n", f"data: {USAGE_ONLY}\n\n".encode(), b"\n"],
    ids=["silence", "keep-alives", "usage-only chunks", "blank lines"],
)
def test_a_stream_has_a_deadline_after_its_first_chunk(make_app, scripted, after_first):
    upstream = scripted(first_then(after_first))
    app = make_app(
        proxy_config(upstream.url, request_timeout_seconds=5, stream_timeout_seconds=1.5)
    )
    client = app.test_client()
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": MESSAGES, "stream": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    elapsed = time.monotonic() - started
    assert '"content":"hi"' in body
    assert "upstream_timeout" in body.rsplit("data: ", 1)[-1]
    assert "[DONE]" not in body
    assert elapsed < 4, elapsed
    assert wait_until(lambda: upstream.closed_at, 2)


def test_anthropic_surface_stream_deadline(make_app, scripted):
    upstream = scripted(first_then(b": keep-alive\n\n"))
    app = make_app(proxy_config(upstream.url, request_timeout_seconds=5, stream_timeout_seconds=1))
    response = app.test_client().post(
        "/v1/messages",
        json={"model": "gpt", "max_tokens": 10, "messages": MESSAGES, "stream": True},
        headers={"x-api-key": TOKEN},
    )
    body = response.get_data(as_text=True)
    assert "event: error" in body and "timeout_error" in body
    assert "message_stop" not in body


def test_a_sweep_cuts_only_what_is_due():
    dog = watchdog.Watchdog(poll_seconds=10)
    left, right = socket.socketpair()
    late_left, late_right = socket.socketpair()
    try:
        due = watchdog.Watch(watchdog.Scope(deadline=time.monotonic() - 1), sock=left)
        later = watchdog.Watch(watchdog.Scope(deadline=time.monotonic() + 5), sock=late_left)
        dog._watches.update({due, later})
        wait = dog.sweep()
        assert due.reason is watchdog.Reason.DEADLINE and later.reason is None
        assert 0 < wait <= 5
        assert left.recv(1) == b""  # shut down: a blocked reader wakes at once
        with pytest.raises(Exception) as caught:
            due.check("up")
        assert caught.value.status == 504
    finally:
        for sock in (left, right, late_left, late_right):
            sock.close()


def test_a_departed_client_is_seen_without_reading_from_it():
    client, peer = socket.socketpair()
    try:
        assert not watchdog.client_gone(client)
        peer.sendall(b"GET / HTTP/1.1\r\n")  # a pipelined request is not a departure
        assert not watchdog.client_gone(client)
        assert client.recv(100)
        peer.close()
        assert watchdog.client_gone(client)
    finally:
        client.close()


def test_one_poll_finds_every_departed_client_among_many():
    pairs = [socket.socketpair() for _ in range(6)]
    closed_here = socket.socket()
    closed_here.close()
    try:
        clients = [client for client, _ in pairs]
        pairs[1][1].close()  # peer gone
        pairs[3][1].sendall(b"POST /next HTTP/1.1\r\n")  # pipelined: still there
        pairs[4][1].close()
        gone = watchdog.clients_gone([*clients, clients[1], closed_here])
        assert gone == {clients[1], clients[4], closed_here}
        assert watchdog.clients_gone([]) == set()
    finally:
        for client, peer in pairs:
            client.close()
            peer.close()


def test_installed_pools_report_to_the_watchdog(upstream):
    """Connections of an installed pool manager are watched under the thread's scope (what
    urllib3 must do for this is pinned in tests/test_hooks_urllib3.py)."""
    manager = urllib3.PoolManager(retries=False)
    watchdog.install(manager)
    watchdog.enter_scope(watchdog.Scope(deadline=time.monotonic() + 30))
    try:
        with watchdog.sending() as watches:
            assert manager.request("GET", upstream.url + "/a").status == 200
    finally:
        watchdog.enter_scope(None)
        manager.clear()
    (watch,) = watches
    assert isinstance(watch.sock, socket.socket)
    # Read to its end, the answer gave its connection back to the pool: the watch ended then.
    assert watch not in watchdog.WATCHDOG._watches


def test_a_connection_given_back_is_never_cut_for_the_exchange_it_served(upstream):
    """The window a stream's reader leaves: urllib3 pools the connection as the body's last
    byte is read, before the proxy ends the watch (upstream.release). Another request takes the
    connection up; a sweep then finds the first exchange's client gone. Cutting now would kill
    the second request on the shared socket (a 502, and the deployment cooling down)."""
    manager = urllib3.PoolManager(maxsize=1, retries=False)
    watchdog.install(manager)
    left_client, peer = socket.socketpair()
    try:
        watchdog.enter_scope(watchdog.Scope(deadline=time.monotonic() + 30, client=left_client))
        with watchdog.sending() as first:
            assert manager.request("GET", upstream.url + "/first").status == 200
        first_port = upstream.requests[-1].headers["X-Client-Port"]
        peer.close()  # the first request's client hangs up once its answer was read

        watchdog.enter_scope(watchdog.Scope(deadline=time.monotonic() + 30))
        upstream.queue(Reply(body={"ok": True}, hang=0.6))
        result: dict = {}

        def second() -> None:
            watchdog.enter_scope(watchdog.Scope(deadline=time.monotonic() + 30))
            try:
                with watchdog.sending():
                    result["status"] = manager.request("GET", upstream.url + "/second").status
            except Exception as err:  # noqa: BLE001 - the failure is what is asserted on
                result["error"] = err

        thread = threading.Thread(target=second)
        thread.start()
        wait_until(lambda: len(upstream.requests) == 2, timeout=5)
        watchdog.WATCHDOG.sweep()  # the first exchange's client is gone
        thread.join(10)
        assert result == {"status": 200}
        # The same kept-alive connection served both, and the first watch was not cut.
        assert upstream.requests[-1].headers["X-Client-Port"] == first_port
        assert first[-1].reason is None
    finally:
        watchdog.enter_scope(None)
        left_client.close()
        manager.clear()


def test_a_connection_given_back_between_a_sweeps_look_and_its_cut_is_left_alone():
    # The test takes the sweep's steps itself: the dog's own thread (which `add` would start,
    # and whose first sweep could land between two steps on a busy machine) is never started.
    dog = watchdog.Watchdog(poll_seconds=10)
    dog._pid, dog._thread = os.getpid(), threading.current_thread()
    conn = object()
    ours, theirs = socket.socketpair()
    try:
        watch = watchdog.Watch(watchdog.Scope(deadline=time.monotonic() + 30), sock=ours, conn=conn)
        dog.add(watch)
        assert len(dog) == 1
        watch.deadline = time.monotonic() - 1  # the sweep found it due ...
        dog.released(conn)  # ... and the pool takes the connection back before the cut
        dog._cut(watch, watchdog.Reason.DEADLINE)
        assert watch.reason is None and len(dog) == 0
        theirs.sendall(b"x")
        assert ours.recv(1) == b"x"  # not shut down: it may serve another request

        # A later exchange on the same connection replaces the first; ending the first
        # (a late discard) leaves the second watched, and the second is cut at its deadline.
        first = watchdog.Watch(watchdog.Scope(deadline=time.monotonic() + 30), ours, conn=conn)
        second = watchdog.Watch(watchdog.Scope(deadline=time.monotonic() + 30), ours, conn=conn)
        dog.add(first)
        dog.add(second)
        dog.discard(first)
        assert len(dog) == 1
        second.deadline = time.monotonic() - 1
        dog.sweep()
        assert second.reason is watchdog.Reason.DEADLINE and first.reason is None
        assert ours.recv(1) == b""
    finally:
        ours.close()
        theirs.close()


# -- through gunicorn: a client that leaves frees its thread and the upstream connection ----


@pytest.fixture
def one_thread_proxy(tmp_path, scripted):
    servers = []

    def start(script, **routing) -> tuple[ProxyServer, ScriptedUpstream]:
        upstream = scripted(script)
        path = tmp_path / f"config-{len(servers)}.yaml"
        config = proxy_config(upstream.url, **routing)
        config["models"].append({"name": "echo", "provider": "echo"})
        path.write_text(yaml.safe_dump(config))
        # One thread: the next request is served only once the first one's thread is free.
        server = ProxyServer(path, threads=1).start()
        servers.append(server)
        return server, upstream

    yield start
    for server in servers:
        server.stop()


def _leave_after(url: str, body: dict, seconds: float) -> None:
    """Send a request on a raw socket, wait, and hang up without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n".encode()
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        time.sleep(seconds)


@pytest.mark.parametrize(
    "script, stream",
    [
        (headers_never, False),
        (repeat(b": keep-alive\n\n", 0.2), True),
        (first_then(None), True),
        (first_then(b": keep-alive\n\n", 0.2), True),
    ],
    ids=["no headers", "keep-alives before the answer", "silent after", "keep-alives after"],
)
def test_a_client_that_leaves_frees_its_thread_and_upstream(one_thread_proxy, script, stream):
    server, upstream = one_thread_proxy(
        script, request_timeout_seconds=120, stream_timeout_seconds=300
    )
    _leave_after(server.url, {"model": "gpt", "messages": MESSAGES, "stream": stream}, 0.5)
    left = time.monotonic()
    assert wait_until(lambda: upstream.closed_at, 5), "the upstream connection was kept"
    assert upstream.closed_at[0] - left < 2.0
    # The only thread is free again: another request is answered at once.
    answer = requests.post(
        server.url + "/v1/chat/completions",
        json={"model": "echo", "messages": MESSAGES},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=5,
    )
    assert answer.status_code == 200
    assert "upstream_timeout" not in server.logs()


def in_turn(*scripts: Callable[[socket.socket], None]) -> Callable[[socket.socket], None]:
    """Each connection gets the next script; the last one serves every connection after."""
    lock = threading.Lock()
    taken: list[int] = []

    def script(conn: socket.socket) -> None:
        with lock:
            index = min(len(taken), len(scripts) - 1)
            taken.append(index)
        scripts[index](conn)

    return script


def failing(conn: socket.socket) -> None:
    body = b'{"error": {"message": "overloaded"}}'
    conn.sendall(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
        + f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )


def answering(conn: socket.socket) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
        + f"Content-Length: {len(ANSWER)}\r\n\r\n".encode()
        + ANSWER
    )


def test_a_probe_whose_client_leaves_lets_the_next_request_probe(one_thread_proxy):
    """The only deployment fails and cools down; the request that probes it once the cooldown
    is over hangs up before the upstream answers. The next request probes at once (it used to
    get 503 "being probed by another request" until the probe expired, a minute later)."""
    server, upstream = one_thread_proxy(
        in_turn(failing, headers_never, answering),
        request_timeout_seconds=120,
        cooldown_seconds=1,
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    body = {"model": "gpt", "messages": MESSAGES}
    url = server.url + "/v1/chat/completions"
    assert requests.post(url, json=body, headers=headers, timeout=10).status_code == 502
    assert requests.post(url, json=body, headers=headers, timeout=10).status_code == 503
    time.sleep(1.2)  # the cooldown is over: the next request probes the deployment
    _leave_after(server.url, body, 0.5)
    assert wait_until(lambda: len(upstream.closed_at) >= 2, 5), "the probe was not cut"
    answer = requests.post(url, json=body, headers=headers, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["message"]["content"] == "hi"
    assert upstream.accepted == 3
