"""Model resolution, fallback between deployments and retries on one, against a real stub."""

from __future__ import annotations

import time

import pytest

from tests.conftest import TOKEN, openai_model
from tests.stub_upstream import Reply, chat_completion

CHAT = {"messages": [{"role": "user", "content": "hello there"}]}


def post(client, model=None, **extra):
    body = {**CHAT, **extra}
    if model is not None:
        body["model"] = model
    return client.post("/v1/chat/completions", json=body)


@pytest.fixture
def routed(make_app, upstream):
    def build(models, **config):
        app = make_app(
            {
                "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
                "models": models,
                "retry": {"max_retries": 0, "base_delay": "10ms"},
                **config,
            }
        )
        client = app.test_client()
        client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {TOKEN}"
        return client

    return build


def test_name_alias_category_wildcard_and_default(routed, upstream):
    client = routed(
        [
            {"name": "echo", "provider": "echo", "model_size": "SMALL", "categories": ["cheap"]},
            {"name": "echo-big", "provider": "echo", "model_size": "BIG"},
            openai_model(upstream, name="stub/*", model=None),
        ],
        aliases={"fast": ["echo-big", "echo"]},
        default_model="BIG",
    )
    cases = {
        "echo": "echo",
        "fast": "echo-big",
        "SMALL": "echo",
        "small": "echo",
        "CHEAP": "echo",
        None: "echo-big",
        "stub/vendor/model-x": "stub/*",
    }
    for requested, served in cases.items():
        response = post(client, requested)
        assert response.status_code == 200, (requested, response.json)
        assert response.headers["x-ai-proxy-model"] == served
    assert upstream.requests[-1].json()["model"] == "vendor/model-x"
    assert post(client, "stub").status_code == 404
    assert post(client, "nothing/else").json["error"]["code"] == "model_not_found"


def test_no_model_and_no_default_is_400(routed):
    client = routed([{"name": "echo", "provider": "echo"}])
    response = post(client)
    assert response.status_code == 400
    assert response.json["error"]["param"] == "model"


def test_category_skips_models_too_small_for_the_body(routed):
    client = routed(
        [
            {
                "name": "tiny",
                "provider": "echo",
                "model_size": "SMALL",
                "priority": 1,
                "max_request_length": 100,
            },
            {"name": "roomy", "provider": "echo", "model_size": "SMALL", "priority": 2},
        ]
    )
    assert post(client, "SMALL").headers["x-ai-proxy-model"] == "tiny"
    long = [{"role": "user", "content": "x" * 500}]
    assert post(client, "SMALL", messages=long).headers["x-ai-proxy-model"] == "roomy"


def test_category_with_no_model_big_enough_is_413(routed):
    client = routed(
        [{"name": "tiny", "provider": "echo", "model_size": "SMALL", "max_request_length": 100}]
    )
    long = [{"role": "user", "content": "x" * 500}]
    response = post(client, "SMALL", messages=long)
    assert response.status_code == 413
    assert response.json["error"]["code"] == "request_too_large"


def test_a_short_model_id_is_a_model_not_a_category(routed):
    client = routed(
        [
            {"name": "small", "provider": "echo"},
            {"name": "other", "provider": "echo", "model_size": "SMALL"},
        ]
    )
    assert post(client, "small").headers["x-ai-proxy-model"] == "small"
    assert post(client, "SMALL").headers["x-ai-proxy-model"] == "other"


def test_fallback_to_next_deployment_on_retryable_failure(routed, upstream):
    client = routed(
        [
            openai_model(upstream, name="gpt", priority=1, model="first"),
            openai_model(upstream, name="gpt", priority=2, model="second"),
        ]
    )
    upstream.queue(
        Reply(status=500, body={"error": {"message": "down"}}),
        Reply(body=chat_completion("from second")),
    )
    response = post(client, "gpt")
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "from second"
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert [r.json()["model"] for r in upstream.requests] == ["first", "second"]


