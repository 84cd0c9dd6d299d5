"""Who may call what: the allow-list before anything else, wildcard ids in the model list,
non-ASCII tokens in either header encoding, quotas on token counts, refusals in the metrics."""

from __future__ import annotations

import json
import re
import socket

import pytest
import responses
from prometheus_client import REGISTRY

from tests.conftest import LOOPBACK, TOKEN

STUB = "https://upstream.example.test/v1"
KEY = "sk-upstream-secret"
LIMITED = "t-limited"
USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"


def upstream(name: str, kind: str = "chat", provider: str = "openai") -> dict:
    return {"name": name, "provider": provider, "base_url": STUB, "token": KEY, "kind": kind}


MODELS = [
    {"name": "gpt-chat", "provider": "echo", "model_size": "SMALL"},
    {"name": "secret-chat", "provider": "echo", "model_size": "BIG"},
    upstream("secret-emb", "embedding"),
    upstream("secret-img", "image"),
    upstream("gpt-emb", "embedding"),
    upstream("gpt-img", "image"),
    {"name": "openrouter/*", "provider": "openrouter", "base_url": STUB, "token": KEY},
    {"name": "cloudflare/*", "provider": "cloudflare", "base_url": STUB, "token": KEY},
]


@pytest.fixture
def access(make_app):
    app = make_app(
        {
            "auth": {
                "tokens": [
                    {"name": "all", "token": TOKEN},
                    {
                        "name": "limited",
                        "token": LIMITED,
                        "models": [
                            "gpt-*",
                            "openrouter/deepseek/deepseek-chat",
                            "openrouter/meta-llama/*",
                            "cloudflare/@cf/meta/llama-3.1-8b-instruct",
                            "small",
                        ],
                    },
                ]
            },
            "models": MODELS,
            "aliases": {"fast": ["openrouter/x/y"]},
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    client.environ_base.update(LOOPBACK)
    return client


@pytest.fixture
def no_upstream():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add(responses.POST, re.compile(r".*"), json={}, status=500)
        yield mock
        assert len(mock.calls) == 0


SURFACES = {
    "/v1/chat/completions": lambda m: {"model": m, "messages": USER},
    "/chat/completions": lambda m: {"model": m, "messages": USER},
    "/v1/completions": lambda m: {"model": m, "prompt": "hi"},
    "/v1/embeddings": lambda m: {"model": m, "input": "hi"},
    "/v1/images/generations": lambda m: {"model": m, "prompt": "a cat"},
    "/image": lambda m: {"model": m, "prompt": "a cat"},
    "/v1/messages": lambda m: {"model": m, "max_tokens": 5, "messages": USER},
    "/v1/messages/count_tokens": lambda m: {"model": m, "messages": USER},
}
# Models the limited token may not use: unknown ones, existing ones of every kind, an alias, a
# category, wildcard ids outside its list, and ids that look like allowed ones.
NOT_ALLOWED = [
    "nope",
    "secret-chat",
    "secret-emb",
    "secret-img",
    "BIG",
    "big",
    "fast",
    "openrouter/openai/gpt-4o",
    "openrouter/deepseek/deepseek-chat-v2",
    "openrouter/deepseek/../openai/gpt-4o",
    "openrouter/meta-llama/../../openai/gpt-4o",
    "openrouter/meta-llama/%2e%2e/x",
    "cloudflare/@cf/other/x",
    "cloudflare/*",
    "openrouter/*",
    "Gpt-chat",
]


def call(client, path: str, model: str, token: str = LIMITED):
    return client.post(path, json=SURFACES[path](model), headers={"x-api-key": token})


@pytest.mark.parametrize("model", NOT_ALLOWED)
@pytest.mark.parametrize("path", list(SURFACES))
def test_not_allowed_is_403_whether_or_not_it_exists_or_its_kind(access, no_upstream, path, model):
    response = call(access, path, model)
    assert response.status_code == 403, response.get_data(as_text=True)
    error = response.json["error"]
    assert error["type"] == "permission_error"
    if not path.startswith("/v1/messages"):
        assert error["code"] == "model_not_allowed"


@pytest.mark.parametrize("model", NOT_ALLOWED)
def test_model_endpoint_refuses_before_saying_whether_it_exists(access, model):
    response = access.get(f"/v1/models/{model}", headers={"x-api-key": LIMITED})
    assert response.status_code == 403
    assert response.json["error"]["code"] == "model_not_allowed"


@pytest.mark.parametrize("path", list(SURFACES))
def test_allowed_but_unknown_is_404(access, no_upstream, path):
    response = call(access, path, "gpt-unknown")
    assert response.status_code == 404
    assert access.get("/v1/models/gpt-unknown", headers={"x-api-key": LIMITED}).status_code == 404


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/chat/completions", "gpt-emb"),
        ("/v1/messages", "gpt-img"),
        ("/v1/embeddings", "gpt-chat"),
        ("/image", "gpt-emb"),
        ("/v1/images/generations", "gpt-chat"),
    ],
)
def test_allowed_but_wrong_kind_is_400(access, no_upstream, path, model):
    assert call(access, path, model).status_code == 400


