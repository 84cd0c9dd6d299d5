"""`kill -HUP` with a bad config: the server keeps serving the config it had, on a real gunicorn.

Each case breaks the config in its own way, sends HUP, and checks that the proxy still answers
with the old config, that one log line names the problem, that a worker killed while the file is
still bad comes back with the old config, and that fixing the file and sending HUP again applies it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import TOKEN
from tests.servers import ProxyServer, wait_until

AUTH = {"Authorization": f"Bearer {TOKEN}"}
KEY_VAR = "RELOAD_TEST_KEY"
# A reload starts new workers (seconds each on a busy machine): waits for one are long.
RELOAD_SECONDS = 30.0


def config(*names: str, **extra) -> dict:
    # The key comes from the .env file, so that a case can take it away.
    models = [{"name": n, "provider": "echo", "token": f"${{{KEY_VAR}}}"} for n in names]
    return {"auth": {"tokens": [{"name": "team-a", "token": TOKEN}]}, "models": models, **extra}


def served_models(proxy: ProxyServer) -> set[str] | None:
    try:
        response = requests.get(proxy.url + "/v1/models", headers=AUTH, timeout=5)
    except requests.RequestException:
        return None
    if response.status_code != 200:
        return None
    return {m["id"] for m in response.json()["data"]}


def assert_serves(proxy: ProxyServer, *names: str) -> None:
    """Wait until the proxy serves exactly the models `names` (its workers may be restarting)."""
    served = wait_until(lambda: served_models(proxy) == set(names), RELOAD_SECONDS, interval=0.1)
    assert served, proxy.logs()[-3000:]


def log_messages(proxy: ProxyServer) -> list[str]:
    messages = []
    for line in proxy.logs().splitlines():
        try:
            messages.append(json.loads(line).get("msg", ""))
        except ValueError:
            messages.append(line)
    return messages


def write_yaml(path: Path, data: dict) -> None:
    path.write_text(yaml.safe_dump(data))


# A few hundred bytes that stand for 9**8 (43 million) strings once every alias is repeated.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)
)

# Each case: how to break the config (path, env file), and what the refusal line must name.
BREAKS: dict[str, tuple[Callable[[Path, Path], None], str]] = {
    "yaml syntax": (lambda path, env: path.write_text("models:\n  - {name: x\n"), "line 3"),
    "bad type": (
        lambda path, env: write_yaml(path, config("echo-new") | {"routing": {"max_attempts": "x"}}),
        "routing.max_attempts",
    ),
    "bad field of a model": (
        lambda path, env: write_yaml(
            path,
            {
                **config("echo-new"),
                "models": [{"name": "x", "provider": "echo", "priority": "high"}],
            },
        ),
        "models[0].priority",
    ),
    "provider check": (
        lambda path, env: write_yaml(
            path, {**config("echo-new"), "models": [{"name": "x", "provider": "acme"}]}
        ),
        "models[0].",
    ),
    "alias to nothing": (
        lambda path, env: write_yaml(path, config("echo-new", aliases={"fast": ["nope"]})),
        "aliases.fast[0]",
    ),
    "no model left": (
        lambda path, env: write_yaml(
            path,
            {
                **config("echo-new"),
                "models": [{"name": "x", "provider": "echo", "token": "${RELOAD_UNSET_VAR}"}],
            },
        ),
        "no model is left to serve",
    ),
    "key variable removed from .env": (
        lambda path, env: (write_yaml(path, config("echo-new")), env.write_text("")),
        "no model is left to serve",
    ),
    "invalid variable added to .env": (
        lambda path, env: (
            write_yaml(path, config("echo-new")),
            env.write_text(f"{KEY_VAR}=k1\nRETRY_JITTER=lots\n"),
        ),
        "RETRY_JITTER",
    ),
    "invalid gunicorn setting added to .env": (
        lambda path, env: (
            write_yaml(path, config("echo-new")),
            env.write_text(f"{KEY_VAR}=k1\nLOG_LEVEL=loud\n"),
        ),
        "LOG_LEVEL",
    ),
    "a .env that is not UTF-8": (
        lambda path, env: (
            write_yaml(path, config("echo-new")),
            env.write_bytes(f"{KEY_VAR}=k1\nX=caf\xe9\n".encode("latin-1")),
        ),
        "not UTF-8 text (byte 0xe9",
    ),
    "a config that is not UTF-8": (
        lambda path, env: path.write_bytes(b"models: [{name: caf\xe9, provider: echo}]\n"),
        "not UTF-8 text (byte 0xe9",
    ),
    "a config nested too deeply": (
        lambda path, env: path.write_text("models: " + "[" * 3000 + "]" * 3000 + "\n"),
        "nested too deeply",
    ),
    "an alias bomb": (
        lambda path, env: path.write_text(ALIAS_BOMB),
        "values (a YAML alias counts each time it is used)",
    ),
    "file removed": (lambda path, env: path.unlink(), "cannot read"),
    "file is a folder": (lambda path, env: (path.unlink(), path.mkdir()), "cannot read"),
    "empty file": (lambda path, env: path.write_text(""), "models: no model is configured"),
}


def start_proxy(tmp_path: Path, runner: str, workers: int = 2) -> tuple[ProxyServer, Path, Path]:
    path = tmp_path / "config.yaml"
    env_file = tmp_path / "proxy.env"
    write_yaml(path, config("echo-old"))
    env_file.write_text(f"{KEY_VAR}=k1\n")
    args = None
    if runner == "serve":
        script = Path(sys.executable).parent / "ai-proxy"
        args = (
            [str(script), "serve"]
            if script.is_file()
            else [sys.executable, "-m", "app.cli", "serve"]
        )
    proxy = ProxyServer(
        path, env={"AI_PROXY_ENV_FILE": str(env_file)}, workers=workers, threads=4, args=args
    )
    return proxy.start(), path, env_file


@pytest.fixture
def reload_proxy(tmp_path):
    started: list[ProxyServer] = []

    def start(runner: str = "gunicorn", workers: int = 2):
        proxy, path, env_file = start_proxy(tmp_path, runner, workers)
        started.append(proxy)
        return proxy, path, env_file

    yield start
    for proxy in started:
        proxy.stop()


def workers_of(proxy: ProxyServer) -> int:
    return int(proxy.env["WEB_CONCURRENCY"])


def hup_and_wait_for(proxy: ProxyServer, fragment: str) -> str:
    """Send HUP; the first new log line from the reload hook that contains `fragment`."""
    seen = len(log_messages(proxy))
    before = proxy.worker_pids()
    proxy.proc.send_signal(signal.SIGHUP)
    found: list[str] = []

    def logged() -> bool:
        found[:] = [m for m in log_messages(proxy)[seen:] if fragment in m]
        return bool(found)

    assert wait_until(logged, RELOAD_SECONDS, interval=0.1), proxy.logs()[-3000:]
    # gunicorn replaces every worker on HUP, also when the config is refused: wait for that.
    replaced = wait_until(
        lambda: len(proxy.worker_pids() - before) == workers_of(proxy), RELOAD_SECONDS
    )
    assert replaced, proxy.logs()[-3000:]
    return found[0]


def kill_every_worker(proxy: ProxyServer) -> None:
    before = proxy.worker_pids()
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    replaced = wait_until(
        lambda: len(proxy.worker_pids() - before) == workers_of(proxy), RELOAD_SECONDS
    )
    assert replaced, proxy.logs()[-3000:]


@pytest.mark.parametrize("case", list(BREAKS))
def test_a_bad_reload_keeps_the_old_config(reload_proxy, case):
    # One worker: the master decides; the other tests here run two.
    proxy, path, env_file = reload_proxy(workers=1)
    assert served_models(proxy) == {"echo-old"}
    breaks, fragment = BREAKS[case]
    breaks(path, env_file)

    line = hup_and_wait_for(proxy, "reload refused")
    assert fragment in line, line
    assert "k1" not in line and TOKEN not in proxy.logs()
    assert proxy.proc.poll() is None
    assert_serves(proxy, "echo-old")

    # A worker that dies while the file is still bad comes back with the config that was good.
    kill_every_worker(proxy)
    assert_serves(proxy, "echo-old")
    assert proxy.proc.poll() is None

    if path.is_dir():
        path.rmdir()
    write_yaml(path, config("echo-new"))
    env_file.write_text(f"{KEY_VAR}=k1\n")
    line = hup_and_wait_for(proxy, "reload applied")
    assert str(path) in line and "1 model deployment(s)" in line
    assert_serves(proxy, "echo-new")
    kill_every_worker(proxy)
    assert_serves(proxy, "echo-new")


def test_one_line_per_problem(reload_proxy):
    proxy, path, env_file = reload_proxy()
    write_yaml(
        path,
        {
            **config("echo-new"),
            "models": [{"name": "a", "provider": "echo", "priority": "x", "weight": "y"}],
            "routing": {"strategy": "random-ish"},
        },
    )
    env_file.write_text(f"{KEY_VAR}=k1\nLOG_LEVEL=loud\n")
    paths = ("models[0].priority", "models[0].weight", "routing.strategy", "LOG_LEVEL")

    def refusals() -> dict[str, int]:
        lines = [m for m in log_messages(proxy) if "reload refused" in m]
        return {p: sum(p in line for line in lines) for p in paths}

    hup_and_wait_for(proxy, "reload refused")
    assert wait_until(lambda: all(refusals().values()), RELOAD_SECONDS), proxy.logs()[-3000:]
    assert refusals() == dict.fromkeys(paths, 1)
    assert_serves(proxy, "echo-old")


def test_a_bad_reload_under_ai_proxy_serve(reload_proxy):
    proxy, path, env_file = reload_proxy("serve")
    assert served_models(proxy) == {"echo-old"}
    path.write_text("models: [")
    assert "line" in hup_and_wait_for(proxy, "reload refused")
    assert_serves(proxy, "echo-old")
    kill_every_worker(proxy)
    assert_serves(proxy, "echo-old")
    write_yaml(path, config("echo-new"))
    hup_and_wait_for(proxy, "reload applied")
    assert_serves(proxy, "echo-new")


def test_the_refused_file_is_no_longer_read_by_workers(reload_proxy):
    """A file that becomes good again only after a refusal is not picked up without a HUP."""
    proxy, path, env_file = reload_proxy()
    path.write_text("models: [")
    hup_and_wait_for(proxy, "reload refused")
    write_yaml(path, config("echo-new"))
    kill_every_worker(proxy)
    assert_serves(proxy, "echo-old")


def test_no_request_fails_during_a_refused_reload(reload_proxy):
    proxy, path, env_file = reload_proxy()
    failures: list[str] = []
    served = [0]
    stop = threading.Event()
    chat = {"model": "echo-old", "messages": [{"role": "user", "content": "still here"}]}

    def poll():
        http = requests.Session()
        while not stop.is_set():
            try:
                response = http.post(
                    proxy.url + "/v1/chat/completions", json=chat, headers=AUTH, timeout=20
                )
                if response.status_code != 200:
                    failures.append(str(response.status_code))
                served[0] += 1
            except requests.RequestException as err:
                failures.append(type(err).__name__)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for poller in pollers:
        poller.start()
    try:
        assert wait_until(lambda: served[0] > 10, RELOAD_SECONDS, interval=0.1)
        path.write_text("models: [")
        hup_and_wait_for(proxy, "reload refused")
        count = served[0]
        assert wait_until(lambda: served[0] > count + 10, RELOAD_SECONDS, interval=0.1)
    finally:
        stop.set()
        for poller in pollers:
            poller.join(30)
    assert failures == [], proxy.logs()[-3000:]


def test_a_reload_onto_a_busy_port_keeps_listening(tmp_path):
    path = tmp_path / "config.yaml"
    env_file = tmp_path / "proxy.env"
    write_yaml(path, config("echo-old"))
    proxy = ProxyServer(path, env={"AI_PROXY_ENV_FILE": str(env_file)}, workers=2, threads=4)
    # The port comes from .env, so that a reload can move it.
    del proxy.env["PORT"]
    env_file.write_text(f"{KEY_VAR}=k1\nPORT={proxy.port}\n")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        proxy.start()
        try:
            env_file.write_text(f"{KEY_VAR}=k1\nPORT={busy}\n")
            line = hup_and_wait_for(proxy, "reload refused")
            assert f"127.0.0.1:{busy} is already in use" in line
            assert proxy.proc.poll() is None
            assert_serves(proxy, "echo-old")
        finally:
            proxy.stop()


@pytest.mark.parametrize(
    ("env_line", "said"),
    [
        ("HOST=203.0.113.5\nPORT={port}", "203.0.113.5:{port}: cannot listen there"),
        (
            "HOST=no-such-host.invalid\nPORT={port}",
            "no-such-host.invalid:{port}: cannot listen there",
        ),
        ("HOST=0.0.0.0\nPORT={free}", "no client token is configured"),
        # gunicorn binds the new address while it still listens on the old one.
        ("HOST=0.0.0.0\nPORT={port}", "0.0.0.0:{port} overlaps where this server listens now"),
    ],
)
def test_a_reload_onto_an_address_it_cannot_take_keeps_listening(tmp_path, env_line, said):
    """gunicorn binds a new address before its reload hook runs, and a failed bind stopped its
    master (a typo in HOST took the service down); a bind the config forbids was taken before
    the hook refused it."""
    path = tmp_path / "config.yaml"
    env_file = tmp_path / "proxy.env"
    write_yaml(path, {"models": config("echo-old")["models"]})  # no client token: loopback only
    proxy = ProxyServer(path, env={"AI_PROXY_ENV_FILE": str(env_file)}, workers=1, threads=4)
    del proxy.env["HOST"], proxy.env["PORT"]
    env_file.write_text(f"{KEY_VAR}=k1\nHOST=127.0.0.1\nPORT={proxy.port}\n")
    proxy.start()
    try:
        assert served_models(proxy) == {"echo-old"}
        with socket.socket() as spare:
            spare.bind(("127.0.0.1", 0))
            free = spare.getsockname()[1]
        env_file.write_text(f"{KEY_VAR}=k1\n{env_line.format(free=free, port=proxy.port)}\n")
        line = hup_and_wait_for(proxy, "reload refused")
        assert said.format(port=proxy.port) in line, line
        assert proxy.proc.poll() is None
        assert_serves(proxy, "echo-old")
        # Nothing listens where the refused file said.
        with socket.socket() as probe:
            probe.settimeout(1)
            assert probe.connect_ex(("127.0.0.2", proxy.port)) != 0
        # And a good file after it is applied.
        env_file.write_text(f"{KEY_VAR}=k1\nHOST=127.0.0.1\nPORT={proxy.port}\n")
        write_yaml(path, {"models": config("echo-new")["models"]})
        hup_and_wait_for(proxy, "reload applied")
        assert_serves(proxy, "echo-new")
    finally:
        proxy.stop()


def test_a_reload_reads_the_variables_given_to_gunicorn_with_e(tmp_path):
    """gunicorn takes its own `-e` variables out while it re-reads its config file on HUP and
    puts them back after: the config is checked with them, as at start-up and in the workers."""
    path = tmp_path / "config.yaml"
    write_yaml(
        path,
        {
            "auth": {"tokens": [{"name": "team-a", "token": "${E_CLIENT_TOKEN}"}]},
            "models": [{"name": "echo-old", "provider": "echo", "token": "${E_KEY}"}],
        },
    )
    proxy = ProxyServer(path, workers=1, threads=4)
    proxy.args = [
        *proxy.args[:3],
        "-e",
        f"E_CLIENT_TOKEN={TOKEN}",
        "-e",
        "E_KEY=k1",
        *proxy.args[3:],
    ]
    proxy.start()
    try:
        assert_serves(proxy, "echo-old")
        write_yaml(
            path,
            {
                "auth": {"tokens": [{"name": "team-a", "token": "${E_CLIENT_TOKEN}"}]},
                "models": [{"name": "echo-new", "provider": "echo", "token": "${E_KEY}"}],
            },
        )
        line = hup_and_wait_for(proxy, "reload ")
        assert "reload applied" in line, proxy.logs()[-2000:]
        assert_serves(proxy, "echo-new")
    finally:
        proxy.stop()
