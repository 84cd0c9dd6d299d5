"""Serving as users start it: plain `gunicorn wsgi:app`, errors gunicorn writes itself, start-up
refusals (no model left, a busy port)."""

from __future__ import annotations

import glob
import json
import logging
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
import yaml
from gunicorn import util
from gunicorn.http.errors import InvalidHeader, LimitRequestHeaders, LimitRequestLine
from gunicorn.workers.base import Worker

from app.worker import write_json_error
from tests.conftest import TOKEN, openai_model
from tests.servers import ROOT, ProxyServer, clean_env, free_port
from tests.stub_upstream import Reply, chat_chunks

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCRIPT = Path(sys.executable).parent / "ai-proxy"
CLI = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "app.cli"]
PLAIN_GUNICORN = [sys.executable, "-m", "gunicorn", "wsgi:app"]
CONF_GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf/gunicorn.conf.py")]
ECHO = {
    "auth": {"tokens": [{"name": "team-a", "token": TOKEN}]},
    "models": [{"name": "echo", "provider": "echo"}],
}


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def json_lines(text: str) -> list[dict]:
    """Every line the server wrote, each of which must be one JSON object."""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- plain `gunicorn wsgi:app` from the project folder -----------------------------------------


def test_plain_gunicorn_uses_the_proxy_settings(tmp_path, upstream):
    config = {**ECHO, "models": [openai_model(upstream, name="gpt")]}
    gate = threading.Event()

    def held_stream():
        events = chat_chunks(["first", "second"])
        yield from events[:2]
        gate.wait(30)  # the stream stays open until the test has made its other requests
        yield from events[2:]

    upstream.handler = lambda record: Reply(events=held_stream())
    proxy = ProxyServer(
        write_config(tmp_path / "config.yaml", config), args=PLAIN_GUNICORN, cwd=ROOT, threads=4
    ).start()  # start() waits for /healthz on PORT: the port comes from the environment
    try:
        received: list[str] = []
        first = threading.Event()

        def consume():
            with requests.post(
                proxy.url + "/v1/chat/completions",
                json={
                    "model": "gpt",
                    "messages": [{"role": "user", "content": "hi"}],
                    "stream": True,
                },
                headers=AUTH,
                stream=True,
                timeout=40,
            ) as response:
                for line in response.iter_lines():
                    if line:
                        received.append(line.decode())
                        if "first" in line.decode():
                            first.set()

        reader = threading.Thread(target=consume)
        reader.start()
        assert first.wait(20), proxy.logs()[-2000:]
        # The one worker answers others while the stream is open: threads, not the sync worker.
        for _ in range(3):
            assert (
                requests.get(proxy.url + "/v1/models", headers=AUTH, timeout=10).status_code == 200
            )
        gate.set()
        reader.join(30)
        assert received[-1] == "data: [DONE]"
    finally:
        gate.set()
        proxy.stop()
    lines = json_lines(proxy.logs())
    messages = [line.get("msg", "") for line in lines]
    assert "Using worker: app.worker.ProxyWorker" in messages
    assert any(f"127.0.0.1:{proxy.port}" in m for m in messages if m.startswith("Listening at"))


def test_both_gunicorn_config_files_give_the_same_settings(tmp_path):
    def settings(path: Path) -> dict:
        code = (
            "import json, runpy, sys; g = runpy.run_path(sys.argv[1]);"
            "print(json.dumps({k: v.__qualname__ if callable(v) else v for k, v in g.items()"
            " if k in ('bind', 'workers', 'threads', 'worker_class', 'timeout',"
            " 'graceful_timeout', 'logger_class', 'on_reload', 'post_fork')}))"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, str(path)],
            cwd=ROOT,
            env=clean_env(PORT="9123", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    top, conf = settings(ROOT / "gunicorn.conf.py"), settings(ROOT / "conf/gunicorn.conf.py")
    assert top == conf
    assert top["bind"] == ["127.0.0.1:9123"] and top["worker_class"] == "app.worker.ProxyWorker"


def test_wsgi_docstring_says_how_plain_gunicorn_is_configured():
    doc = (ROOT / "wsgi.py").read_text()
    assert "gunicorn.conf.py" in doc and "gunicorn wsgi:app" in doc


# -- errors gunicorn writes itself --------------------------------------------------------------

SECRET = "sk-leaky-client-token"
BAD_REQUESTS = {
    "request line too long": (b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "query string too long": (
        b"GET /v1/models?q=" + b"a" * 9_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
    ),
    "header line too long": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 9_000 + b"\r\n\r\n",
        431,
    ),
    "too many headers": (
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: 1\r\n" % i for i in range(150))
        + b"\r\n",
        431,
    ),
    "header without colon": (
        b"GET / HTTP/1.1\r\nHost: x\r\nAuthorization Bearer " + SECRET.encode() + b"\r\n\r\n",
        400,
    ),
    "space in header name": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX Api Key: " + SECRET.encode() + b"\r\n\r\n",
        400,
    ),
    "control character in header value": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Api-Key: a\x01" + SECRET.encode() + b"\r\n\r\n",
        400,
    ),
    "bad method": (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "bad HTTP version": (b"GET / HTTP/9\r\nHost: x\r\n\r\n", 400),
    "garbage request line": (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\r\n\r\n", 400),
    "unknown transfer coding": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: zip\r\n\r\n",
        501,
    ),
    "content-length and chunked": (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
}


def raw_exchange(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        answer = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


@pytest.fixture(scope="module")
def echo_proxy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    proxy = ProxyServer(write_config(tmp / "config.yaml", ECHO), threads=4).start()
    yield proxy
    proxy.stop()


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_errors_gunicorn_writes_are_json(echo_proxy, case):
    data, status = BAD_REQUESTS[case]
    got, headers, body = raw_exchange(echo_proxy.port, data)
    assert got == status, body
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert headers["x-content-type-options"] == "nosniff"
    assert re.fullmatch(r"[0-9a-f]{32}", headers["x-request-id"])
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert SECRET.encode() not in body


def test_gunicorn_error_log_lines_quote_no_request_text(echo_proxy):
    for case in ("header without colon", "space in header name"):
        raw_exchange(echo_proxy.port, BAD_REQUESTS[case][0])
    # The server is still fine, and no line it wrote holds what the client sent.
    assert requests.get(echo_proxy.url + "/healthz", timeout=5).status_code == 200
    logs = echo_proxy.logs()
    assert "invalid HTTP request from 127.0.0.1" in logs
    assert SECRET not in logs
    json_lines(logs)


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (LimitRequestLine(10_000, 4094), 414),
        (LimitRequestHeaders("limit request headers fields size"), 431),
        (InvalidHeader("X " + SECRET), 400),
    ],
)
def test_gunicorn_still_writes_its_errors_through_util_write_error(monkeypatch, exc, status):
    """ProxyWorker relies on Worker.handle_error calling gunicorn.util.write_error."""
    monkeypatch.setattr(util, "write_error", write_json_error)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        worker = SimpleNamespace(log=logging.getLogger("tests.worker"), cfg=None)
        Worker.handle_error(worker, None, ours, ("127.0.0.1", 1), exc)
        answer = theirs.recv(65536)
    assert answer.startswith(f"HTTP/1.1 {status} ".encode())
    body = answer.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert SECRET.encode() not in answer


