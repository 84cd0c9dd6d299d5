"""Without a client token the proxy serves this machine's own clients only: not a web page
(cross-site request, `text/plain` post) nor a DNS-rebound name, whatever the peer address."""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from app.auth import is_loopback_host_header
from tests.conftest import LOOPBACK, TOKEN
from tests.servers import ProxyServer

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello"}]}
BODY = json.dumps(CHAT)


@pytest.fixture
def local(make_app):
    """No client token; `http://app.example` is the one browser origin allowed."""
    app = make_app(
        {
            "models": [{"name": "echo", "provider": "echo"}],
            "server": {"cors_origins": ["http://app.example"]},
        }
    )
    return app.test_client()


def post(client, host: str | None = "127.0.0.1:8080", path="/v1/chat/completions", **kwargs):
    headers = {"Content-Type": "application/json", **kwargs.pop("headers", {})}
    environ = {**LOOPBACK, **({"HTTP_HOST": host} if host is not None else {})}
    return client.post(path, data=BODY, headers=headers, environ_overrides=environ, **kwargs)


def assert_refused(response) -> None:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.headers["Content-Type"] == "application/json"
    assert response.json["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "host",
    [
        "localhost",
        "localhost:8080",
        "LOCALHOST:8080",
        "localhost.",
        "127.0.0.1",
        "127.0.0.1:8080",
        "127.8.9.10:1",
        "[::1]",
        "[::1]:8080",
        "::1",
        "[::ffff:127.0.0.1]:8080",
    ],
)
def test_loopback_host_is_served(local, host):
    assert post(local, host).status_code == 200


@pytest.mark.parametrize(
    "host",
    [
        "evil.com",
        "evil.com:8080",
        "127.0.0.1.evil.com",
        "127.0.0.1.nip.io",
        "localhost.evil.com",
        "localhost.evil.com:8080",
        "evil-localhost",
        "evil.localhost",
        "evil.localhost:8080",
        "0.0.0.0",
        "0.0.0.0:8080",
        "[::]:8080",
        "10.0.0.7",
        "192.168.1.2:8080",
        "[::ffff:10.0.0.7]",
        "2130706433",  # 127.0.0.1 as one number: no browser sends it, no name is this
        "0x7f.1",
        "127.1",
        "localhost:8080:80",
        "localhost:http",
        "localhost@evil.com",
        "evil.com#localhost",
        "[::1]evil",
        "[::1",
        "local host",
        "",
    ],
)
def test_other_host_is_refused_even_from_a_loopback_peer(local, host):
    """DNS rebinding: a page on evil.com, its name now pointing at 127.0.0.1."""
    assert_refused(post(local, host))


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "http://evil.com",
        "http://localhost:3000",
        "http://127.0.0.1",
        "https://127.0.0.1:8080",
        "http://app.example.evil.com",
        "",
    ],
)
def test_cross_site_origin_is_refused(local, origin):
    assert_refused(post(local, headers={"Origin": origin}))


@pytest.mark.parametrize(
    "origin", ["http://app.example", "http://127.0.0.1:8080"], ids=["configured", "same-origin"]
)
def test_configured_or_same_origin_is_served(local, origin):
    response = post(local, headers={"Origin": origin})
    assert response.status_code == 200


@pytest.mark.parametrize("site", ["cross-site", "same-site"])
def test_fetch_metadata_cross_site_is_refused(local, site):
    assert_refused(post(local, headers={"Sec-Fetch-Site": site}))
    assert_refused(post(local, path="/v1/models", headers={"Sec-Fetch-Site": site}))


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/json",
        "application/jsonx",
        "application/json-seq",
        None,
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/messages", "/v1/embeddings", "/image"]
)
def test_post_that_is_not_json_is_refused(local, content_type, path):
    """A browser sends these cross-site without a preflight."""
    environ = {**LOOPBACK, "HTTP_HOST": "localhost:8080"}
    headers = {"Content-Type": content_type} if content_type else {}
    response = local.post(path, data=BODY, headers=headers, environ_overrides=environ)
    assert_refused(response)


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"]
)
def test_json_post_is_served(local, content_type):
    assert post(local, headers={"Content-Type": content_type}).status_code == 200


