"""Quotas: request, token and budget limits per client token and per deployment."""

from __future__ import annotations

import threading
import time

import pytest

from app.ratelimit import Owner, format_reset
from tests.conftest import openai_model
from tests.servers import SentCommands, free_port
from tests.stub_upstream import Reply, chat_chunks, chat_completion

CHAT = {"messages": [{"role": "user", "content": "hello"}]}
STRATEGIES = ["fixed-window", "moving-window", "sliding-window-counter"]


class FrozenTime:
    """time.time() under test control (limits' memory storage reads it)."""

    def __init__(self, monkeypatch) -> None:
        # The start of a minute, so fixed windows line up with the test's steps.
        self.now = 1_800_000_000.0 - 1_800_000_000.0 % 86400
        monkeypatch.setattr(time, "time", lambda: self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def frozen(monkeypatch):
    return FrozenTime(monkeypatch)


def make_client(make_app, config, token="k-1"):
    client = make_app(config).test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def post(client, model="echo", **extra):
    response = client.post("/v1/chat/completions", json={**CHAT, "model": model, **extra})
    response.get_data()
    response.close()  # as a WSGI server does once the answer is sent: usage is charged then
    return response


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.017, "17ms"), (1, "1s"), (59.2, "1m0s"), (360, "6m0s"), (3723, "1h2m3s")],
)
def test_reset_is_written_as_openai_does(seconds, text):
    assert format_reset(seconds) == text


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_token_request_limit_and_its_headers(make_app, frozen, strategy):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 3}]},
            "models": [{"name": "echo", "provider": "echo"}],
            "rate_limits": {"strategy": strategy},
        },
    )
    remaining = [post(client).headers["x-ratelimit-remaining-requests"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    refused = post(client)
    assert refused.status_code == 429
    assert refused.json["error"] == {
        "message": refused.json["error"]["message"],
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }
    assert 1 <= int(refused.headers["Retry-After"]) <= (61 if strategy == "moving-window" else 60)
    assert refused.headers["x-ratelimit-limit-requests"] == "3"
    frozen.advance(61)
    ok = post(client)
    assert ok.status_code == 200
    assert ok.headers["x-ratelimit-limit-requests"] == "3"
    assert ok.headers["x-ratelimit-reset-requests"].endswith("s")


def test_tokens_are_tracked_per_client_token(make_app, frozen):
    tokens = [
        {"name": "a", "token": "k-1", "requests_per_minute": 1},
        {"name": "b", "token": "k-2", "requests_per_minute": 1},
    ]
    client = make_client(
        make_app, {"auth": {"tokens": tokens}, "models": [{"name": "echo", "provider": "echo"}]}
    )
    assert post(client).status_code == 200
    assert post(client).status_code == 429
    other = client.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "echo"},
        headers={"Authorization": "Bearer k-2"},
    )
    assert other.status_code == 200


def test_exhausted_deployment_is_skipped_and_comes_back(make_app, frozen, upstream):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1"}]},
            "models": [
                openai_model(
                    upstream, name="gpt", priority=1, model="limited", requests_per_minute=2
                ),
                openai_model(upstream, name="gpt", priority=2, model="spare", requests_per_hour=1),
            ],
        },
    )
    served = [post(client, "gpt").status_code for _ in range(3)]
    assert served == [200, 200, 200]
    assert [r.json()["model"] for r in upstream.requests] == ["limited", "limited", "spare"]
    refused = post(client, "gpt")
    assert refused.status_code == 503
    assert refused.json["error"]["code"] == "no_available_model"
    # A moving window gives room back at most one bucket (a second of a minute) late.
    assert 1 <= int(refused.headers["Retry-After"]) <= 61
    frozen.advance(61)
    assert post(client, "gpt").status_code == 200
    assert upstream.requests[-1].json()["model"] == "limited"


def test_a_limit_of_zero_means_unlimited(make_app, frozen):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 0}]},
            "models": [{"name": "echo", "provider": "echo", "requests_per_minute": 0}],
        },
    )
    assert all(post(client).status_code == 200 for _ in range(20))
    assert "x-ratelimit-limit-requests" not in post(client).headers