def test_client_errors_are_not_retried_elsewhere(routed, upstream):
    client = routed(
        [
            openai_model(upstream, name="gpt", priority=1),
            openai_model(upstream, name="gpt", priority=2),
        ]
    )
    upstream.queue(Reply(status=400, body={"error": {"message": "bad temperature"}}))
    response = post(client, "gpt")
    assert response.status_code == 400
    assert response.json["error"]["message"] == "bad temperature"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize(
    ("param", "relayed"),
    [
        ("temperature", "temperature"),
        ("messages[0].content", "messages[0].content"),
        (None, None),
        (7, None),
        ("x" * 201, None),
        ("key sk-upstream-secret here", "scrubbed"),
    ],
)
def test_an_upstream_refusal_keeps_the_field_it_names(routed, upstream, param, relayed):
    client = routed([openai_model(upstream, name="gpt")])
    refusal = {"message": "bad value", "type": "invalid_request_error", "param": param}
    upstream.queue(Reply(status=400, body={"error": {**refusal, "code": None}}))
    response = post(client, "gpt")
    assert response.status_code == 400
    if relayed == "scrubbed":
        shown = response.json["error"]["param"]
        assert "sk-upstream-secret" not in shown and shown.endswith(" here")
    else:
        assert response.json["error"]["param"] == relayed


def test_every_candidate_failing_gives_one_json_error(routed, upstream):
    client = routed(
        [
            openai_model(upstream, name="gpt", priority=1),
            openai_model(upstream, name="gpt", priority=2),
        ]
    )
    upstream.handler = lambda record: Reply(status=502, body={"error": "bad gateway"})
    response = post(client, "gpt")
    assert response.status_code == 502
    assert response.json["error"]["code"] == "upstream_error"
    assert "2 deployments failed" in response.json["error"]["message"]
    assert response.headers["x-ai-proxy-attempts"] == "2"
    assert str(upstream.port) not in response.get_data(as_text=True)


def test_retries_on_one_deployment_use_the_retry_adapter(routed, upstream):
    client = routed(
        [openai_model(upstream, name="gpt")],
        retry={"max_retries": 2, "base_delay": "10ms", "max_delay": "1s"},
    )
    upstream.queue(
        Reply(status=503, body={}),
        Reply(status=429, body={}),
        Reply(body=chat_completion("third time")),
    )
    response = post(client, "gpt")
    assert response.status_code == 200
    assert response.json["choices"][0]["message"]["content"] == "third time"
    assert len(upstream.requests) == 3
    assert response.headers["x-ai-proxy-attempts"] == "1"


def test_a_short_retry_after_is_slept_and_retried(routed, upstream):
    client = routed(
        [openai_model(upstream, name="gpt")],
        retry={"max_retries": 1, "base_delay": "10ms", "max_delay": "2s"},
    )
    upstream.queue(
        Reply(status=429, body={}, headers={"Retry-After": "1"}), Reply(body=chat_completion())
    )
    started = time.monotonic()
    response = post(client, "gpt")
    assert response.status_code == 200
    assert 0.9 < time.monotonic() - started < 2
    assert len(upstream.requests) == 2


def test_a_long_retry_after_is_not_slept_but_cools_the_deployment(routed, upstream):
    client = routed(
        [
            openai_model(upstream, name="gpt", priority=1, model="first"),
            openai_model(upstream, name="gpt", priority=2, model="second"),
        ],
        retry={"max_retries": 3, "base_delay": "10ms", "max_delay": "1s"},
    )
    upstream.queue(Reply(status=429, body={}, headers={"Retry-After": "3600"}))
    started = time.monotonic()
    assert post(client, "gpt").headers["x-ai-proxy-model"] == "gpt"
    assert time.monotonic() - started < 1
    assert [r.json()["model"] for r in upstream.requests] == ["first", "second"]
    # The first deployment now cools down for the hour: the next request skips it.
    assert post(client, "gpt").status_code == 200
    assert [r.json()["model"] for r in upstream.requests][2:] == ["second"]


