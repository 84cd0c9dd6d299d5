"""The quota answer is read at the upstream's door: a request's reservation is sent, the first
deployment's upstream request is prepared while the storage answers, and the answer is read
just before that request's first byte (or when its call ends without one). A refusal, a
deployment out of room and one cooling down are all decided there: nothing goes upstream for a
request that is not admitted, and nothing is held by one that is refused."""

from __future__ import annotations

import time

import pytest

from app.cooldown import BreakerState
from app.errors import InvalidRequestError, RateLimitError, UpstreamTimeoutError
from app.providers import CallContext
from tests.conftest import openai_model
from tests.stub_upstream import Reply, chat_chunks, text_completion

BODY = {"messages": [{"role": "user", "content": "hi"}]}
CTX = CallContext(request_id="door-test")
REFUSAL = "tokens_per_minute for token a"


def routed(make_app, upstream, *models: dict):
    """(app, router) serving `models` (by default one stub deployment named gpt)."""
    app = make_app(
        {
            "models": list(models) or [openai_model(upstream, name="gpt")],
            "retry": {"max_retries": 0},
        }
    )
    return app, app.extensions["ai_proxy"].router


def chat(candidate):
    return candidate.provider.chat(candidate.ask(BODY), CTX)


def refuse():
    raise RateLimitError(f"Quota exceeded: {REFUSAL}.")


class Door:
    """A `ready` that notes when it was read (and how many requests the stub had by then), in
    `events` too when given one."""

    def __init__(self, upstream, states=None, error: Exception | None = None, events=None):
        self.upstream = upstream
        self.states = states
        self.error = error
        self.reads: list[int] = []
        self.events = events if events is not None else []
        self.wait = 0.0

    def __call__(self):
        self.events.append("ready")
        self.reads.append(len(self.upstream.requests))
        time.sleep(self.wait)
        if self.error is not None:
            raise self.error
        return self.states


def test_the_first_call_is_prepared_before_the_answer_and_sent_after_it(make_app, upstream):
    _, router = routed(make_app, upstream)
    events = []

    def call(candidate):
        events.append("call began")
        answer = chat(candidate)
        events.append("answered")
        return answer

    door = Door(upstream, events=events)
    outcome = router.run(router.resolve("gpt"), call, ready=door)
    outcome.finish()
    assert events == ["call began", "ready", "answered"]
    assert door.reads == [0]  # read once, before the stub had any request
    assert len(upstream.requests) == 1
    assert outcome.attempts == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_refusal_at_the_door_sends_nothing_and_holds_no_connection(make_app, upstream, stream):
    _, router = routed(make_app, upstream)
    pool = router.providers[0].pool._pool

    def call(candidate):
        if stream:
            return candidate.provider.open_chat_stream({**candidate.ask(BODY), "stream": True}, CTX)
        return chat(candidate)

    with pytest.raises(RateLimitError, match=REFUSAL):
        router.run(router.resolve("gpt"), call, ready=Door(upstream, error=RateLimitError(REFUSAL)))
    assert upstream.requests == []
    assert router.in_flight() == {}
    assert pool.connections()["in_use"] == 0


def two_deployments(upstream) -> list[dict]:
    return [
        openai_model(upstream, name="gpt", model="first", priority=1),
        openai_model(upstream, name="gpt", model="second", priority=2),
    ]


@pytest.mark.parametrize("why", ["cooling", "full"])
def test_a_first_candidate_judged_out_at_the_door_is_never_tried(make_app, upstream, why):
    _, router = routed(make_app, upstream, *two_deployments(upstream))
    resolution = router.resolve("gpt")
    cooling = BreakerState(time.time() + 60, 3) if why == "cooling" else BreakerState(None, 0)
    door = Door(upstream, states=[cooling, BreakerState(None, 0)])
    back = time.time() + 30

    def gate(candidate):
        return back if why == "full" and candidate.upstream_model == "first" else None

    outcome = router.run(resolution, chat, gate=gate, ready=door)
    outcome.finish()
    assert [r.json()["model"] for r in upstream.requests] == ["second"]
    assert outcome.candidate.upstream_model == "second"
    assert outcome.attempts == 1  # the first was never tried
    assert door.reads == [0]
    assert router.in_flight() == {}


def test_every_candidate_judged_out_is_a_503_with_no_attempt(make_app, upstream):
    _, router = routed(make_app, upstream, *two_deployments(upstream))
    cooling = BreakerState(time.time() + 60, 3)
    with pytest.raises(Exception) as caught:
        router.run(router.resolve("gpt"), chat, ready=Door(upstream, states=[cooling, cooling]))
    assert caught.value.status == 503
    assert caught.value.extra_headers["x-ai-proxy-attempts"] == "0"
    assert upstream.requests == []


