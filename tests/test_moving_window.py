"""The `moving-window` strategy: no span of one window ever holds more requests than the limit,
over time as well as under concurrency, and room comes back at most one bucket (a sixtieth of
the window) after an exact log of every request would give it back.

Checked against a model of every admission: in memory over random arrivals, refunds and
passing time (a clock under test control), on a real redis-server over real time (a short
window), and through the proxy (the helper's case: 3 a minute, asked again after 26 and 46 s).
"""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.hooks.limits import SweptMemoryStorage
from app.hooks.limits_batch import BUCKETS, Change, Layout, Window
from app.hooks.limits_memory import LimiterBatch, MemoryBatch
from app.ratelimit import make_batch, make_storage
from tests.test_ratelimit import make_client, post


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0 + 0.37  # off any bucket's edge

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "time", clock)
    return clock


def check_history(
    admitted: list[float], taken: list[float], refused: list[float], expiry: float, limit: int
):
    """`admitted` (times of requests still counted: not given back) never holds more than
    `limit` in a span of `expiry`; a refusal came only when the last window and a bucket
    held the limit (of `taken`: every admission, given back later or not)."""
    admitted = sorted(admitted)
    for i, start in enumerate(admitted):
        within = [t for t in admitted[i:] if t < start + expiry]
        assert len(within) <= limit, (start, within)
    bucket = expiry / BUCKETS
    for t in refused:
        recent = [a for a in taken if t - expiry - bucket < a <= t]
        assert len(recent) >= limit, (t, recent)


BATCHES = {
    "memory": lambda: MemoryBatch(SweptMemoryStorage()),
    "through limits": lambda: MemoryBatch(type("Plain", (SweptMemoryStorage,), {})()),
    "window by window": lambda: LimiterBatch(SweptMemoryStorage()),
}


@pytest.mark.parametrize("kind", list(BATCHES))
@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(1, 6),
    steps=st.lists(
        st.tuples(
            st.sampled_from([0.0, 0.01, 0.4, 0.99, 1.0, 3.7, 10.0, 29.5, 59.0, 60.0, 61.0]),
            st.integers(0, 9),  # 0: give the oldest reservation back, else ask
        ),
        max_size=60,
    ),
)
def test_no_span_of_a_window_holds_more_than_the_limit(kind, limit, steps):
    clock = Clock()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(time, "time", clock)
        run_steps(kind, limit, steps, clock)


def run_steps(kind, limit, steps, clock):
    batch = BATCHES[kind]()
    window = Window(f"requests/{kind}", Layout.MOVING, limit, 60, client=True)
    admitted, taken, refused, held = [], [], [], []
    for wait, action in steps:
        clock.now += wait
        if action == 0 and held and kind != "window by window":
            when, mark = held.pop(0)
            batch.adjust([Change(window, -1, mark)])
            # Given back within its window it no longer counts; later, it is not given back.
            if clock.now - when < 60:
                admitted.remove(when)
            continue
        done = batch.reserve([(window, 1)], [])
        if done.admitted:
            admitted.append(clock.now)
            taken.append(clock.now)
            held.append((clock.now, done.marks[0]))
        else:
            refused.append(clock.now)
    check_history(admitted, taken, refused, 60, limit)


def test_three_a_minute_over_time(clock):
    """The helper's case: 3 admitted, then asked again 26 and 46 s later (the sliding counter
    let both through); the fourth comes once the first is a minute old, within a second."""
    batch = MemoryBatch(SweptMemoryStorage())
    window = Window("requests/three", Layout.MOVING, 3, 60, client=True)
    assert [batch.reserve([(window, 1)], []).admitted for _ in range(20)] == [True] * 3 + [
        False
    ] * 17
    for wait in (26, 20, 13.5):  # 26, 46 and 59.5 s after the three
        clock.now += wait
        refused = batch.reserve([(window, 1)], [])
        assert not refused.admitted
        # Retry-After is when the oldest bucket stops counting: the three's plus a minute.
        first_bucket_end = (int(1_800_000_000.37 * BUCKETS / 60) + 1) * 60 / BUCKETS + 60
        assert refused.readings[0].reset_in == pytest.approx(first_bucket_end - clock.now)
    clock.now = first_bucket_end
    assert [batch.reserve([(window, 1)], []).admitted for _ in range(4)] == [True] * 3 + [False]


