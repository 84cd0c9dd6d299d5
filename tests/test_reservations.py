"""Quotas that never overshoot: reserve on admission, settle with the real usage, give back on
failure; every window of a request in one storage round trip (memory and a real Redis)."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from app.config import load_config
from app.hooks.limits_batch import Change, Layout, Window
from app.hooks.limits_memory import MemoryBatch
from app.ratelimit import Demand, make_storage
from app.reservations import reserve
from tests.conftest import openai_model
from tests.servers import SentCommands, wait_until
from tests.stub_upstream import Reply, chat_chunks, chat_completion, text_completion

PROMPT = {"role": "user", "content": "hi"}  # estimated at 1 token
PER_REQUEST = 1 + 100  # the prompt + max_tokens 100
BURST = 20


def storage_url(request, kind: str) -> str:
    return request.getfixturevalue("redis_server").url if kind == "redis" else "memory://"


def quota_config(storage: str, upstream, token: dict | None = None, **model) -> dict:
    return {
        "default_model": None,
        "auth": {"tokens": [{"name": "a", "token": "k-1", **(token or {})}]},
        "models": [openai_model(upstream, name="gpt", **model)],
        "rate_limits": {"storage": storage},
        "retry": {"max_retries": 0},
    }


# Each limit with room for 9 requests of 101 tokens (at $1000 per million tokens for budgets).
LIMITS = {
    "tokens_per_minute": ({"tokens_per_minute": 1000}, {}),
    "budget_per_day": (
        {"budget_per_day": 1.0},
        {"input_cost_per_mtok": 1000, "output_cost_per_mtok": 1000},
    ),
}


class Gate:
    """An upstream that holds every answer until released, so that requests stay in flight."""

    def __init__(self, upstream, usage=None) -> None:
        self.open = threading.Event()
        self.upstream = upstream
        self.reply = Reply(body=chat_completion(usage=usage))
        upstream.handler = self._answer

    def _answer(self, _record):
        self.open.wait(20)
        return self.reply


def burst(send, count: int, upstream, start: int = 0) -> tuple[list, object]:
    """Send `count` requests at once; returns once each is refused or held upstream."""
    pool = ThreadPoolExecutor(count)
    futures = [pool.submit(send, i) for i in range(count)]
    wait_until(lambda: len(upstream.requests) - start + sum(f.done() for f in futures) == count)
    return futures, pool


def in_process_sender(app):
    def send(_i):
        client = app.test_client()
        response = client.post(
            "/v1/chat/completions",
            json={"model": "gpt", "messages": [PROMPT], "max_tokens": 100},
            headers={"Authorization": "Bearer k-1"},
        )
        response.get_data()
        response.close()  # as a WSGI server does once the answer is sent: it is settled then
        return response.status_code, response.get_json()

    return send


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("limit", list(LIMITS))
def test_concurrent_requests_never_overshoot(make_app, upstream, request, kind, limit):
    token, model = LIMITS[limit]
    app = make_app(quota_config(storage_url(request, kind), upstream, token, **model))
    gate = Gate(upstream)
    futures, pool = burst(in_process_sender(app), BURST, upstream)
    # Every admitted request is held upstream now: 9 reservations of 101 fill the window.
    assert len(upstream.requests) == 1000 // PER_REQUEST
    refused = [f.result() for f in futures if f.done()]
    assert {status for status, _ in refused} == {429}
    assert all(f"{limit} for token a" in body["error"]["message"] for _, body in refused)
    gate.open.set()
    statuses = [f.result()[0] for f in futures]
    pool.shutdown()
    assert statuses.count(200) == 9 and statuses.count(429) == BURST - 9

    # Settled at 7 real tokens each: the room is back for another 9 (1000 - 63 = 937).
    quotas = app.extensions["ai_proxy"].quotas
    wait_until(lambda: quotas.report("token:a")[limit]["reserved"] == 0)
    gate.open.clear()
    futures, pool = burst(in_process_sender(app), BURST, upstream, start=9)
    assert len(upstream.requests) - 9 == (1000 - 9 * 7) // PER_REQUEST
    gate.open.set()
    pool.shutdown()


@pytest.mark.parametrize("limit", list(LIMITS))
def test_concurrent_requests_across_two_proxies_sharing_redis(
    proxy_factory, redis_server, upstream, limit
):
    token, model = LIMITS[limit]
    config = quota_config(redis_server.url, upstream, token, **model)
    first = proxy_factory(config, workers=1, threads=16)
    second = proxy_factory(config, workers=1, threads=16)
    gate = Gate(upstream)
    session = requests.Session()
    session.trust_env = False

    def send(i):
        response = session.post(
            (first if i % 2 else second).url + "/v1/chat/completions",
            json={"model": "gpt", "messages": [PROMPT], "max_tokens": 100},
            headers={"Authorization": "Bearer k-1"},
            timeout=30,
        )
        return response.status_code, response.json()

    futures, pool = burst(send, BURST, upstream)
    assert len(upstream.requests) == 9
    gate.open.set()
    statuses = [f.result()[0] for f in futures]
    pool.shutdown()
    session.close()
    assert statuses.count(200) == 9 and statuses.count(429) == BURST - 9


def assert_retry_after(response) -> None:
    """A refusal says when to come back, unless waiting cannot help: a request larger than
    the refusing window's whole limit is told so, with no Retry-After to retry it forever."""
    if "can never be admitted" in response.get_json()["error"]["message"]:
        assert "Retry-After" not in response.headers
    else:
        assert int(response.headers["Retry-After"]) >= 1


