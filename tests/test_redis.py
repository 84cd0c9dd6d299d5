"""Quotas and cooldowns shared through a real redis-server: exact, and safe when Redis dies."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import openai_model
from tests.stub_upstream import Reply

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"Authorization": "Bearer k-1"}


def limited_config(redis_url: str, rpm: int = 20, **rate_limits) -> dict:
    return {
        "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": rpm}]},
        "models": [{"name": "echo", "provider": "echo"}],
        "rate_limits": {"storage": redis_url, **rate_limits},
    }


@pytest.mark.parametrize("strategy", ["fixed-window", "moving-window", "sliding-window-counter"])
def test_exact_under_concurrency_in_one_process(make_app, redis_server, strategy):
    app = make_app(limited_config(redis_server.url, strategy=strategy))

    def one(_):
        return app.test_client().post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code

    with ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(one, range(60)))
    assert statuses.count(200) == 20
    assert statuses.count(429) == 40


def test_exact_across_two_gunicorn_instances(proxy_factory, redis_server):
    config = limited_config(redis_server.url, rpm=25)
    first = proxy_factory(config, workers=2, threads=16)
    second = proxy_factory(config, workers=1, threads=16)
    session = requests.Session()
    session.trust_env = False

    def one(i):
        url = (first if i % 2 else second).url + "/v1/chat/completions"
        return session.post(url, json=CHAT, headers=AUTH, timeout=10).status_code

    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(one, range(80)))
    assert statuses.count(200) == 25
    assert statuses.count(429) == 55


@pytest.mark.parametrize(("policy", "down_status"), [("allow", 200), ("deny", 503)])
def test_redis_going_away_and_coming_back(make_app, redis_server, policy, down_status):
    app = make_app(limited_config(redis_server.url, rpm=3, on_storage_error=policy))
    client = app.test_client()

    def post():
        started = time.monotonic()
        response = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
        assert time.monotonic() - started < 1.5, "a dead Redis must not stall a request"
        assert response.status_code != 500
        return response

    assert [post().status_code for _ in range(3)] == [200, 200, 200]
    assert post().status_code == 429
    assert client.get("/readyz").json["checks"]["rate_limit_storage"]["ok"] is True

    redis_server.stop()
    down = [post() for _ in range(3)]
    assert {r.status_code for r in down} == {down_status}
    if policy == "deny":
        assert down[0].json["error"]["code"] == "rate_limit_storage_unavailable"
    ready = client.get("/readyz")
    assert ready.json["checks"]["rate_limit_storage"]["ok"] is False
    assert ready.status_code == (200 if policy == "allow" else 503)

    redis_server.start()  # a fresh, empty Redis on the same port
    statuses = [post().status_code for _ in range(6)]
    assert statuses.count(200) == 3 and statuses[-1] == 429
    assert client.get("/readyz").status_code == 200


def test_cooldowns_are_shared_through_redis(make_app, redis_server, upstream):
    config = {
        "auth": {"tokens": [{"name": "a", "token": "k-1"}]},
        "models": [
            openai_model(upstream, name="gpt", priority=1, model="primary"),
            openai_model(upstream, name="gpt", priority=2, model="backup"),
        ],
        "retry": {"max_retries": 0},
        "rate_limits": {"storage": redis_server.url},
    }
    one, other = make_app(config).test_client(), make_app(config).test_client()
    body = {**CHAT, "model": "gpt"}
    upstream.queue(Reply(status=500, body={}))
    assert one.post("/v1/chat/completions", json=body, headers=AUTH).status_code == 200
    assert other.post("/v1/chat/completions", json=body, headers=AUTH).status_code == 200
    # The second app never tried the primary: the first one's failure cooled it for both.
    assert [r.json()["model"] for r in upstream.requests] == ["primary", "backup", "backup"]


# Redis busy for `seconds` in one script: every other client's command waits until it ends.
BUSY_SCRIPT = """
local start = redis.call('TIME')
while true do
  local now = redis.call('TIME')
  if (now[1] - start[1]) * 1000000 + (now[2] - start[2]) > tonumber(ARGV[1]) * 1000000 then
    return 1
  end
end
"""


def keep_redis_busy(redis_server, seconds: float):
    """A thread that keeps Redis running one script for `seconds` (started once it runs)."""
    import threading

    import redis

    busy = redis.Redis(port=redis_server.port, socket_timeout=seconds + 5)
    busy.ping()
    thread = threading.Thread(target=lambda: busy.eval(BUSY_SCRIPT, 0, seconds), daemon=True)
    thread.start()
    time.sleep(0.05)
    return thread


@pytest.mark.parametrize(("policy", "busy_status"), [("allow", 200), ("deny", 503)])
def test_a_redis_that_stops_answering_costs_a_request_its_timeout(
    make_app, redis_server, policy, busy_status
):
    """Redis alive but silent (a long script): each request gives up on it after the 250 ms
    socket timeout, and the policy decides; once Redis answers again, so do quotas."""
    app = make_app(limited_config(redis_server.url, rpm=100, on_storage_error=policy))
    client = app.test_client()
    assert client.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    thread = keep_redis_busy(redis_server, 1.5)
    started = time.monotonic()
    response = client.post("/v1/chat/completions", json=CHAT, headers=AUTH)
    took = time.monotonic() - started
    assert response.status_code == busy_status, response.get_data(as_text=True)
    assert 0.2 < took < 1.0, took
    thread.join(5)
    assert client.post("/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