def test_preflight_from_a_configured_origin_is_answered(local):
    response = local.options(
        "/v1/chat/completions",
        headers={"Origin": "http://app.example", "Access-Control-Request-Method": "POST"},
        environ_overrides={**LOOPBACK, "HTTP_HOST": "127.0.0.1:8080"},
    )
    assert response.status_code == 204
    assert response.headers["Access-Control-Allow-Origin"] == "http://app.example"


def test_health_and_metrics_follow_the_same_rule(local):
    for path in ("/healthz", "/metrics", "/v1/models"):
        ok = local.get(path, environ_overrides={**LOOPBACK, "HTTP_HOST": "localhost:8080"})
        assert ok.status_code == 200, path
        refused = local.get(path, environ_overrides={**LOOPBACK, "HTTP_HOST": "evil.com"})
        assert_refused(refused)


def test_with_a_client_token_the_host_does_not_matter(make_app):
    app = make_app(
        {
            "auth": {"tokens": [{"name": "a", "token": TOKEN}]},
            "models": [{"name": "echo", "provider": "echo"}],
        }
    )
    response = app.test_client().post(
        "/v1/chat/completions",
        json=CHAT,
        headers={"Authorization": f"Bearer {TOKEN}", "Origin": "null"},
        environ_overrides={"REMOTE_ADDR": "10.0.0.7", "HTTP_HOST": "proxy.example.com"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("localhost", True), ("x.localhost:1", False), ("localhost.evil", False), (None, False)],
)
def test_loopback_host_header(host, loopback):
    assert is_loopback_host_header(host) is loopback


# --- through a real gunicorn -----------------------------------------------------------------


def raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, dict, bytes]:
    """Send exactly these request lines (no client library adds or fixes a header)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_bytes, _, payload = data.partition(b"\r\n\r\n")
    lines = head_bytes.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, payload


@pytest.fixture(scope="module")
def gunicorn_local(tmp_path_factory):
    """One no-token gunicorn proxy for the module: each request below stands alone."""
    path = tmp_path_factory.mktemp("local") / "config.yaml"
    path.write_text(yaml.safe_dump({"models": [{"name": "echo", "provider": "echo"}]}))
    server = ProxyServer(path).start()
    yield server
    server.stop()


def chat_request(host_line: str, content_type: str = "application/json", extra: str = ""):
    head = f"POST /v1/chat/completions HTTP/1.1\n{host_line}"
    head += f"Content-Type: {content_type}\nContent-Length: {len(BODY)}\n{extra}"
    return head + "Connection: close\n", BODY.encode()


@pytest.mark.parametrize(
    ("host_line", "content_type", "extra", "status"),
    [
        ("Host: 127.0.0.1:{port}\n", "application/json", "", 200),
        ("Host: localhost:{port}\n", "application/json", "", 200),
        ("Host: [::1]:{port}\n", "application/json", "", 200),
        ("Host: evil.com:{port}\n", "application/json", "", 401),
        ("Host: 127.0.0.1.evil.com\n", "application/json", "", 401),
        ("Host: localhost.evil.com\n", "application/json", "", 401),
        ("Host: 0.0.0.0:{port}\n", "application/json", "", 401),
        ("", "application/json", "", 401),
        ("Host: 127.0.0.1:{port}\n", "text/plain", "", 401),
        ("Host: 127.0.0.1:{port}\n", "multipart/form-data; boundary=b", "", 401),
        ("Host: 127.0.0.1:{port}\n", "application/json", "Origin: null\n", 401),
        ("Host: 127.0.0.1:{port}\n", "application/json", "Origin: http://evil.com\n", 401),
    ],
)
def test_through_gunicorn(gunicorn_local, host_line, content_type, extra, status):
    head, body = chat_request(host_line.format(port=gunicorn_local.port), content_type, extra)
    got, headers, payload = raw_request(gunicorn_local.port, head, body)
    assert got == status, payload
    assert headers["content-type"] == "application/json"
    if status == 401:
        assert json.loads(payload)["error"]["type"] == "authentication_error"
