"""Status page sign-out revokes the session: a copy of its cookie replayed afterwards is signed
out, on every worker (shared through Redis or the multiprocess directory), until the cookie
would have expired anyway."""

from __future__ import annotations

import re

import pytest
import requests
import yaml

from app.activity import FileBoard, RedisBoard
from app.statuspage import session
from app.statuspage.revoked import Revocations
from tests.conftest import TOKEN
from tests.servers import ProxyServer

ADMIN = "admin-secret-token-for-revocation"
SESSION_ID = "s" * 32


def config(**extra) -> dict:
    return {
        "auth": {"tokens": [{"name": "team", "token": TOKEN}], "admin_token": ADMIN},
        "models": [{"name": "echo", "provider": "echo"}],
        **extra,
    }


@pytest.fixture
def page_app(make_app):
    return make_app(config())


def csrf_of(text: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', text).group(1)


def cookie_of(response) -> str:
    header = response.headers["Set-Cookie"]
    return header.split(";", 1)[0].split("=", 1)[1]


def signed_in_with(app, cookie: str) -> bool:
    """Whether a client holding only this cookie value is signed in (page and JSON agree)."""
    client = app.test_client(use_cookies=False)  # a jar would replace the Cookie header
    headers = {"Cookie": f"{session.COOKIE}={cookie}"}
    page = client.get("/admin", headers=headers).get_data(as_text=True)
    status = client.get("/admin/status", headers=headers).status_code
    assert ('id="deployments"' in page) == (status == 200), (page[:200], status)
    return status == 200


def sign_in(client) -> tuple[str, str]:
    """Signs in; the session cookie's value and the page's CSRF token."""
    form = client.get("/admin")
    signed = client.post("/admin/sign-in", data={"token": ADMIN, "csrf": csrf_of(form.text)})
    assert signed.status_code == 303
    page = client.get("/admin")
    return cookie_of(signed), csrf_of(page.get_data(as_text=True))


def test_a_copied_cookie_is_signed_out_with_its_session(page_app):
    client = page_app.test_client()
    copied, csrf = sign_in(client)
    assert signed_in_with(page_app, copied)
    assert client.post("/admin/sign-out", data={"csrf": csrf}).status_code == 303
    assert not signed_in_with(page_app, copied)
    # The copy cannot sign out or in again on its own either, and a new sign-in is a new session.
    fresh = page_app.test_client()
    again, _ = sign_in(fresh)
    assert again != copied and signed_in_with(page_app, again)
    assert not signed_in_with(page_app, copied)


def test_signing_out_one_session_leaves_the_others(page_app):
    first, second = page_app.test_client(), page_app.test_client()
    one, csrf = sign_in(first)
    two, _ = sign_in(second)
    first.post("/admin/sign-out", data={"csrf": csrf})
    assert not signed_in_with(page_app, one)
    assert signed_in_with(page_app, two)


def test_a_signed_in_cookie_without_a_session_id_is_signed_out(page_app):
    # As a cookie made before sessions had ids: it could never be revoked, so it is not valid.
    with page_app.test_request_context():
        forged = session._serializer(ADMIN).dumps(
            {"c": "x" * 43, "in": 1, "fp": session._fingerprint(ADMIN)}
        )
        bad_id = session._serializer(ADMIN).dumps(
            {"c": "x" * 43, "in": 1, "fp": session._fingerprint(ADMIN), "s": "../../etc/passwd"}
        )
    assert not signed_in_with(page_app, forged)
    assert not signed_in_with(page_app, bad_id)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("kind", ["file", "redis"])
def test_another_worker_sees_the_sign_out_until_it_expires(kind, tmp_path, request):
    if kind == "redis":
        import redis

        server = request.getfixturevalue("redis_server")
        board = RedisBoard(redis.Redis.from_url(server.url))
    else:
        board = FileBoard(tmp_path)
    clock = Clock()
    # Two workers: each its own process memory, one board.
    signing_out, other = Revocations(clock), Revocations(clock)
    assert not other.is_revoked(board, SESSION_ID)
    signing_out.revoke(board, SESSION_ID, 60)
    assert other.is_revoked(board, SESSION_ID)
    assert not other.is_revoked(board, "t" * 32)
    if kind == "redis":
        assert 0 < board.client.ttl("aiproxy:admin-session-revoked:" + SESSION_ID) <= 61
    else:
        clock.now += 61
        assert not other.is_revoked(board, SESSION_ID)
        assert not signing_out.is_revoked(board, SESSION_ID)
        # Expired entries are swept by the next sign-out.
        signing_out.revoke(board, "u" * 32, 60)
        assert [p.name for p in tmp_path.iterdir()] == ["ai-proxy-revoked-" + "u" * 32]


def test_a_failing_board_still_revokes_in_this_worker():
    class Broken(RedisBoard):
        def __init__(self) -> None:
            self.client = self

        def set(self, *args, **kwargs):
            raise ConnectionError("down")

        exists = set

    revocations = Revocations()
    revocations.revoke(Broken(), SESSION_ID, 60)
    assert revocations.is_revoked(Broken(), SESSION_ID)
    assert not revocations.is_revoked(Broken(), "t" * 32)


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_two_workers_refuse_the_copied_cookie(storage, tmp_path, request):
    extra = {}
    if storage == "redis":
        extra["rate_limits"] = {"storage": request.getfixturevalue("redis_server").url}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config(**extra)))
    server = ProxyServer(path, workers=2).start()
    try:
        browser = requests.Session()
        browser.headers["Connection"] = "close"  # each request may land on either worker
        form = browser.get(server.url + "/admin", timeout=10)
        signed = browser.post(
            server.url + "/admin/sign-in",
            data={"token": ADMIN, "csrf": csrf_of(form.text)},
            allow_redirects=False,
            timeout=10,
        )
        copied = signed.cookies[session.COOKIE]
        page = browser.get(server.url + "/admin", timeout=10)
        replay = {"Cookie": f"{session.COOKIE}={copied}", "Connection": "close"}
        status = server.url + "/admin/status"
        assert requests.get(status, headers=replay, timeout=10).status_code == 200
        out = browser.post(
            server.url + "/admin/sign-out",
            data={"csrf": csrf_of(page.text)},
            allow_redirects=False,
            timeout=10,
        )
        assert out.status_code == 303
        answers = {requests.get(status, headers=replay, timeout=10).status_code for _ in range(12)}
        assert answers == {401}
        replayed = requests.get(server.url + "/admin", headers=replay, timeout=10)
        assert 'name="token"' in replayed.text
    finally:
        server.stop()