def test_a_refund_reaches_an_older_bucket_and_its_summary(clock):
    """A failed request gives its request back to the bucket it was taken from, even after
    later buckets have been read and summed."""
    batch = MemoryBatch(SweptMemoryStorage())
    window = Window("requests/refund", Layout.MOVING, 2, 60, client=True)
    first = batch.reserve([(window, 1)], [])
    clock.now += 10
    assert batch.reserve([(window, 1)], []).admitted
    clock.now += 5
    assert not batch.reserve([(window, 1)], []).admitted  # sums the older buckets
    batch.adjust([Change(window, -1, first.marks[0])])
    assert batch.read([window])[0].used == 1
    assert batch.reserve([(window, 1)], []).admitted
    assert not batch.reserve([(window, 1)], []).admitted
    # A window later the refunded bucket no longer counts: giving back again changes nothing.
    clock.now += 60
    batch.adjust([Change(window, -1, first.marks[0])])
    assert batch.read([window])[0].used == 1  # the one taken at +15 s, counted till +76 s


def test_a_refund_reaches_an_older_bucket_in_redis(redis_server):
    """As above, on a real redis-server: the script drops the summary of older buckets when a
    settle changes one of them, and a settle carried by a reservation lands before it is
    judged."""
    storage = make_storage(redis_server.url)
    batch = make_batch(storage)
    window = Window("LIMITER/requests/moving-window/token:f/2/1/minute", Layout.MOVING, 2, 60)
    first = batch.reserve([(window, 1)], [])
    index = first.marks[0]
    while int(time.time()) == index:  # into the next bucket (a second of a minute)
        time.sleep(0.05)
    assert batch.reserve([(window, 1)], []).admitted
    assert not batch.reserve([(window, 1)], []).admitted  # the older buckets summed
    batch.adjust([Change(window, -1, first.marks[0])])
    assert batch.read([window])[0].used == 1
    assert batch.reserve([(window, 1)], []).admitted
    carried = batch.reserve([(window, 1)], [], carried=[Change(window, -1, first.marks[0])])
    assert not carried.admitted  # the first was given back once: a second time changes nothing
    third = batch.reserve([(window, 1)], [])
    assert not third.admitted and third.readings[0].used == 2


def test_a_cleared_storage_forgets_the_summary(clock):
    """The summary of older buckets lives in the storage itself: clearing the storage (as a
    test or a tool does) clears it with the buckets."""
    storage = SweptMemoryStorage()
    batch = MemoryBatch(storage)
    window = Window("requests/reset", Layout.MOVING, 1, 60, client=True)
    assert batch.reserve([(window, 1)], []).admitted
    clock.now += 5
    assert not batch.reserve([(window, 1)], []).admitted
    storage.reset()
    assert batch.reserve([(window, 1)], []).admitted


def test_redis_over_real_time(redis_server):
    """A 2 s window of 3 on a real redis-server, asked by three threads for 5 s: no span of
    2 s holds more than 3 admissions, and refusals come only while the window (and a bucket)
    is full. Each admission is known to lie between the times its call started and ended."""
    batch = make_batch(make_storage(redis_server.url))
    window = Window("LIMITER/requests/moving-window/token:r/3/2/second", Layout.MOVING, 3, 2)
    calls: list[tuple[float, float, bool]] = []
    lock = threading.Lock()
    stop = time.monotonic() + 5

    def ask():
        while time.monotonic() < stop:
            before = time.time()
            done = batch.reserve([(window, 1)], [])
            after = time.time()
            with lock:
                calls.append((before, after, done.admitted))
            time.sleep(0.013)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    admitted = sorted((b, a) for b, a, ok in calls if ok)
    assert len(admitted) >= 6  # the window came round at least twice
    for before, _ in admitted:
        # Every admission that surely lies in [before, before + 2 s).
        within = [1 for b, a in admitted if b >= before and a < before + 2]
        assert len(within) <= 3, before
    bucket = 2 / BUCKETS
    for before, after, ok in calls:
        if not ok:
            recent = [1 for b, a in admitted if a > before - 2 - bucket and b <= after]
            assert len(recent) >= 3, before


def test_the_proxy_keeps_three_a_minute_over_time(make_app, monkeypatch):
    """Through the proxy (memory quotas, the clock under test control): three requests a
    minute, the fourth refused at 26, 46 and 59 s, with Retry-After telling when it fits."""
    from tests.test_ratelimit import FrozenTime

    frozen = FrozenTime(monkeypatch)
    frozen.advance(40)  # mid-minute: a counter per calendar minute lets the fourth in at 26 s
    client = make_client(
        make_app,
        {
            "auth": {"tokens": [{"name": "a", "token": "k-1", "requests_per_minute": 3}]},
            "models": [{"name": "echo", "provider": "echo"}],
        },
    )
    assert [post(client).status_code for _ in range(3)] == [200] * 3
    waited = 0
    for wait in (26, 20, 13):
        frozen.advance(wait)
        waited += wait
        refused = post(client)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) == 61 - waited
    frozen.advance(61 - waited)
    assert [post(client).status_code for _ in range(4)] == [200] * 3 + [429]
