"""The proxy's sessions send through their adapter (app.upstream.send_prepared): the same
answer as Session.send, no redirect followed, no cookie kept; Session.send for anything the
shortcut does not cover (hooks, proxies, the environment's settings). Real local HTTP server."""

from __future__ import annotations

import pytest
import requests

from app.config import RetryConfig
from app.upstream import UpstreamPool, send_prepared
from tests.stub_upstream import Reply

REPLIES = [
    Reply(body={"ok": True}, headers={"X-Up": "1"}),
    Reply(status=302, headers={"Location": "/elsewhere"}, body={}),
    Reply(body={"set": 1}, headers={"Set-Cookie": "sid=client-a; Path=/"}),
    Reply(status=500, body={"error": {"message": "boom"}}),
    Reply(events=["data: 1", "data: [DONE]"]),
]


def answer(response: requests.Response) -> tuple:
    headers = {k: v for k, v in response.headers.items() if k.lower() != "date"}
    return response.status_code, headers, response.content, response.url, response.history


@pytest.fixture
def pool():
    pool = UpstreamPool(RetryConfig(max_retries=0), pool_size=4)
    yield pool
    pool.close()


@pytest.mark.parametrize("reply", REPLIES, ids=["ok", "redirect", "cookie", "error", "stream"])
def test_same_answer_as_session_send(pool, upstream, reply):
    url = upstream.url + "/v1/chat/completions"
    session = pool.session(url)
    answers = []
    for direct in (True, False):
        upstream.queue(reply)
        request = pool._templates.prepare(session, "POST", url, None, {"X-A": "1"}, b"{}")
        if direct:
            response = send_prepared(session, request, (5, 5), True)
        else:
            response = session.send(request, timeout=(5, 5), stream=True, allow_redirects=False)
        answers.append(answer(response))
        assert not session.cookies  # an upstream's cookie is never kept
    assert answers[0] == answers[1]
    assert len(upstream.requests) == 2  # a redirect is not followed either way
    assert upstream.requests[0].body == upstream.requests[1].body == b"{}"


def test_a_request_with_hooks_takes_session_send(pool, upstream):
    url = upstream.url + "/v1/x"
    session = pool.session(url)
    seen = []
    upstream.queue(Reply(body={}))
    request = pool._templates.prepare(session, "POST", url, None, {}, b"{}")
    request.register_hook("response", lambda r, **kw: seen.append(r.status_code))
    send_prepared(session, request, (5, 5), True).close()
    assert seen == [200]


@pytest.mark.parametrize("setting", ["trust_env", "proxies", "cert"])
def test_a_session_with_its_own_settings_takes_session_send(upstream, setting, monkeypatch):
    session = requests.Session()
    session.trust_env = setting == "trust_env"
    if setting == "proxies":
        session.proxies = {"https": "http://127.0.0.1:9"}  # not used for this http URL
    if setting == "cert":
        session.cert = __file__  # must exist; not read for an http URL
    called = []
    original = requests.Session.send
    monkeypatch.setattr(
        requests.Session,
        "send",
        lambda self, *a, **kw: called.append(1) or original(self, *a, **kw),
    )
    upstream.queue(Reply(body={}))
    request = session.prepare_request(requests.Request("POST", upstream.url + "/v1/x", data=b"{}"))
    assert send_prepared(session, request, (5, 5), True).status_code == 200
    assert called == [1]
    session.close()