@pytest.mark.parametrize(("path", "model"), [("/v1/chat/completions", "nope")])
def test_a_token_without_a_list_still_learns_404(access, path, model):
    assert call(access, path, model, token=TOKEN).status_code == 404


def test_models_list_names_wildcard_ids_the_token_may_use(access):
    listed = access.get("/v1/models", headers={"x-api-key": LIMITED}).json
    ids = [m["id"] for m in listed["data"]]
    assert "openrouter/deepseek/deepseek-chat" in ids
    assert "cloudflare/@cf/meta/llama-3.1-8b-instruct" in ids
    # A glob names no model; models outside the list stay hidden.
    assert not any("*" in model_id for model_id in ids)
    assert {"gpt-chat", "gpt-emb", "gpt-img", "SMALL"} <= set(ids)
    assert not {"secret-chat", "secret-emb", "BIG", "fast"} & set(ids)
    owned = {m["id"]: m["owned_by"] for m in listed["data"]}
    assert owned["openrouter/deepseek/deepseek-chat"] == "openrouter"
    one = access.get("/v1/models/openrouter/deepseek/deepseek-chat", headers={"x-api-key": LIMITED})
    assert one.status_code == 200
    assert one.json["id"] == "openrouter/deepseek/deepseek-chat"
    glob_member = access.get(
        "/v1/models/openrouter/meta-llama/llama-3.1-8b", headers={"x-api-key": LIMITED}
    )
    assert glob_member.status_code == 200
    assert glob_member.json["owned_by"] == "openrouter"


def test_models_list_for_an_unlimited_token_is_unchanged(access):
    ids = [m["id"] for m in access.get("/v1/models", headers={"x-api-key": TOKEN}).json["data"]]
    assert "secret-chat" in ids and "openrouter/*" in ids


# --- non-ASCII tokens ------------------------------------------------------------------------

ACCENTED = "tökén-ü"
BEYOND_LATIN1 = "ключ-🔑"
# Their UTF-8 ends in 0x85 and 0xa0, which Python's str.strip() takes for white space.
TRAILING_NEL = "jeton-ą"
TRAILING_NBSP = "voilà"


@pytest.fixture
def accented(make_app):
    app = make_app(
        {
            "auth": {
                "tokens": [
                    {"name": "accented", "token": ACCENTED},
                    {"name": "cyrillic", "token": BEYOND_LATIN1},
                    {"name": "nel", "token": TRAILING_NEL},
                    {"name": "nbsp", "token": TRAILING_NBSP},
                ]
            },
            "models": [{"name": "echo", "provider": "echo"}],
        }
    )
    return app


def as_wsgi(raw: bytes) -> str:
    """How a WSGI server hands a header value over: its bytes decoded as latin-1."""
    return raw.decode("latin-1")


@pytest.mark.parametrize("header", ["Authorization", "x-api-key", "api-key", "x-goog-api-key"])
@pytest.mark.parametrize(
    "sent",
    [
        as_wsgi(ACCENTED.encode("utf-8")),
        as_wsgi(ACCENTED.encode("latin-1")),
        as_wsgi(BEYOND_LATIN1.encode("utf-8")),
        as_wsgi(TRAILING_NEL.encode("utf-8")),
        as_wsgi(TRAILING_NBSP.encode("utf-8")),
        as_wsgi(TRAILING_NBSP.encode("latin-1")),
    ],
    ids=["utf-8", "latin-1", "utf-8-beyond-latin-1", "nel", "nbsp", "nbsp-latin-1"],
)
def test_non_ascii_token_in_either_encoding(accented, header, sent):
    value = f"Bearer {sent}" if header == "Authorization" else sent
    response = accented.test_client().post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": USER},
        environ_overrides={**LOOPBACK, f"HTTP_{header.upper().replace('-', '_')}": value},
    )
    assert response.status_code == 200, response.json


