"""What the per-request shortcuts must keep: each request sees its own state and its own app's,
nothing of one request leaks into the next on the same thread, two proxies mounted in one
process stay apart, labelled metrics count as before, and the large-answer check agrees with
a plain walk over any JSON value."""

from __future__ import annotations

import threading

from flask import Flask
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client

from app import AIProxy, create_app, metrics
from app.blueprints.common import _holds_more_text
from app.state import CURRENT_REQUEST
from tests.conftest import TOKEN

CHAT = {"model": "echo", "messages": [{"role": "user", "content": "hello there"}]}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def config(name: str, token: str = TOKEN) -> dict:
    return {
        "auth": {"tokens": [{"name": name, "token": token}]},
        "models": [{"name": "echo", "provider": "echo"}],
        "default_model": None,
        "env": {},
    }


def test_each_request_gets_its_own_id_and_nothing_is_left_on_the_thread(client):
    ids = []
    for _ in range(3):
        response = client.post("/v1/chat/completions", json=CHAT)
        assert response.status_code == 200
        ids.append(response.headers["x-request-id"])
        # The teardown cleared the thread's current request.
        assert CURRENT_REQUEST.get() is None
    assert len(set(ids)) == 3
    kept = client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-ID": "mine-1"})
    assert kept.headers["x-request-id"] == "mine-1"


def test_two_proxies_in_one_process_keep_their_own_tokens_and_state():
    first = create_app(config("first"))
    second = create_app(config("second", token="sk-the-second-token"))
    outer = Flask("outer")
    outer.wsgi_app = DispatcherMiddleware(outer.wsgi_app, {"/a": first, "/b": second})
    client = Client(outer)
    for _ in range(2):
        ok_a = client.post("/a/v1/chat/completions", json=CHAT, headers=AUTH)
        ok_b = client.post(
            "/b/v1/chat/completions",
            json=CHAT,
            headers={"Authorization": "Bearer sk-the-second-token"},
        )
        assert ok_a.status_code == ok_b.status_code == 200
        # Each app checks its own tokens: the state of the app serving the request is used.
        assert client.post("/b/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 401
        assert (
            client.post(
                "/a/v1/chat/completions",
                json=CHAT,
                headers={"Authorization": "Bearer sk-the-second-token"},
            ).status_code
            == 401
        )


def test_a_host_route_after_a_proxy_request_gets_no_proxy_headers():
    host = Flask("host")

    @host.get("/plain")
    def plain():
        return "plain"

    overrides = {key: value for key, value in config("t").items() if key != "env"}
    AIProxy(host, url_prefix="/ai", overrides=overrides, env={})
    client = host.test_client()
    assert client.post("/ai/v1/chat/completions", json=CHAT, headers=AUTH).status_code == 200
    answer = client.get("/plain")
    assert answer.get_data(as_text=True) == "plain"
    assert "x-request-id" not in answer.headers


def test_threads_serving_at_once_see_their_own_requests(make_app, config):
    app = make_app(config)
    results: dict[int, str] = {}

    def serve(n: int) -> None:
        client = app.test_client()
        response = client.post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": f"n{n}"}]},
            headers={**AUTH, "X-Request-ID": f"req-{n}"},
            environ_base={"REMOTE_ADDR": "127.0.0.1"},
        )
        results[n] = (response.headers["x-request-id"], response.json["choices"][0]["message"])

    threads = [threading.Thread(target=serve, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert {n: rid for n, (rid, _) in results.items()} == {n: f"req-{n}" for n in range(8)}
    assert all(message["content"] == f"n{n}" for n, (_, message) in results.items())


def test_labelled_children_are_remembered_and_still_count():
    child = metrics.FALLBACKS.labels("memo-test-model")
    assert metrics.FALLBACKS.labels("memo-test-model") is child
    before = child._value.get()
    metrics.FALLBACKS.labels("memo-test-model").inc()
    metrics.FALLBACKS.labels(model="memo-test-model").inc()
    assert child._value.get() == before + 2


def reference_holds_more_text(payload: object, limit: int) -> bool:
    """The plain walk: every string, keys included, counted."""
    total = 0
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total > limit


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.text(max_size=10), children, max_size=5)
        | st.tuples(children, children)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(JSON, st.integers(min_value=0, max_value=200))
def test_the_large_answer_check_agrees_with_a_plain_walk(payload, limit):
    assert _holds_more_text(payload, limit) == reference_holds_more_text(payload, limit)


def test_the_large_answer_check_counts_text_in_subclasses():
    class Text(str):
        pass

    class Mapping(dict):
        pass

    assert _holds_more_text({"a": Text("x" * 50)}, 40)
    assert _holds_more_text([Mapping(k="y" * 50)], 40)
    assert not _holds_more_text([Mapping(k="y" * 5), 1, 2.5, None, True], 40)