def test_the_answer_is_read_once_and_a_fallback_is_judged_as_usual(make_app, upstream):
    _, router = routed(make_app, upstream, *two_deployments(upstream))
    upstream.queue(Reply(status=500, body={"error": {"message": "down"}}))
    judged = []

    def gate(candidate):
        judged.append(candidate.upstream_model)
        return None

    door = Door(upstream)
    outcome = router.run(router.resolve("gpt"), chat, gate=gate, ready=door)
    outcome.finish()
    assert [r.json()["model"] for r in upstream.requests] == ["first", "second"]
    assert door.reads == [0]
    assert judged == ["first", "second"]
    assert outcome.attempts == 2


def test_a_call_that_sends_nothing_is_judged_when_it_ends(make_app, upstream):
    """The echo deployment never calls upstream: its answer waits for the quota's."""
    echo = {"name": "gpt", "provider": "echo", "priority": 1}
    _, router = routed(make_app, upstream, echo)
    with pytest.raises(RateLimitError):
        router.run(router.resolve("gpt"), chat, ready=Door(upstream, error=RateLimitError(REFUSAL)))
    outcome = router.run(router.resolve("gpt"), chat, ready=Door(upstream))
    assert outcome.result["choices"][0]["message"]["content"]
    # Out of room at the door: its answer is dropped and the next deployment answers.
    _, router = routed(make_app, upstream, echo, openai_model(upstream, name="gpt", priority=2))
    full = time.time() + 30
    outcome = router.run(
        router.resolve("gpt"),
        chat,
        gate=lambda c: full if c.provider.model.provider == "echo" else None,
        ready=Door(upstream),
    )
    assert outcome.candidate.provider.model.provider == "openai"
    assert len(upstream.requests) == 1


@pytest.mark.parametrize("admitted", [True, False], ids=["admitted", "refused"])
def test_a_call_failing_before_it_sends_is_judged_first(make_app, upstream, admitted):
    """A deployment that refuses the request itself (no upstream byte): a refused request
    gets its 429 (it was never admitted), an admitted one the deployment's error."""
    _, router = routed(make_app, upstream)

    def bad_id(candidate):
        candidate.provider.check_upstream_id("../../admin")  # 400, before any upstream byte
        return chat(candidate)

    door = Door(upstream, error=None if admitted else RateLimitError(REFUSAL))
    expected = InvalidRequestError if admitted else RateLimitError
    with pytest.raises(expected):
        router.run(router.resolve("gpt"), bad_id, ready=door)
    assert door.reads == [0]
    assert upstream.requests == []
    assert router.in_flight() == {}


@pytest.mark.parametrize("admitted", [True, False], ids=["admitted", "refused"])
def test_the_answer_is_read_when_no_candidate_is_tried(make_app, upstream, admitted):
    _, router = routed(make_app, upstream)
    door = Door(upstream, error=None if admitted else RateLimitError(REFUSAL))
    past = time.monotonic() - 1
    expected = UpstreamTimeoutError if admitted else RateLimitError
    with pytest.raises(expected):
        router.run(router.resolve("gpt"), chat, deadline=past, ready=door)
    assert door.reads == [0]
    assert upstream.requests == []


# -- through the whole pipeline: every surface, memory and Redis ------------------------------

NEVER_FITS = 10**6  # more output than the token's whole tokens_per_minute
SURFACE_CALLS = {
    "chat": ("/v1/chat/completions", {**BODY, "max_tokens": NEVER_FITS}),
    "chat-stream": ("/v1/chat/completions", {**BODY, "max_tokens": NEVER_FITS, "stream": True}),
    "completions": ("/v1/completions", {"prompt": "hi", "max_tokens": NEVER_FITS}),
    "messages": ("/v1/messages", {**BODY, "max_tokens": NEVER_FITS}),
    "messages-stream": ("/v1/messages", {**BODY, "max_tokens": NEVER_FITS, "stream": True}),
    "responses": ("/v1/responses", {"input": "hi", "max_output_tokens": NEVER_FITS}),
    "gemini": (
        "/v1beta/models/gpt:generateContent",
        {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 10**6}},
    ),
    "gemini-stream": (
        "/v1beta/models/gpt:streamGenerateContent?alt=sse",
        {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 10**6}},
    ),
}


def pipeline_app(make_app, upstream, storage: str, *models: dict):
    return make_app(
        {
            "default_model": None,
            "auth": {"tokens": [{"name": "a", "token": "k-1", "tokens_per_minute": 1000}]},
            "models": list(models) or [openai_model(upstream, name="gpt")],
            "rate_limits": {"storage": storage},
            "retry": {"max_retries": 0},
        }
    )


