"""What goes upstream to an OpenAI-compatible provider, and how its answers come back."""

from __future__ import annotations

import json

import pytest
import requests
import responses
from responses import matchers

from tests.conftest import TOKEN
from tests.stub_upstream import chat_completion

UPSTREAM = "https://llm.example.test/v1"
CHAT = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]}


@pytest.fixture
def client(provider_client):
    return provider_client(
        [
            {
                "name": "gpt-test",
                "base_url": UPSTREAM,
                "token": "sk-upstream-secret",
                "model": "up-model",
                "headers": {"X-Title": "my-app"},
                "http_client_config": {"timeout_seconds": 7, "connect_timeout_seconds": 2},
            },
            {
                "name": "groq/llama-3.1-8b-instant",
                "provider": "groq",
                "token": "gsk-secret",
            },
            {
                "name": "go-style",
                "provider": "openrouter",
                "url": "https://or.example.test/api/v1/chat/completions",
                "token": "or-secret",
            },
        ]
    )


@responses.activate(assert_all_requests_are_fired=True)
def test_request_sent_upstream(client):
    responses.post(
        f"{UPSTREAM}/chat/completions",
        json=chat_completion("hi"),
        match=[
            matchers.header_matcher(
                {
                    "Authorization": "Bearer sk-upstream-secret",
                    "Content-Type": "application/json",
                    "X-Request-ID": "req-42",
                    "X-Title": "my-app",
                }
            ),
            matchers.json_params_matcher(
                {
                    "model": "up-model",
                    "messages": [{"role": "user", "content": "hello"}],
                    "logit_bias": {"50256": -100},
                    "vendor_field": {"nested": [1, 2]},
                }
            ),
        ],
    )
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "logit_bias": {"50256": -100}, "vendor_field": {"nested": [1, 2]}},
        headers={"X-Request-ID": "req-42", "Cookie": "session=abc", "OpenAI-Organization": "o"},
    )
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "hi"
    assert response.headers["x-ai-proxy-model"] == "gpt-test"
    sent = responses.calls[0].request
    for header in ("Cookie", "OpenAI-Organization", "x-api-key"):
        assert header not in sent.headers
    assert TOKEN not in json.dumps(dict(sent.headers))
    assert TOKEN not in sent.body.decode()


@responses.activate(assert_all_requests_are_fired=True)
def test_presets_and_go_urls(client):
    responses.post(
        "https://api.groq.com/openai/v1/chat/completions",
        json=chat_completion(),
        match=[matchers.json_params_matcher({"model": "llama-3.1-8b-instant"}, strict_match=False)],
    )
    responses.post(
        "https://or.example.test/api/v1/chat/completions",
        json=chat_completion(),
        match=[matchers.json_params_matcher({"model": "go-style"}, strict_match=False)],
    )
    for model in ("groq/llama-3.1-8b-instant", "go-style"):
        assert client.post("/v1/chat/completions", json={**CHAT, "model": model}).status_code == 200


@responses.activate
def test_timeouts_are_explicit(client):
    responses.post(f"{UPSTREAM}/chat/completions", json=chat_completion())
    client.post("/v1/chat/completions", json=CHAT)
    assert responses.calls[0].request.req_kwargs["timeout"] == (2.0, 7.0)


@pytest.mark.parametrize(
    ("upstream_status", "upstream_body", "status", "code"),
    [
        (
            500,
            {"error": {"message": "boom at https://internal.example/x?key=sk-abc"}},
            502,
            "upstream_error",
        ),
        (503, "unavailable", 502, "upstream_error"),
        (
            401,
            {"error": {"message": "Incorrect API key provided: sk-upstream-secret"}},
            502,
            "upstream_error",
        ),
        (403, {"error": "forbidden"}, 502, "upstream_error"),
        (429, {"error": {"message": "slow down"}}, 502, "upstream_error"),
        (400, {"error": {"message": "max_tokens is too large", "code": "bad_max"}}, 400, "bad_max"),
        (404, {"error": {"message": "no such model"}}, 404, None),
        (422, {"detail": "unprocessable"}, 422, None),
    ],
)
@responses.activate
def test_upstream_errors_map(client, upstream_status, upstream_body, status, code):
    responses.post(f"{UPSTREAM}/chat/completions", json=upstream_body, status=upstream_status)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.headers["Content-Type"] == "application/json"
    error = response.json["error"]
    assert error["code"] == code
    text = response.get_data(as_text=True)
    for secret in ("sk-upstream-secret", "llm.example.test", "internal.example", "sk-abc"):
        assert secret not in text


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (requests.ConnectionError("refused by https://llm.example.test"), 502, "upstream_error"),
        (requests.ConnectTimeout("connect timeout"), 502, "upstream_error"),
        (requests.ReadTimeout("read timeout"), 504, "upstream_timeout"),
    ],
)
@responses.activate
def test_network_failures_map(client, exc, status, code):
    responses.post(f"{UPSTREAM}/chat/completions", body=exc)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert "llm.example.test" not in response.get_data(as_text=True)