def test_tokens_per_minute_charged_from_usage(make_app, frozen, upstream):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "tokens_per_minute": 20}]},
            "models": [openai_model(upstream, name="gpt")],
        },
    )
    upstream.default = Reply(
        body=chat_completion(usage={"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    )
    # Each request reserves "hello" (2 tokens) + max_tokens 3; the answer then counts 7.
    first = post(client, "gpt", max_tokens=3)
    assert first.headers["x-ratelimit-limit-tokens"] == "20"
    assert first.headers["x-ratelimit-remaining-tokens"] == "15"
    second = post(client, "gpt", max_tokens=3)  # 7 spent + 5 reserved
    assert second.headers["x-ratelimit-remaining-tokens"] == "8"
    assert post(client, "gpt", max_tokens=3).status_code == 200  # 14 + 5 fits in 20
    refused = post(client, "gpt", max_tokens=3)  # 21 charged: the window is spent
    assert refused.status_code == 429
    assert "tokens_per_minute for token a" in refused.json["error"]["message"]
    frozen.advance(120)
    assert post(client, "gpt", max_tokens=3).status_code == 200


def test_tokens_charged_from_a_streamed_answer(make_app, frozen, upstream):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "tokens_per_minute": 8}]},
            "models": [openai_model(upstream, name="gpt", tokens_per_minute=100)],
        },
    )
    # chat_chunks reports usage 3 + 5 = 8 tokens in its usage-only chunk.
    upstream.queue(Reply(events=chat_chunks(["a", "b", "c", "d", "e"])))
    response = post(client, "gpt", stream=True, max_tokens=5)
    assert response.status_code == 200 and "[DONE]" in response.get_data(as_text=True)
    assert post(client, "gpt", max_tokens=5).status_code == 429
    quotas = client.application.extensions["ai_proxy"].quotas
    (limit,) = quotas.model_tokens["model:gpt#0"]
    assert quotas.batch.read([limit.window])[0].used == 8


def test_usage_is_estimated_when_upstream_gives_none(make_app, frozen, upstream):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "tokens_per_day": 1000}]},
            "models": [openai_model(upstream, name="gpt")],
        },
    )
    answer = chat_completion("x" * 400)
    del answer["usage"]
    upstream.queue(Reply(body=answer))
    post(client, "gpt", max_tokens=100)
    remaining = post(client, "gpt", max_tokens=100).headers["x-ratelimit-remaining-tokens"]
    # "hello" is 2 tokens, 400 characters about 100; the second request reserves 2 + 100.
    assert remaining == str(1000 - 102 - 102)


def test_budget_from_model_prices(make_app, frozen, upstream):
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "budget_per_day": 0.01}]},
            "models": [
                openai_model(
                    upstream, name="gpt", input_cost_per_mtok=1000, output_cost_per_mtok=2000
                )
            ],
        },
    )
    # Reserved: "hello" (2 tokens) * $1000/M + max_tokens 2 * $2000/M = $0.006; the answer
    # then costs 5 prompt tokens * $1000/M + 2 completion * $2000/M = $0.009.
    assert post(client, "gpt", max_tokens=2).status_code == 200
    refused = post(client, "gpt", max_tokens=2)  # $0.009 + $0.006 > $0.01
    assert refused.status_code == 429
    assert refused.json["error"]["code"] == "budget_exceeded"
    assert "budget_per_day for token a" in refused.json["error"]["message"]
    assert int(refused.headers["Retry-After"]) > 0


@pytest.mark.parametrize(("policy", "status"), [("allow", 200), ("deny", 503)])
def test_storage_failure_policy(make_app, policy, status):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = make_app(
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 5}]},
            "models": [{"name": "echo", "provider": "echo", "requests_per_minute": 5}],
            "rate_limits": {"storage": dead, "on_storage_error": policy},
        }
    )
    client = app.test_client()
    started = time.monotonic()
    response = client.post(
        "/v1/chat/completions",
        json={**CHAT, "model": "echo"},
        headers={"Authorization": "Bearer k-1"},
    )
    assert time.monotonic() - started < 2
    assert response.status_code == status
    if status == 503:
        assert response.json["error"]["code"] == "rate_limit_storage_unavailable"
        assert response.headers["Retry-After"]
    assert app.extensions["ai_proxy"].quotas.storage_errors >= 1