# -- start-up refusals --------------------------------------------------------------------------

NO_MODEL_LEFT = {
    "every key unset": {
        "models": [
            {"name": "gpt", "provider": "openai", "token": "${SERVING_TEST_UNSET_A}"},
            {"name": "claude", "provider": "anthropic", "token": "${SERVING_TEST_UNSET_B}"},
        ]
    },
    "empty list": {"models": []},
    "empty file": None,
}


def _write_case(tmp_path: Path, case: str) -> Path:
    path = tmp_path / "config.yaml"
    data = NO_MODEL_LEFT[case]
    path.write_text("" if data is None else yaml.safe_dump(data))
    return path


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("case", list(NO_MODEL_LEFT))
def test_check_config_fails_when_no_model_is_left(tmp_path, case):
    result = _run([*CLI, "check-config", "--config", str(_write_case(tmp_path, case))], tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "models: no model is" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("how", ["serve", "gunicorn"])
@pytest.mark.parametrize("case", list(NO_MODEL_LEFT))
def test_start_up_refuses_when_no_model_is_left(tmp_path, case, how):
    path = _write_case(tmp_path, case)
    port = str(free_port())
    if how == "serve":
        args = [*CLI, "serve", "--config", str(path), "--addr", f"127.0.0.1:{port}"]
    else:
        args = [*CONF_GUNICORN, "wsgi:app"]
    result = _run(args, ROOT, AI_PROXY_CONFIG=str(path), PORT=port)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ai-proxy: models: no model is" in result.stderr
    assert "Traceback" not in result.stderr


def test_check_config_names_which_models_were_left_out(tmp_path):
    result = _run(
        [*CLI, "check-config", "--config", str(_write_case(tmp_path, "every key unset"))], tmp_path
    )
    line = next(line for line in result.stderr.splitlines() if "no model is left" in line)
    assert "models[0] (gpt)" in line and "models[1] (claude)" in line


def _holds(path: str, marker: bytes) -> bool:
    try:
        return marker in Path(path).read_bytes()
    except OSError:  # dropped meanwhile
        return False


@pytest.mark.parametrize("how", ["serve", "gunicorn -c", "plain gunicorn"])
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_busy_port_fails_with_one_clear_line(tmp_path, how, host):
    path = write_config(tmp_path / "config.yaml", ECHO)
    # A mark of this test's own file: other servers (other tests, other pytest workers) may
    # make and drop copies of theirs in /dev/shm meanwhile.
    marker = f"# {tmp_path}\n".encode()
    path.write_bytes(path.read_bytes() + marker)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = {"AI_PROXY_CONFIG": str(path), "HOST": host, "PORT": str(port)}
        args = {
            "serve": [*CLI, "serve", "--addr", f"{host}:{port}"],
            "gunicorn -c": [*CONF_GUNICORN, "wsgi:app"],
            "plain gunicorn": PLAIN_GUNICORN,
        }[how]
        result = _run(args, ROOT, **env)
    assert result.returncode == 1, result.stdout + result.stderr
    expected = f"ai-proxy: {host}:{port} is already in use; set PORT or --addr"
    assert expected in result.stderr
    # At once, without gunicorn's five retries.
    assert "Retrying in 1 second" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    # No copy of the config is left behind by a server that did not start.
    assert not [c for c in glob.glob("/dev/shm/ai-proxy-config-*/config.yaml") if _holds(c, marker)]
