"""Operations: /metrics, request logs, /admin/status, CORS, graceful shutdown and reload."""

from __future__ import annotations

import json
import signal
import threading

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TOKEN, openai_model
from tests.servers import wait_until
from tests.stub_upstream import Reply, chat_chunks

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "count me in"}]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ADMIN = "admin-secret-token"


def session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    return s


def sample(text: str, name: str, **labels) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def base_config(**extra) -> dict:
    return {
        "auth": {"tokens": [{"name": "team-a", "token": TOKEN}], "admin_token": ADMIN},
        "models": [{"name": "echo", "provider": "echo", "model_size": "SMALL"}],
        **extra,
    }


# -- with the Flask test client ----------------------------------------------------------------


@pytest.fixture
def ops_client(make_app):
    app = make_app(
        base_config(server={"metrics_token": "scrape-me", "cors_origins": ["https://app.example"]})
    )
    return app.test_client()


def test_metrics_token(ops_client):
    assert ops_client.get("/metrics").status_code == 401
    assert ops_client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = ops_client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "ai_proxy_requests_total" in ok.get_data(as_text=True)


def test_admin_status_access(ops_client):
    assert ops_client.get("/admin/status").status_code == 401
    assert ops_client.get("/admin/status", headers=AUTH).status_code == 403
    wrong = ops_client.get("/admin/status", headers={"Authorization": "Bearer guess"})
    assert wrong.status_code == 401
    status = ops_client.get("/admin/status", headers={"Authorization": f"Bearer {ADMIN}"})
    assert status.status_code == 200
    (deployment,) = status.json["deployments"]
    assert deployment["state"] == "healthy" and deployment["key"] == "echo#0"
    assert ADMIN not in status.get_data(as_text=True)


def test_admin_status_is_404_without_admin_token(make_app):
    client = make_app({"models": [{"name": "echo", "provider": "echo"}]}).test_client()
    assert client.get("/admin/status").status_code == 404


def test_admin_status_shows_cooldowns_and_quota(make_app, upstream):
    app = make_app(
        {
            "auth": {
                "tokens": [{"name": "team-a", "token": TOKEN, "requests_per_minute": 10}],
                "admin_token": ADMIN,
            },
            "models": [openai_model(upstream, name="gpt", requests_per_day=100)],
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    upstream.queue(Reply(status=500, body={}))
    client.post("/v1/chat/completions", json={**CHAT, "model": "gpt"}, headers=AUTH)
    status = client.get("/admin/status", headers={"x-api-key": ADMIN}).json
    (deployment,) = status["deployments"]
    assert deployment["state"] == "cooling_down"
    assert 50 < deployment["cooling_down_for_seconds"] <= 60
    quota = deployment["quota"]["requests_per_day"]
    assert {key: quota[key] for key in ("limit", "used", "reserved", "remaining")} == {
        "limit": 100,
        "used": 1,  # the failed request reached the deployment: it counts
        "reserved": 0,
        "remaining": 99,
    }
    # A moving window: the day and at most one of its 60 buckets (24 minutes).
    assert 86400 - 60 < quota["resets_in_seconds"] <= 86400 + 1440
    assert status["tokens"][0]["quota"]["requests_per_minute"]["remaining"] == 9
    assert status["upstream_connections"]["in_use"] == 0


def test_cors_preflight_and_headers(ops_client):
    preflight = ops_client.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
    answer = ops_client.post(
        "/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": "https://app.example"}
    )
    assert answer.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "x-request-id" in answer.headers["Access-Control-Expose-Headers"]
    other = ops_client.post(
        "/v1/chat/completions", json=CHAT, headers={**AUTH, "Origin": "https://evil.example"}
    )
    assert "Access-Control-Allow-Origin" not in other.headers


# -- with real gunicorn ------------------------------------------------------------------------


def test_metrics_add_up_across_two_workers(proxy_factory):
    proxy = proxy_factory(base_config(), workers=2, threads=4)
    http = session()
    before = sample(
        http.get(proxy.url + "/metrics").text, "ai_proxy_requests_total", model="echo", status="200"
    )
    for _ in range(30):
        # A new connection each time, so both workers get some.
        assert (
            requests.post(
                proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=5
            ).status_code
            == 200
        )

    def counted() -> bool:
        text = requests.get(proxy.url + "/metrics", timeout=5).text
        return sample(text, "ai_proxy_requests_total", model="echo", status="200") == before + 30

    assert wait_until(counted)
    for _ in range(4):
        text = requests.get(proxy.url + "/metrics", timeout=5).text
        assert sample(text, "ai_proxy_requests_total", model="echo", status="200") == before + 30
        assert sample(text, "ai_proxy_tokens_total", model="echo", kind="completion") >= 90
    assert sample(text, "ai_proxy_requests_in_flight") == 0


def test_request_log_lines_are_json_without_secrets(proxy_factory, upstream):
    config = base_config()
    config["models"].append(openai_model(upstream, name="gpt"))
    proxy = proxy_factory(config)
    http = session()
    http.post(
        proxy.url + "/v1/chat/completions",
        json={**CHAT, "model": "gpt"},
        headers={**AUTH, "X-Request-ID": "trace-me-1"},
        timeout=5,
    )
    response = http.post(
        proxy.url + "/v1/chat/completions",
        json={**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        headers=AUTH,
        timeout=5,
    )
    assert response.status_code == 200
    http.post(
        proxy.url + "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": "Bearer wrong-token"},
        timeout=5,
    )

    def access_lines() -> list[dict]:
        lines = [json.loads(line) for line in proxy.logs().splitlines() if line.strip()]
        return [line for line in lines if line.get("logger") == "ai_proxy.access"]

    # Each line is written as its answer finishes, just after the client has it.
    assert wait_until(lambda: len(access_lines()) >= 3)
    logs = proxy.logs()
    requests_logged = access_lines()
    (first,) = [line for line in requests_logged if line.get("request_id") == "trace-me-1"]
    assert first["token"] == "team-a" and first["model"] == "gpt"
    assert first["provider"] == "openai" and first["status"] == 200
    assert first["prompt_tokens"] == 5 and first["completion_tokens"] == 2
    assert first["attempts"] == 1 and first["stream"] is False
    assert first["latency_ms"] > 0 and first["ttfb_ms"] > 0
    streamed = [line for line in requests_logged if line.get("stream") is True]
    assert streamed and streamed[0]["completion_tokens"] == 3
    assert any(line["status"] == 401 for line in requests_logged)
    for secret in (TOKEN, "wrong-token", "sk-upstream-secret", "count me in"):
        assert secret not in logs


def stream_across(proxy, upstream, words: list[str], delay: float, send_signal) -> list[str]:
    """A slow stream through the proxy, with `send_signal()` once its first chunks are out."""
    upstream.queue(Reply(events=chat_chunks(words), delay=delay))
    received: list[str] = []

    def consume():
        try:
            with session().post(
                proxy.url + "/v1/chat/completions",
                json={**CHAT, "model": "gpt", "stream": True},
                headers=AUTH,
                stream=True,
                timeout=30,
            ) as response:
                for line in response.iter_lines():
                    if line:
                        received.append(line.decode())
        except requests.RequestException as err:
            received.append(f"cut: {type(err).__name__}")

    reader = threading.Thread(target=consume)
    reader.start()
    assert wait_until(lambda: len(received) >= 3)
    send_signal()
    reader.join(30)
    return received


def test_sigterm_lets_a_slow_stream_finish(proxy_factory, upstream):
    config = base_config()
    config["models"].append(openai_model(upstream, name="gpt"))
    proxy = proxy_factory(config)
    words = [f"w{i}" for i in range(10)]
    # SIGTERM comes mid-stream: after the first words, well before the last.
    received = stream_across(
        proxy, upstream, words, 0.2, lambda: proxy.proc.send_signal(signal.SIGTERM)
    )
    assert received[-1] == "data: [DONE]"
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        for line in received[:-1]
        if json.loads(line[6:]).get("choices")
    )
    assert text == " ".join(words)
    assert proxy.proc.wait(20) == 0


