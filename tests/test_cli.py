"""The `ai-proxy` console script and the gunicorn entry point, run as a user runs them."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from app.version import __version__
from tests.servers import ROOT, clean_env, free_port, wait_until

SCRIPT = Path(sys.executable).parent / "ai-proxy"
CLI = [str(SCRIPT)] if SCRIPT.is_file() else [sys.executable, "-m", "app.cli"]
GUNICORN = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "conf/gunicorn.conf.py"), "wsgi:app"]
ECHO_MODELS = [
    {"name": "echo", "provider": "echo", "model_size": "SMALL"},
    {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
]


def run(args: list[str], cwd: Path, timeout: float = 30, **env: str):
    return subprocess.run(
        args, cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=timeout
    )


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def good_config(tmp_path) -> Path:
    """Echo models and no client token."""
    return write_config(tmp_path / "good.yaml", {"default_model": "SMALL", "models": ECHO_MODELS})


class Running:
    """A server process started by a test; its output goes to a file, not a pipe that fills."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = cwd / f"server-{port}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 20) -> Running:

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}:\n{self.output()}")
            try:
                return requests.get(self.url + "/ping", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        if wait_until(serving, timeout, interval=0.1):
            return self
        raise AssertionError(f"not serving after {timeout}s:\n{self.output()}")

    def wait_exit(self, timeout: float = 20) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running after {timeout}s:\n{self.output()}") from None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


@pytest.fixture
def start(tmp_path) -> Iterator:
    """Start a server process; every one still running is stopped at teardown."""
    started: list[Running] = []

    def start_server(args: list[str], port: int, **env: str) -> Running:
        server = Running(args, tmp_path, clean_env(**env), port)
        started.append(server)
        return server

    yield start_server
    for server in started:
        server.stop()


# --- one-shot commands ------------------------------------------------------------------------


def test_version(tmp_path):
    result = run([*CLI, "--version"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"ai-proxy {__version__}"


def test_hash_token(tmp_path):
    result = run([*CLI, "hash-token", "abc"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == hashlib.sha256(b"abc").hexdigest()
    assert result.stdout.strip() == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_check_config_good(tmp_path, good_config):
    result = run([*CLI, "check-config", "--config", str(good_config)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_config_names_every_fault_by_path(tmp_path):
    bad = write_config(
        tmp_path / "bad.yaml",
        {
            "models": [
                {"name": "echo", "provider": "echo"},
                {"name": "broken-url", "provider": "openai", "url": "not-a-url"},
                {"name": "broken-kind", "provider": "echo", "kind": "video"},
            ],
            "routing": {"strategy": "random-ish"},
        },
    )
    result = run([*CLI, "check-config", "--config", str(bad)], tmp_path)
    assert result.returncode == 1
    lines = (result.stdout + result.stderr).splitlines()
    for path in ("models[1].url", "models[2].kind", "routing.strategy"):
        matching = [line for line in lines if re.match(rf"^(ai-proxy: )?{re.escape(path)}: ", line)]
        assert len(matching) == 1, f"{path} not named on its own line in:\n" + "\n".join(lines)
    assert not any("Traceback" in line for line in lines)


def test_check_config_names_provider_faults(tmp_path):
    # An unknown provider is a generic OpenAI-compatible one, which needs an address.
    bad = write_config(
        tmp_path / "bad.yaml",
        {"models": [{"name": "echo", "provider": "echo"}, {"name": "x", "provider": "acme"}]},
    )
    result = run([*CLI, "check-config", "--config", str(bad)], tmp_path)
    assert result.returncode == 1
    output = result.stdout + result.stderr
    assert re.search(r"^(ai-proxy: )?models\[1\]\.(base_url|url): ", output, re.M), output


def test_check_config_leaves_out_a_model_whose_key_is_unset(tmp_path):
    config = write_config(
        tmp_path / "keys.yaml",
        {
            "models": [
                {"name": "echo", "provider": "echo"},
                {"name": "gpt", "provider": "openai", "token": "${NO_SUCH_KEY_FOR_TESTS}"},
            ]
        },
    )
    result = run([*CLI, "check-config", "--config", str(config)], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    warnings = [line for line in result.stderr.splitlines() if "models[1]" in line]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("name", "value"), [("PORT", "abc"), ("RETRY_JITTER", "x"), ("WEB_CONCURRENCY", "many")]
)
def test_check_config_names_an_invalid_env_var(tmp_path, good_config, name, value):
    result = run([*CLI, "check-config", "--config", str(good_config)], tmp_path, **{name: value})
    assert result.returncode == 1
    assert name in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "abc"), ("WEB_CONCURRENCY", "many"), ("THREADS", "0"), ("RETRY_JITTER", "x")],
)
def test_serve_with_invalid_env_fails_naming_it(tmp_path, good_config, name, value):
    result = run([*CLI, "serve", "--config", str(good_config)], tmp_path, **{name: value})
    assert result.returncode != 0
    assert name in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


# --- serving ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dashes", ["--", "-"])
def test_go_style_flags_serve(start, good_config, dashes):
    port = free_port()
    args = [f"{dashes}config", str(good_config), f"{dashes}addr", f"127.0.0.1:{port}"]
    server = start([*CLI, *args], port)
    server.wait_ready()
    response = requests.get(server.url + "/ping", timeout=5)
    assert response.status_code == 200
    assert response.text == "OK"
    # No client token configured: loopback callers are served without one.
    models = requests.get(server.url + "/v1/models", timeout=5)
    assert models.status_code == 200
    assert {"echo", "echo-large"} <= {m["id"] for m in models.json()["data"]}
    assert server.stop() == 0


def test_serve_refuses_public_bind_without_token(start, good_config):
    port = free_port()
    server = start([*CLI, "serve", "--config", str(good_config), "--addr", f"0.0.0.0:{port}"], port)
    assert server.wait_exit() != 0
    assert "AUTH_TOKEN" in server.output()
    assert "auth.tokens" in server.output()


def test_gunicorn_refuses_public_bind_without_token(start, good_config):
    port = free_port()
    server = start(GUNICORN, port, AI_PROXY_CONFIG=str(good_config), HOST="0.0.0.0", PORT=str(port))
    assert server.wait_exit() != 0
    assert "AUTH_TOKEN" in server.output()
    assert "auth.tokens" in server.output()


def test_serve_on_public_bind_with_auth_token(start, good_config):
    port = free_port()
    server = start(
        [*CLI, "serve", "--config", str(good_config), "--addr", f"0.0.0.0:{port}"],
        port,
        AUTH_TOKEN="sk-public-token",
    )
    server.wait_ready()
    assert requests.get(server.url + "/v1/models", timeout=5).status_code == 401
    allowed = requests.get(
        server.url + "/v1/models", headers={"Authorization": "Bearer sk-public-token"}, timeout=5
    )
    assert allowed.status_code == 200
    assert server.stop() == 0


def test_gunicorn_on_public_bind_with_auth_token(start, good_config):
    port = free_port()
    server = start(
        GUNICORN,
        port,
        AI_PROXY_CONFIG=str(good_config),
        HOST="0.0.0.0",
        PORT=str(port),
        AUTH_TOKEN="sk-public-token",
    )
    server.wait_ready()
    assert server.stop() == 0


def _models_status(server: Running, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return requests.get(server.url + "/v1/models", headers=headers, timeout=5).status_code


def test_env_file_supplies_auth_token(start, tmp_path, good_config):
    env_file = tmp_path / "proxy.env"
    env_file.write_text("AUTH_TOKEN=sk-from-dotenv\n")
    port = free_port()
    server = start(
        [
            *CLI,
            "serve",
            "--config",
            str(good_config),
            "--env-file",
            str(env_file),
            "--addr",
            f"127.0.0.1:{port}",
        ],
        port,
    )
    server.wait_ready()
    assert _models_status(server, "sk-from-dotenv") == 200
    assert _models_status(server, "sk-something-else") == 401


def test_real_env_wins_over_env_file(start, tmp_path, good_config):
    env_file = tmp_path / "proxy.env"
    env_file.write_text("AUTH_TOKEN=sk-from-dotenv\n")
    port = free_port()
    server = start(
        [
            *CLI,
            "serve",
            "--config",
            str(good_config),
            "--env-file",
            str(env_file),
            "--addr",
            f"127.0.0.1:{port}",
        ],
        port,
        AUTH_TOKEN="sk-from-env",
    )
    server.wait_ready()
    assert _models_status(server, "sk-from-env") == 200
    assert _models_status(server, "sk-from-dotenv") == 401


def test_missing_env_file_is_an_error(tmp_path, good_config):
    result = run(
        [*CLI, "serve", "--config", str(good_config), "--env-file", str(tmp_path / "nope.env")],
        tmp_path,
    )
    assert result.returncode != 0
    assert "nope.env" in result.stderr


def test_serve_names_a_bad_setting_and_a_taken_port_together(tmp_path, good_config):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        result = run(
            [*CLI, "serve", "--config", str(good_config)], tmp_path, PORT=port, RETRY_JITTER="x"
        )
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "RETRY_JITTER" in said and f"127.0.0.1:{port} is already in use" in said
    assert "Traceback" not in result.stderr
