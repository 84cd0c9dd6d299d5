"""Client authentication and per-token model allow-lists."""

from __future__ import annotations

import pytest

from app.auth import extract_token, is_loopback_host
from app.config import hash_token
from tests.conftest import LOOPBACK, TOKEN

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": f"Bearer {TOKEN}"},
        {"Authorization": f"bearer {TOKEN}"},
        {"Authorization": f"BEARER   {TOKEN}"},
        {"x-api-key": TOKEN},
        {"api-key": TOKEN},
        {"x-goog-api-key": TOKEN},
    ],
)
def test_every_header_form_is_accepted(app, headers):
    client = app.test_client()
    response = client.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"x-api-key": TOKEN + "x"},
        {"Authorization": "Bearer " + "a" * 5000},
    ],
)
def test_missing_or_wrong_token_is_401(app, headers):
    response = app.test_client().post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="ai-proxy"'
    assert response.json["error"]["type"] == "authentication_error"
    assert response.json["error"]["code"] == "invalid_api_key"
    assert TOKEN not in response.get_data(as_text=True)


def test_models_list_needs_a_token(app):
    assert app.test_client().get("/v1/models").status_code == 401


def test_health_needs_no_token(app):
    client = app.test_client()
    assert client.get("/ping").get_data(as_text=True) == "OK"
    assert client.get("/healthz").json == {"status": "ok"}
    assert client.get("/readyz").status_code == 200
    assert client.get("/version").json["name"] == "ai-proxy"


def test_hashed_token_and_auth_token_env(make_app):
    app = make_app(
        {"auth": {"tokens": [{"name": "hashed", "token_sha256": hash_token("s3cret")}]}},
        env={"AUTH_TOKEN": "from-env"},
    )
    client = app.test_client()
    for token in ("s3cret", "from-env"):
        response = client.post("/v1/chat/completions", json=CHAT, headers={"x-api-key": token})
        assert response.status_code == 200


def test_no_token_configured_serves_loopback_only(make_app):
    client = make_app({}).test_client()
    local = client.post("/v1/chat/completions", json=CHAT, environ_base=LOOPBACK)
    assert local.status_code == 200
    remote = client.post(
        "/v1/chat/completions", json=CHAT, environ_base={"REMOTE_ADDR": "10.0.0.7"}
    )
    assert remote.status_code == 401


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("10.1.2.3", False),
        ("example.com", False),
        ("", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


def test_token_extraction_prefers_authorization():
    assert extract_token({"Authorization": "Bearer a", "x-api-key": "b"}) == "a"
    assert extract_token({"Authorization": "Token a", "x-api-key": "b"}) == "b"
    assert extract_token({}) is None


@pytest.fixture
def limited(make_app):
    tokens = [
        {"name": "gpt-only", "token": "t-gpt", "models": ["gpt-*"]},
        {"name": "small", "token": "t-small", "models": ["small"]},
    ]
    return make_app(
        {
            "auth": {"tokens": tokens},
            "models": [
                {"name": "echo", "provider": "echo", "model_size": "SMALL"},
                {"name": "gpt-echo", "provider": "echo", "model_size": "BIG"},
            ],
        }
    ).test_client()


@pytest.mark.parametrize(
    ("token", "model", "status"),
    [
        ("t-gpt", "gpt-echo", 200),
        ("t-gpt", "echo", 403),
        ("t-gpt", "SMALL", 403),
        ("t-small", "SMALL", 200),
        ("t-small", "small", 200),
        ("t-small", "echo", 403),
        ("t-small", "BIG", 403),
    ],
)
def test_model_allow_list(limited, token, model, status):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    response = limited.post("/v1/chat/completions", json=body, headers={"x-api-key": token})
    assert response.status_code == status
    if status == 403:
        assert response.json["error"]["code"] == "model_not_allowed"
        assert response.json["error"]["type"] == "permission_error"


def test_models_list_shows_only_allowed(limited):
    listed = limited.get("/v1/models", headers={"x-api-key": "t-gpt"}).json
    assert [m["id"] for m in listed["data"]] == ["gpt-echo"]
    listed = limited.get("/models", headers={"x-api-key": "t-small"}).json
    assert [m["id"] for m in listed["data"]] == ["SMALL"]
    assert limited.get("/v1/models/echo", headers={"x-api-key": "t-gpt"}).status_code == 403
    one = limited.get("/v1/models/gpt-echo", headers={"x-api-key": "t-gpt"}).json
    assert one["object"] == "model" and one["owned_by"] == "echo"