def test_a_reload_lets_a_stream_longer_than_the_graceful_timeout_finish(proxy_factory, upstream):
    """gunicorn stops the old workers of a reload as it stops the server, within its graceful
    timeout (1 s here): a stream of 4 s would be cut. The old worker finishes it."""
    config = base_config()
    config["models"].append(openai_model(upstream, name="gpt"))
    proxy = proxy_factory(config, env={"GUNICORN_CMD_ARGS": "--graceful-timeout 1"})
    words = [f"w{i}" for i in range(20)]
    received = stream_across(
        proxy, upstream, words, 0.2, lambda: proxy.proc.send_signal(signal.SIGHUP)
    )
    assert received[-1] == "data: [DONE]", received[-3:]
    assert len([r for r in received if '"content"' in r]) == len(words)
    # The new workers answer meanwhile.
    assert session().get(proxy.url + "/v1/models", headers=AUTH, timeout=5).status_code == 200


def test_a_stop_still_ends_within_the_graceful_timeout(proxy_factory, upstream):
    config = base_config()
    config["models"].append(openai_model(upstream, name="gpt"))
    proxy = proxy_factory(config, env={"GUNICORN_CMD_ARGS": "--graceful-timeout 1"})
    received = stream_across(
        proxy,
        upstream,
        [f"w{i}" for i in range(40)],
        0.2,
        lambda: proxy.proc.send_signal(signal.SIGTERM),
    )
    assert received[-1] != "data: [DONE]"
    assert proxy.proc.wait(20) == 0


def test_sighup_reloads_the_config_without_a_failed_request(proxy_factory, tmp_path):
    proxy = proxy_factory(base_config(), workers=2, threads=4)
    config_path = tmp_path / "config-0.yaml"
    new = base_config()
    new["models"].append({"name": "echo-new", "provider": "echo"})
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def poll():
        http = session()
        while not stop.is_set():
            try:
                status = http.post(
                    proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH, timeout=5
                ).status_code
                if status != 200:
                    failures.append(str(status))
                answered[0] += 1
            except requests.RequestException as err:
                failures.append(type(err).__name__)

    pollers = [threading.Thread(target=poll) for _ in range(3)]
    for poller in pollers:
        poller.start()
    assert wait_until(lambda: answered[0] >= 10)
    old_workers = proxy.worker_pids()
    config_path.write_text(yaml.safe_dump(new))
    proxy.proc.send_signal(signal.SIGHUP)

    def serves_the_new_model() -> bool:
        response = session().post(
            proxy.url + "/v1/chat/completions",
            json={**CHAT, "model": "echo-new"},
            headers=AUTH,
            timeout=5,
        )
        return response.status_code == 200

    served = wait_until(serves_the_new_model, timeout=20, interval=0.2)
    # Keep the load on while the old workers finish.
    assert wait_until(lambda: not old_workers & proxy.worker_pids(), timeout=30)
    stop.set()
    for poller in pollers:
        poller.join(10)
    assert served, proxy.logs()[-2000:]
    assert failures == []
