"""The per-deployment circuit breaker, with time injected."""

from __future__ import annotations

import pytest

from app.cooldown import BreakerState, Cooldowns, LogThrottle, MemoryBreakers


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def breaker(clock, threshold=1, cooldown=60.0):
    return Cooldowns(
        MemoryBreakers(clock), threshold=threshold, cooldown_seconds=cooldown, probe_seconds=30
    )


def state(cooldowns, key="d#0") -> BreakerState:
    return cooldowns.states([key])[0]


def test_opens_after_threshold_and_comes_back_with_one_probe(clock):
    cooldowns = breaker(clock, threshold=2)
    assert cooldowns.failure("d#0") is None
    assert state(cooldowns).open_until is None
    assert cooldowns.failure("d#0") == clock.now + 60
    assert state(cooldowns).open_until == clock.now + 60
    clock.now += 59
    assert state(cooldowns).open_until is not None
    clock.now += 2
    half_open = state(cooldowns)
    assert half_open.open_until is None and cooldowns.needs_probe(half_open)
    assert cooldowns.take_probe("d#0") is True
    assert cooldowns.take_probe("d#0") is False  # one probe at a time
    cooldowns.success("d#0", half_open)
    closed = state(cooldowns)
    assert closed == BreakerState() and not cooldowns.needs_probe(closed)


def test_failed_probe_opens_again(clock):
    cooldowns = breaker(clock)
    cooldowns.failure("d#0")
    clock.now += 61
    assert cooldowns.take_probe("d#0")
    cooldowns.failure("d#0")
    assert state(cooldowns).open_until == clock.now + 60


def test_a_probe_that_never_reports_expires(clock):
    cooldowns = breaker(clock)
    cooldowns.failure("d#0")
    clock.now += 61
    assert cooldowns.take_probe("d#0")
    clock.now += 31
    assert cooldowns.take_probe("d#0")


def test_retry_after_wins_over_cooldown_and_threshold(clock):
    cooldowns = breaker(clock, threshold=5, cooldown=60)
    assert cooldowns.failure("d#0", retry_after=7) == clock.now + 7
    cooldowns.failure("d#1", retry_after=600)
    assert state(cooldowns, "d#1").open_until == clock.now + 600


def test_zero_cooldown_turns_it_off(clock):
    cooldowns = breaker(clock, cooldown=0)
    for _ in range(3):
        assert cooldowns.failure("d#0") is None
    assert state(cooldowns) == BreakerState()


def test_success_resets_the_streak(clock):
    cooldowns = breaker(clock, threshold=2)
    cooldowns.failure("d#0")
    cooldowns.success("d#0")
    cooldowns.failure("d#0")
    assert state(cooldowns).open_until is None


class BrokenBackend(MemoryBreakers):
    def states(self, keys):
        raise ConnectionError("down")

    def add_failure(self, key):
        raise ConnectionError("down")

    def take_probe(self, key, ttl):
        raise ConnectionError("down")


def test_storage_failure_fails_open(clock):
    cooldowns = Cooldowns(BrokenBackend(clock), threshold=1, cooldown_seconds=60)
    assert cooldowns.states(["a", "b"]) == [BreakerState(), BreakerState()]
    assert cooldowns.failure("a") is None
    assert cooldowns.take_probe("a") is True
    assert cooldowns.errors == 3


def test_log_throttle(clock):
    throttle = LogThrottle(60, clock)
    assert throttle.ready() and not throttle.ready()
    clock.now += 61
    assert throttle.ready()
