"""Pins what app.hooks.limits relies on in `limits`' MemoryStorage.

Each test fails if a `limits` upgrade changes the hook's footing: the private method a hit
calls to start its expiry timer, the timer it keeps, or the containers the sweeper empties.
"""

from __future__ import annotations

import inspect
import os
import threading

import pytest
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage

from app.hooks.limits import SweptMemoryStorage
from app.ratelimit import STRATEGIES, make_storage
from tests.servers import wait_until

HOOK = "_MemoryStorage__schedule_expiry"


@pytest.fixture
def fast_sweeps(monkeypatch):
    monkeypatch.setattr(SweptMemoryStorage, "sweep_seconds", 0.02)


def held(storage: MemoryStorage) -> int:
    """Entries and counters the storage still keeps."""
    return sum(map(len, storage.events.values())) + len(storage.storage)


def test_the_overridden_private_method_is_still_there():
    method = vars(MemoryStorage).get(HOOK)
    assert callable(method), "limits renamed MemoryStorage.__schedule_expiry"
    assert list(inspect.signature(method).parameters) == ["self"]
    assert HOOK in vars(SweptMemoryStorage)


def test_memory_storage_still_keeps_what_the_sweeper_empties():
    storage = MemoryStorage()
    storage.timer.cancel()
    assert isinstance(storage.timer, threading.Timer)
    for name in ("events", "expirations", "storage", "locks"):
        assert hasattr(storage, name), name
    STRATEGIES["moving-window"](storage).hit(RateLimitItemPerSecond(5), "pin")
    (events,) = storage.events.values()
    assert all(isinstance(event.expiry, float) for event in events)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_a_hit_starts_no_timer(strategy):
    """limits' own storage replaces its run-out timer on a hit; the proxy's keeps none."""
    plain = MemoryStorage()
    plain.timer.join()
    first = plain.timer
    STRATEGIES[strategy](plain).hit(RateLimitItemPerSecond(5), "timer")
    # The hook point is still what a hit calls: limits' own storage started a new timer.
    assert plain.timer is not first
    plain.timer.cancel()

    swept = make_storage("memory://")
    assert isinstance(swept, SweptMemoryStorage)
    cancelled = swept.timer
    cancelled.join()  # run out, as the parent's would be: a hit through it would replace it
    for _ in range(3):
        assert STRATEGIES[strategy](swept).hit(RateLimitItemPerSecond(5), "timer")
    assert swept.timer is cancelled


@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_memory_storage_forgets_passed_windows(fast_sweeps, strategy):
    """Expired entries and counters are dropped by the sweeper, so memory stays bounded."""
    storage = make_storage("memory://")
    limiter = STRATEGIES[strategy](storage)
    item = RateLimitItemPerSecond(100)
    for _ in range(5):
        assert limiter.hit(item, "sweep-test")
    assert held(storage)
    assert wait_until(lambda: not held(storage), timeout=5)
    # Counting still works after a sweep.
    assert limiter.hit(item, "sweep-test")


def test_a_sweep_keeps_windows_that_have_not_passed():
    storage = make_storage("memory://")
    for strategy in STRATEGIES.values():
        strategy(storage).hit(RateLimitItemPerSecond(100, 3600), "kept")
    before = held(storage)
    storage.sweep()
    assert held(storage) == before > 0


def test_a_forked_worker_sweeps_its_own_storage():
    """gunicorn --preload forks workers after the storage was made: each starts its sweeper."""
    storage = make_storage("memory://")
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code only
        alive = any(
            t.name == "ai-proxy-quota-sweeper" and t.is_alive() for t in threading.enumerate()
        )
        os._exit(0 if alive else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage is not None


def test_a_hit_restarts_a_sweeper_that_stopped(monkeypatch):
    finished = threading.Thread(target=lambda: None)
    finished.start()
    finished.join()
    storage = make_storage("memory://")
    monkeypatch.setattr(SweptMemoryStorage, "_sweeper", finished)
    monkeypatch.setattr(SweptMemoryStorage, "_last_sweep", 0.0)
    assert STRATEGIES["fixed-window"](storage).hit(RateLimitItemPerSecond(5), "restart")
    assert SweptMemoryStorage._sweeper is not finished
    assert SweptMemoryStorage._sweeper.is_alive()
