"""Pins what app.hooks relies on in `limits`: MemoryStorage's expiry hook and containers, and the
counter layouts (keys, prefixes, Redis client) the quota batch reads and writes.

Each test fails if a `limits` upgrade changes the hooks' footing: the private method a hit
calls to start its expiry timer, the timer it keeps, the containers the sweeper empties, or the
keys and counters limits' own limiters read.
"""

from __future__ import annotations

import inspect
import os
import threading

import pytest
from limits import RateLimitItemPerMinute, RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, SlidingWindowCounterRateLimiter

from app.hooks.limits import SweptMemoryStorage
from app.hooks.limits_batch import Change, Layout, Window
from app.ratelimit import STRATEGIES, make_batch, make_storage
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


# -- the quota batch reads and writes limits' own counters ------------------------------------

BATCH_LAYOUTS = {
    Layout.FIXED: FixedWindowRateLimiter,
    Layout.SLIDING: SlidingWindowCounterRateLimiter,
}


@pytest.mark.parametrize("kind", ["memory", "redis"])
@pytest.mark.parametrize("layout", list(BATCH_LAYOUTS))
def test_the_batch_keeps_limits_own_layout(request, kind, layout):
    """What the batch reserves, limits' own limiter reads under the same key, and the other
    way round: a proxy upgrade keeps the counters a shared Redis already holds."""
    url = request.getfixturevalue("redis_server").url if kind == "redis" else "memory://"
    storage = make_storage(url)
    batch = make_batch(storage)
    item = RateLimitItemPerMinute(10)
    window = Window(item.key_for("requests", "pin", "token:a"), layout, 10, item.get_expiry())
    limiter = BATCH_LAYOUTS[layout](storage)
    assert limiter.hit(item, "requests", "pin", "token:a", cost=2)
    assert batch.read([window])[0].used == 2
    done = batch.reserve([(window, 3)], [])
    assert done.admitted
    assert limiter.get_window_stats(item, "requests", "pin", "token:a").remaining == 5
    batch.adjust([Change(window, -3, done.marks[0])])
    assert limiter.get_window_stats(item, "requests", "pin", "token:a").remaining == 8


def test_the_redis_storage_still_names_its_keys_as_the_batch_does(redis_server):
    storage = make_storage(redis_server.url)
    assert storage.prefixed_key("k") == "LIMITS:k"
    assert storage._current_window_key("k") == "{k}"
    assert storage._previous_window_key("k") == "{k}/-1"
    assert callable(storage.get_connection().register_script)


def test_a_moving_window_is_counted_in_buckets_under_limits_key(redis_server):
    """A moving window's counters are limits' key for the window plus `/m<bucket>`, bucket j
    counting from j * expiry / 60 (epoch seconds) on and expiring once it no longer overlaps
    the last window; what limits' own moving window or an earlier version left under the key
    itself is not read."""
    import time

    import redis

    storage = make_storage(redis_server.url)
    store = redis.Redis(port=redis_server.port)
    item = RateLimitItemPerMinute(5)
    key = item.key_for("requests", "moving-window", "token:a")
    STRATEGIES["moving-window"](storage).hit(item, "requests", "moving-window", "token:a")
    assert store.type(f"LIMITS:{key}") == b"list"
    window = Window(key, Layout.MOVING, 5, item.get_expiry())
    batch = make_batch(storage)
    before = time.time()
    done = batch.reserve([(window, 2)], [])
    assert done.admitted and done.readings[0].used == 0
    index = done.marks[0]
    assert int(before) <= index <= int(time.time())  # 60 buckets of a minute: a second each
    bucket = f"LIMITS:{{{key}}}/m{index}"
    assert int(store.get(bucket)) == 2
    # It counts until the last window no longer overlaps it: its end plus the window.
    assert store.pexpiretime(bucket) == (index + 1 + 60) * 1000
    assert batch.read([window])[0].used == 2

    memory = make_storage("memory://")
    memory_batch = make_batch(memory)
    done = memory_batch.reserve([(window, 3)], [])
    assert done.marks[0].startswith(f"{key}/m") and memory.get(done.marks[0]) == 3
    index = int(done.marks[0].rsplit("/m", 1)[1])
    assert memory.get_expiry(done.marks[0]) == pytest.approx(index + 1 + 60)


def test_a_rolled_sliding_window_reads_as_limits_reads_it(redis_server):
    """Once a window has ended its counter becomes the previous one (limits' rename), which the
    batch weighs by its time to live, worked out from the current counter's: the same count
    limits' own limiter finds; a reservation made before the roll is settled on the previous
    counter; and once the current counter is gone the previous one is read directly."""
    import time

    import redis

    storage = make_storage(redis_server.url)
    batch = make_batch(storage)
    store = redis.Redis(port=redis_server.port)
    item = RateLimitItemPerMinute(10)

    def window(name: str) -> Window:
        return Window(item.key_for("tokens", "roll", name), Layout.SLIDING, 10, 60)

    first = window("token:a")
    current = batch._key(first)
    previous = current + "/-1"
    limiter = SlidingWindowCounterRateLimiter(storage)

    def remaining() -> int:
        return limiter.get_window_stats(item, "tokens", "roll", "token:a").remaining

    assert limiter.hit(item, "tokens", "roll", "token:a", cost=10)
    # The window ends in 45 s: the next look renames it, and 45 of its 60 s still count (7).
    store.pexpire(current, 45_000)
    assert batch.read([first])[0].used == 7
    assert 40_000 < store.pttl(previous) <= 45_000
    assert 100_000 < store.pttl(current) <= 105_000
    assert remaining() == 3
    done = batch.reserve([(first, 2)], [])
    assert done.admitted and done.readings[0].used == 7
    assert remaining() == 1
    # The current counter gone (evicted, say) while the previous one lives: it is read.
    store.delete(current)
    store.set(previous, 10, px=51_000)
    assert batch.read([first])[0].used == 8  # floor(10 * 51 / 60), from 54 s down to 48 s

    # A reservation whose window ends before it is settled: the settle finds it in the
    # previous counter.
    second = window("token:b")
    key = batch._key(second)
    store.set(key, 0, px=61_000)  # a window with 61 s to go
    done = batch.reserve([(second, 4)], [])
    assert done.admitted and store.pttl(key) > 60_000  # (not rolled yet)
    time.sleep(1.2)  # now under 60 s: the next look rolls it
    batch.adjust([Change(second, -3, done.marks[0])])
    assert int(store.get(key + "/-1")) == 1 and int(store.get(key)) == 0