def post(client, **body):
    response = client.post(
        "/v1/chat/completions",
        json={"model": "gpt", "messages": [PROMPT], **body},
        headers={"Authorization": "Bearer k-1"},
    )
    text = response.get_data(as_text=True)
    response.close()
    return response, text


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_cut_stream_is_charged_what_it_delivered(make_app, upstream, request, kind):
    app = make_app(
        quota_config(
            storage_url(request, kind),
            upstream,
            {"tokens_per_minute": 1000},
            tokens_per_minute=1000,
        )
    )
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    # The role chunk and three words, then the connection drops: no usage from upstream.
    upstream.queue(Reply(events=chat_chunks(words), cut_after=4))
    response, text = post(app.test_client(), stream=True, max_tokens=100)
    assert response.status_code == 200 and '"error"' in text
    quotas = app.extensions["ai_proxy"].quotas
    delivered = 1 + len("alpha beta gamma") // 4  # the prompt + 16 characters at 4 a token
    for owner in ("token:a", "model:gpt#0"):
        window = quotas.report(owner)["tokens_per_minute"]
        assert (window["used"], window["reserved"]) == (delivered, 0)


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_request_gives_its_reservation_back(make_app, upstream, request, kind, stream):
    app = make_app(
        quota_config(
            storage_url(request, kind),
            upstream,
            {"tokens_per_minute": 1000, "budget_per_day": 1, "requests_per_minute": 10},
            tokens_per_minute=1000,
            requests_per_minute=10,
            input_cost_per_mtok=1,
        )
    )
    upstream.default = Reply(status=500, body={"error": {"message": "down"}})
    response, _ = post(app.test_client(), stream=stream, max_tokens=100)
    assert response.status_code == 502
    quotas = app.extensions["ai_proxy"].quotas
    token, model = quotas.report("token:a"), quotas.report("model:gpt#0")
    assert token["tokens_per_minute"]["used"] == 0
    assert token["budget_per_day"]["used"] == 0
    assert model["tokens_per_minute"]["used"] == 0
    # The request was made (and reached the deployment): it still counts as one.
    assert token["requests_per_minute"]["used"] == 1
    assert model["requests_per_minute"]["used"] == 1