@pytest.mark.parametrize("body", [b"<html>502 Bad Gateway</html>", b'{"no": "choices"}', b"[]"])
@responses.activate
def test_garbage_from_upstream_is_502(client, body):
    responses.post(f"{UPSTREAM}/chat/completions", body=body, status=200)
    response = client.post("/v1/chat/completions", json=CHAT)
    assert response.status_code == 502
    assert response.json["error"]["type"] == "upstream_error"


@responses.activate
def test_openrouter_errors_name_the_provider_and_body_errors_map(make_app):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [
                {
                    "name": "or",
                    "provider": "openrouter",
                    "token": "or-secret",
                    "model": "deepseek/deepseek-chat",
                    "headers": {"HTTP-Referer": "https://example.com", "X-Title": "my-app"},
                }
            ],
            "retry": {"max_retries": 0},
            "routing": {"cooldown_seconds": 0},
        }
    )
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
    url = "https://openrouter.ai/api/v1/chat/completions"
    responses.post(
        url,
        status=502,
        json={
            "error": {
                "code": 502,
                "message": "Provider returned error",
                "metadata": {"provider_name": "DeepInfra", "raw": "upstream says no"},
            }
        },
    )
    failed = client.post("/v1/chat/completions", json={**CHAT, "model": "or"})
    assert failed.status_code == 502
    assert "(provider: DeepInfra)" in failed.json["error"]["message"]
    assert responses.calls[0].request.headers["X-Title"] == "my-app"
    assert responses.calls[0].request.headers["HTTP-Referer"] == "https://example.com"
    # OpenRouter also answers 200 with an error inside: a client error stays one.
    responses.post(url, status=200, json={"error": {"code": 400, "message": "bad tools"}})
    refused = client.post("/v1/chat/completions", json={**CHAT, "model": "or"})
    assert refused.status_code == 400 and refused.json["error"]["message"] == "bad tools"


@responses.activate(assert_all_requests_are_fired=True)
def test_upstream_cookies_are_not_replayed_for_the_next_client(client):
    """A cookie an upstream sets while answering one client must not go out with the next."""
    responses.post(
        f"{UPSTREAM}/chat/completions",
        json=chat_completion("first"),
        headers={"Set-Cookie": "__cf_bm=client-one; Path=/; Domain=llm.example.test"},
    )
    responses.post(f"{UPSTREAM}/chat/completions", json=chat_completion("second"))
    for _ in range(2):
        assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert "Cookie" not in responses.calls[1].request.headers


def test_prepared_upstream_requests_stay_bounded(monkeypatch, upstream):
    """Requests are prepared once per URL; URLs can hold client-chosen model ids (wildcards),
    so what is kept is bounded."""
    from app.config import RetryConfig
    from app.upstream import UpstreamPool

    monkeypatch.setattr("app.upstream.MAX_TEMPLATES", 3)
    pool = UpstreamPool(RetryConfig(max_retries=0), 2)
    for index in range(7):
        response = pool.send(
            "POST",
            f"{upstream.url}/v1/models/m-{index}:generate",
            label="test",
            headers={"Content-Type": "application/json"},
            body=b"{}",
            timeout=(2, 5),
            params={"alt": "sse", "n": str(index)},
        )
        response.close()
        assert len(pool._templates) <= 3
    assert [r.path for r in upstream.requests][-1] == "/v1/models/m-6:generate?alt=sse&n=6"
    assert upstream.requests[-1].body == b"{}"


@responses.activate(assert_all_requests_are_fired=True)
def test_credentials_in_the_base_url_are_sent_as_basic_auth(make_app):
    client = make_app(
        {
            "auth": {"tokens": [{"name": "team", "token": TOKEN}]},
            "models": [{"name": "local", "base_url": "http://u:pw@gw.example.test/v1"}],
        }
    ).test_client()
    responses.post(
        "http://u:pw@gw.example.test/v1/chat/completions",
        json=chat_completion("hi"),
        match=[matchers.header_matcher({"Authorization": "Basic dTpwdw=="})],
    )
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "local"},
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200
