"""The Go ai-proxy's flags: -version anywhere, --addr :PORT on every interface, ./config.yaml."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import yaml

from app import cli
from app.version import __version__
from tests.servers import clean_env, free_port
from tests.test_cli import CLI, Running, run

VERSION_LINE = f"ai-proxy {__version__}"


@pytest.fixture
def launch(tmp_path) -> Iterator:
    """Start `ai-proxy` in tmp_path; every one still running is stopped at teardown."""
    started: list[Running] = []

    def start_server(args: list[str], port: int, **env: str) -> Running:
        server = Running(args, tmp_path, clean_env(**env), port)
        started.append(server)
        return server

    yield start_server
    for server in started:
        server.stop()


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["-version"],
        ["-version=true"],
        ["--version=true"],
        ["-version=1"],
        ["-version=T"],
        ["--version=TRUE"],
        ["--config", "x.yaml", "--version"],
        ["-config", "x.yaml", "-version"],
        ["--config=x.yaml", "--version=True"],
        ["--addr", ":8080", "--env-file", "none.env", "-version"],
        ["--version", "--config", "x.yaml"],
        ["-version=false", "-version"],
        ["serve", "--config", "x.yaml", "--version"],
        ["serve", "-version=t"],
    ],
)
def test_version_anywhere_among_the_flags(argv, capsys):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == VERSION_LINE


@pytest.mark.parametrize(
    ("flags", "wanted", "kept"),
    [
        (["-version=false"], False, []),
        (["--version=0", "--config", "a"], False, ["--config", "a"]),
        (["-version", "-version=f"], False, []),
        # A value flag takes the next argument, as Go's flag package reads it.
        (["--config", "a", "--addr", ":1"], False, ["--config", "a", "--addr", ":1"]),
        (["--workers", "2", "-version"], True, ["--workers", "2"]),
        # Flags end at `--` or the first non-flag argument.
        (["--", "--version"], False, ["--", "--version"]),
        (["extra", "--version"], False, ["extra", "--version"]),
    ],
)
def test_take_version_flag(flags, wanted, kept):
    assert cli.take_version_flag(flags) == (wanted, kept)


@pytest.mark.parametrize("value", ["yes", "2", "on", ""])
def test_a_version_flag_that_is_no_boolean_is_an_error(value, capsys):
    assert cli.main([f"-version={value}"]) == 2
    assert "-version" in capsys.readouterr().err


def test_version_flags_through_the_console_script(tmp_path):
    for argv in (["-version=true"], ["--config", "x.yaml", "--version"]):
        result = run([*CLI, *argv], tmp_path)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == VERSION_LINE


@pytest.mark.parametrize(
    ("addr", "host", "port"),
    [
        (":8080", "0.0.0.0", "8080"),
        (":0", "0.0.0.0", "0"),
        ("0.0.0.0:9000", "0.0.0.0", "9000"),
        ("127.0.0.1:9000", "127.0.0.1", "9000"),
        ("localhost:9000", "localhost", "9000"),
        ("[::1]:9000", "::1", "9000"),
        ("[::]:9000", "::", "9000"),
        ("9000", None, "9000"),
        ("myhost", "myhost", None),
    ],
)
def test_parse_addr(addr, host, port):
    assert cli.parse_addr(addr) == (host, port)


@pytest.mark.parametrize("addr", [":abc", ":70000", "host:-1", "[::1]x"])
def test_a_bad_addr_stops_start_up_naming_it(tmp_path, addr):
    result = run([*CLI, "--addr", addr], tmp_path)
    assert result.returncode == 2
    assert "--addr" in result.stderr and "Traceback" not in result.stderr


GO_CONFIG = {
    "models": [
        {
            "name": "go-echo",
            "provider": "echo",
            "priority": 1,
            "max_request_length": 32768,
            "model_size": "SMALL",
        }
    ]
}


@pytest.mark.parametrize("flag", ["--addr", "-addr"])
def test_addr_port_only_binds_every_interface_with_a_token(launch, tmp_path, flag):
    # The Go deployment's folder: ./config.yaml and no --config.
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(GO_CONFIG))
    port = free_port()
    server = launch([*CLI, flag, f":{port}"], port, AUTH_TOKEN="sk-go-token")
    server.wait_ready()
    models = requests.get(
        server.url + "/models", headers={"Authorization": "Bearer sk-go-token"}, timeout=5
    )
    assert models.status_code == 200
    assert "go-echo" in {m["id"] for m in models.json()["data"]}
    assert requests.get(server.url + "/models", timeout=5).status_code == 401
    output = server.output()
    assert f"0.0.0.0:{port}" in output
    assert "./config.yaml" in output and "Go" in output
    assert server.stop() == 0


def test_addr_port_only_refuses_to_start_without_a_token(launch, tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(GO_CONFIG))
    port = free_port()
    server = launch([*CLI, "serve", "--addr", f":{port}"], port)
    assert server.wait_exit() != 0
    assert "AUTH_TOKEN" in server.output() and "auth.tokens" in server.output()