def storage_of(request, kind: str) -> str:
    return request.getfixturevalue("redis_server").url if kind == "redis" else "memory://"


@pytest.mark.parametrize("surface", sorted(SURFACE_CALLS))
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_refused_request_reaches_no_upstream_on_any_surface(
    make_app, upstream, request, kind, surface
):
    app = pipeline_app(make_app, upstream, storage_of(request, kind))
    path, body = SURFACE_CALLS[surface]
    body = body if path.startswith("/v1beta") else {"model": "gpt", **body}
    response = app.test_client().post(path, json=body, headers={"Authorization": "Bearer k-1"})
    assert response.status_code == 429, response.get_data(as_text=True)
    assert "tokens_per_minute" in response.get_data(as_text=True)
    assert upstream.requests == []
    quotas = app.extensions["ai_proxy"].quotas
    quotas.settled()
    window = quotas.report("token:a")["tokens_per_minute"]
    assert (window["used"], window["reserved"]) == (0, 0)


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_an_admitted_request_is_answered_and_settled(make_app, upstream, request, kind, stream):
    app = pipeline_app(make_app, upstream, storage_of(request, kind))
    if stream:
        upstream.default = Reply(events=chat_chunks(["a", "b"]))
    response = app.test_client().post(
        "/v1/chat/completions",
        json={"model": "gpt", **BODY, "max_tokens": 100, "stream": stream},
        headers={"Authorization": "Bearer k-1"},
    )
    text = response.get_data(as_text=True)
    response.close()  # a whole answer is settled once it is on its way
    assert response.status_code == 200, text
    assert response.headers["x-ratelimit-remaining-tokens"] == str(1000 - 101)
    assert len(upstream.requests) == 1
    quotas = app.extensions["ai_proxy"].quotas
    quotas.settled()
    window = quotas.report("token:a")["tokens_per_minute"]
    assert window["reserved"] == 0
    assert 0 < window["used"] < 101  # the real usage replaced the reservation


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_deployment_without_room_is_passed_over_unsent(make_app, upstream, request, kind):
    """The first deployment's own tokens_per_minute cannot take the request: its upstream
    request may be prepared, but the second deployment is the only one the stub hears from."""
    models = [
        openai_model(upstream, name="gpt", model="first", priority=1, tokens_per_minute=50),
        openai_model(upstream, name="gpt", model="second", priority=2),
    ]
    app = pipeline_app(make_app, upstream, storage_of(request, kind), *models)
    upstream.default = Reply(body=text_completion())
    response = app.test_client().post(
        "/v1/completions",
        json={"model": "gpt", "prompt": "hi", "max_tokens": 100},
        headers={"Authorization": "Bearer k-1"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [r.json()["model"] for r in upstream.requests] == ["second"]
    assert response.headers["x-ai-proxy-attempts"] == "1"


# Every path that calls a model, charged or not, behind a token's requests_per_minute of 1: the
# first request is admitted (whatever the stub's answer makes of it), the second is refused
# before any upstream byte.
REQUEST_CALLS = [
    ("/v1/chat/completions", "gpt", {**BODY}),
    ("/chat/completions", "gpt", {**BODY, "stream": True}),
    ("/v1/completions", "gpt", {"prompt": "hi"}),
    ("/v1/messages", "gpt", {**BODY, "max_tokens": 10}),
    ("/v1/responses", "gpt", {"input": "hi"}),
    ("/v1beta/models/gpt:generateContent", None, {"contents": [{"parts": [{"text": "hi"}]}]}),
    ("/v1/embeddings", "embed", {"input": "hello"}),
    ("/v1/images/generations", "draw", {"prompt": "a cat"}),
    ("/image", "draw", {"prompt": "a cat"}),
]


@pytest.mark.parametrize(("path", "model", "body"), REQUEST_CALLS, ids=lambda v: str(v)[:30])
@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_request_refused_by_its_request_window_reaches_no_upstream(
    make_app, upstream, request, kind, path, model, body
):
    app = make_app(
        {
            "default_model": None,
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 1}]},
            "models": [
                openai_model(upstream, name="gpt"),
                openai_model(upstream, name="embed", kind="embedding"),
                openai_model(upstream, name="draw", kind="image"),
            ],
            "rate_limits": {"storage": storage_of(request, kind)},
            "retry": {"max_retries": 0},
        }
    )
    client = app.test_client()
    json_body = body if model is None else {"model": model, **body}
    first = client.post(path, json=json_body, headers={"Authorization": "Bearer k-1"})
    first.get_data()
    first.close()
    assert first.status_code != 429
    sent = len(upstream.requests)
    assert sent >= 1
    refused = client.post(path, json=json_body, headers={"Authorization": "Bearer k-1"})
    assert refused.status_code == 429, refused.get_data(as_text=True)
    assert "requests_per_minute" in refused.get_data(as_text=True)
    assert len(upstream.requests) == sent