# Which window refuses a request with max_tokens 2000, and what the client is told.
REFUSALS = [
    ({"tokens_per_minute": 1000}, {}, 429, "tokens_per_minute for token a"),
    ({"tokens_per_day": 1000}, {}, 429, "tokens_per_day for token a"),
    ({"budget_per_day": 0.001}, {}, 429, "budget_per_day for token a"),
    ({"budget_per_month": 0.001}, {}, 429, "budget_per_month for token a"),
    ({}, {"tokens_per_minute": 1000}, 503, "tokens_per_minute for model gpt#0"),
    ({}, {"tokens_per_day": 1000}, 503, "tokens_per_day for model gpt#0"),
]
ROOMY_TOKEN = {
    "requests_per_minute": 100,
    "requests_per_hour": 100,
    "requests_per_day": 100,
    "tokens_per_minute": 10**6,
    "tokens_per_day": 10**6,
    "budget_per_day": 100,
    "budget_per_month": 100,
}
ROOMY_MODEL = {
    "requests_per_minute": 100,
    "requests_per_hour": 100,
    "requests_per_day": 100,
    "tokens_per_minute": 10**6,
    "tokens_per_day": 10**6,
    "input_cost_per_mtok": 1,
    "output_cost_per_mtok": 1,
}


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize(("token", "model", "status", "named"), REFUSALS)
def test_a_refusal_by_one_window_takes_nothing_from_the_others(
    make_app, upstream, request, kind, token, model, status, named
):
    app = make_app(
        quota_config(
            storage_url(request, kind),
            upstream,
            {**ROOMY_TOKEN, **token},
            **{**ROOMY_MODEL, **model},
        )
    )
    response, _ = post(app.test_client(), max_tokens=2000)
    assert response.status_code == status
    assert named in response.get_json()["error"]["message"]
    assert_retry_after(response)
    quotas = app.extensions["ai_proxy"].quotas
    for owner in ("token:a", "model:gpt#0"):
        assert all(window["used"] == 0 for window in quotas.report(owner).values()), owner
    assert not upstream.requests


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_the_429_headers_show_the_reservation(make_app, upstream, request, kind):
    app = make_app(
        quota_config(
            storage_url(request, kind),
            upstream,
            {"tokens_per_minute": 1000, "requests_per_minute": 5},
        )
    )
    response, _ = post(app.test_client(), max_tokens=100)
    assert response.headers["x-ratelimit-remaining-tokens"] == str(1000 - PER_REQUEST)
    assert response.headers["x-ratelimit-remaining-requests"] == "4"
    refused, _ = post(app.test_client(), max_tokens=995)  # fits 1000, not the 993 left
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit-tokens"] == "1000"
    assert int(refused.headers["Retry-After"]) >= 1


