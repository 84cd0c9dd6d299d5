"""Starting the real proxy under gunicorn for integration tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import requests

ROOT = Path(__file__).resolve().parent.parent
# Variables the proxy reads; none may leak in from the machine running the tests.
PROXY_VARS = (
    "AI_PROXY_CONFIG",
    "AI_PROXY_ENV_FILE",
    "AUTH_TOKEN",
    "HOST",
    "PORT",
    "WEB_CONCURRENCY",
    "THREADS",
    "RETRY_MAX_RETRIES",
    "RETRY_BASE_DELAY",
    "RETRY_MAX_DELAY",
    "RETRY_JITTER",
    "RATE_LIMIT_STORAGE",
    "LOG_LEVEL",
    "LOG_FORMAT",
)


T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy or `timeout` seconds pass.

    Returns its last value, so `assert wait_until(lambda: ...)` fails with what it saw last.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() >= deadline:
            return result
        time.sleep(interval)


# pytest-xdist runs the suite in several processes: each hands out only the ports of its own
# share, so two of them never give the same free port to two servers started at once. Shares
# go by port // 2, as Linux gives bind() ports of one parity when it can.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
_SHARE = (
    int(_WORKER[2:]) if _WORKER[2:].isdigit() else 0,
    int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")),
)
_GIVEN: set[int] = set()
_GIVEN_LOCK = threading.Lock()


class CountingSocket:
    """A socket that records each `sendall` (what goes on the wire in one system call), then
    sends it; everything else is the socket's own."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.sent: list[bytes] = []

    def sendall(self, data) -> None:
        self.sent.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name):
        return getattr(self._sock, name)


def free_port() -> int:
    """A loopback port nothing listens on, not handed out before by this process."""
    index, count = _SHARE
    with _GIVEN_LOCK:
        for _ in range(10_000):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            if port // 2 % count == index and port not in _GIVEN:
                break
        _GIVEN.add(port)
        return port


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env.update(extra)
    return env


class ProxyServer:
    """gunicorn running wsgi:app with conf/gunicorn.conf.py, as a user would start it."""

    def __init__(
        self,
        config_path: Path,
        env: dict[str, str] | None = None,
        workers: int = 1,
        threads: int = 8,
        cwd: Path | None = None,
        args: list[str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = clean_env(
            AI_PROXY_CONFIG=str(config_path),
            HOST="127.0.0.1",
            PORT=str(self.port),
            WEB_CONCURRENCY=str(workers),
            THREADS=str(threads),
            **(env or {}),
        )
        self.cwd = cwd or ROOT
        self.args = args or [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            str(ROOT / "conf/gunicorn.conf.py"),
            "wsgi:app",
        ]
        self.log_path = config_path.parent / f"proxy-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> ProxyServer:
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            self.args, cwd=self.cwd, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited {self.proc.returncode}:\n{self.logs()}")
            try:
                return requests.get(self.url + "/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        if wait_until(healthy, timeout, interval=0.1):
            return self
        self.stop()
        raise RuntimeError(f"proxy did not become healthy:\n{self.logs()}")

    def worker_pids(self) -> set[int]:
        """gunicorn's worker processes now: the master's children (empty without /proc)."""
        pid = self.proc.pid
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return set()
        return {int(child) for child in children}

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop gunicorn at once (SIGQUIT): a graceful stop waits out the keep-alive connections
        the SDK clients hold, seconds per test; graceful stopping has tests of its own."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisServer:
    """A real redis-server on a free loopback port, stoppable and restartable mid-test."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> RedisServer:
        import shutil

        import redis

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        if not wait_until(answers, timeout, interval=0.05):
            raise RuntimeError("redis-server did not start")
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


class SentCommands:
    """The commands clients send a redis-server while in the `with` block (MONITOR; the ones a
    Lua script calls are left out): `.names` in order, e.g. ["EVALSHA", "EVALSHA"]."""

    STOP = "ai-proxy-sent-commands-stop"

    def __init__(self, port: int) -> None:
        import redis

        self.client = redis.Redis(port=port)
        # Connected before watching starts, so that stopping sends no HELLO of its own.
        self.stopper = redis.Redis(port=port)
        self.stopper.ping()
        self.names: list[str] = []
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    def __enter__(self) -> SentCommands:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        self._ready.wait(5)
        return self

    def _watch(self) -> None:
        with self.client.monitor() as monitor:
            self._ready.set()
            for command in monitor.listen():
                if self.STOP in command["command"]:
                    return
                if command["client_type"] != "lua" and command["command"]:
                    self.names.append(command["command"].split(" ", 1)[0].upper())

    def __exit__(self, *exc) -> None:
        self.stopper.echo(self.STOP)
        if self._thread is not None:
            self._thread.join(5)
