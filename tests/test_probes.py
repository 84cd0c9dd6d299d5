"""A deployment back from its cooldown is probed by one request; a probe that ends with no
verdict on the deployment gives the probe back at once.

Without that, a probe whose client left before the upstream answered (or whose request was
refused before it was sent, or found no quota) held the probe until it expired: every other
request skipped the deployment meanwhile, and a model with one deployment answered 503 for a
minute. The router, breakers and quotas here are the app's own; only the upstream call is a
function, as the router is given one.
"""

from __future__ import annotations

import pytest

from app.errors import (
    ClientGoneError,
    InvalidRequestError,
    NoAvailableModelError,
    ProxyError,
    UpstreamError,
)
from tests.conftest import TOKEN, openai_model


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def build(make_app, upstream, storage: str | None = None):
    config = {
        "auth": {"tokens": [{"name": "t", "token": TOKEN}]},
        "models": [openai_model(upstream, name="gpt", model="only")],
        "retry": {"max_retries": 0},
        "routing": {"cooldown_seconds": 60},
    }
    if storage:
        config["rate_limits"] = {"storage": storage}
    app = make_app(config)
    router = app.extensions["ai_proxy"].router
    clock = Clock()
    router.cooldowns.backend.clock = clock
    return router, clock


def back_from_cooldown(router, clock):
    """The only deployment failed once and its cooldown has passed: the next request probes."""
    resolution = router.resolve("gpt")
    (candidate,) = resolution.candidates
    router.cooldowns.failure(candidate.key)
    with pytest.raises(NoAvailableModelError):
        router.run(resolution, lambda c: "never called")
    clock.now += 61
    return resolution, candidate


def answers(router, resolution) -> str:
    outcome = router.run(resolution, lambda c: "answered")
    outcome.finish()
    return outcome.result


def raise_(error: BaseException):
    def call(candidate):
        raise error

    return call


@pytest.mark.parametrize(
    "error",
    [
        ClientGoneError(),
        InvalidRequestError("The model cannot take this request."),
        ProxyError(),
    ],
    ids=["client left", "request refused", "proxy error"],
)
def test_a_probe_ended_by_its_request_gives_the_probe_back(make_app, upstream, error):
    router, clock = build(make_app, upstream)
    resolution, candidate = back_from_cooldown(router, clock)
    with pytest.raises(type(error)):
        router.run(resolution, raise_(error))
    # No verdict on the deployment: the next request probes it at once.
    assert answers(router, resolution) == "answered"
    assert router.cooldowns.states([candidate.key])[0].failures == 0


@pytest.mark.parametrize("probing", [False, True], ids=["healthy", "probe"])
def test_a_proxy_bug_is_no_verdict_on_the_deployment(make_app, upstream, probing):
    """An exception the proxy did not expect (its own bug, or a request it cannot handle) is
    not the deployment's failure: one client's request must not cool it down for everyone."""
    router, clock = build(make_app, upstream)
    if probing:
        resolution, candidate = back_from_cooldown(router, clock)
    else:
        resolution = router.resolve("gpt")
        (candidate,) = resolution.candidates
    with pytest.raises(UpstreamError):
        router.run(resolution, raise_(RecursionError("maximum recursion depth exceeded")))
    assert answers(router, resolution) == "answered"
    assert router.cooldowns.states([candidate.key])[0].failures == 0


def test_a_probe_stream_ended_by_its_client_gives_the_probe_back(make_app, upstream):
    router, clock = build(make_app, upstream)
    resolution, candidate = back_from_cooldown(router, clock)
    outcome = router.run(resolution, lambda c: "stream")
    # Another request while the probe's stream runs: the deployment is being probed.
    with pytest.raises(NoAvailableModelError):
        router.run(resolution, lambda c: "never called")
    outcome.finish(ClientGoneError())
    assert answers(router, resolution) == "answered"


def test_a_probe_refused_by_quota_gives_the_probe_back(make_app, upstream):
    router, clock = build(make_app, upstream)
    resolution, candidate = back_from_cooldown(router, clock)
    with pytest.raises(NoAvailableModelError):
        router.run(resolution, lambda c: "never called", gate=lambda c: clock.now + 30)
    assert answers(router, resolution) == "answered"


def test_verdicts_still_decide(make_app, upstream):
    router, clock = build(make_app, upstream)
    resolution, candidate = back_from_cooldown(router, clock)
    # A probe that fails opens the breaker again: the next request skips the deployment.
    with pytest.raises(UpstreamError):
        router.run(resolution, raise_(UpstreamError("up: upstream answered 500")))
    with pytest.raises(NoAvailableModelError):
        router.run(resolution, lambda c: "never called")
    # Back again; a probe whose stream ends well closes it for good.
    clock.now += 61
    outcome = router.run(resolution, lambda c: "stream")
    with pytest.raises(NoAvailableModelError):
        router.run(resolution, lambda c: "never called")  # one probe at a time
    outcome.finish()
    assert router.cooldowns.states([candidate.key])[0].failures == 0
    assert answers(router, resolution) == "answered"


def test_a_probe_given_back_in_redis_is_free_for_every_worker(make_app, upstream, redis_server):
    first, clock = build(make_app, upstream, storage=redis_server.url)
    other, other_clock = build(make_app, upstream, storage=redis_server.url)
    resolution, candidate = back_from_cooldown(first, clock)
    other_clock.now = clock.now
    with pytest.raises(ClientGoneError):
        first.run(resolution, raise_(ClientGoneError()))
    # Another process (sharing the breakers through Redis) may probe it at once.
    assert answers(other, other.resolve("gpt")) == "answered"