def test_fallback_moves_the_deployment_reservation(make_app, upstream):
    config = quota_config("memory://", upstream, {"tokens_per_minute": 10_000})
    config["models"] = [
        openai_model(upstream, name="gpt", model="first", priority=1, tokens_per_minute=1000),
        openai_model(upstream, name="gpt", model="second", priority=2, tokens_per_minute=1000),
    ]
    app = make_app(config)
    upstream.queue(Reply(status=500, body={"error": {"message": "down"}}))
    response, _ = post(app.test_client(), max_tokens=100)
    assert response.status_code == 200
    assert [r.json()["model"] for r in upstream.requests] == ["first", "second"]
    quotas = app.extensions["ai_proxy"].quotas
    assert quotas.report("model:gpt#0")["tokens_per_minute"]["used"] == 0
    assert quotas.report("model:gpt#1")["tokens_per_minute"]["used"] == 7
    assert quotas.report("token:a")["tokens_per_minute"]["used"] == 7


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_fallback_is_not_refused_by_its_own_budget_hold(make_app, upstream, request, kind):
    """A budget with room for one reservation ($0.101 of $0.15): the first deployment fails,
    and its budget hold is given back in the same round trip that judges the second. It was
    judged first, so the request competed with itself and its client got the first one's 502."""
    priced = {"input_cost_per_mtok": 1000, "output_cost_per_mtok": 1000}
    config = quota_config(storage_url(request, kind), upstream, {"budget_per_day": 0.15})
    config["models"] = [
        openai_model(upstream, name="gpt", model="first", priority=1, **priced),
        openai_model(upstream, name="gpt", model="second", priority=2, **priced),
    ]
    app = make_app(config)
    upstream.queue(Reply(status=500, body={"error": {"message": "down"}}))
    response, _ = post(app.test_client(), max_tokens=100)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [r.json()["model"] for r in upstream.requests] == ["first", "second"]
    window = app.extensions["ai_proxy"].quotas.report("token:a")["budget_per_day"]
    assert (window["used"], window["reserved"]) == (0.007, 0.0)  # 7 tokens at $1000/M


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_busy_cheap_deployment_is_a_503_not_a_spent_budget(make_app, upstream, request, kind):
    """The cheap deployment is at its own requests_per_minute, the dear one does not fit the
    budget: the deployments are full for a minute (503), the budget is not spent (it was a 429
    budget_exceeded with a Retry-After of the day's end)."""
    config = quota_config(storage_url(request, kind), upstream, {"budget_per_day": 0.5})
    config["models"] = [
        openai_model(
            upstream,
            name="gpt",
            model="cheap",
            priority=1,
            requests_per_minute=1,
            input_cost_per_mtok=1,
            output_cost_per_mtok=1,
        ),
        openai_model(
            upstream,
            name="gpt",
            model="dear",
            priority=2,
            input_cost_per_mtok=10_000,
            output_cost_per_mtok=10_000,
        ),
    ]
    app = make_app(config)
    assert post(app.test_client(), max_tokens=100)[0].status_code == 200
    refused, body = post(app.test_client(), max_tokens=100)
    assert refused.status_code == 503, body
    assert "requests_per_minute for model gpt#0" in body
    assert int(refused.headers["Retry-After"]) <= 61  # a moving window: up to a bucket late


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_release_gives_back_all_but_the_client_request(make_app, upstream, request, kind):
    """What a cache hit calls: no tokens, no budget, no deployment request are charged."""
    app = make_app(
        quota_config(
            storage_url(request, kind),
            upstream,
            {"tokens_per_minute": 1000, "requests_per_minute": 5, "budget_per_day": 1},
            requests_per_minute=5,
            tokens_per_minute=1000,
            input_cost_per_mtok=1,
        )
    )
    state = app.extensions["ai_proxy"]
    quotas, token, model = state.quotas, state.config.tokens[0], state.config.models[0]
    held = reserve(quotas, token, [model], quotas.demand(10, 100))
    assert quotas.report("token:a")["tokens_per_minute"]["reserved"] == 110
    held.release()
    held.settle(10, 100)  # only the first ending counts
    token_report, model_report = quotas.report("token:a"), quotas.report("model:gpt#0")
    assert token_report["requests_per_minute"]["used"] == 1
    assert token_report["tokens_per_minute"]["used"] == 0
    assert token_report["budget_per_day"]["used"] == 0
    assert model_report["requests_per_minute"]["used"] == 0
    assert model_report["tokens_per_minute"]["used"] == 0


def test_redis_down_at_settling_is_retried_counted_and_expires(make_app, upstream, redis_server):
    app = make_app(quota_config(redis_server.url, upstream, {"tokens_per_minute": 1000}))
    gate = Gate(upstream)
    futures, pool = burst(in_process_sender(app), 1, upstream)
    store = redis.Redis(port=redis_server.port)
    keys = store.keys("LIMITS:*")
    # Every counter a reservation went to expires with its window: nothing can stay stuck.
    assert keys and all(0 < store.pttl(key) <= 120_000 for key in keys)
    redis_server.stop()
    gate.open.set()
    assert futures[0].result()[0] == 200
    pool.shutdown()
    quotas = app.extensions["ai_proxy"].quotas
    wait_until(lambda: quotas.settle_failures == 1)
    assert quotas.storage_errors == 2  # the settle and its one retry