@pytest.mark.parametrize(
    "sent",
    [
        as_wsgi("tökén-u".encode()),
        as_wsgi(ACCENTED.encode("utf-16-le")),
        as_wsgi(ACCENTED.encode("utf-8")) + "x",
        "tokén-ü",
        "tökén-ü".upper(),
    ],
)
def test_wrong_non_ascii_token_is_401(accented, sent):
    response = accented.test_client().post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": USER},
        environ_overrides={**LOOPBACK, "HTTP_X_API_KEY": sent},
    )
    assert response.status_code == 401


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
def test_non_ascii_token_through_gunicorn(proxy_factory, encoding):
    server = proxy_factory(
        {
            "auth": {"tokens": [{"name": "accented", "token": ACCENTED}]},
            "models": [{"name": "echo", "provider": "echo"}],
        }
    )
    body = json.dumps({"model": "echo", "messages": USER}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n"
    ).encode()
    token_line = b"x-api-key: " + ACCENTED.encode(encoding) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head + token_line + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.split(b"\r\n", 1)[0].split()[1] == b"200", data


# --- quotas on token counts ------------------------------------------------------------------

ANTHROPIC = "https://anthropic.example.test/v1"


def counting_app(make_app, token_rpm: int = 0, deployment_rpm: int = 0):
    token = {"name": "a", "token": TOKEN}
    if token_rpm:
        token["requests_per_minute"] = token_rpm
    model = {"name": "claude", "provider": "anthropic", "base_url": ANTHROPIC, "token": KEY}
    if deployment_rpm:
        model["requests_per_minute"] = deployment_rpm
    client = make_app({"auth": {"tokens": [token]}, "models": [model]}).test_client()
    client.environ_base.update({**LOOPBACK, "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})
    return client


COUNT = {"model": "claude", "messages": USER}


@responses.activate
def test_count_tokens_is_under_the_client_quota(make_app):
    responses.post(f"{ANTHROPIC}/messages/count_tokens", json={"input_tokens": 42})
    client = counting_app(make_app, token_rpm=1)
    first = client.post("/v1/messages/count_tokens", json=COUNT)
    assert first.json == {"input_tokens": 42}
    second = client.post("/v1/messages/count_tokens", json=COUNT)
    assert second.status_code == 429
    assert second.json["error"]["type"] == "rate_limit_error"
    assert "Retry-After" in second.headers
    assert len(responses.calls) == 1


@responses.activate
def test_count_tokens_is_under_the_deployment_quota(make_app):
    """An upstream count uses the proxy's key: it counts on the deployment, and a spent
    deployment is not called (the count falls back to the proxy's estimate)."""
    responses.post(f"{ANTHROPIC}/messages/count_tokens", json={"input_tokens": 42})
    client = counting_app(make_app, deployment_rpm=1)
    assert client.post("/v1/messages/count_tokens", json=COUNT).json == {"input_tokens": 42}
    second = client.post("/v1/messages/count_tokens", json=COUNT)
    assert second.status_code == 200
    assert second.json["input_tokens"] != 42
    assert len(responses.calls) == 1
    # And the chat the deployment's window is for is refused too: the count used it.
    chat = client.post("/v1/messages", json={**COUNT, "max_tokens": 5})
    assert chat.status_code == 503
    assert len(responses.calls) == 1


# --- /readyz and metrics ---------------------------------------------------------------------


def test_readyz_shows_no_paths(make_app, tmp_path):
    path = tmp_path / "secret-dir" / "config.yaml"
    path.parent.mkdir()
    path.write_text("models:\n  - name: echo\n    provider: echo\n")
    client = make_app(config_path=str(path)).test_client()
    text = client.get("/readyz").get_data(as_text=True)
    assert "secret-dir" not in text and "config.yaml" not in text and str(tmp_path) not in text
    assert "/" not in text


def requests_total(**labels) -> float:
    return REGISTRY.get_sample_value("ai_proxy_requests_total", labels) or 0.0


@pytest.mark.parametrize(
    ("headers", "path", "body", "status", "model"),
    [
        ({}, CHAT, {"model": "gpt-chat", "messages": USER}, "401", ""),
        ({"x-api-key": LIMITED}, CHAT, {"model": "secret-chat", "messages": USER}, "403",
         "secret-chat"),
        ({"x-api-key": LIMITED}, CHAT, {"model": "nope-x", "messages": USER}, "403", ""),
        ({"x-api-key": TOKEN}, CHAT, {"model": "nope-y", "messages": USER}, "404", ""),
        ({"x-api-key": TOKEN}, CHAT, {"messages": "x"}, "400", ""),
        ({"x-api-key": TOKEN}, "/v1/embeddings", {"model": "gpt-chat", "input": "x"}, "400",
         "gpt-chat"),
        ({"x-api-key": TOKEN}, "/v1/nothing-here", {}, "404", ""),
    ],
)  # fmt: skip
def test_refused_requests_are_counted(access, headers, path, body, status, model):
    labels = {"surface": "openai", "model": model, "provider": "", "status": status}
    before = requests_total(**labels)
    access.post(path, json=body, headers=headers).close()  # counted once the answer is out
    assert requests_total(**labels) == before + 1


def test_too_large_and_rate_limited_are_counted(make_app):
    client = make_app(
        {
            "server": {"max_body_bytes": 1024},
            "auth": {"tokens": [{"name": "a", "token": TOKEN, "requests_per_minute": 1}]},
            "models": [{"name": "echo", "provider": "echo"}],
        }
    ).test_client()
    client.environ_base.update({**LOOPBACK, "HTTP_AUTHORIZATION": f"Bearer {TOKEN}"})
    big = {"surface": "openai", "model": "", "provider": "", "status": "413"}
    before = requests_total(**big)
    client.post(
        "/v1/chat/completions", json={"model": "echo", "messages": [{"x": "y" * 2000}]}
    ).close()
    assert requests_total(**big) == before + 1
    limited = {"surface": "openai", "model": "echo", "provider": "", "status": "429"}
    before = requests_total(**limited)
    for _ in range(2):
        client.post("/v1/chat/completions", json={"model": "echo", "messages": USER}).close()
    assert requests_total(**limited) == before + 1


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize("path", ["/metrics", "/admin/status"])
def test_non_ascii_admin_and_metrics_tokens_in_either_encoding(make_app, encoding, path):
    config = {
        "models": [{"name": "echo", "provider": "echo"}],
        "auth": {"tokens": [{"name": "t", "token": "sk-client-token-x"}], "admin_token": ACCENTED},
        "server": {"metrics_token": ACCENTED},
    }
    client = make_app(config).test_client()
    sent = as_wsgi(ACCENTED.encode(encoding))
    ok = client.get(path, environ_overrides={**LOOPBACK, "HTTP_AUTHORIZATION": f"Bearer {sent}"})
    assert ok.status_code == 200, ok.get_data(as_text=True)
    wrong = as_wsgi("tökén-u".encode(encoding))
    refused = client.get(
        path, environ_overrides={**LOOPBACK, "HTTP_AUTHORIZATION": f"Bearer {wrong}"}
    )
    assert refused.status_code == 401


@responses.activate
@pytest.mark.parametrize("path", ["/v1/messages/count_tokens", "/v1/messages"])
def test_the_client_s_anthropic_beta_reaches_an_anthropic_upstream(make_app, path):
    """A beta changes what a request may hold (tools, documents): the count needs it too."""
    responses.post(f"{ANTHROPIC}/messages/count_tokens", json={"input_tokens": 42})
    responses.post(
        f"{ANTHROPIC}/messages",
        json={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-up",
            "content": [{"type": "text", "text": "hi"}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 3, "output_tokens": 1},
        },
    )
    client = counting_app(make_app)
    beta = "token-counting-2024-11-01,files-api-2025-04-14"
    response = client.post(path, json={**COUNT, "max_tokens": 5}, headers={"anthropic-beta": beta})
    assert response.status_code == 200
    (call,) = responses.calls
    assert call.request.headers["anthropic-beta"] == beta
