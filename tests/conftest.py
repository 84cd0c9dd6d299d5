"""Shared fixtures: an app from create_app, its client, a stub upstream, a real gunicorn proxy."""

from __future__ import annotations

import pytest
import yaml

from app import create_app
from tests.servers import PROXY_VARS, ProxyServer, RedisServer
from tests.stub_upstream import StubUpstream

TOKEN = "sk-client-test-token"
LOOPBACK = {"REMOTE_ADDR": "127.0.0.1"}


@pytest.fixture(autouse=True)
def hermetic_env(monkeypatch, tmp_path):
    """No proxy variable from the machine, and no stray .env in the working directory."""
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def upstream():
    stub = StubUpstream()
    yield stub
    stub.close()


def openai_model(upstream: StubUpstream, name: str = "gpt-test", **extra) -> dict:
    return {
        "name": name,
        "provider": "openai",
        "base_url": upstream.url + "/v1",
        "token": "sk-upstream-secret",
        "model": "up-model",
        **extra,
    }


@pytest.fixture
def make_app():
    def make(config: dict | None = None, env: dict | None = None, **extra):
        overrides = {"env": env or {}, "config_path": None, **extra}
        if config is not None:
            if "models" in config:
                # The repository's default_model (SMALL) may name none of the test's models.
                overrides["default_model"] = None
            overrides.update(config)
        return create_app(overrides)

    return make


@pytest.fixture
def config(upstream):
    """A config with one client token, the echo models and one OpenAI-compatible upstream."""
    return {
        "auth": {"tokens": [{"name": "team-a", "token": TOKEN}]},
        "models": [
            {"name": "echo", "provider": "echo", "model_size": "SMALL"},
            {"name": "echo-large", "provider": "echo", "model_size": "BIG"},
            openai_model(upstream),
        ],
        "retry": {"max_retries": 0, "base_delay": "10ms"},
    }


@pytest.fixture
def app(make_app, config):
    return make_app(config)


@pytest.fixture
def client(app):
    client = app.test_client()
    client.environ_base.update({"HTTP_AUTHORIZATION": f"Bearer {TOKEN}", **LOOPBACK})
    return client


@pytest.fixture
def proxy_factory(tmp_path):
    """Start gunicorn with a config dict; stopped at teardown."""
    servers: list[ProxyServer] = []

    def start(config: dict, env: dict | None = None, **kwargs) -> ProxyServer:
        path = tmp_path / f"config-{len(servers)}.yaml"
        path.write_text(yaml.safe_dump(config))
        server = ProxyServer(path, env=env, **kwargs)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(tmp_path):
    """A real redis-server on a free port (`.ci/run` installs it)."""
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()


@pytest.fixture
def provider_client(make_app):
    """A factory of test clients for provider tests: an app serving `models` to one client
    token, without retries (each attempt is one upstream call); `config` adds to or overrides
    the rest (`routing={...}`)."""

    def make(models: list[dict], **config):
        app = make_app(
            {
                "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
                "models": models,
                "retry": {"max_retries": 0},
                **config,
            }
        )
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
        return client

    return make
