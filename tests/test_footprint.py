"""What a worker loads: a proxy on memory storage never imports the Redis client (8 MB of RSS a
worker, and OpenTelemetry with it where that is installed); one on Redis does."""

from __future__ import annotations

import subprocess
import sys

import yaml

from tests.servers import ROOT, clean_env

LOADED = """
import sys
import wsgi
client = wsgi.app.test_client()
answer = client.post(
    "/v1/chat/completions",
    json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]},
    headers={"Authorization": "Bearer sk-footprint"},
)
assert answer.status_code == 200, answer.get_data(as_text=True)
print(sorted({name.split(".")[0] for name in sys.modules} & {"redis", "opentelemetry"}))
"""


def loaded_after_a_request(tmp_path, **config) -> str:
    path = tmp_path / "config.yaml"
    models = [{"name": "echo", "provider": "echo", "requests_per_minute": 100}]
    tokens = [{"name": "t", "token": "sk-footprint", "tokens_per_minute": 10_000}]
    path.write_text(yaml.safe_dump({"models": models, "auth": {"tokens": tokens}, **config}))
    done = subprocess.run(
        [sys.executable, "-c", LOADED],
        cwd=ROOT,
        env=clean_env(AI_PROXY_CONFIG=str(path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_memory_storage_never_imports_the_redis_client(tmp_path):
    assert loaded_after_a_request(tmp_path) == "[]"


def test_redis_storage_does(tmp_path, redis_server):
    assert "redis" in loaded_after_a_request(tmp_path, rate_limits={"storage": redis_server.url})