def test_upstream_timeout_is_504(routed, upstream):
    model = openai_model(upstream, name="gpt", http_client_config={"timeout_seconds": 0.3})
    client = routed([model])
    upstream.queue(Reply(body=chat_completion(), hang=1.0))
    response = post(client, "gpt")
    assert response.status_code == 504
    assert response.json["error"]["type"] == "timeout_error"


def test_dead_upstream_falls_back(routed, upstream):
    dead = {"name": "gpt", "base_url": "http://127.0.0.1:9/v1", "priority": 1}
    client = routed([dead, openai_model(upstream, name="gpt", priority=2)])
    response = post(client, "gpt")
    assert response.status_code == 200
    assert response.headers["x-ai-proxy-attempts"] == "2"


def test_equal_priority_deployments_take_turns(routed, upstream):
    client = routed(
        [
            openai_model(upstream, name="gpt", model="a"),
            openai_model(upstream, name="gpt", model="b"),
        ]
    )
    for _ in range(4):
        assert post(client, "gpt").status_code == 200
    assert [r.json()["model"] for r in upstream.requests] == ["a", "b", "a", "b"]


def strategy_router(make_app, strategy, **extra):
    models = [
        {"name": "m", "provider": "echo", "model": "a", "weight": 3, **extra},
        {"name": "m", "provider": "echo", "model": "b", "weight": 1, **extra},
    ]
    app = make_app({"models": models, "routing": {"strategy": strategy}})
    return app.extensions["ai_proxy"].router


def first_choice(router) -> str:
    return router.resolve("m").candidates[0].upstream_model


def test_weighted_strategy_follows_weights(make_app):
    router = strategy_router(make_app, "weighted")
    picks = [first_choice(router) for _ in range(2000)]
    assert 0.70 < picks.count("a") / len(picks) < 0.80


def test_least_busy_strategy_avoids_deployments_in_flight(make_app):
    router = strategy_router(make_app, "least-busy")
    busy = router.resolve("m").candidates[0]
    router._begin(busy)
    assert router.resolve("m").candidates[0].key != busy.key
    router._end(busy)
    assert router.in_flight() == {}


def test_latency_strategy_prefers_the_fastest(make_app):
    router = strategy_router(make_app, "latency")
    a, b = sorted(router.resolve("m").candidates, key=lambda c: c.upstream_model)
    router._record_latency(a, 0.9)
    router._record_latency(b, 0.2)
    assert first_choice(router) == "b"
    for _ in range(10):
        router._record_latency(b, 2.0)
    assert first_choice(router) == "a"


def test_priority_tiers_come_before_any_strategy(make_app):
    models = [
        {"name": "m", "provider": "echo", "model": "low", "priority": 2, "weight": 100},
        {"name": "m", "provider": "echo", "model": "high", "priority": 1, "weight": 1},
    ]
    router = (
        make_app({"models": models, "routing": {"strategy": "weighted"}})
        .extensions["ai_proxy"]
        .router
    )
    assert {first_choice(router) for _ in range(50)} == {"high"}


def test_idle_connections_are_dropped_after_the_idle_timeout(routed, upstream):
    client = routed(
        [openai_model(upstream, name="gpt", http_client_config={"idle_conn_timeout_seconds": 0.3})]
    )
    assert post(client, "gpt").status_code == 200
    assert post(client, "gpt").status_code == 200
    time.sleep(0.5)
    assert post(client, "gpt").status_code == 200
    ports = [r.headers.get("X-Client-Port") for r in upstream.requests]
    # Two requests share a pooled connection; after the idle time a new one is opened.
    assert ports[0] == ports[1] != ports[2]


@pytest.mark.parametrize(
    ("base_url", "said"),
    [
        ("http://127.0.0.1:9/v1", "the connection was refused"),
        ("http://no-such-host.invalid/v1", "the upstream's host name does not resolve"),
    ],
)
def test_a_connection_not_made_says_why_without_the_address(routed, base_url, said):
    client = routed([{"name": "gpt", "base_url": base_url}])
    response = post(client, "gpt")
    assert response.status_code == 502
    message = response.json["error"]["message"]
    assert said in message and "timed out" not in message
    assert "127.0.0.1" not in message and "invalid" not in message and ":9" not in message