def test_client_hanging_up_mid_stream_is_charged_what_was_delivered(proxy_factory, upstream):
    words = [f"w{i:03d}" for i in range(100)]
    upstream.default = Reply(events=chat_chunks(words, usage=False), delay=0.01)
    config = quota_config("memory://", upstream, {"tokens_per_minute": 100_000})
    config["auth"]["admin_token"] = "admin-secret"
    server = proxy_factory(config, workers=1, threads=4)
    session = requests.Session()
    session.trust_env = False
    with session.post(
        server.url + "/v1/chat/completions",
        json={"model": "gpt", "messages": [PROMPT], "stream": True, "max_tokens": 5000},
        headers={"Authorization": "Bearer k-1"},
        stream=True,
        timeout=30,
    ) as response:
        for index, _line in enumerate(response.iter_lines()):
            if index > 10:
                break  # hang up after a few words

    def used():
        status = session.get(
            server.url + "/admin/status", headers={"Authorization": "Bearer admin-secret"}
        ).json()
        (token,) = status["tokens"]
        window = token["quota"]["tokens_per_minute"]
        return window if window["reserved"] == 0 else None

    window = wait_until(used, timeout=15)
    session.close()
    # Charged the prompt and the words sent before the hang-up: far less than the reservation
    # (5001) or the whole answer (200 words of 5 characters, about 250 tokens).
    assert 1 < window["used"] < 200


# -- the batch itself, against a model of one window -----------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 600)), min_size=1, max_size=12),
    st.sampled_from([Layout.FIXED, Layout.SLIDING]),
)
def test_memory_batch_admits_exactly_what_fits(steps, layout):
    """Reserve `amount`, settle at `actual`: admitted iff it fits in what is counted, and the
    count is then exactly the settled usage (never below zero)."""
    frozen = 1_800_000_000.0 - 1_800_000_000.0 % 86400 + 5
    original = time.time
    time.time = lambda: frozen
    try:
        batch = MemoryBatch(make_storage("memory://"))
        window = Window(f"LIMITER/test/{layout}", layout, 1000, 60)
        counted = 0
        for amount, actual in steps:
            done = batch.reserve([(window, amount)], [])
            assert done.admitted == (counted + amount <= 1000)
            if done.admitted:
                batch.adjust([Change(window, actual - amount, done.marks[0])])
                counted += actual
            assert batch.read([window])[0].used == counted
    finally:
        time.time = original


def test_demand_uses_the_default_reserve_when_no_cap_is_set(make_app):
    app = make_app({"rate_limits": {"default_reserve_tokens": 300}})
    quotas = app.extensions["ai_proxy"].quotas
    assert quotas.demand(10, None) == Demand(10, 300)
    assert quotas.demand(10, 50).tokens == 60
    assert quotas.demand(10, 50, charged=False).tokens == 0
    assert load_config(env={}, overrides={}).rate_limits.default_reserve_tokens == 1024


# What each surface reserves: the prompt's estimate plus its output cap (or the default).
SURFACES = [
    ("/v1/chat/completions", {"messages": [PROMPT], "max_tokens": 40}, 1 + 40),
    ("/v1/chat/completions", {"messages": [PROMPT], "max_completion_tokens": 40}, 1 + 40),
    (
        "/v1/chat/completions",
        {"messages": [PROMPT], "max_completion_tokens": 40, "max_tokens": 7},
        1 + 40,
    ),
    ("/v1/chat/completions", {"messages": [PROMPT], "max_tokens": 40, "n": 3}, 1 + 120),
    ("/v1/chat/completions", {"messages": [PROMPT]}, 1 + 300),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 40}, 1 + 40),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 40, "n": 2, "best_of": 4}, 1 + 160),
    ("/v1/completions", {"prompt": "hi"}, 1 + 300),
    ("/v1/messages", {"messages": [PROMPT], "max_tokens": 40}, 1 + 40),
    ("/v1/embeddings", {"input": "hello world!"}, 3),
    ("/v1/embeddings", {"input": ["hello", "world!!!"]}, 4),
]