@pytest.mark.parametrize("error", [ValueError("bad answer"), ConnectionResetError("reset")])
def test_an_unexpected_failure_at_the_door_is_not_the_deployments(make_app, upstream, error):
    """Reading the quota answer failed other than with a refusal: the error goes up as it was;
    the first deployment is not cooled down, and no other is tried in its place."""
    _, router = routed(make_app, upstream, *two_deployments(upstream))
    with pytest.raises(type(error)):
        router.run(router.resolve("gpt"), chat, ready=Door(upstream, error=error))
    assert upstream.requests == []
    assert router.in_flight() == {}
    states = router.cooldowns.states([c.key for c in router.resolve("gpt").candidates])
    assert [state.failures for state in states] == [0, 0]


def test_a_probe_held_elsewhere_sends_the_request_to_the_next(make_app, upstream):
    _, router = routed(make_app, upstream, *two_deployments(upstream))
    first = router.resolve("gpt").candidates[0].key
    assert router.cooldowns.take_probe(first)  # another request is probing it
    probing = BreakerState(None, router.cooldowns.threshold)
    door = Door(upstream, states=[probing, BreakerState(None, 0)])
    outcome = router.run(router.resolve("gpt"), chat, ready=door)
    outcome.finish()
    assert [r.json()["model"] for r in upstream.requests] == ["second"]


def test_a_probe_taken_at_the_door_is_given_back_by_a_call_that_sent_nothing(make_app, upstream):
    _, router = routed(make_app, upstream, *two_deployments(upstream))
    first = router.resolve("gpt").candidates[0].key
    probing = BreakerState(None, router.cooldowns.threshold)

    def bad_id(candidate):
        candidate.provider.check_upstream_id("../../admin")
        return chat(candidate)

    door = Door(upstream, states=[probing, BreakerState(None, 0)])
    with pytest.raises(InvalidRequestError):
        router.run(router.resolve("gpt"), bad_id, ready=door)
    assert router.cooldowns.take_probe(first)  # free again


def test_the_wait_for_the_answer_is_not_the_deployments_latency(make_app, upstream):
    _, router = routed(make_app, upstream)
    door = Door(upstream)
    door.wait = 0.3
    outcome = router.run(router.resolve("gpt"), chat, ready=door)
    outcome.finish()
    assert router.latency_ms(outcome.candidate.key) < 200


def test_a_deployment_judged_out_at_the_door_keeps_its_turn(make_app, upstream):
    """Three deployments of equal priority take turns (least recently used first). The first is
    full when the first request comes and is passed over at the door: it was not used, so the
    next request goes to it, not to the third."""
    models = [
        openai_model(upstream, name="gpt", model=name, priority=1) for name in ("a", "b", "c")
    ]
    _, router = routed(make_app, upstream, *models)
    full = time.time() + 30
    outcome = router.run(
        router.resolve("gpt"),
        chat,
        gate=lambda c: full if c.upstream_model == "a" else None,
        ready=Door(upstream),
    )
    outcome.finish()
    assert outcome.candidate.upstream_model == "b"
    outcome = router.run(router.resolve("gpt"), chat, ready=Door(upstream))
    outcome.finish()
    assert outcome.candidate.upstream_model == "a"


@pytest.mark.parametrize("max_tokens", [100, NEVER_FITS], ids=["admitted", "refused"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_redis_connections_go_back_to_the_pool(
    make_app, upstream, redis_server, max_tokens, stream
):
    models = [
        openai_model(upstream, name="gpt", model="first", priority=1, tokens_per_minute=50),
        openai_model(upstream, name="gpt", model="second", priority=2),
    ]
    app = pipeline_app(make_app, upstream, redis_server.url, *models)
    if stream:
        upstream.default = Reply(events=chat_chunks(["a", "b"]))
    for _ in range(3):
        response = app.test_client().post(
            "/v1/chat/completions",
            json={"model": "gpt", **BODY, "max_tokens": max_tokens, "stream": stream},
            headers={"Authorization": "Bearer k-1"},
        )
        response.get_data()
        response.close()
        assert response.status_code == (200 if max_tokens == 100 else 429)
    quotas = app.extensions["ai_proxy"].quotas
    quotas.settled()
    pool = quotas.batch.client.connection_pool
    assert not pool._in_use_connections
    assert pool._available_connections
