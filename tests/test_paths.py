"""Paths the proxy has no route for are JSON 404s in each surface's shape: doubled slashes too,
never werkzeug's HTML redirect to a Location built from the request's own Host header."""

from __future__ import annotations

import json

import pytest
import yaml
from flask import Flask

from app import AIProxy, create_app
from tests.conftest import TOKEN
from tests.servers import ProxyServer
from tests.test_local_mode import raw_request

CONFIG = {
    "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
    "models": [{"name": "echo", "provider": "echo"}],
    "default_model": "echo",
}
HEADERS = {"Authorization": f"Bearer {TOKEN}", "Host": "evil.example"}
CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}

# path -> where the error's kind is in that surface's shape
DOUBLED = [
    ("POST", "/v1//chat/completions", "openai"),
    ("POST", "/v1/chat//completions", "openai"),
    ("POST", "/v1///chat/completions", "openai"),
    ("POST", "/v1//completions", "openai"),
    ("POST", "/v1//embeddings", "openai"),
    ("GET", "/v1//models", "openai"),
    ("GET", "/v1/models//echo", "openai"),
    ("POST", "/v1//responses", "openai"),
    ("GET", "/v1/responses//resp_1", "openai"),
    ("POST", "/v1//messages", "openai"),  # not a path of the Messages API: the default shape
    ("POST", "/v1/messages//count_tokens", "anthropic"),
    ("GET", "/v1beta//models", "gemini"),
    ("POST", "/v1beta/models//echo:generateContent", "gemini"),
    ("GET", "/admin//status", "openai"),
    ("GET", "/healthz//", "openai"),
]


def kind_of(body: dict, shape: str) -> object:
    if shape == "anthropic":
        return body["error"]["type"]
    if shape == "gemini":
        return body["error"]["status"]
    return body["error"]["code"]


@pytest.fixture(scope="module")
def client():
    return create_app({**CONFIG, "env": {}, "config_path": None}).test_client()


@pytest.mark.parametrize(("method", "path", "shape"), DOUBLED)
def test_doubled_slashes_are_a_json_404_not_a_redirect(client, method, path, shape):
    response = client.open(path, method=method, json=CHAT, headers=HEADERS)
    assert response.status_code == 404, response.get_data()
    assert response.is_json and "Location" not in response.headers
    assert kind_of(response.json, shape) in ("not_found", "not_found_error", "NOT_FOUND")
    assert "evil.example" not in response.get_data(as_text=True)


def test_the_single_slash_paths_still_answer(client):
    assert client.post("/v1/chat/completions", json=CHAT, headers=HEADERS).status_code == 200
    assert client.get("/v1/models", headers=HEADERS).status_code == 200


def test_a_host_app_keeps_its_own_slash_handling():
    host = Flask("host")

    @host.get("/pages/about")
    def about():
        return "about"

    AIProxy(host, url_prefix="/ai", overrides=CONFIG, env={})
    client = host.test_client()
    # The host's own rule: werkzeug's default (a redirect to the merged path) is left as it was.
    assert client.get("/pages//about").status_code == 308
    proxied = client.post("/ai/v1//chat/completions", json=CHAT, headers=HEADERS)
    assert proxied.status_code == 404 and proxied.is_json


@pytest.fixture(scope="module")
def gunicorn_proxy(tmp_path_factory):
    path = tmp_path_factory.mktemp("paths") / "config.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    server = ProxyServer(path).start()
    yield server
    server.stop()


# (gunicorn reads a target starting `//` as an authority and a path: `//v1/chat/completions` is
# `/chat/completions` on host `v1`, which is the Go path of the same API.)
@pytest.mark.parametrize("target", ["/v1//chat/completions", "/v1/chat//completions"])
def test_through_gunicorn(gunicorn_proxy, target):
    body = json.dumps(CHAT).encode()
    head = (
        f"POST {target} HTTP/1.1\nHost: evil.example\nAuthorization: Bearer {TOKEN}\n"
        f"Content-Type: application/json\nContent-Length: {len(body)}\nConnection: close\n"
    )
    status, headers, payload = raw_request(gunicorn_proxy.port, head, body)
    assert status == 404 and "location" not in headers
    assert json.loads(payload)["error"]["code"] == "not_found"


# -- OPTIONS ------------------------------------------------------------------------------------

SDK_HEADERS = (
    "authorization, content-type, x-stainless-os, x-stainless-lang, x-stainless-arch, "
    "x-stainless-retry-count, anthropic-version, anthropic-dangerous-direct-browser-access, "
    "x-goog-api-client, x-goog-api-key"
)


@pytest.fixture(scope="module")
def cors_client():
    config = {**CONFIG, "server": {"cors_origins": ["https://app.example"]}}
    return create_app({**config, "env": {}, "config_path": None}).test_client()


def preflight(client, path: str, requested: str | None, origin: str = "https://app.example"):
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    if requested is not None:
        headers["Access-Control-Request-Headers"] = requested
    return client.options(path, headers=headers)


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/messages", "/v1beta/models/echo:generateContent"]
)
def test_a_preflight_allows_the_headers_the_official_sdks_send(cors_client, path):
    response = preflight(cors_client, path, SDK_HEADERS)
    assert response.status_code == 204 and "Content-Type" not in response.headers
    allowed = {h.strip() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
    assert allowed == {h.strip() for h in SDK_HEADERS.split(",")}
    assert "Access-Control-Request-Headers" in response.headers.getlist("Vary")


@pytest.mark.parametrize(
    ("requested", "allowed"),
    [
        ("x-ok, bad header, x\u00e9, , x-also", "x-ok, x-also"),
        ("a" * 65, None),  # no header name is that long: the usual list
        (", ".join(f"x-h{i}" for i in range(100)), ", ".join(f"x-h{i}" for i in range(64))),
        ("x" * 5000, None),
        ("", None),
        (None, None),
    ],
)
def test_a_preflight_echoes_only_header_names(cors_client, requested, allowed):
    response = preflight(cors_client, "/v1/chat/completions", requested)
    value = response.headers["Access-Control-Allow-Headers"]
    if allowed is None:
        assert "Authorization" in value and "X-Goog-API-Key" in value
    else:
        assert value == allowed


def test_no_preflight_answer_for_another_origin(cors_client):
    response = preflight(cors_client, "/v1/chat/completions", SDK_HEADERS, "https://evil.example")
    assert "Access-Control-Allow-Headers" not in response.headers
    assert "Access-Control-Allow-Origin" not in response.headers


def test_options_without_origin_is_an_empty_204_with_allow(cors_client):
    response = cors_client.options("/healthz")
    assert response.status_code == 204 and "Content-Type" not in response.headers
    assert "GET" in response.headers["Allow"] and response.get_data() == b""


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "GET"])
@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/v1beta/models/echo:generateContent", {"POST"}),
        ("/v1beta/models/echo:streamGenerateContent", {"POST"}),
        ("/v1/models/echo:countTokens", {"POST"}),
        ("/v1beta/models/echo", {"GET", "HEAD"}),
        ("/v1/models/echo", {"GET", "HEAD"}),
    ],
)
def test_a_405_on_a_model_path_names_what_that_path_takes(client, method, path, allowed):
    response = client.open(path, method=method, headers=HEADERS)
    if method in allowed or (method == "GET" and path == "/v1/models/echo:countTokens"):
        return  # served, or an OpenAI lookup of a model with that name
    assert response.status_code == 405
    assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