def tokens_reserved(make_app, upstream, path: str, body: dict, room: int = 10_000) -> int:
    """What one request to `path` reserves in the token's tokens_per_minute of `room` (a
    default reserve of 300), answered by the stub in that surface's shape."""
    config = quota_config("memory://", upstream, {"tokens_per_minute": room})
    config["rate_limits"]["default_reserve_tokens"] = 300
    if path == "/v1/embeddings":
        config["models"][0]["kind"] = "embedding"
        upstream.default = Reply(
            body={
                "object": "list",
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}],
                "model": "up-model",
                "usage": {"prompt_tokens": 3, "total_tokens": 3},
            }
        )
    if path == "/v1/completions":
        upstream.default = Reply(body=text_completion())
    app = make_app(config)
    response = app.test_client().post(
        path, json={"model": "gpt", **body}, headers={"Authorization": "Bearer k-1"}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return room - int(response.headers["x-ratelimit-remaining-tokens"])


@pytest.mark.parametrize(("path", "body", "reserved"), SURFACES)
def test_each_surface_reserves_its_prompt_and_output_cap(make_app, upstream, path, body, reserved):
    assert tokens_reserved(make_app, upstream, path, body) == reserved


@pytest.mark.parametrize(
    ("reply", "stream", "status"),
    [
        (Reply(body=chat_completion()), False, 200),
        (Reply(events=chat_chunks(["a", "b"])), True, 200),
        (Reply(events=chat_chunks(["a", "b", "c"]), cut_after=2), True, 200),
        (Reply(status=500, body={"error": {"message": "down"}}), False, 502),
    ],
    ids=["whole", "stream", "cut-stream", "failed"],
)
def test_two_redis_commands_per_request_whatever_it_touches(
    make_app, upstream, redis_server, reply, stream, status
):
    """Every window of the token and the deployment (requests, tokens, budget; minute, hour,
    day, month) and the cooldown states: one command to reserve, one to settle."""
    app = make_app(quota_config(redis_server.url, upstream, ROOMY_TOKEN, **ROOMY_MODEL))
    client = app.test_client()
    upstream.queue(Reply(body=chat_completion()))
    post(client, max_tokens=100)  # loads the script
    app.extensions["ai_proxy"].quotas.settled()  # its settle is not this request's command
    upstream.queue(reply)
    with SentCommands(redis_server.port) as sent:
        response, _ = post(client, max_tokens=100, stream=stream)
        app.extensions["ai_proxy"].quotas.settled()
    assert response.status_code == status
    quota = [name for name in sent.names if name == "EVALSHA"]
    assert quota == ["EVALSHA", "EVALSHA"]
    if request_id(reply) in ("whole", "stream"):
        assert sent.names == quota
    else:
        # A deployment that failed is remembered for cooldowns: writes of their own.
        assert set(sent.names) - {"EVALSHA"} <= {"MULTI", "INCRBY", "EXPIRE", "SET", "DEL", "EXEC"}


def request_id(reply: Reply) -> str:
    if reply.status != 200:
        return "failed"
    if reply.events is None:
        return "whole"
    return "cut-stream" if reply.cut_after is not None else "stream"


def test_a_refused_request_costs_one_redis_command(make_app, upstream, redis_server):
    app = make_app(quota_config(redis_server.url, upstream, ROOMY_TOKEN, **ROOMY_MODEL))
    post(app.test_client(), max_tokens=100)
    app.extensions["ai_proxy"].quotas.settled()
    with SentCommands(redis_server.port) as sent:
        response, _ = post(app.test_client(), max_tokens=10**7)
    assert response.status_code == 429
    assert sent.names == ["EVALSHA"]


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_budget_refusal_shows_the_token_windows(make_app, upstream, request, kind):
    app = make_app(
        quota_config(
            storage_url(request, kind),
            upstream,
            {"budget_per_day": 0.0001, "tokens_per_minute": 5000, "requests_per_minute": 7},
            input_cost_per_mtok=1000,
            output_cost_per_mtok=1000,
        )
    )
    refused, _ = post(app.test_client(), max_tokens=100)
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "budget_exceeded"
    assert refused.headers["x-ratelimit-remaining-tokens"] == "5000"
    assert refused.headers["x-ratelimit-remaining-requests"] == "7"
    assert_retry_after(refused)


def test_client_hanging_up_before_the_answer_is_charged_its_prompt(proxy_factory, upstream):
    upstream.default = Reply(body=chat_completion(), hang=3)
    config = quota_config("memory://", upstream, {"tokens_per_minute": 100_000})
    config["auth"]["admin_token"] = "admin-secret"
    server = proxy_factory(config, workers=1, threads=4)
    # Hang up once the upstream holds the request (not after a fixed time: on a slow machine the
    # proxy may not have sent it yet, and a prompt never sent is rightly charged nothing).
    client = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    client.request(
        "POST",
        "/v1/chat/completions",
        body=json.dumps({"model": "gpt", "messages": [PROMPT], "max_tokens": 5000}),
        headers={"Authorization": "Bearer k-1", "Content-Type": "application/json"},
    )
    wait_until(lambda: len(upstream.requests) == 1, timeout=15)
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    admin = requests.Session()
    admin.trust_env = False

    def settled():
        status = admin.get(
            server.url + "/admin/status", headers={"Authorization": "Bearer admin-secret"}
        ).json()
        window = status["tokens"][0]["quota"]["tokens_per_minute"]
        return window if window["reserved"] == 0 else None

    window = wait_until(settled, timeout=15)
    admin.close()
    assert window["used"] == 1  # "hi": the prompt the deployment was sent, no output


@pytest.mark.parametrize("batch_kind", ["memory", "limiter"])
def test_deployments_are_full_unless_every_candidate_is_over_a_client_window(batch_kind):
    """The verdict every batch gives (memory, the window-by-window one for memcached and
    Redis clusters, and the Lua script, tested above through Redis): a candidate refused only
    by its own window makes the request a 503 for the deployments, not a spent budget."""
    from limits.storage import MemoryStorage

    from app.hooks.limits_memory import LimiterBatch

    storage = MemoryStorage()
    batch = MemoryBatch(storage) if batch_kind == "memory" else LimiterBatch(storage)
    own = Window(f"LIMITER/cheap/{batch_kind}", Layout.FIXED, 1, 60)
    budget = Window(f"LIMITER/budget/{batch_kind}", Layout.FIXED, 100, 86400, client=True)
    batch.reserve([], [[(own, 1)]])  # the cheap deployment's one request a minute, taken
    busy_and_dear = batch.reserve([], [[(own, 1)], [(budget, 500)]])
    assert busy_and_dear.chosen is None and busy_and_dear.deployments_full
    both_dear = batch.reserve([], [[(budget, 500)], [(budget, 700)]])
    assert both_dear.chosen is None and not both_dear.deployments_full


def test_a_settle_whose_answer_was_lost_is_never_applied_twice(
    make_app, upstream, redis_server, monkeypatch
):
    """A reservation carries a settle to Redis while Redis is busy (a long script): its answer
    times out, but Redis runs it once the script ends. The settle it carried is not queued
    again (it would then count twice and leave the window under its real use): it is counted
    as a failed settle, and the window ends at what Redis applied once."""
    from app import settling
    from app.hooks.limits_batch import AnswerLost
    from app.ratelimit import Plan
    from tests.test_redis import keep_redis_busy

    # Queued settles wait for a reservation to carry them (the settling thread keeps out).
    monkeypatch.setattr(settling, "LINGER_SECONDS", 60.0)
    app = make_app(quota_config(redis_server.url, upstream, {"tokens_per_minute": 10_000}))
    state = app.extensions["ai_proxy"]
    quotas, token = state.quotas, state.config.tokens[0]
    demand = quotas.demand(1, 100, True, 1, token, [])
    held = reserve(quotas, token, [], demand)  # 101 tokens
    held.settle(5, 2)  # 7 used: -94 queued, carried by the next reservation
    limit = quotas.token_plan(token, demand)[0][0]
    busy = keep_redis_busy(redis_server, 1.0)
    answer = quotas.send_reserve(Plan(required=[(limit, 10)]), carry=True)
    with pytest.raises(AnswerLost):
        answer()
    assert quotas.settle_failures == 1
    busy.join(5)
    quotas.send_reserve(Plan(required=[(limit, 0)]), carry=True)()  # carries what is queued
    used = quotas.report("token:a")["tokens_per_minute"]["used"]
    # Redis ran the lost one after the script (101 - 94 + 10), or never got it (101). Sent
    # again, the -94 would have taken the window to 0.
    assert used in (17, 101)