def test_a_spent_window_does_not_use_up_the_others(make_app, frozen):
    client = make_client(
        make_app,
        {
            "auth": {
                "tokens": [
                    {"name": "a", "token": "k-1", "requests_per_minute": 3, "requests_per_hour": 2}
                ]
            },
            "models": [{"name": "echo", "provider": "echo"}],
        },
    )
    assert [post(client).status_code for _ in range(4)] == [200, 200, 429, 429]
    quotas = client.application.extensions["ai_proxy"].quotas
    (minute, _hour) = quotas.tokens["token:a"]
    # Only the two admitted requests count in the minute window.
    assert quotas.batch.read([minute.window])[0].used == 2


def _timer_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if isinstance(t, threading.Timer)}


def test_memory_storage_starts_no_thread_per_request(make_app):
    """limits' own MemoryStorage starts a 10 ms Timer thread on a hit whenever the last one has
    run out; the proxy's storage sweeps from one long-lived thread instead."""
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 10**6}]},
            "models": [{"name": "echo", "provider": "echo", "requests_per_minute": 10**6}],
        },
    )
    before = _timer_threads()
    seen: set[threading.Thread] = set()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        assert post(client).status_code == 200
        seen |= _timer_threads() - before
        time.sleep(0.005)
    assert not seen
    assert any(t.name == "ai-proxy-quota-sweeper" for t in threading.enumerate())


def test_token_quota_round_trips_with_redis(make_app, redis_server):
    """rpm + tpm on the token and rpm on the deployment: a request costs two commands in all
    (its reservation, with the cooldown states, and its settling), whatever it touches."""
    client = make_client(
        make_app,
        {
            "rate_limits": {"storage": redis_server.url},
            "auth": {
                "tokens": [
                    {
                        "name": "a",
                        "token": "k-1",
                        "requests_per_minute": 100,
                        "tokens_per_minute": 10_000,
                    }
                ]
            },
            "models": [{"name": "echo", "provider": "echo", "requests_per_minute": 100}],
        },
    )
    post(client)  # loads the scripts
    # Its settle is queued for the settler thread: not this request's command.
    client.application.extensions["ai_proxy"].quotas.settled()
    with SentCommands(redis_server.port) as sent:
        response = post(client)
        client.application.extensions["ai_proxy"].quotas.settled()
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "98"
    assert int(response.headers["x-ratelimit-remaining-tokens"]) < 10_000
    assert sent.names == ["EVALSHA", "EVALSHA"]


# A client token with a request, a token and a budget window.
EVERY_KIND = {
    "name": "a",
    "token": "k-1",
    "requests_per_minute": 5,
    "tokens_per_day": 100,
    "budget_per_month": 2,
}


def test_storage_keys_name_owner_and_count_as_before(make_app):
    """Counters in a shared Redis outlive a proxy upgrade: their keys must not change."""
    app = make_app(
        {
            "auth": {"tokens": [EVERY_KIND]},
            "models": [
                {
                    "name": "echo",
                    "provider": "echo",
                    "requests_per_hour": 7,
                    "tokens_per_minute": 50,
                }
            ],
        }
    )
    quotas = app.extensions["ai_proxy"].quotas
    limits = [
        limit
        for table in (quotas.tokens, quotas.token_usage, quotas.models, quotas.model_tokens)
        for owned in table.values()
        for limit in owned
    ]
    assert sorted(limit.item.key_for(*limit.identifiers) for limit in limits) == sorted(
        [
            "LIMITER/requests/moving-window/token:a/5/1/minute",
            "LIMITER/tokens/sliding-window-counter/token:a/100/1/day",
            "LIMITER/budget/sliding-window-counter/token:a/2000000/1/month",
            "LIMITER/requests/moving-window/model:echo#0/7/1/hour",
            "LIMITER/tokens/sliding-window-counter/model:echo#0/50/1/minute",
        ]
    )


@pytest.mark.parametrize(
    ("owner", "name", "key"),
    [
        (Owner.DEPLOYMENT, "gpt#0", "model:gpt#0"),
        (Owner.DEPLOYMENT, "a:b#1", "model:a:b#1"),
        (Owner.TOKEN, "team-a", "token:team-a"),
        (Owner.TOKEN, "", "token:"),
    ],
)
def test_owner_keys(owner, name, key):
    assert owner.key(name) == key
    assert isinstance(owner.key(name), str)
